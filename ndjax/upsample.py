"""Upsampling activation maps to mask resolution as separable bilinear interpolation matrices.

Both modes are the same operation with different grid points: the activation value of unit (i, j)
sits at a point (origin + i*spacing) in mask coordinates, and every mask pixel centre (y + 0.5)
reads the bilinear interpolation of its four neighbouring grid points, clamped to the outermost
points beyond them.
- `rf`: grid points are the receptive-field centres of the units (models/geometry.py), scaled from
  image to mask coordinates (the paper).
- `center`: grid points are pixel centres of an h x w map stretched over the mask, i.e. torch's
  `interpolate(mode='bilinear', align_corners=False)` without antialias (NetDissect-Lite).
The matrices are built once per (layer, image size) on the host in float64; applying them is two
small matmuls on the device. `threshold_masks` is the one place a map becomes a mask: the count
(`iou.py`), the top-k masks (`topk.py`) and the report all call it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MODES = ('rf', 'center')


def interpolation_matrix(out_size: int, in_size: int, origin: float, spacing: float) -> np.ndarray:
  """(out_size, in_size) float32 bilinear weights; grid point i at origin + i*spacing."""
  t = (np.arange(out_size) + 0.5 - origin) / spacing
  t = np.clip(t, 0.0, in_size - 1)
  lo = np.floor(t).astype(np.int64)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = t - lo
  w = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(w, (rows, lo), 1.0 - frac)
  np.add.at(w, (rows, hi), frac)
  return w.astype(np.float32)


def torch_bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
  """torch's align_corners=False source index and weights, in its own float32 arithmetic.

  Mathematically the `center` grid of `interpolation_matrix`; computed the way
  aten/src/ATen/native/UpSample.h does so that `center` reproduces NetDissect-Lite's masks.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
  src = np.maximum(src, np.float32(0))
  lo = src.astype(np.int64)
  hi = np.minimum(lo + 1, in_size - 1)
  lam = src - lo.astype(np.float32)
  w = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  np.add.at(w, (rows, lo), np.float32(1) - lam)
  np.add.at(w, (rows, hi), lam)
  return w


def grid(mode: str, map_size: int, image_size: int, mask_size: int,
         rf: tuple[float, float] | None) -> tuple[float, float]:
  """(origin, spacing) of the activation grid in MASK coordinates for one axis."""
  if mode == 'center':
    spacing = mask_size / map_size
    return 0.5 * spacing, spacing
  if mode == 'rf':
    origin, spacing = rf
    scale = mask_size / image_size
    return origin * scale, spacing * scale
  raise ValueError(f'unknown upsample mode {mode!r}; valid: {", ".join(MODES)}')


def matrices(mode: str, map_hw: tuple[int, int], image_hw: tuple[int, int],
             mask_hw: tuple[int, int], rf: tuple[float, float] | None):
  """(Wy (sh, h), Wx (sw, w)) for one layer and one image/mask size."""
  if mode == 'center':
    return (torch_bilinear_matrix(mask_hw[0], map_hw[0]), torch_bilinear_matrix(mask_hw[1], map_hw[1]))
  wy = interpolation_matrix(mask_hw[0], map_hw[0], *grid(mode, map_hw[0], image_hw[0], mask_hw[0], rf))
  wx = interpolation_matrix(mask_hw[1], map_hw[1], *grid(mode, map_hw[1], image_hw[1], mask_hw[1], rf))
  return wy, wx


def two_taps(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """A bilinear matrix (S, H) as its two taps per output row: (lo, hi, w_lo, w_hi).

  Every row of `interpolation_matrix` / `torch_bilinear_matrix` reads at most two neighbouring
  sources, so applying it as two gathers and a weighted sum does the same arithmetic as the
  dense product without the H - 2 exact zeros per row: 7x less work for 14 -> 112 (conv5),
  ~100x for 224 -> 112 (conv1), where the dense product costs as much as a conv layer.
  """
  w = np.asarray(w, np.float32)
  nz = w != 0
  if (nz.sum(axis=1) > 2).any() or not nz.any(axis=1).all():
    raise ValueError('not a bilinear matrix: every row needs one or two non-zero weights')
  lo = np.argmax(nz, axis=1)
  hi = w.shape[1] - 1 - np.argmax(nz[:, ::-1], axis=1)
  rows = np.arange(w.shape[0])
  w_hi = np.where(hi > lo, w[rows, hi], 0).astype(np.float32)
  return lo.astype(np.int32), hi.astype(np.int32), w[rows, lo], w_hi


def upsample_units(acts: jax.Array, wy: jax.Array, wx: jax.Array) -> jax.Array:
  """(B, h, w, K) -> unit-major (B, K, sh, sw) by the separable bilinear matrices. Pure, jit-able.

  Unit-major order keeps both products plain matmuls over contiguous axes (no large transposes
  on XLA:CPU) and hands `iou.count_batch` its (K, pixels) masks directly.
  """
  hp = jax.lax.Precision.HIGHEST   # exact-f32 products: a pixel next to T_k must not flip
  x = jnp.einsum('bhwk,sh->bkws', acts, wy, precision=hp)        # small: (B, K, w, sh)
  x = jnp.swapaxes(x, 2, 3)                                        # (B, K, sh, w)
  return jnp.einsum('bksw,tw->bkst', x, wx, precision=hp)


def upsample(acts: jax.Array, wy: jax.Array, wx: jax.Array) -> jax.Array:
  """(B, h, w, K) -> (B, sh, sw, K)."""
  return jnp.moveaxis(upsample_units(acts, wy, wx), 1, 3)


def threshold_masks(acts: jax.Array, thresholds: jax.Array, wy: jax.Array,
                    wx: jax.Array) -> jax.Array:
  """(B, h, w, K) maps, (K,) or (B, K) T_k -> bool unit-major (B, K, sh, sw) masks M_k. Pure,
  jit-able. wy, wx: the dense bilinear matrices, or their `two_taps` (the pipeline's fast form).

  Why upsample(a - T) > 0 and not upsample(a) > T: the definition turns a pixel on only if its
  interpolated value is > T_k AND some source value it reads (non-zero weight) is > T_k. In
  float32, interpolating a plateau whose values all equal T_k (ReLU6's cap at 6, duplicated
  max-pool outputs) with weights that are not powers of two can round a hair ABOVE T_k, and the
  plateau becomes spurious mask pixels (about 1,300 per constant map on AlexNet conv5 at 227
  pixels, `rf` mode). Subtracting first makes such a plateau exactly 0 (a - T is exact when
  a = T), and a sum of non-positive values with non-negative weights never rounds above 0: a pixel
  whose sources are all <= T_k is off, exactly. Where sources lie on both sides of T_k the sign of
  the sum is the float32 reading of "interpolated value > T_k", computed on differences that are
  exact whenever a is within a factor 2 of T_k.
  One limit: XLA flushes subnormal floats to zero, so an excess over T_k (or a weighted excess)
  below 2^-126 ~ 1.2e-38 reads as 0 and leaves the pixel off; it takes activations near 1e-30 to
  matter, and `upsample(a) > T` had the same limit.
  """
  thresholds = thresholds.astype(acts.dtype)
  if thresholds.ndim == 2:                              # (B, K): each image its own units' T_k
    thresholds = thresholds[:, None, None, :]
  centred = acts - thresholds                           # broadcast over the last (unit) axis
  if isinstance(wy, tuple):                             # `two_taps` form: gathers, same sums
    return _apply_taps(centred, wy, wx) > 0
  return upsample_units(centred, wy, wx) > 0


def _apply_taps(x: jax.Array, ty, tx) -> jax.Array:
  """(B, h, w, K) -> unit-major (B, K, sh, sw) with each axis's (lo, hi, w_lo, w_hi) taps."""
  lo, hi, w_lo, w_hi = ty
  x = x[:, lo] * w_lo[None, :, None, None] + x[:, hi] * w_hi[None, :, None, None]   # (B, sh, w, K)
  lo, hi, w_lo, w_hi = tx
  x = x[:, :, lo] * w_lo[None, None, :, None] + x[:, :, hi] * w_hi[None, None, :, None]
  return jnp.moveaxis(x, 3, 1)
