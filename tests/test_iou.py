"""Dissection counts equal a brute-force NumPy reading of paper Eq. 1, for both denominators."""
import numpy as np
import pytest
from flax import nnx

from ndjax.models import convstack
from ndjax import dissect, iou, tally
from ndjax.data import broden
from tests.by_hand import mask_by_hand
from tests.conftest import CATS, LABELS, random_images


def _brute_force(model, ds, layer, tau):
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
      in_layers = (layers == c).astype(np.int64)                          # (L, sh, sw)
      img = c in img_labels
      truth[c] += in_layers.sum() + (rec.sh * rec.sw if img else 0)
      inter[:, c] += (masks[:, None] * in_layers[None]).sum(axis=(1, 2, 3)) + (size if img else 0)
    for cat in range(ncat):
      if cat in present_cats:
        act_paper[:, cat] += size
      cat_pixels = np.isin(layers, np.flatnonzero(ds.primary == cat)).any(axis=0)
      img_cat = any(ds.primary[c] == cat for c in img_labels)
      touches = (masks & cat_pixels[None]).any(axis=(1, 2)) | img_cat
      act_lite[:, cat] += np.where(touches, size, 0)
  return thr, iou.Counts(inter, truth, act_paper, act_lite, None)


@pytest.mark.parametrize('batch_size,tau', [(4, 0.05), (3, 0.2)])
def test_counts_equal_brute_force(broden_factory, batch_size, tau):
  rng = np.random.default_rng(batch_size)
  root = broden_factory(CATS, LABELS, random_images(rng, 14))
  ds = broden.open_broden(root)
  ops = (convstack.Op('conv', 5, 3, 2, 0), convstack.Op('relu'), convstack.Op('pool', kernel=2, stride=2))
  model = convstack.ConvStack(ops, preprocessing='none', rngs=nnx.Rngs(1))
  cfg = dissect.DissectConfig(layers=('features.1', 'features.2'), tau=tau, batch_size=batch_size,
                              progress=False, chunk=1 if batch_size % 2 else 2)
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


def scores_max(counts, ds):
  scores, _ = iou.iou(counts, ds.primary, 'paper')
  return scores.max(axis=1)
