"""Dissection counts equal a brute-force NumPy reading of paper Eq. 1, for both denominators."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ndjax.models import convstack
from ndjax import dissect, iou, tally
from ndjax.data import broden
from tests.by_hand import mask_by_hand
from tests.conftest import CATS, LABELS, random_images


def _brute_force(model, ds, layer, tau, summed_layers=False):
  """Thresholds and counts by the definition, one image and one label at a time.

  L_c(x) is the SET of pixels carrying c in any mask layer, or every pixel if c is an image-level
  label of x. summed_layers=True is instead the reference implementations' reading (one count per
  layer and per image-level mention), used only to show what the fixtures below would catch.
  """
  acts = [np.asarray(model(ds.load_image(i)[None], (layer,))[layer][0])
          for i in range(len(ds.records))]
  k = acts[0].shape[-1]
  thr = np.quantile(np.concatenate([a.reshape(-1, k) for a in acts]), 1 - tau, axis=0)
  n, ncat = ds.num_labels, len(ds.categories)
  inter = np.zeros((k, n), np.int64); truth = np.zeros(n, np.int64)
  act_paper = np.zeros((k, ncat), np.int64); act_lite = np.zeros((k, ncat), np.int64)
  for i, rec in enumerate(ds.records):
    layers, img_labels = ds.load_labels(i)
    rf = model.rf_geometry(layer)
    masks = np.stack([mask_by_hand(acts[i][..., u], thr[u], (rec.ih, rec.iw), (rec.sh, rec.sw),
                                   rf) for u in range(k)])                # (k, sh, sw)
    size = masks.sum(axis=(1, 2))
    present_cats = set(int(ds.primary[c]) for c in np.unique(layers) if c > 0)
    present_cats |= set(int(ds.primary[c]) for c in img_labels)
    for c in range(1, n):
      if summed_layers:
        per_layer = (layers == c).astype(np.int64)                        # (L, sh, sw)
        mentions = int((img_labels == c).sum())
        truth[c] += per_layer.sum() + mentions * rec.sh * rec.sw
        inter[:, c] += (masks[:, None] * per_layer[None]).sum(axis=(1, 2, 3)) + mentions * size
        continue
      carries = (layers == c).any(axis=0) | (c in img_labels)            # (sh, sw) bool: a set
      truth[c] += carries.sum()
      inter[:, c] += (masks & carries[None]).sum(axis=(1, 2))
    for cat in range(ncat):
      if cat in present_cats:
        act_paper[:, cat] += size
      cat_pixels = np.isin(layers, np.flatnonzero(ds.primary == cat)).any(axis=0)
      img_cat = any(ds.primary[c] == cat for c in img_labels)
      touches = (masks & cat_pixels[None]).any(axis=(1, 2)) | img_cat
      act_lite[:, cat] += np.where(touches, size, 0)
  return thr, iou.Counts(inter, truth, act_paper, act_lite, None)


@pytest.mark.parametrize('count_kernel', ['dense', 'tiles'])
@pytest.mark.parametrize('batch_size,tau', [(4, 0.05), (3, 0.2)])
def test_counts_equal_brute_force(broden_factory, batch_size, tau, count_kernel):
  rng = np.random.default_rng(batch_size)
  root = broden_factory(CATS, LABELS, random_images(rng, 14))
  ds = broden.open_broden(root)
  ops = (convstack.Op('conv', 5, 3, 2, 0), convstack.Op('relu'), convstack.Op('pool', kernel=2, stride=2))
  model = convstack.ConvStack(ops, preprocessing='none', rngs=nnx.Rngs(1))
  cfg = dissect.DissectConfig(layers=('features.1', 'features.2'), tau=tau, batch_size=batch_size,
                              progress=False, chunk=1 if batch_size % 2 else 2,
                              count_kernel=count_kernel)
  out = dissect.dissect(model, ds, cfg)
  for layer in cfg.layers:
    thr, ref = _brute_force(model, ds, layer, tau)
    got = out.layers[layer]
    np.testing.assert_array_equal(got.thresholds, thr.astype(np.float32))
    np.testing.assert_array_equal(got.counts.inter, ref.inter)
    np.testing.assert_array_equal(got.counts.label_pixels, ref.label_pixels)
    np.testing.assert_array_equal(got.counts.act_paper, ref.act_paper)
    np.testing.assert_array_equal(got.counts.act_lite, ref.act_lite)
    assert got.counts.inter.sum() > 0 and (ref.act_lite <= ref.act_paper).all()
    for den, act in (('paper', ref.act_paper), ('lite', ref.act_lite)):
      scores, _ = iou.iou(got.counts, ds.primary, den)
      for c in range(1, ds.num_labels):
        union = act[:, ds.primary[c]] + ref.label_pixels[c] - ref.inter[:, c]
        expect = np.where(union > 0, ref.inter[:, c] / np.maximum(union, 1), 0)
        np.testing.assert_allclose(scores[:, c], expect, rtol=1e-12)
    labels = tally.label_units(got.counts, ds, 'paper')
    assert (labels.best_iou == scores_max(got.counts, ds)).all()


def test_counting_only_active_units_is_exact(broden_factory):
  """Pass 2 counts, per image, only the units whose map exceeds T_k somewhere (padded to a shared
  power-of-two width): on a 48-unit layer with a tight tau that is far fewer than 48 per image,
  and every count still equals the brute force over all units."""
  rng = np.random.default_rng(11)
  ds = broden.open_broden(broden_factory(CATS, LABELS, random_images(rng, 12)))
  ops = (convstack.Op('conv', 48, 3, 2, 0), convstack.Op('relu'))
  model = convstack.ConvStack(ops, preprocessing='none', rngs=nnx.Rngs(5))
  layer, tau = 'features.1', 0.002
  thr, ref = _brute_force(model, ds, layer, tau)
  widths = []
  for i in range(len(ds.records)):                      # images differ in size: one at a time
    acts = np.asarray(model(ds.load_image(i)[None], (layer,))[layer])
    units = iou.active_units(acts, thr.astype(np.float32))
    widths.append(units.shape[1])
    active = np.flatnonzero(acts[0].max(axis=(0, 1)) > thr.astype(np.float32))
    assert set(active) <= set(units[0].tolist())        # every active unit is counted
  assert min(widths) < 48                               # really compacted
  out = dissect.dissect(model, ds, dissect.DissectConfig(layers=(layer,), tau=tau, batch_size=4,
                                                         progress=False))
  got = out.layers[layer].counts
  for field in ('inter', 'label_pixels', 'act_paper', 'act_lite'):
    np.testing.assert_array_equal(getattr(got, field), getattr(ref, field), err_msg=field)
  assert got.inter.sum() > 0


def scores_max(counts, ds):
  scores, _ = iou.iou(counts, ds.primary, 'paper')
  return scores.max(axis=1)


def _overlapping_layers(size=20):
  """Planted images where one label sits in two part layers on the same or overlapping pixels.

  Red (unit 0) fires where label 9's two part layers overlap (image 0); green (unit 1) exactly on
  label 8, which both part layers carry on the same square (image 1): by the definition its IoU
  is 1, the layer-summing reading gives 2; blue (unit 2) on a square of label 10 in image 2, which
  also carries 10 as an image-level label (and scene 12 listed twice) in image 2.
  """
  def square(y0, y1, x0, x1, value=1):
    m = np.zeros((size, size), np.int32)
    m[y0:y1, x0:x1] = value
    return m
  items = []
  img = np.zeros((size, size, 3), np.uint8)
  img[5:9, 5:9, 0] = 200                                         # A & A'
  items.append({'image': img, 'masks': {'part': [square(2, 9, 2, 9, 9), square(5, 12, 5, 12, 9)],
                                        'object': [square(0, 10, 0, 10, 4)]}})
  img = np.zeros((size, size, 3), np.uint8)
  img[10:16, 3:9, 1] = 150                                       # B
  items.append({'image': img, 'masks': {'part': [square(10, 16, 3, 9, 8), square(10, 16, 3, 9, 8)]},
                'image_labels': {'scene': [12]}})
  img = np.zeros((size, size, 3), np.uint8)
  img[0:3, 0:3, 2] = 99                                          # C, inside label 10's square
  items.append({'image': img, 'masks': {'part': [square(0, 6, 0, 6, 10)]},
                'image_labels': {'part': [10], 'scene': [12, 12]}})
  items.append({'image': np.zeros((size, size, 3), np.uint8),
                'masks': {'color': [square(0, 20, 0, 20, 1)]}})
  return items


def test_label_counts_once_per_pixel(broden_factory):
  ds = broden.open_broden(broden_factory(CATS, LABELS, _overlapping_layers()))
  ops = (convstack.Op('conv', 3, 1, 1, 0),)                      # 1x1: the map is the image
  model = convstack.ConvStack(ops, preprocessing='none', rngs=nnx.Rngs(0))
  model.features_0.kernel[...] = jnp.eye(3)[None, None]
  model.features_0.bias[...] = jnp.zeros(3)
  tau = 0.3
  cfg = dissect.DissectConfig(layers=('features.0',), tau=tau, batch_size=2, progress=False)
  got = dissect.dissect(model, ds, cfg).layers['features.0']
  thr, ref = _brute_force(model, ds, 'features.0', tau)
  np.testing.assert_array_equal(thr, 0)                           # masks = the coloured squares
  for field in ('inter', 'label_pixels', 'act_paper', 'act_lite'):
    np.testing.assert_array_equal(getattr(got.counts, field), getattr(ref, field), err_msg=field)
  _, summed = _brute_force(model, ds, 'features.0', tau, summed_layers=True)
  for den in ('paper', 'lite'):
    scores, _ = iou.iou(got.counts, ds.primary, den)
    assert scores.max() <= 1.0
    assert scores[1, 8] == 1.0                  # unit 1's mask is label 8's square, in 2 layers
    assert scores[0, 9] == 16 / 82              # A & A' (4x4) over label 9's set A | A' (49+49-16)
    old, _ = iou.iou(summed, ds.primary, den)
    print(f'{den}: IoU(unit 1, label 8) {scores[1, 8]} (layers summed: {old[1, 8]}); '
          f'IoU(unit 2, label 10) {scores[2, 10]:.4f} (summed: {old[2, 10]:.4f})')
    assert old[1, 8] == 2.0 and old.max() > 1.0                   # what the fixture catches
  assert ref.label_pixels[10] == 400 and ref.inter[2, 10] == 9    # image-level 10 covers image 2


def test_label_side_planted():
  """labels.image_labels / stack on a hand-made 2x3 image: sets, categories, padding, pixels."""
  from ndjax import labels
  primary = np.array([-1, 0, 1, 1, -1, 0])       # 0 = none; 4 has no category (dropped)
  layers = np.array([[[1, 1, 2], [0, 4, 2]],     # layer 0
                     [[3, 0, 0], [3, 4, 2]]])    # layer 1: 2 again at (1, 2), counts once
  img = np.array([5, 0])
  im = labels.image_labels(layers, img, primary, num_cats=2)
  assert im.ids.tolist() == [1, 2, 3, 5]
  expect = np.zeros((6, 4), bool)
  for x, ls in enumerate([[1, 3], [1], [2], [3], [], [2]]):
    for l in ls:
      expect[x, [1, 2, 3, 5].index(l)] = True
  expect[:, 3] = True                             # image-level 5 covers every pixel
  np.testing.assert_array_equal(im.sets, expect)
  np.testing.assert_array_equal(im.pix_cat, [[1, 1], [1, 0], [0, 1], [0, 1], [0, 0], [0, 1]])
  np.testing.assert_array_equal(im.img_cat, [True, False])
  other = labels.image_labels(np.full((1, 2, 3), 2), np.zeros(1, int), primary, num_cats=2)
  side = labels.stack([im, None, other], 6, 2)
  assert side.global_ids.tolist() == [1, 2, 3, 5] and side.num_local == 16
  assert side.side.shape == (3, 6, 8 + 2 + 1)
  np.testing.assert_array_equal(side.ids[0, :4], [0, 1, 2, 3])
  assert (side.ids[0, 4:] == 16).all() and (side.ids[1] == 16).all()
  assert side.ids[2, 0] == 1 and not side.side[1].any()
  np.testing.assert_array_equal(side.label_pixels, [2, 2 + 6, 2, 6])
  np.testing.assert_array_equal(side.side[0, :, -1], True)
  np.testing.assert_array_equal(side.relevant, [[True, True], [False, False], [False, True]])
