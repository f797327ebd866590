"""Top-k images per unit come from the dissection pass and equal a brute-force ranking."""
import numpy as np
import pytest
from flax import nnx

from ndjax.models import convstack
from ndjax import dissect, loader, topk
from ndjax.data import broden
from tests.by_hand import mask_by_hand
from tests.conftest import CATS, LABELS, random_images


@pytest.mark.parametrize('k', [3, 20])
def test_topk_equals_brute_force(broden_factory, tmp_path, k):
  ds = broden.open_broden(broden_factory(CATS, LABELS, random_images(np.random.default_rng(9), 13)))
  ops = (convstack.Op('conv', 4, 3, 2, 0), convstack.Op('relu'), convstack.Op('pool', kernel=2, stride=2))
  model = convstack.ConvStack(ops, preprocessing='none', rngs=nnx.Rngs(4))
  layer = 'features.2'
  cfg = dissect.DissectConfig(layers=(layer,), tau=0.05, batch_size=4, topk=k, progress=False,
                              cache_gb=0, cache_dir=None)        # pass 2 recomputes: still exact
  res = dissect.dissect(model, ds, cfg).layers[layer]
  # reference maps forwarded in the run's own batches: XLA:CPU's conv rounding depends on the batch
  acts = [None] * len(ds.records)
  for batch in loader.plan_batches(ds, 4):
    images = np.zeros((4, *batch.size_key[:2], 3), np.uint8)
    for slot, i in enumerate(batch.ids):
      if i >= 0:
        images[slot] = ds.load_image(int(i))
    out = np.asarray(model(images, (layer,))[layer])
    for slot, i in enumerate(batch.ids):
      if i >= 0:
        acts[int(i)] = out[slot]
  peaks = np.stack([a.max(axis=(0, 1)) for a in acts])             # (N, K)
  for u in range(peaks.shape[1]):
    order = sorted(range(len(acts)), key=lambda i: (-peaks[i, u], i))[:k]
    got = [i for i in res.top.images[u] if i >= 0]
    assert got == order
    np.testing.assert_array_equal(res.top.values[u, :len(order)], peaks[order, u])
    for r, i in enumerate(order):
      h, w = res.top.map_hw[u, r]
      np.testing.assert_array_equal(res.top.maps[u, r, :h, :w], acts[i][..., u])
      rec = ds.records[i]
      mask = topk.unit_mask(res.top.maps[u, r, :h, :w], res.thresholds[u], (rec.ih, rec.iw),
                            (rec.sh, rec.sw), 'rf', model.rf_geometry(layer))
      ref = mask_by_hand(acts[i][..., u], res.thresholds[u], (rec.ih, rec.iw), (rec.sh, rec.sw),
                         model.rf_geometry(layer))
      np.testing.assert_array_equal(mask, ref)
  res.top.save(str(tmp_path / 'topk.npz'))
  saved = np.load(tmp_path / 'topk.npz')
  np.testing.assert_array_equal(saved['images'], res.top.images)
