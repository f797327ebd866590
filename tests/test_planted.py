"""Planted detectors: hand-set weights make units fire exactly on one colour or one object."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ndjax.models import convstack
from ndjax import dissect, tally
from ndjax.data import broden

CATS = ['color', 'object', 'part', 'material', 'scene', 'texture']
LABELS = {1: ('red-c', 'color'), 2: ('green-c', 'color'), 3: ('ball', 'object'),
          4: ('car', 'object'), 5: ('wheel', 'part')}
COLOURS = {'red': (0, (230, 10, 5)), 'green': (1, (8, 220, 12)), 'blue': (2, (5, 12, 240))}


def _planted_images(rng, n=24, size=64):
  items = []
  for i in range(n):
    img = np.full((size, size, 3), 128, np.uint8)
    colour = np.zeros((size // 2, size // 2), np.int32)
    obj = np.zeros_like(colour)
    part = np.zeros_like(colour)
    for name in rng.permutation(list(COLOURS))[: rng.integers(1, 4)]:
      _, rgb = COLOURS[name]
      y, x = rng.integers(0, size // 2 - 6, 2)         # mask coordinates; image = 2x
      s = int(rng.integers(2, 6))
      jitter = rng.integers(0, 25, (2 * s, 2 * s, 1))  # activations vary inside the region
      img[2 * y:2 * (y + s), 2 * x:2 * (x + s)] = np.clip(np.array(rgb) - jitter, 0, 255)
      if name in ('red', 'green'):
        colour[y:y + s, x:x + s] = 1 if name == 'red' else 2
        obj[y:y + s, x:x + s] = 3                      # balls are red or green
      else:
        obj[y:y + s, x:x + s] = 4                      # cars are blue (no colour label)
        part[y + s - 1, x:x + s] = 5                   # with a wheel row at the bottom
    items.append({'image': img, 'masks': {'color': [colour], 'object': [obj], 'part': [part]}})
  return items


def _planted_model():
  """1x1 conv (R-G-B, G-R-B, B-R-G), ReLU, 2x2 max pool: a map aligned with the mask pixels."""
  ops = (convstack.Op('conv', 3, 1, 1, 0), convstack.Op('relu'), convstack.Op('pool', kernel=2, stride=2))
  model = convstack.ConvStack(ops, preprocessing='none', rngs=nnx.Rngs(0))
  w = -np.ones((3, 3), np.float32) + 2 * np.eye(3, dtype=np.float32)   # (in, out)
  model.features_0.kernel[...] = jnp.asarray(w[None, None])
  model.features_0.bias[...] = jnp.zeros(3)
  return model


@pytest.mark.parametrize('denominator', ['paper', 'lite'])
@pytest.mark.parametrize('mode', ['rf', 'center'])
def test_planted_detectors(broden_factory, denominator, mode):
  ds = broden.open_broden(broden_factory(CATS, LABELS, _planted_images(np.random.default_rng(0))))
  cfg = dissect.DissectConfig(layers=('pool1',), tau=0.3, upsample=mode, batch_size=8, progress=False)
  out = dissect.dissect(_planted_model(), ds, cfg).layers['pool1']
  np.testing.assert_array_equal(out.thresholds, 0)      # colours cover < 30% of pixels
  labels = tally.label_units(out.counts, ds, denominator)
  names = [ds.label_names[l] for l in labels.best_label]
  cats = [ds.categories[c] for c in labels.best_cat]
  assert names == ['red-c', 'green-c', 'car'] and cats == ['color', 'color', 'object']
  np.testing.assert_allclose(labels.best_iou, 1.0)
  ball = labels.iou[:, 3]
  assert 0 < ball[0] < 1 and 0 < ball[1] < 1 and ball[2] == 0
  line = tally.summary_line('pool1', labels, ds, 0.04)
  assert line.startswith('pool1: 3/3 units are detectors (IoU > 0.04) of 3 unique concepts')
  assert 'object 1' in line and 'color 2' in line
