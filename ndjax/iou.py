"""Exact intersection / union counts of thresholded unit masks against labels (paper Eq. 1).

Per batch, on the device: upsample each unit's map to mask resolution and threshold it with a
strict `>` T_k (`upsample.threshold_masks`: a plateau equal to T_k stays off), and count, for the
labels PRESENT in the batch (numbered 0..n-1 by `labels.stack`),
  inter[k, c]      = sum_x |M_k(x) & L_c(x)|       (L_c(x): the SET of pixels carrying c in any
                                                   mask layer; image-level = all pixels)
  label_pixels[c]  = sum_x |L_c(x)|                 (on the host: it needs no mask)
  act_paper[k, C]  = sum_{x relevant to C} |M_k(x)|  (x carries a label of primary category C)
  act_lite[k, C]   = sum_{x: M_k(x) touches C, or x has an image-level label of C} |M_k(x)|
All of it is one matmul per image of the 0/1 masks of its active units (`active_units`) against
the image's 0/1 label matrix (`labels.ImageLabels`): bf16 inputs with f32 accumulation are exact
(integers below 2^24 per image; deliberately not Precision.HIGHEST, see `_exact_01_matmul`), and
the device does the work the reference implementations did in per-image Python loops. Images
are processed in chunks inside the jit to bound the size of the (chunk, units, pixels) mask.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ndjax import labels as labels_lib
from ndjax import tiles as tiles_lib
from ndjax import upsample as upsample_lib


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


def count_batch(acts, thresholds, wy, wx, side: labels_lib.LabelSide, valid, *, chunk: int = 4,
                mesh=None, units=None, tiles: tiles_lib.Tiles | None = None):
  """Counts for one batch (see `_count`); with a mesh, data-parallel over its 'batch' axis.

  `side`: the batch's `labels.LabelSide`; `units` (B, Kc): the units to count per image
  (`active_units`); default all. With `tiles` (and no mesh), only the hot tiles are counted
  (`_count_tiles`; `units` is not needed there). With a mesh, each device counts its slice of
  the batch and the integer counts are summed across devices with a psum, on the devices
  (exact: integer sums). Returns device arrays inter (K, num_local), act_paper, act_lite (K, C),
  act_pixels (K,).
  """
  if tiles is not None and mesh is None:
    image, tile, rows = tiles_lib.hot_blocks(acts, thresholds, valid, tiles)
    return _count_tiles_jit(acts, thresholds, tiles.device, side.device(), image, tile, rows,
                            num_local=side.num_local)
  if units is None:
    units = np.broadcast_to(np.arange(acts.shape[-1], dtype=np.int32), (acts.shape[0], acts.shape[-1]))
  units = jnp.asarray(units, jnp.int32)
  per_image = side.device()
  if mesh is None:
    return _count_jit(acts, thresholds, wy, wx, per_image, valid, units, chunk=chunk,
                      num_local=side.num_local)
  return _sharded_count(mesh, chunk, side.num_local)(acts, thresholds, wy, wx, per_image, valid,
                                                     units)


def count_labels(acts, thresholds, wy, wx, layers, image_level, primary, valid, *, chunk: int = 4,
                 mesh=None, units=None, tiles: tiles_lib.Tiles | None = None) -> dict:
  """Counts of one batch from its label numbers (for callers that count one layer once).

  layers: (B, L, sh, sw) label numbers (0 = none); image_level: (B, I); primary: (N,) category
  of each number (-1 = none); valid: (B,) bool. Returns host int64 arrays indexed by label
  number: inter (K, N), label_pixels (N,), act_paper, act_lite (K, C), act_pixels (K,).
  """
  layers, image_level, primary = np.asarray(layers), np.asarray(image_level), np.asarray(primary)
  num_cats = int(primary.max(initial=-1)) + 1
  valid = np.asarray(valid, bool)
  side = labels_lib.stack([labels_lib.image_labels(layers[i], image_level[i], primary, num_cats)
                           if valid[i] else None for i in range(len(layers))],
                          layers.shape[2] * layers.shape[3], num_cats)
  out = count_batch(acts, thresholds, wy, wx, side, jnp.asarray(valid), chunk=chunk, mesh=mesh,
                    units=units, tiles=tiles)
  counts = Counts.zeros(acts.shape[-1], len(primary), num_cats)
  counts.add(out, side)
  return counts.as_dict()


@functools.lru_cache(maxsize=None)
def _sharded_count(mesh, chunk, num_local):
  from jax.sharding import PartitionSpec as P
  batch, rep = P('batch'), P()

  def local(*args):
    counts = _count(*args, chunk=chunk, num_local=num_local)
    return jax.tree.map(lambda x: jax.lax.psum(x, 'batch'), counts)

  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(batch, rep, rep, rep, batch, batch, batch),
                               out_specs=rep, check_vma=False))


def _count(acts, thresholds, wy, wx, side, valid, units, *, chunk: int = 4, num_local: int):
  """Unit-side counts for one batch.

  acts: (B, h, w, K) f32; thresholds: (K,); wy, wx: (sh, h), (sw, w) bilinear matrices or their
  `upsample.two_taps`; side: `labels.LabelSide.device()`; valid: (B,) bool, False for batch
  padding; units: (B, Kc) int32 distinct units per image to count (the others must have empty
  masks there). B must be a multiple of `chunk`. Returns dict of int32 arrays:
  inter (K, num_local), act_paper (K, C), act_lite (K, C), act_pixels (K,).
  """
  b, _, _, k = acts.shape
  kc = units.shape[1]
  x_pixels = side['side'].shape[1]

  def per_chunk(carry, xs):
    acts_c, side_c, valid_c, units_c = xs
    # only the units that can light up on each image: (c, h, w, Kc), their own T_k
    acts_c = jnp.take_along_axis(acts_c, units_c[:, None, None, :], axis=3)
    mask = upsample_lib.threshold_masks(acts_c, thresholds[units_c], wy, wx)     # (c, Kc, sh, sw)
    mask = (mask & valid_c[:, None, None, None]).reshape(chunk, kc, x_pixels)
    # one product gives everything (`labels` module docstring). The mask's area comes out of it
    # too: a separate bool reduction over the mask ran ~10x slower inside this loop on XLA:CPU.
    prod = _exact_01_matmul('ckx,cxn->ckn', mask, side_c['side'])
    return jax.tree.map(jnp.add, carry, _finish(prod, units_c, side_c, k, num_local)), None

  split = lambda a: a.reshape(b // chunk, chunk, *a.shape[1:])
  totals, _ = jax.lax.scan(per_chunk, _zeros(k, num_local, side),
                           (split(acts), jax.tree.map(split, side), split(valid), split(units)))
  return totals


def _zeros(k: int, num_local: int, side) -> dict:
  num_cats = side['img_cat'].shape[1]
  return dict(inter=jnp.zeros((k, num_local), jnp.int32),
              act_paper=jnp.zeros((k, num_cats), jnp.int32),
              act_lite=jnp.zeros((k, num_cats), jnp.int32),
              act_pixels=jnp.zeros((k,), jnp.int32))


def _finish(prod, units, side, k: int, num_local: int) -> dict:
  """Counts from the per-image products (c, Kc, Ci + C + 1) of masks and label sides."""
  ci, num_cats = side['ids'].shape[1], side['img_cat'].shape[1]
  prod = prod.astype(jnp.int32)
  inter, cats, act = prod[..., :ci], prod[..., ci:ci + num_cats], prod[..., -1]
  touches = (cats > 0) | side['img_cat'][:, None, :]                              # (c, Kc, C)
  # back from each image's Kc units and Ci labels to all K units and the batch's labels
  # (integer adds; distinct units and labels per image; padding columns fall off the end)
  inter = jnp.zeros((k, num_local), jnp.int32).at[
      units[:, :, None], side['ids'][:, None, :]].add(inter, mode='drop')
  scatter = lambda shape, v: jnp.zeros(shape, jnp.int32).at[units].add(v)
  return dict(inter=inter,
              act_paper=scatter((k, num_cats), act[:, :, None] * side['relevant'][:, None, :]),
              act_lite=scatter((k, num_cats), act[:, :, None] * touches),
              act_pixels=scatter((k,), act))


def _count_tiles(acts, thresholds, geometry, side, image, tile, units, *, num_local: int):
  """`_count` on the hot tiles only (`tiles` module docstring): the same counts, the same bits.

  geometry: `tiles.Tiles.device()`; image, tile (N,), units (N, ROWS): `tiles.hot_blocks`, N a
  multiple of tiles.BLOCKS. Each block's ROWS unit masks on one tile are computed from the
  tile's 2 x 2 sources with `upsample._apply_taps`'s arithmetic (y first, then x, on a - T_k),
  and multiplied by the tile's label rows, gathered once per block.
  """
  b, _, _, k = acts.shape
  centred = acts - thresholds.astype(acts.dtype)
  y_lo, y_hi, _, y_wl, y_wh = geometry['y']
  x_lo, x_hi, _, x_wl, x_wh = geometry['x']
  jx = x_lo.shape[0]
  rows = jnp.concatenate([side['side'], jnp.zeros_like(side['side'][:, :1])], axis=1)
  rows = rows.astype(jnp.bfloat16)                       # (B, X + 1, n): X = padding pixel

  def step(prod, xs):
    image, tile, units = xs
    live, unit, img = units >= 0, jnp.maximum(units, 0), image[:, None]
    ty, tx = tile // jx, tile % jx
    src = lambda ys, xs: centred[img, ys[ty][:, None], xs[tx][:, None], unit]    # (blocks, ROWS)
    wyl, wyh = y_wl[ty][:, None, :], y_wh[ty][:, None, :]                        # (blocks, 1, Ty)
    lo = src(y_lo, x_lo)[..., None] * wyl + src(y_hi, x_lo)[..., None] * wyh     # (blocks, ROWS, Ty)
    hi = src(y_lo, x_hi)[..., None] * wyl + src(y_hi, x_hi)[..., None] * wyh
    value = (lo[..., None] * x_wl[tx][:, None, None, :] + hi[..., None] * x_wh[tx][:, None, None, :])
    mask = ((value > 0) & live[..., None, None]).reshape(*units.shape, -1)       # (blocks, ROWS, T)
    labels = rows[image[:, None], geometry['pix'][tile]]                          # (blocks, T, n)
    part = _exact_01_matmul('brt,btn->brn', mask, labels)
    dest = jnp.where(live, img * k + unit, b * k).ravel()                         # empty rows: dump
    return prod.at[dest].add(part.reshape(dest.shape[0], -1)), None

  split = lambda a: a.reshape(-1, tiles_lib.BLOCKS, *a.shape[1:])
  prod, _ = jax.lax.scan(step, jnp.zeros((b * k + 1, rows.shape[2]), jnp.float32),
                         (split(image), split(tile), split(units)))
  every = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k))
  return _finish(prod[:-1].reshape(b, k, -1), every, side, k, num_local)


_count_tiles_jit = jax.jit(_count_tiles, static_argnames=('num_local',))


def _exact_01_matmul(spec: str, a, b):
  """einsum of 0/1 operands as bf16 inputs with f32 accumulation: exact, and the fast path.

  Why not precision=HIGHEST here: 0 and 1 are exact in bf16 and every sum is an integer below
  2^24 (a count of one image's pixels, or of the labels at one pixel), so bf16 x bf16 -> f32
  loses nothing on any device (TPU MXU, GPU tensor cores, CPU), while HIGHEST would run several
  f32 passes for nothing. Only operands that are 0/1 may come here.
  """
  return jnp.einsum(spec, a.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
                    preferred_element_type=jnp.float32)


_count_jit = jax.jit(_count, static_argnames=('chunk', 'num_local'))

DENOMINATORS = ('paper', 'lite', 'dataset')


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

  def add(self, batch: dict, side: labels_lib.LabelSide) -> None:
    """Scatter a batch's counts (`count_batch`) into the global arrays."""
    n = len(side.global_ids)
    self.inter[:, side.global_ids] += np.asarray(batch['inter'])[:, :n]
    self.label_pixels[side.global_ids] += side.label_pixels
    self.act_paper += np.asarray(batch['act_paper'])
    self.act_lite += np.asarray(batch['act_lite'])
    self.act_pixels += np.asarray(batch['act_pixels'])

  def as_dict(self) -> dict[str, np.ndarray]:
    return dataclasses.asdict(self)


def iou(counts: Counts, primary: np.ndarray, denominator: str) -> tuple[np.ndarray, np.ndarray]:
  """(iou (K, N) float64, activation-in-denominator (K, N) int64) by each label's primary category.

  Labels with no primary category (number 0, unused numbers) get IoU 0. Denominators:
  'paper' and 'lite' (see the module docstring) restrict the unit's side of the union to the
  images relevant to the label's category; 'dataset' does not: union = every activated pixel of
  the unit over the whole probe set + |L_c| - inter, the dataset-wide IoU of compositional
  explanations (Mu & Andreas 2020, whose length-1 formulas are exactly these IoUs).
  """
  has_cat = primary >= 0
  if denominator == 'dataset':      # every image's activated pixels, whatever its labels
    act_per_label = np.where(has_cat[None, :], counts.act_pixels[:, None], 0)
  else:
    act = {'paper': counts.act_paper, 'lite': counts.act_lite}.get(denominator)
    if act is None:
      raise ValueError(f'unknown denominator {denominator!r}; valid: {", ".join(DENOMINATORS)}')
    act_per_label = np.where(has_cat[None, :], act[:, np.maximum(primary, 0)], 0)
  union = act_per_label + counts.label_pixels[None, :] - counts.inter
  with np.errstate(invalid='ignore', divide='ignore'):
    scores = np.where(union > 0, counts.inter / np.maximum(union, 1), 0.0)
  return np.where(has_cat[None, :], scores, 0.0), act_per_label
