"""Views: ways of reading one layer, all from the same forward pass.

A view of a layer is a linear map of its channel axis, applied to the activations inside the jit
before anything is thresholded, plus the tau it is thresholded at. Each view's columns are the
"units" that get their own exact thresholds, counts and labels (paper Sec 3.2 rotates conv5's basis
this way: interpretability is not a property of the space, but of its axes).
- identity: the layer as it is (no matrix: nothing is multiplied, so it is the plain dissection);
- rotation: Q^alpha, Q Haar-uniform on SO(K) from a seed (`ndjax/rotation.py`), alpha on the
  geodesic from I (alpha = 0, exactly the identity view) to Q (alpha = 1);
- directions: a user's (K, D) matrix whose D columns are directions in the K-unit space.
Views combine as a product (every rotation alpha and every direction file, at every tau).

Naming: a view's name is '' for the identity at the run's first tau (its outputs go to the plain
`<layer>` folder, as without views), else `[<basis>_]tau<tau>` or `<basis>` with basis
`rot_s<seed>_a<alpha>` or `dir_<file stem>` (numbers in their shortest exact decimal form);
outputs go to `<layer>@<name>`. Two views with one name are refused, never overwritten.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


class ViewError(ValueError):
  """A view that cannot be built (bad directions file, bad alpha); one line for the user."""


@dataclasses.dataclass(frozen=True, eq=False)
class View:
  name: str                        # '' = the plain layer at the first tau
  tau: float
  kind: str                        # 'identity' | 'rotation' | 'directions'
  matrix: np.ndarray | None = None # (K, D) float32 applied to the channel axis; None = identity
  meta: dict = dataclasses.field(default_factory=dict)   # seed, alpha, errors, file, sha256

  @property
  def basis_key(self) -> str:
    """Views with the same basis share threshold buffers, top-k lists and transformed maps."""
    return self.meta.get('basis', 'identity')

  def folder(self, layer: str) -> str:
    return layer if not self.name else f'{layer}@{self.name}'

  def describe(self) -> dict:
    """The view's record in results.json."""
    return dict(name=self.name, kind=self.kind, tau=self.tau,
                **{k: v for k, v in self.meta.items() if k != 'basis'})


@dataclasses.dataclass(frozen=True)
class ViewSpec:
  """What views to read every layer through (the CLI's --tau/--rotation*/--directions)."""
  taus: tuple[float, ...] = (0.005,)
  rotation_seed: int | None = None             # None: no rotation views
  rotation_alphas: tuple[float, ...] = (1.0,)
  directions: tuple[str, ...] = ()             # .npy files of (K, D) matrices
  # further (seed, alpha) rotations, after rotation_seed x rotation_alphas: independent Q's
  # (the paper's Fig 8 repeats at alpha = 1) without the product of every seed and alpha
  rotations: tuple[tuple[int, float], ...] = ()
  # keep the plain layer beside rotations/directions (a null of random directions is judged
  # against the layer's own units, from the same forward pass)
  with_identity: bool = False

  def __post_init__(self):
    if not self.taus:
      raise ViewError('give at least one tau')
    for t in self.taus:
      if not 0.0 < t < 1.0:
        raise ViewError(f'tau={t} is outside (0, 1); the paper uses 0.005')
    if len(set(self.taus)) != len(self.taus):
      raise ViewError(f'a tau is listed twice: {",".join(f"{t:g}" for t in self.taus)}')
    if self.rotation_seed is not None:
      if not 0 <= self.rotation_seed < 2**31:
        raise ViewError(f'rotation seed {self.rotation_seed} is outside [0, 2^31)')
      if not self.rotation_alphas:
        raise ViewError('give at least one rotation alpha')
      if len(set(self.rotation_alphas)) != len(self.rotation_alphas):
        raise ViewError('a rotation alpha is listed twice')
      for a in self.rotation_alphas:
        if not 0.0 <= a <= 1.0:
          raise ViewError(f'rotation alpha={a} is outside [0, 1] (0 = the layer itself, 1 = Q)')
    for seed, a in self.rotations:
      if not 0 <= seed < 2**31:
        raise ViewError(f'rotation seed {seed} is outside [0, 2^31)')
      if not 0.0 < a <= 1.0:
        raise ViewError(f'rotation alpha={a} of seed {seed} is outside (0, 1]')


def _fmt(x: float) -> str:
  """Shortest exact decimal: 0.5, 1, 0.01000001 (never two numbers with one name)."""
  return np.format_float_positional(float(x), trim='-')


def _load_directions(path: str, units: int) -> np.ndarray:
  try:
    d = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ViewError(f'--directions file {path} is not a readable .npy array: {e}') from None
  if not isinstance(d, np.ndarray):          # an .npz archive
    d.close()
    raise ViewError(f'--directions file {path} is an .npz archive; save one (K, D) matrix '
                    'with numpy.save as .npy')
  if d.ndim != 2 or d.shape[0] != units or d.shape[1] < 1:
    raise ViewError(f'--directions file {path} holds shape {d.shape}; expected (K, D) with '
                    f'K = {units} units of the layer and D >= 1 directions')
  if not np.issubdtype(d.dtype, np.floating) and not np.issubdtype(d.dtype, np.integer):
    raise ViewError(f'--directions file {path} has dtype {d.dtype}; expected a real matrix')
  if not np.all(np.isfinite(d)):
    raise ViewError(f'--directions file {path} holds NaN or inf')
  return d.astype(np.float32)


@functools.lru_cache(maxsize=32)
def _rotation(seed: int, units: int, alpha: float) -> tuple[np.ndarray, dict]:
  from ndjax import rotation
  q = rotation.random_rotation(seed, units)
  qa = rotation.fractional_power(q, alpha)
  meta = dict(seed=seed, alpha=alpha, units=units,
              orthogonality_error=float(rotation.orthogonality_error(qa)),
              det=float(rotation.determinant(qa)),
              orthogonality_error_q=float(rotation.orthogonality_error(q)))
  return qa.astype(np.float32), meta


def build(spec: ViewSpec, units: int) -> list[View]:
  """Every view of a layer with `units` channels, in a fixed order: bases, then taus.

  Bases: identity (when no rotation or directions are asked for, or alpha = 0 is), rotations by
  position in the alpha list, then the extra (seed, alpha) rotations, direction files in order. The identity at the first tau
  is the unnamed view.
  """
  bases: list[tuple[str, str, np.ndarray | None, dict]] = []
  if spec.with_identity or (spec.rotation_seed is None and not spec.directions
                            and not spec.rotations):
    bases.append(('identity', 'identity', None, {}))
  pairs = ([(spec.rotation_seed, float(a)) for a in spec.rotation_alphas]
           if spec.rotation_seed is not None else [])
  pairs += [(int(s), float(a)) for s, a in spec.rotations if (s, a) not in pairs]
  for seed, a in pairs:
    if a == 0.0 and spec.with_identity:
      continue             # the plain layer is already there
    if a == 0.0:           # Q^0 := I exactly: the plain layer, nothing multiplied
      meta = dict(seed=seed, alpha=0.0, units=units, orthogonality_error=0.0, det=1.0)
      bases.append(('identity', 'rotation', None, meta))
    else:
      q, meta = _rotation(seed, units, a)
      bases.append((f'rot_s{seed}_a{_fmt(a)}', 'rotation', q, meta))
  for path in spec.directions:
    d = _load_directions(path, units)
    with open(path, 'rb') as f:
      digest = hashlib.sha256(f.read()).hexdigest()
    stem = os.path.splitext(os.path.basename(path))[0]
    bases.append((f'dir_{stem}', 'directions', d,
                  dict(file=os.path.abspath(path), sha256=digest, shape=list(d.shape))))
  views = []
  for basis, kind, matrix, meta in bases:
    for i, tau in enumerate(spec.taus):
      parts = [] if basis == 'identity' else [basis]
      if i > 0:
        parts.append(f'tau{_fmt(tau)}')
      views.append(View('_'.join(parts), float(tau), kind, matrix, dict(meta, basis=basis)))
  names = [v.name for v in views]
  for n in names:
    if names.count(n) > 1:
      raise ViewError(f'two views would share the folder name {n or "<layer>"!r} (e.g. a '
                      'directions file named like a tau suffix, or alpha 0 twice): rename the '
                      'file or drop the duplicate')
  return views


@jax.jit
def apply(acts: jax.Array, matrix: jax.Array) -> jax.Array:
  """(B, h, w, K) @ (K, D) -> (B, h, w, D) in full float32 precision (no TF32/bf16 passes)."""
  return jnp.einsum('bhwk,kd->bhwd', acts, matrix, precision=jax.lax.Precision.HIGHEST)


def transform(acts, matrix):
  """A view's activations: the layer's own (no copy) for the identity, else the linear map."""
  return acts if matrix is None else apply(acts, matrix)


def taus_by_basis(views: Sequence[View]) -> dict[str, list[View]]:
  """Group views by basis, keeping order (each basis' views differ only in tau)."""
  out: dict[str, list[View]] = {}
  for v in views:
    out.setdefault(v.basis_key, []).append(v)
  return out
