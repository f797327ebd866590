"""The pipeline's result does not depend on how activations are kept or how images are batched."""
import numpy as np
from flax import nnx

from ndjax.models import convstack
from ndjax import dissect
from ndjax.data import broden
from tests.conftest import CATS, LABELS, random_images


def test_cache_modes_and_batching_agree(broden_factory, tmp_path):
  ds = broden.open_broden(broden_factory(CATS, LABELS, random_images(np.random.default_rng(5), 11)))
  ops = (convstack.Op('conv', 6, 3, 1, 1), convstack.Op('relu'), convstack.Op('pool', kernel=2, stride=2))
  model = convstack.ConvStack(ops, preprocessing='none', rngs=nnx.Rngs(2))
  base = dict(layers=('features.1', 'features.2'), tau=0.1, progress=False)
  runs = {
      'memory': dissect.DissectConfig(**base, batch_size=4),
      'spill': dissect.DissectConfig(**base, batch_size=4, cache_gb=0, cache_dir=str(tmp_path)),
      'recompute': dissect.DissectConfig(**base, batch_size=4, cache_gb=0, cache_dir=None),
      'batch3': dissect.DissectConfig(**base, batch_size=3, chunk=1),
      'batch8': dissect.DissectConfig(**base, batch_size=8),
  }
  outs = {name: dissect.dissect(model, ds, cfg) for name, cfg in runs.items()}
  ref = outs['memory']
  assert ref.images_used == 11
  for name, out in outs.items():
    for layer in base['layers']:
      np.testing.assert_array_equal(out.layers[layer].thresholds, ref.layers[layer].thresholds)
      for key, value in out.layers[layer].counts.as_dict().items():
        np.testing.assert_array_equal(value, ref.layers[layer].counts.as_dict()[key], err_msg=f'{name} {key}')
  assert not list(tmp_path.glob('ndjax_acts_*'))          # spill folder removed afterwards


def test_histogram_selection_agrees_with_top_m(broden_factory, tmp_path, capsys, monkeypatch):
  """The two-pass selection gives the same thresholds and counts, whether the second look at the
  activations comes from memory, from the spill folder or from a fresh forward pass; and a spill
  that would not fit on the disk turns into recomputation with one line, not a failure."""
  ds = broden.open_broden(broden_factory(CATS, LABELS, random_images(np.random.default_rng(6), 10)))
  ops = (convstack.Op('conv', 5, 3, 1, 1), convstack.Op('relu'), convstack.Op('pool', kernel=2, stride=2))
  model = convstack.ConvStack(ops, preprocessing='none', rngs=nnx.Rngs(3))
  base = dict(layers=('features.1', 'features.2'), tau=0.05, progress=False, batch_size=4)
  ref = dissect.dissect(model, ds, dissect.DissectConfig(**base, selection='top'))
  runs = {
      'memory': dict(selection='histogram'),
      'spill': dict(selection='histogram', cache_gb=0, cache_dir=str(tmp_path)),
      'recompute': dict(selection='histogram', cache_gb=0, cache_dir=None),
  }
  for name, extra in runs.items():
    out = dissect.dissect(model, ds, dissect.DissectConfig(**base, **extra))
    for layer in base['layers']:
      np.testing.assert_array_equal(out.layers[layer].thresholds, ref.layers[layer].thresholds,
                                    err_msg=name)
      for key, value in out.layers[layer].counts.as_dict().items():
        np.testing.assert_array_equal(value, ref.layers[layer].counts.as_dict()[key],
                                      err_msg=f'{name} {key}')
  assert set(dissect.make_plan(model, ds, dissect.DissectConfig(**base)).selection.values()) == {'top'}
  # the disk cannot hold the spill: recompute instead, say so in one line
  monkeypatch.setattr(dissect.shutil, 'disk_usage', lambda path: type('U', (), {'free': 10})())
  out = dissect.dissect(model, ds, dissect.DissectConfig(**base, cache_gb=0, cache_dir=str(tmp_path)))
  err = capsys.readouterr().err
  assert 'recomputing the forward pass' in err and len(err.strip().splitlines()) == 1
  np.testing.assert_array_equal(out.layers['features.1'].thresholds,
                                ref.layers['features.1'].thresholds)
  assert not list(tmp_path.glob('ndjax_acts_*'))


def test_full_broden_vgg16_every_layer_fits_in_memory():
  """Memory plan of all 13 VGG16 conv layers over a Broden-sized set (63,305 images at 224 px):
  top-m sets alone would need ~24 GiB; the plan switches the largest layers to the histogram and
  stays under the 8 GB cap (independent arithmetic, from the layer shapes)."""
  from ndjax import views as views_lib
  shapes = {'conv1_1': (224, 64), 'conv1_2': (224, 64), 'conv2_1': (112, 128), 'conv2_2': (112, 128),
            **{f'conv3_{i}': (56, 256) for i in (1, 2, 3)},
            **{f'conv4_{i}': (28, 512) for i in (1, 2, 3)},
            **{f'conv5_{i}': (14, 512) for i in (1, 2, 3)}}
  n = 63_305
  units = {l: k for l, (_, k) in shapes.items()}
  max_n = {l: n * s * s for l, (s, _) in shapes.items()}
  spec = views_lib.ViewSpec(taus=(0.005,))
  views = {l: views_lib.build(spec, k) for l, k in units.items()}
  cfg = dissect.DissectConfig(layers=tuple(shapes))
  top_only = sum(units[l] * (max_n[l] - int((max_n[l] - 1) * 0.995)) * 4 * 1.5 for l in shapes)
  assert top_only / 2**30 > 20          # ~24 GiB: the whole machine
  selection = dissect.choose_selection(tuple(shapes), views, units, max_n, cfg)
  hist = [l for l, s in selection.items() if s == 'histogram']
  assert {'conv1_1', 'conv1_2'} <= set(hist) and 'conv5_3' not in hist
  used = sum(units[l] * 2**16 * 8 * 3 if selection[l] == 'histogram' else
             units[l] * (max_n[l] - int((max_n[l] - 1) * 0.995)) * 4 * 1.5 for l in shapes)
  assert used / 2**30 <= 8


def test_bfloat16_compute_is_close_and_float32_is_untouched(broden_factory):
  """compute_dtype='bfloat16' runs the network in bf16 (taps back in f32, close to the f32 values);
  the default float32 path is the model's own call, bit for bit."""
  import jax.numpy as jnp
  from ndjax import activations
  ds = broden.open_broden(broden_factory(CATS, LABELS, random_images(np.random.default_rng(7), 4)))
  ops = (convstack.Op('conv', 8, 3, 1, 1), convstack.Op('relu'), convstack.Op('conv', 8, 3, 1, 1))
  model = convstack.ConvStack(ops, preprocessing='caffe', rngs=nnx.Rngs(4))
  images = np.random.default_rng(8).integers(0, 256, (4, 20, 24, 3), dtype=np.uint8)
  ref = model(jnp.asarray(images), ('features.2',))['features.2']
  f32 = activations.make_forward(model, ('features.2',))(images)['features.2']
  bf16 = activations.make_forward(model, ('features.2',), compute_dtype='bfloat16')(images)
  np.testing.assert_array_equal(np.asarray(f32), np.asarray(ref))
  got = np.asarray(bf16['features.2'])
  assert got.dtype == np.float32
  rel = np.abs(got - np.asarray(ref)).max() / np.abs(np.asarray(ref)).max()
  assert 1e-5 < rel < 0.05          # rounded (so really bf16), but close
  out = dissect.dissect(model, ds, dissect.DissectConfig(layers=('features.2',), tau=0.1,
                                                         progress=False, compute_dtype='bfloat16'))
  assert out.compute_dtype == 'bfloat16'
