"""Basis rotations of a layer's unit space (Network Dissection, TPAMI Sec 3.2).

The paper asks whether interpretability is axis-aligned: a random rotation Q of conv5's K-unit
space keeps everything a linear read-out can see (discriminative power) yet destroys most unique
detectors, and Q^alpha for 0 <= alpha <= 1 walks the geodesic on SO(K) from the identity to Q so
the loss of detectors can be plotted against alpha.

Everything here runs on the host in float64, once per (seed, alpha): the real Schur decomposition
that Q^alpha needs is CPU-only even in jax.scipy, K is at most a few thousand, and the rotated
activations are then one (K, K) matmul on the device. Only the Gaussian draw uses jax.random, so a
seed means the same Q here as anywhere else in ndjax that draws with jax.random.key(seed).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

ORTHOGONALITY_TOLERANCE = 1e-6   # max |Q^T Q - I| accepted by fractional_power


def random_rotation(seed: int, k: int) -> np.ndarray:
  """(k, k) float64 Q drawn from the Haar (uniform) measure on SO(k), deterministic per (seed, k).

  QR of a standard Gaussian matrix G: the Gaussian law is invariant under G -> U G for any
  orthogonal U, but QR's Q is only equivariant once the factorisation is made unique, which is
  what forcing diag(R) > 0 does (Mezzadri 2007); without it the sign convention of the Householder
  reflectors leaks into Q and it is NOT Haar. That gives Haar on O(k).

  Flipping the first column when det(Q) = -1 keeps Haar on SO(k): right multiplication by
  D = diag(-1, 1, ..., 1) is a bijection from the det -1 coset onto SO(k) that commutes with every
  left translation Q -> U Q (U in SO(k)), so it carries the left-invariant Haar measure of that coset
  to a left-invariant probability on SO(k), which by uniqueness is Haar. The result is an equal
  mixture of Haar on SO(k) (det +1 draws) with Haar on SO(k) (flipped det -1 draws).
  """
  if k < 1:
    raise ValueError(f'random_rotation needs k >= 1, got {k}')
  # float32 because JAX's x64 is off by default; the float64 QR below needs no more than that
  g = jax.random.normal(jax.random.key(seed), (k, k), dtype=jnp.float32)
  q, r = np.linalg.qr(np.asarray(g, np.float64))
  q = q * np.where(np.diag(r) < 0, -1.0, 1.0)   # sign(0) would zero a column: take +1 there
  if determinant(q) < 0:
    q[:, 0] = -q[:, 0]
  return q


def orthogonality_error(q: np.ndarray) -> float:
  """max |Q^T Q - I| over entries (the max norm, not Frobenius).

  The max norm does not grow with k the way Frobenius does, so one tolerance serves k = 2 and
  k = 512 alike; for an orthogonal matrix every entry of Q^T Q - I is rounding, about k * eps.
  """
  q = np.asarray(q, np.float64)
  return float(np.max(np.abs(q.T @ q - np.eye(q.shape[1]))))


def determinant(q: np.ndarray) -> float:
  """det(Q) in float64; +1 on SO(k), -1 on the other coset of O(k)."""
  return float(np.linalg.det(np.asarray(q, np.float64)))


def fractional_power(q: np.ndarray, alpha: float) -> np.ndarray:
  """(k, k) float64 Q^alpha: the point at fraction alpha of the geodesic on SO(k) from I to Q.

  Q = Z T Z^T with T the real Schur form, which for an orthogonal (hence normal) Q is block
  diagonal up to rounding: 2x2 rotations by theta in (-pi, pi) and 1x1 blocks +-1. Scaling every
  angle by alpha is exp(alpha log Q) with the principal logarithm, i.e. the shortest geodesic.
  -1 eigenvalues (angle pi) come in pairs on SO(k); each pair of Schur vectors is taken as a plane
  rotated by +pi, which keeps Q^alpha real and in SO(k). The geodesic there is not unique (-pi, or
  any other pairing, is just as short); pairing in Schur order makes the choice deterministic.

  alpha == 0 returns the identity and alpha == 1 returns Q itself, both exactly, so the end points
  of a sweep reproduce the unrotated and the fully rotated dissection bit for bit. Any finite alpha
  is accepted (negative or > 1 continue the same one-parameter subgroup: Q^a Q^b = Q^(a+b)).
  """
  q = _checked_rotation(q)
  alpha = float(alpha)
  if not math.isfinite(alpha):
    raise ValueError(f'fractional_power needs a finite alpha, got {alpha}')
  k = q.shape[0]
  if alpha == 0.0:
    return np.eye(k)
  if alpha == 1.0:
    return q.copy()
  t, z = scipy.linalg.schur(q, output='real')
  return z @ _block_power(t, alpha) @ z.T


def _checked_rotation(q) -> np.ndarray:
  """float64 copy of q, or a one-line ValueError saying why it is not in SO(k)."""
  q = np.asarray(q, np.float64)
  if q.ndim != 2 or q.shape[0] != q.shape[1] or q.shape[0] == 0:
    raise ValueError(f'expected a non-empty square matrix, got shape {q.shape}')
  if not np.all(np.isfinite(q)):
    raise ValueError('matrix has non-finite entries')
  err = orthogonality_error(q)
  if err > ORTHOGONALITY_TOLERANCE:
    raise ValueError(f'matrix is not orthogonal: max |Q^T Q - I| = {err:.3g} > '
                     f'{ORTHOGONALITY_TOLERANCE:g}')
  det = determinant(q)
  if det < 0:
    raise ValueError(f'matrix is a reflection, not a rotation: det = {det:.6g}')
  return q


def _block_power(t: np.ndarray, alpha: float) -> np.ndarray:
  """T^alpha for a real Schur form T of a rotation, rebuilt block diagonal from the angles.

  The off-block entries of T are rounding (or up to the orthogonality tolerance) and are dropped:
  keeping them would make Z T^alpha Z^T drift off SO(k). LAPACK's standardised 2x2 blocks have a
  subdiagonal that is exactly zero only where they split into real eigenvalues, so a nonzero
  subdiagonal marks a complex pair.
  """
  k = t.shape[0]
  out = np.zeros((k, k))
  minus_ones = []
  i = 0
  while i < k:
    if i + 1 < k and t[i + 1, i] != 0.0:
      s = 0.5 * (t[i + 1, i] - t[i, i + 1])
      c = 0.5 * (t[i, i] + t[i + 1, i + 1])
      _put_rotation(out, i, i + 1, alpha * math.atan2(s, c))
      i += 2
    else:
      if t[i, i] > 0:
        out[i, i] = 1.0
      else:
        minus_ones.append(i)
      i += 1
  if len(minus_ones) % 2:
    raise ValueError('odd number of -1 eigenvalues: matrix is not in SO(k)')
  for a, b in zip(minus_ones[0::2], minus_ones[1::2]):
    _put_rotation(out, a, b, alpha * math.pi)
  return out


def _put_rotation(out: np.ndarray, a: int, b: int, angle: float) -> None:
  """Write [[cos, -sin], [sin, cos]] into rows/columns (a, b) of out."""
  c, s = math.cos(angle), math.sin(angle)
  out[a, a], out[a, b] = c, -s
  out[b, a], out[b, b] = s, c
