"""Exact intersection / union counts of thresholded unit masks against labels (paper Eq. 1).

Per batch, on the device: upsample each unit's map to mask resolution and threshold it with a
strict `>` T_k (`upsample.threshold_masks`: a plateau equal to T_k stays off), and count, for the
labels PRESENT in the batch (renumbered 0..Cp-1 by the caller),
  inter[k, c]      = sum_x |M_k(x) & L_c(x)|       (L_c(x): the SET of pixels carrying c in any
                                                   mask layer; image-level = all pixels)
  label_pixels[c]  = sum_x |L_c(x)|
  act_paper[k, C]  = sum_{x relevant to C} |M_k(x)|  (x carries a label of primary category C)
  act_lite[k, C]   = sum_{x: M_k(x) touches C, or x has an image-level label of C} |M_k(x)|
The intersection is a matmul of 0/1 masks against 0/1 label sets: bf16 inputs with f32
accumulation are exact (integers below 2^24 per image; deliberately not Precision.HIGHEST, see
`_exact_01_matmul`), and the device does the work the reference implementations did in per-image
Python loops. Images are processed in chunks inside the jit to bound the size of the (chunk,
pixels, units) mask.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ndjax import upsample as upsample_lib


def label_sets(layers, image_labels, label_cat, valid, *, num_local: int, num_cats: int) -> dict:
  """The label side of one batch, computed once and shared by every layer and view (jit-able).

  layers: (B, L, sh, sw) int32 local label ids, -1 = none; image_labels: (B, I) int32 local, -1;
  label_cat: (num_local,) int32 primary-category index of each local label (-1 for padding);
  valid: (B,) bool. Returns
    labelled (B, X, Cp) bool: L_c(x) as a SET (a pixel carrying c in several part layers, or c
      also as an image-level label, or an image-level label listed twice, counts once: IoU <= 1);
      image-level labels cover every pixel;
    pix_cat (B, X, C) bool: primary categories of the pixel-level labels at each pixel;
    img_cat (B, C) bool: ... of the image-level labels; relevant (B, C): either, anywhere;
    label_pixels (Cp,) int32: |L_c| summed over the batch.
  """
  b = layers.shape[0]
  x_pixels = layers.shape[2] * layers.shape[3]
  cat_onehot = jax.nn.one_hot(label_cat, num_cats, dtype=jnp.bool_)             # (Cp, C)
  pix_sets = jax.nn.one_hot(layers.reshape(b, -1, x_pixels), num_local,
                            dtype=jnp.bool_).any(axis=1) & valid[:, None, None]  # (B, X, Cp)
  img_sets = jax.nn.one_hot(image_labels, num_local, dtype=jnp.bool_).any(axis=1)
  img_sets = img_sets & valid[:, None]                                           # (B, Cp)
  labelled = pix_sets | img_sets[:, None, :]
  pix_cat = _exact_01_matmul('bxl,lC->bxC', pix_sets, cat_onehot) > 0
  img_cat = _exact_01_matmul('bl,lC->bC', img_sets, cat_onehot) > 0
  return dict(labelled=labelled, pix_cat=pix_cat, img_cat=img_cat,
              relevant=pix_cat.any(axis=1) | img_cat,
              label_pixels=labelled.sum(axis=(0, 1), dtype=jnp.int32))


label_sets_jit = jax.jit(label_sets, static_argnames=('num_local', 'num_cats'))


def active_units(acts, thresholds, *, min_width: int = 8) -> np.ndarray:
  """(B, Kc) int32: per image, the units whose map exceeds T_k somewhere, padded with others to
  a power-of-two width Kc shared by the batch (few compiled shapes).

  Why this is exact: a unit whose every value is <= T_k has an EMPTY mask on that image
  (`upsample.threshold_masks` never turns a pixel on from sources that are all <= T_k), so it
  adds nothing to any count; counting only the active units skips most of the work (on VGG16
  conv5_3 at tau = 0.005 about 13 % of the units are active on an image, 30 % at most).
  Padding units are counted like the others: whatever they add is theirs.
  """
  k = acts.shape[-1]
  excess = np.asarray(jnp.max(jnp.asarray(acts), axis=(1, 2))) - np.asarray(thresholds)
  need = int((excess > 0).sum(axis=1).max(initial=0))
  width = min(k, max(min_width, 1 << max(need - 1, 0).bit_length()))
  if width == k:
    return np.broadcast_to(np.arange(k, dtype=np.int32), excess.shape)
  order = np.argsort(-excess, axis=1, kind='stable')[:, :width]
  return np.sort(order, axis=1).astype(np.int32)


def count_batch(acts, thresholds, wy, wx, sets: dict, valid, *, chunk: int = 4, mesh=None,
                units=None):
  """Counts for one batch (see `_count`); with a mesh, data-parallel over its 'batch' axis.

  `sets`: the batch's `label_sets`; `units` (B, Kc): the units to count per image
  (`active_units`); default all. Each device counts its slice of the batch and the integer
  counts are summed across devices with a psum, on the devices (exact: integer sums).
  """
  if units is None:
    units = np.broadcast_to(np.arange(acts.shape[-1], dtype=np.int32), (acts.shape[0], acts.shape[-1]))
  units = jnp.asarray(units, jnp.int32)
  per_image = {k: v for k, v in sets.items() if k != 'label_pixels'}
  if mesh is None:
    out = _count_jit(acts, thresholds, wy, wx, per_image, valid, units, chunk=chunk)
  else:
    out = _sharded_count(mesh, chunk)(acts, thresholds, wy, wx, per_image, valid, units)
  return dict(out, label_pixels=sets['label_pixels'])


def count_labels(acts, thresholds, wy, wx, layers, image_labels, label_cat, valid, *,
                 num_local: int, num_cats: int, chunk: int = 4, mesh=None, units=None):
  """`label_sets` + `count_batch` in one call (for callers that count one layer once)."""
  sets = label_sets_jit(jnp.asarray(layers), jnp.asarray(image_labels), jnp.asarray(label_cat),
                        jnp.asarray(valid), num_local=num_local, num_cats=num_cats)
  return count_batch(acts, thresholds, wy, wx, sets, valid, chunk=chunk, mesh=mesh, units=units)


@functools.lru_cache(maxsize=None)
def _sharded_count(mesh, chunk):
  from jax.sharding import PartitionSpec as P
  batch, rep = P('batch'), P()

  def local(*args):
    counts = _count(*args, chunk=chunk)
    return jax.tree.map(lambda x: jax.lax.psum(x, 'batch'), counts)

  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(batch, rep, rep, rep, batch, batch, batch),
                               out_specs=rep, check_vma=False))


def _count(acts, thresholds, wy, wx, sets, valid, units, *, chunk: int = 4):
  """Unit-side counts for one batch.

  acts: (B, h, w, K) f32; thresholds: (K,); wy, wx: (sh, h), (sw, w) bilinear matrices or their
  `upsample.two_taps`; sets: `label_sets` of the
  batch without label_pixels; valid: (B,) bool, False for batch padding; units: (B, Kc) int32
  distinct units per image to count (the others must have empty masks there). B must be a
  multiple of `chunk`. Returns dict of int32 arrays: inter (K, Cp), act_paper (K, C),
  act_lite (K, C), act_pixels (K,).
  """
  b, _, _, k = acts.shape
  kc = units.shape[1]
  num_local, num_cats = sets['labelled'].shape[2], sets['img_cat'].shape[1]
  x_pixels = sets['labelled'].shape[1]

  def per_chunk(carry, xs):
    acts_c, sets_c, valid_c, units_c = xs
    # only the units that can light up on each image: (c, h, w, Kc), their own T_k
    acts_c = jnp.take_along_axis(acts_c, units_c[:, None, None, :], axis=3)
    # unit-major masks (c, Kc, X): every product below is a plain or batched matmul
    mask = upsample_lib.threshold_masks(acts_c, thresholds[units_c], wy, wx)     # (c, Kc, sh, sw)
    mask = mask & valid_c[:, None, None, None]
    mask = mask.reshape(chunk, kc, x_pixels)
    mask_bf = mask.astype(jnp.bfloat16)
    act = mask.sum(axis=2, dtype=jnp.int32)                                      # (c, Kc)
    inter = _exact_01_matmul('ckx,cxl->ckl', mask_bf, sets_c['labelled'])       # (c, Kc, Cp)
    touches = _exact_01_matmul('ckx,cxC->ckC', mask_bf, sets_c['pix_cat']) > 0  # (c, Kc, C)
    touches = touches | sets_c['img_cat'][:, None, :]
    # back from each image's Kc units to all K (integer adds; distinct units per image)
    scatter = lambda shape, v: jnp.zeros(shape, jnp.int32).at[units_c].add(v.astype(jnp.int32))
    out = dict(inter=scatter((k, num_local), inter),
               act_paper=scatter((k, num_cats), act[:, :, None] * sets_c['relevant'][:, None, :]),
               act_lite=scatter((k, num_cats), act[:, :, None] * touches),
               act_pixels=scatter((k,), act))
    return jax.tree.map(jnp.add, carry, out), None

  zeros = dict(inter=jnp.zeros((k, num_local), jnp.int32),
               act_paper=jnp.zeros((k, num_cats), jnp.int32),
               act_lite=jnp.zeros((k, num_cats), jnp.int32),
               act_pixels=jnp.zeros((k,), jnp.int32))
  split = lambda a: a.reshape(b // chunk, chunk, *a.shape[1:])
  totals, _ = jax.lax.scan(per_chunk, zeros, (split(acts), jax.tree.map(split, sets),
                                              split(valid), split(units)))
  return totals


def _exact_01_matmul(spec: str, a, b):
  """einsum of 0/1 operands as bf16 inputs with f32 accumulation: exact, and the fast path.

  Why not precision=HIGHEST here: 0 and 1 are exact in bf16 and every sum is an integer below
  2^24 (a count of one image's pixels, or of the labels at one pixel), so bf16 x bf16 -> f32
  loses nothing on any device (TPU MXU, GPU tensor cores, CPU), while HIGHEST would run several
  f32 passes for nothing. Only operands that are 0/1 may come here.
  """
  return jnp.einsum(spec, a.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
                    preferred_element_type=jnp.float32)


_count_jit = jax.jit(_count, static_argnames=('chunk',))


@dataclasses.dataclass
class Counts:
  """Dataset-wide counts for one layer, in global label numbers (int64 on the host)."""
  inter: np.ndarray          # (K, N)
  label_pixels: np.ndarray   # (N,)
  act_paper: np.ndarray      # (K, C)
  act_lite: np.ndarray       # (K, C)
  act_pixels: np.ndarray     # (K,)

  @classmethod
  def zeros(cls, units: int, num_labels: int, num_cats: int) -> 'Counts':
    return cls(np.zeros((units, num_labels), np.int64), np.zeros(num_labels, np.int64),
               np.zeros((units, num_cats), np.int64), np.zeros((units, num_cats), np.int64),
               np.zeros(units, np.int64))

  def add(self, batch: dict, global_ids: np.ndarray) -> None:
    """Scatter a batch's local-label counts into the global arrays."""
    n = len(global_ids)
    self.inter[:, global_ids] += np.asarray(batch['inter'])[:, :n]
    self.label_pixels[global_ids] += np.asarray(batch['label_pixels'])[:n]
    self.act_paper += np.asarray(batch['act_paper'])
    self.act_lite += np.asarray(batch['act_lite'])
    self.act_pixels += np.asarray(batch['act_pixels'])

  def as_dict(self) -> dict[str, np.ndarray]:
    return dataclasses.asdict(self)


def iou(counts: Counts, primary: np.ndarray, denominator: str) -> tuple[np.ndarray, np.ndarray]:
  """(iou (K, N) float64, activation-in-denominator (K, N) int64) by each label's primary category.

  Labels with no primary category (number 0, unused numbers) get IoU 0.
  """
  act = {'paper': counts.act_paper, 'lite': counts.act_lite}.get(denominator)
  if act is None:
    raise ValueError(f'unknown denominator {denominator!r}; valid: paper, lite')
  has_cat = primary >= 0
  act_per_label = np.where(has_cat[None, :], act[:, np.maximum(primary, 0)], 0)
  union = act_per_label + counts.label_pixels[None, :] - counts.inter
  with np.errstate(invalid='ignore', divide='ignore'):
    scores = np.where(union > 0, counts.inter / np.maximum(union, 1), 0.0)
  return np.where(has_cat[None, :], scores, 0.0), act_per_label
