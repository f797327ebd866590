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
