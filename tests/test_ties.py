"""Ties at T_k survive float32 upsampling: a plateau equal to T_k is never part of a mask.

Real geometry (AlexNet conv5, MobileNetV2 features on 227-pixel images with 113-pixel masks, the
paper's `rf` mode): bilinear weights there are not dyadic, so the float32 sum of a region whose
values all equal T can land a hair above T. The definition (dissection_semantics.md,
"Upsampling") says such a pixel is off; `by_hand.mask_by_hand` reads it literally in float64.
"""
import functools
import types

import jax.numpy as jnp
import numpy as np
import pytest

from ndjax import iou, models, report, tiles, topk, upsample
from tests.by_hand import centre_grid, mask_by_hand

IMAGE, MASK = (227, 227), (113, 113)
TAPS = [('alexnet', 'conv5'), ('mobilenet_v2', 'features')]
# 6 = ReLU6's cap (MobileNetV2's T_k on saturated units); the others are just inexact in binary
THRESHOLDS = np.array([6.0, 0.1, 1 / 3, 2.7182817, 123.456], np.float32)


@functools.lru_cache(maxsize=None)
def _geometry(arch: str, layer: str):
  """(map (h, w), rf (origin, spacing)) of the tap on a 227 x 227 image, from the real model."""
  model = models.build(arch)
  out = model(np.zeros((1, *IMAGE, 3), np.uint8), (layer,))[layer]
  return tuple(out.shape[1:3]), model.rf_geometry(layer)


def _matrices(mode, hw, rf):
  return tuple(jnp.asarray(m) for m in upsample.matrices(mode, hw, IMAGE, MASK, rf))


def _old_masks(acts, thresholds, wy, wx):
  """The code before the fix: upsample the map, then compare with T."""
  up = upsample.upsample_units(jnp.asarray(acts), wy, wx)
  return np.asarray(up > jnp.asarray(thresholds)[None, :, None, None])


def _relu6_map(rng, hw, units):
  """Smooth random fields through ReLU6: large plateaus at exactly 6 (and at 0)."""
  coarse = rng.normal(6.0, 4.0, (units, 3, 3))
  ys, xs = np.linspace(0, 2, hw[0]), np.linspace(0, 2, hw[1])
  field = np.stack([[[_bilerp(c, y, x) for x in xs] for y in ys] for c in coarse], axis=-1)
  return np.clip(field, 0.0, 6.0).astype(np.float32)[None]          # (1, h, w, units)


def _bilerp(c, y, x):
  i, j = min(int(y), 1), min(int(x), 1)
  fy, fx = y - i, x - j
  return ((1 - fy) * ((1 - fx) * c[i, j] + fx * c[i, j + 1]) +
          fy * ((1 - fx) * c[i + 1, j] + fx * c[i + 1, j + 1]))


@pytest.mark.parametrize('arch,layer', TAPS)
@pytest.mark.parametrize('mode', ['rf', 'center'])
def test_constant_map_at_threshold_is_empty(arch, layer, mode):
  hw, rf = _geometry(arch, layer)
  wy, wx = _matrices(mode, hw, rf)
  acts = np.broadcast_to(THRESHOLDS, (1, *hw, len(THRESHOLDS))).copy()
  new = np.asarray(upsample.threshold_masks(jnp.asarray(acts), jnp.asarray(THRESHOLDS), wy, wx))
  assert new.shape == (1, len(THRESHOLDS), *MASK) and new.dtype == bool
  assert new.sum() == 0
  old = _old_masks(acts, THRESHOLDS, wy, wx).sum(axis=(0, 2, 3))
  print(f'{arch} {layer} {mode}: spurious pixels per T {dict(zip(THRESHOLDS.tolist(), old))}')
  assert old.sum() > 0                   # the old code counted plateau pixels
  if mode == 'rf':                       # in rf mode for every T here, ReLU6's 6 included
    assert (old > 0).all()


@pytest.mark.parametrize('arch,layer', TAPS)
def test_relu6_plateaus_at_six(arch, layer):
  hw, rf = _geometry(arch, layer)
  wy, wx = _matrices('rf', hw, rf)
  acts = _relu6_map(np.random.default_rng(0), hw, 4)
  assert (acts == 6).mean() > 0.3                       # large plateaus at the cap
  six = np.full(4, 6.0, np.float32)
  new = np.asarray(upsample.threshold_masks(jnp.asarray(acts), jnp.asarray(six), wy, wx))
  old = _old_masks(acts, six, wy, wx)
  print(f'{arch} {layer} ReLU6 map, T = 6: old {old.sum()} pixels, new {new.sum()}')
  assert new.sum() == 0 and old.sum() > 0


@pytest.mark.parametrize('arch,layer', TAPS)
@pytest.mark.parametrize('mode', ['rf', 'center'])
def test_ties_equal_definition(arch, layer, mode):
  """Few distinct levels (ties everywhere), T at one of them, some values above: by the book."""
  hw, rf = _geometry(arch, layer)
  wy, wx = _matrices(mode, hw, rf)
  rng = np.random.default_rng(1)
  levels = np.array([0.0, 0.1, 1 / 3, 6.0, 6.5, 123.456], np.float32)
  acts = levels[rng.choice(len(levels), (2, *hw, 4), p=[.3, .1, .1, .4, .05, .05])]
  thresholds = np.array([6.0, 0.1, 1 / 3, 0.0], np.float32)
  got = np.asarray(upsample.threshold_masks(jnp.asarray(acts), jnp.asarray(thresholds), wy, wx))
  grid = (rf, rf) if mode == 'rf' else (centre_grid(IMAGE[0], hw[0]), centre_grid(IMAGE[1], hw[1]))
  for b in range(2):
    for u in range(4):
      ref = mask_by_hand(acts[b, ..., u], thresholds[u], IMAGE, MASK, *grid)
      np.testing.assert_array_equal(got[b, u], ref, err_msg=f'image {b} unit {u}')
  old = _old_masks(acts, thresholds, wy, wx)
  print(f'{arch} {layer} {mode}: old code differs from the definition on '
        f'{int((old != got).sum())} pixels')


def test_every_mask_site_drops_the_plateau():
  """iou._count, topk.unit_mask and report.unit_masks all use the same thresholding."""
  hw, rf = _geometry('alexnet', 'conv5')
  t = np.float32(6.0)
  acts = np.full((2, *hw, 1), t, np.float32)
  acts[1, 3:5, 4:6] = 7.0                                      # one real blob on image 1
  wy, wx = _matrices('rf', hw, rf)
  layers = np.ones((2, 1, *MASK), np.int32)                       # label 1 everywhere
  counts = iou.count_labels(jnp.asarray(acts), jnp.asarray([t]), wy, wx, layers,
                            np.zeros((2, 1), np.int32), np.array([-1, 0]), np.ones(2, bool),
                            chunk=2)
  expect = [mask_by_hand(acts[i, ..., 0], t, IMAGE, MASK, rf) for i in range(2)]
  assert expect[0].sum() == 0 and expect[1].sum() > 0
  assert int(counts['act_pixels'][0]) == expect[1].sum()
  assert int(counts['inter'][0, 1]) == expect[1].sum()
  for i in range(2):
    got = topk.unit_mask(acts[i, ..., 0], t, IMAGE, MASK, 'rf', rf)
    np.testing.assert_array_equal(got, expect[i])
  results = {'upsample': {'mode': 'rf', 'rf_geometry': list(rf)}, 'units': [{'threshold': 6.0}]}
  top = {'images': np.array([[0, 1]]), 'map_hw': np.array([[hw, hw]]),
         'maps': acts[..., 0][None]}
  rec = types.SimpleNamespace(ih=IMAGE[0], iw=IMAGE[1], sh=MASK[0], sw=MASK[1])
  masks = report.unit_masks(results, top, types.SimpleNamespace(records=[rec, rec]), 2)
  for i in range(2):
    np.testing.assert_array_equal(masks[0, i], expect[i])


@pytest.mark.parametrize('arch,layer', TAPS)
@pytest.mark.parametrize('mode', ['rf', 'center'])
def test_hot_tile_counts_equal_definition(arch, layer, mode):
  """The hot-tile kernel (`tiles`, `iou._count_tiles`) counts what the definition's masks give,
  ties at T_k included, and equals the dense kernel on every count."""
  hw, rf = _geometry(arch, layer)
  taps = [upsample.two_taps(m) for m in upsample.matrices(mode, hw, IMAGE, MASK, rf)]
  geometry = tiles.tiles(*taps)
  assert geometry.area >= tiles.MIN_AREA
  wy, wx = (tuple(jnp.asarray(a) for a in t) for t in taps)
  rng = np.random.default_rng(2)
  levels = np.array([0.0, 0.1, 1 / 3, 6.0, 6.5, 123.456], np.float32)
  acts = levels[rng.choice(len(levels), (4, *hw, 4), p=[.4, .1, .1, .35, .03, .02])]
  thresholds = np.array([6.0, 0.1, 1 / 3, 0.0], np.float32)
  layers = rng.integers(0, 4, (4, 2, *MASK)) * (rng.random((4, 2, *MASK)) < 0.3)
  image_level = np.array([[0], [4], [4], [0]])
  primary = np.array([-1, 0, 0, 1, 2])
  valid = np.array([True, True, False, True])                  # slot 2: padding, counts nothing
  args = (jnp.asarray(acts), jnp.asarray(thresholds), wy, wx, layers, image_level, primary, valid)
  got = iou.count_labels(*args, chunk=2, tiles=geometry)
  dense = iou.count_labels(*args, chunk=2)
  for key in dense:
    np.testing.assert_array_equal(got[key], dense[key], err_msg=key)
  grid = (rf, rf) if mode == 'rf' else (centre_grid(IMAGE[0], hw[0]), centre_grid(IMAGE[1], hw[1]))
  inter, size = np.zeros((4, 5), np.int64), np.zeros(4, np.int64)
  for i in np.flatnonzero(valid):
    for u in range(4):
      m = mask_by_hand(acts[i, ..., u], thresholds[u], IMAGE, MASK, *grid)
      size[u] += m.sum()
      for c in range(1, 5):
        inter[u, c] += (m & ((layers[i] == c).any(axis=0) | (c in image_level[i]))).sum()
  assert size.min() > 0 and size.max() < 3 * MASK[0] * MASK[1]         # neither empty nor full
  np.testing.assert_array_equal(got['act_pixels'], size)
  np.testing.assert_array_equal(got['inter'], inter)


def test_hot_blocks_cover_exactly_the_hot_triples():
  """Every (image, tile, unit) with a source > T_k is in exactly one block row; nothing else."""
  hw, rf = _geometry('alexnet', 'conv5')
  geometry = tiles.tiles(*[upsample.two_taps(m)
                           for m in upsample.matrices('rf', hw, IMAGE, MASK, rf)])
  rng = np.random.default_rng(3)
  acts = rng.random((3, *hw, 40)).astype(np.float32) ** 8       # sparse excesses; unit 39 never
  thresholds = np.full(40, 0.5, np.float32)
  thresholds[39] = 2.0
  valid = np.array([True, False, True])
  image, tile, units = tiles.hot_blocks(acts, thresholds, valid, geometry)
  got = sorted((int(b), int(j), int(k)) for b, j, row in zip(image, tile, units) for k in row
               if k >= 0)
  expect = []
  y, x = geometry.y, geometry.x
  for b in np.flatnonzero(valid):
    for jy in range(len(y.lo)):
      for jx in range(len(x.lo)):
        block = acts[b][np.ix_([y.lo[jy], y.hi[jy]], [x.lo[jx], x.hi[jx]])]   # (2, 2, K)
        for k in np.flatnonzero((block > thresholds).any(axis=(0, 1))):
          expect.append((int(b), jy * len(x.lo) + jx, int(k)))
  assert got == sorted(expect) and len(got) == len(set(got)) > 0
  assert len(image) % tiles.BLOCKS == 0
  # each segment's rows read its own two sources: the segments partition the mask rows
  for ax, taps in zip((y, x), (upsample.two_taps(m) for m in upsample.matrices(
      'rf', hw, IMAGE, MASK, rf))):
    rows = ax.pix[ax.pix >= 0]
    assert sorted(rows.tolist()) == list(range(MASK[0]))
    for j in range(len(ax.lo)):
      r = ax.pix[j][ax.pix[j] >= 0]
      assert (taps[0][r] == ax.lo[j]).all() and (taps[1][r] == ax.hi[j]).all()
