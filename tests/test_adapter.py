"""User-defined Flax models through models/adapter.py: the README's example runs, a wrapped nnx
network dissects exactly like the zoo model holding the same weights, linen taps are the module's
own intermediates, a tap without geometry is upsampled with `center`, bad input is one line."""
import json
import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ndjax import api, dissect
from ndjax.models import adapter, convstack
from tests.conftest import CATS, LABELS, make_broden, random_images

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def ds(tmp_path_factory):
  from ndjax.data import broden
  return broden.open_broden(make_broden(tmp_path_factory.mktemp('adapter') / 'b', CATS, LABELS,
                                        random_images(np.random.default_rng(0), 12)))


def _same_weights():
  """A zoo ConvStack (conv 3x3 + ReLU, conv 3x3 stride 2 + ReLU) and an nnx.Conv network with its
  weights, wrapped with the geometry composed from the same (kernel, stride, padding)."""
  ops = (convstack.Op('conv', 8, 3, 1, 1), convstack.Op('relu'), convstack.Op('conv', 12, 3, 2, 1),
         convstack.Op('relu'))
  zoo = convstack.ConvStack(ops, preprocessing='torch', rngs=nnx.Rngs(3))

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Conv(3, 8, (3, 3), padding=1, rngs=rngs)
      self.b = nnx.Conv(8, 12, (3, 3), strides=2, padding=1, rngs=rngs)

  net = Net(nnx.Rngs(0))
  net.a.kernel[...] = zoo.features_0.kernel[...]
  net.a.bias[...] = zoo.features_0.bias[...] + 0.1
  zoo.features_0.bias[...] = zoo.features_0.bias[...] + 0.1
  net.b.kernel[...] = zoo.features_2.kernel[...]
  net.b.bias[...] = zoo.features_2.bias[...]

  def features(n, x):
    h = nnx.relu(n.a(x))
    return {'first': h, 'second': nnx.relu(n.b(h))}

  wrapped = adapter.wrap(net, features, preprocessing='torch', name='mine',
                         taps={'first': adapter.Grid.of((3, 1, 1)),
                               'second': adapter.Grid.of((3, 1, 1), (3, 2, 1))})
  return zoo, wrapped


def test_wrapped_model_dissects_like_the_zoo_model(ds):
  zoo, wrapped = _same_weights()
  assert wrapped.rf_geometry('second') == zoo.rf_geometry('features.3')
  assert wrapped.receptive_field('second') == zoo.receptive_field('features.3')
  cfg = lambda layers: dissect.DissectConfig(layers=layers, tau=0.02, batch_size=4,
                                             progress=False, topk=3)
  mine = dissect.dissect(wrapped, ds, cfg(('first', 'second')))
  ref = dissect.dissect(zoo, ds, cfg(('features.1', 'features.3')))
  for a, b in zip(mine.results, ref.results):
    np.testing.assert_allclose(a.thresholds, b.thresholds, rtol=1e-6)
    for f in ('inter', 'label_pixels', 'act_paper', 'act_lite', 'act_pixels'):
      np.testing.assert_array_equal(getattr(a.counts, f), getattr(b.counts, f))


def test_a_tap_without_geometry_is_upsampled_with_center(ds, tmp_path):
  zoo, wrapped = _same_weights()
  wrapped = adapter.wrap(wrapped.net, wrapped.features, preprocessing='torch', name='mine',
                         taps={'first': None, 'second': None})
  mine = api.dissect(wrapped, ds, ['second'], tau=0.02, batch_size=4, progress=False, topk=3)
  ref = api.dissect(zoo, ds, ['features.3'], tau=0.02, batch_size=4, progress=False, topk=3,
                    upsample='center')
  np.testing.assert_array_equal(mine.results[0].counts.inter, ref.results[0].counts.inter)
  api.write_outputs(mine, ds, str(tmp_path / 'run'), model=wrapped)
  doc = json.loads((tmp_path / 'run' / 'second' / 'results.json').read_text())
  assert doc['upsample'] == {'mode': 'center', 'rf_geometry': None}
  assert doc['receptive_field'] is None
  assert (tmp_path / 'run' / 'second' / 'report.html').is_file()


def test_linen_taps_are_its_intermediates():
  class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(6, (3, 3), padding=1)(x))
      return nn.Conv(4, (3, 3), strides=2, padding=1)(x)

  cnn = CNN()
  variables = cnn.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  model = adapter.wrap_linen(cnn, variables, taps={'Conv_0': adapter.Grid.of((3, 1, 1)),
                                                   'output': None},
                             preprocessing='none', name='lin', example_size=32)
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
  out = model(images, ['Conv_0', 'output'])
  x = jnp.asarray(images, jnp.float32)
  np.testing.assert_array_equal(np.asarray(out['output']), np.asarray(cnn.apply(variables, x)))
  conv0 = nn.Conv(6, (3, 3), padding=1).apply({'params': variables['params']['Conv_0']}, x)
  np.testing.assert_array_equal(np.asarray(out['Conv_0']), np.asarray(conv0))
  assert model.channels('output') == 4 and model.layer_names() == ['Conv_0', 'output']


def test_bad_taps_are_one_line():
  zoo, wrapped = _same_weights()
  with pytest.raises(ValueError, match="tap 'third' is not among"):
    adapter.wrap(wrapped.net, wrapped.features, taps={'third': None})
  with pytest.raises(ValueError, match='needs \\(B, h, w, K\\) maps'):
    adapter.wrap(wrapped.net, lambda n, x: {'flat': x.reshape(x.shape[0], -1)}, taps={'flat': None})
  with pytest.raises(ValueError, match='unknown preprocessing'):
    adapter.wrap(wrapped.net, wrapped.features, taps={'first': None}, preprocessing='bgr')
  with pytest.raises(KeyError, match="unknown layer 'x'"):
    wrapped.resolve('x')
  with pytest.raises(ValueError, match='wrapped model'):
    wrapped.forward(wrapped.preprocess(np.zeros((1, 32, 32, 3), np.uint8)), logits=True)


def test_readme_example_runs(tmp_path, monkeypatch):
  """The README's example, verbatim except for the probe set (16 procedural images here)."""
  text = (REPO / 'README.md').read_text()
  code = re.search(r'<!-- adapter example[^\n]*\n```python\n(.*?)```', text, re.S).group(1)
  assert 20 <= len(code.strip().splitlines()) <= 25
  code = code.replace('api.open_probe()', "api.open_probe(probe='synthetic', probe_images=16)")
  monkeypatch.chdir(tmp_path)
  exec(compile(code, 'README.md', 'exec'), {})
  for layer in ('conv1', 'conv2'):
    assert (tmp_path / 'ndjax_results' / 'mynet' / layer / 'tally.csv').is_file()


def test_a_user_vit_through_the_adapter_dissects_like_the_zoo_vit(tmp_path):
  """The transformer case: a ViT's patch tokens handed over as maps with `Grid.patches` dissect
  exactly like the zoo's VisionTransformer (same module, same weights) tapped directly."""
  from ndjax.data import broden
  from ndjax.models import vit
  rng = np.random.default_rng(5)
  items = [{'image': rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
            'masks': {'color': [np.where(rng.random((32, 32)) < 0.4, rng.choice([1, 2, 3], (32, 32)),
                                         0).astype(np.int32)]},
            'image_labels': {'scene': [int(rng.choice([12, 13]))]}} for _ in range(8)]
  ds = broden.open_broden(make_broden(tmp_path / 'b', CATS, LABELS, items))
  net = vit.VisionTransformer(image_size=64, patch_size=16, width=32, depth=2, heads=2,
                              num_classes=None, rngs=nnx.Rngs(1))
  wrapped = adapter.wrap(net, lambda n, x: n.forward(x, ['blocks.1']), preprocessing='inception',
                         taps={'blocks.1': adapter.Grid.patches(16, 64)}, name='myvit',
                         example_size=64)
  assert wrapped.rf_geometry('blocks.1') == net.rf_geometry('blocks.1')
  assert wrapped.receptive_field('blocks.1') == net.receptive_field('blocks.1')
  cfg = dissect.DissectConfig(layers=('blocks.1',), tau=0.05, batch_size=4, progress=False, topk=2)
  a = dissect.dissect(wrapped, ds, cfg).results[0]
  b = dissect.dissect(net, ds, cfg).results[0]
  np.testing.assert_array_equal(a.thresholds, b.thresholds)
  np.testing.assert_array_equal(a.counts.inter, b.counts.inter)
  assert a.counts.act_pixels.sum() > 0
