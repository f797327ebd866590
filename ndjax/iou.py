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


def count_batch(acts, thresholds, wy, wx, layers, image_labels, label_cat, valid, *,
                num_local: int, num_cats: int, chunk: int = 4, mesh=None):
  """Counts for one batch (see `_count`); with a mesh, data-parallel over its 'batch' axis.

  Each device counts its slice of the batch and the integer counts are summed across devices
  with a psum, on the devices (exact: integer sums).
  """
  if mesh is None:
    return _count_jit(acts, thresholds, wy, wx, layers, image_labels, label_cat, valid,
                      num_local=num_local, num_cats=num_cats, chunk=chunk)
  return _sharded_count(mesh, num_local, num_cats, chunk)(
      acts, thresholds, wy, wx, layers, image_labels, label_cat, valid)


@functools.lru_cache(maxsize=None)
def _sharded_count(mesh, num_local, num_cats, chunk):
  from jax.sharding import PartitionSpec as P
  batch, rep = P('batch'), P()

  def local(*args):
    counts = _count(*args, num_local=num_local, num_cats=num_cats, chunk=chunk)
    return jax.tree.map(lambda x: jax.lax.psum(x, 'batch'), counts)

  return jax.jit(jax.shard_map(local, mesh=mesh,
                               in_specs=(batch, rep, rep, rep, batch, batch, rep, batch),
                               out_specs=rep, check_vma=False))


def _count(acts, thresholds, wy, wx, layers, image_labels, label_cat, valid, *,
                num_local: int, num_cats: int, chunk: int = 4):
  """Counts for one batch.

  acts: (B, h, w, K) f32; thresholds: (K,); wy: (sh, h); wx: (sw, w);
  layers: (B, L, sh, sw) int32 local label ids, -1 = none; image_labels: (B, I) int32 local, -1;
  label_cat: (num_local,) int32 primary-category index of each local label (-1 for padding);
  valid: (B,) bool, False for batch padding. B must be a multiple of `chunk`.
  Returns dict of int32 arrays: inter (K, Cp), label_pixels (Cp,), act_paper (K, C),
  act_lite (K, C), act_pixels (K,).
  """
  b, _, _, k = acts.shape
  sh, sw = wy.shape[0], wx.shape[0]
  x_pixels = sh * sw
  cat_onehot = jax.nn.one_hot(label_cat, num_cats, dtype=jnp.bool_)             # (Cp, C)
  hp = jax.lax.Precision.HIGHEST    # products with pixel counts (> 256): full f32, never bf16

  def per_chunk(carry, xs):
    acts_c, layers_c, img_c, valid_c = xs
    # unit-major masks (c, K, X): every product below is a plain or batched matmul
    mask = upsample_lib.threshold_masks(acts_c, thresholds, wy, wx)              # (c, K, sh, sw)
    mask = mask & valid_c[:, None, None, None]
    mask = mask.reshape(chunk, k, x_pixels)
    mask_bf = mask.astype(jnp.bfloat16)
    # L_c(x) as a SET: a pixel carrying c in several layers (part layers), or c also as an
    # image-level label, or an image-level label listed twice, counts once, so IoU <= 1
    pix_sets = jax.nn.one_hot(layers_c.reshape(chunk, -1, x_pixels), num_local,
                              dtype=jnp.bool_).any(axis=1) & valid_c[:, None, None]  # (c, X, Cp)
    img_sets = jax.nn.one_hot(img_c, num_local, dtype=jnp.bool_).any(axis=1)
    img_sets = img_sets & valid_c[:, None]                                       # (c, Cp)
    labelled = pix_sets | img_sets[:, None, :]            # image-level: every pixel of the mask
    act_per_image = mask.sum(axis=2, dtype=jnp.int32)                             # (c, K)
    act_f = act_per_image.astype(jnp.float32)

    inter = _exact_01_matmul('ckx,cxl->ckl', mask_bf, labelled).astype(jnp.int32).sum(axis=0)
    label_pixels = labelled.sum(axis=(0, 1), dtype=jnp.int32)

    # categories present per pixel / per image, by primary category of the labels there
    pix_cat = _exact_01_matmul('cxl,lC->cxC', pix_sets, cat_onehot) > 0
    img_cat = _exact_01_matmul('cl,lC->cC', img_sets, cat_onehot) > 0            # (c, C)
    relevant = pix_cat.any(axis=1) | img_cat                                     # (c, C)
    touches = _exact_01_matmul('ckx,cxC->ckC', mask_bf, pix_cat) > 0            # (c, K, C)
    touches = touches | img_cat[:, None, :]
    act_paper = jnp.einsum('ck,cC->kC', act_f, relevant.astype(jnp.float32), precision=hp)
    act_lite = jnp.einsum('ck,ckC->kC', act_f, touches.astype(jnp.float32), precision=hp)
    out = dict(inter=inter, label_pixels=label_pixels,
               act_paper=act_paper.astype(jnp.int32), act_lite=act_lite.astype(jnp.int32),
               act_pixels=act_per_image.sum(0))
    return jax.tree.map(jnp.add, carry, out), None

  zeros = dict(inter=jnp.zeros((k, num_local), jnp.int32),
               label_pixels=jnp.zeros((num_local,), jnp.int32),
               act_paper=jnp.zeros((k, num_cats), jnp.int32),
               act_lite=jnp.zeros((k, num_cats), jnp.int32),
               act_pixels=jnp.zeros((k,), jnp.int32))
  split = lambda a: a.reshape(b // chunk, chunk, *a.shape[1:])
  totals, _ = jax.lax.scan(per_chunk, zeros,
                           (split(acts), split(layers), split(image_labels), split(valid)))
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


_count_jit = jax.jit(_count, static_argnames=('num_local', 'num_cats', 'chunk'))


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
