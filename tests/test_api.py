"""The library API: in-memory results, the standard outputs, one compile per model structure."""
import csv
import json

import numpy as np
import pytest
from flax import nnx

from ndjax import activations, api, iou, tally
from ndjax.data import broden
from ndjax.models import convstack
from tests.conftest import CATS, LABELS, make_broden, random_images

OPS = (convstack.Op('conv', 5, 3, 1, 1), convstack.Op('relu'), convstack.Op('pool', kernel=2, stride=2))


@pytest.fixture(scope='module')
def ds(tmp_path_factory):
  root = make_broden(tmp_path_factory.mktemp('api') / 'b', CATS, LABELS,
                     random_images(np.random.default_rng(11), 9))
  return broden.open_broden(root)


def test_forward_compiles_once_per_structure(ds):
  layers = ('features.1', 'features.2')
  models = [convstack.ConvStack(OPS, preprocessing='none', rngs=nnx.Rngs(s)) for s in (1, 2, 3)]
  before = activations._compiled.cache_info()
  fn, _ = activations._compiled(activations.structure_key(nnx.split(models[0])[0]), layers, None,
                                'float32')
  traces = fn._cache_size()         # other tests may have run this structure at other batch sizes
  outs = [api.dissect(m, ds, layers, tau=0.1, batch_size=3, progress=False) for m in models]
  after = activations._compiled.cache_info()
  assert after.currsize - before.currsize <= 1          # one entry for the structure and taps
  # one trace per image size, for all three models
  assert fn._cache_size() - traces <= len({r.size_key for r in ds.records})
  assert fn._cache_size() >= len({r.size_key for r in ds.records})
  # and the weights still matter: different seeds, different thresholds
  assert not np.array_equal(outs[0].layers['features.1'].thresholds,
                            outs[1].layers['features.1'].thresholds)


def test_write_outputs_round_trip(ds, tmp_path):
  model = convstack.ConvStack(OPS, preprocessing='none', rngs=nnx.Rngs(4))
  out = api.dissect(model, ds, ['features.2'], views=api.ViewSpec(taus=(0.1, 0.3)),
                    batch_size=4, progress=False)
  lines = api.write_outputs(out, ds, str(tmp_path / 'run'), model=model, report=False,
                            iou_threshold=0.02)
  assert [l.split(':')[0] for l in lines] == ['features.2', 'features.2@tau0.3']
  assert lines == api.summary_lines(out, ds, iou_threshold=0.02)
  for res in out.results:
    folder = tmp_path / 'run' / res.folder
    with np.load(folder / 'counts.npz') as z:
      for key, value in res.counts.as_dict().items():
        np.testing.assert_array_equal(z[key], value)
      np.testing.assert_array_equal(z['thresholds'], res.thresholds)
      assert list(z['label_names']) == ds.label_names and list(z['categories']) == ds.categories
      # rescoring from the saved counts alone gives the tally's scores
      counts = iou.Counts(**{k: z[k] for k in res.counts.as_dict()})
    scores, _ = iou.iou(counts, ds.primary, 'paper')
    with open(folder / 'tally.csv') as f:
      for row in csv.DictReader(f):
        u = int(row['unit']) - 1
        assert float(row['score']) == scores[u].max()
    doc = json.loads((folder / 'results.json').read_text())
    assert doc['view']['tau'] == res.view.tau and doc['folder'] == res.folder
    assert doc['bad_images']['policy'] and doc['precision']
    assert [u['threshold'] for u in doc['units']] == [float(t) for t in res.thresholds]


def test_model_by_name_and_bad_input():
  with pytest.raises(api.NdjaxError, match="unknown model 'vgg9'"):
    api.dissect('vgg9', object())
  model = api.build_model('alexnet')
  with pytest.raises(api.NdjaxError, match="unknown layer 'conv9'"):
    api.resolve_layers(model, ['conv9'])
  assert api.resolve_layers(model) == ['conv5']
  assert api.run_name('alexnet', 'random', 3) == 'alexnet_random_s3'
  with pytest.raises(api.NdjaxError, match='tau=1.5 is outside'):
    api.dissect(model, object(), ['conv5'], tau=1.5)


def test_labels_of_plain_view_equal_tally(ds):
  model = convstack.ConvStack(OPS, preprocessing='none', rngs=nnx.Rngs(5))
  out = api.dissect(model, ds, ['features.1'], tau=0.05, batch_size=4, progress=False)
  res = out.layers['features.1']
  assert res is out.results[0] and res.view.name == '' and res.folder == 'features.1'
  labels = tally.label_units(res.counts, ds, 'lite')
  assert labels.best_iou.shape == (5,)


def test_forward_cache_tells_same_named_classes_apart():
  """A class redefined under the same name (a notebook edit) must not reuse the old code."""
  import jax.numpy as jnp

  def make(scale):
    class Net(nnx.Module):
      def __init__(self):
        self.w = nnx.Param(jnp.ones(()))

      def __call__(self, images, taps):
        return {'out': images.astype(jnp.float32) * self.w[...] * scale}
    return Net()

  images = np.ones((1, 2, 2, 3), np.uint8)
  one = activations.make_forward(make(1.0), ('out',))(images)['out']
  hundred = activations.make_forward(make(100.0), ('out',))(images)['out']
  np.testing.assert_array_equal(np.asarray(hundred), 100 * np.asarray(one))
