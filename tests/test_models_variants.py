"""The paper's AlexNet training variants (Sec 3.6-3.8): the intended layers, widths, and a
parameter count equal to a hand count (and, for the baseline, torchvision's published 61,100,840)."""
import jax
import numpy as np
import pytest
from flax import nnx

from ndjax import models


def n_params(model) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def conv(cin, cout, k):
  return cin * cout * k * k + cout


def alexnet_count(widths, classes, gap, bn=False):
  c1, c2, c3, c4, c5 = widths
  trunk = conv(3, c1, 11) + conv(c1, c2, 5) + conv(c2, c3, 3) + conv(c3, c4, 3) + conv(c4, c5, 3)
  trunk += 2 * sum(widths) if bn else 0                   # BN weight + bias per channel
  if gap:
    return trunk + c5 * classes + classes
  return trunk + (c5 * 36 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * classes + classes)


def test_baseline_is_torchvision_alexnet():
  assert n_params(models.build('alexnet')) == 61_100_840 == alexnet_count(
      (64, 192, 384, 256, 256), 1000, gap=False)


@pytest.mark.parametrize('name,widths,gap,bn', [
    ('alexnet_bn', (64, 192, 384, 256, 256), False, True),
    ('alexnet_nodropout', (64, 192, 384, 256, 256), False, False),
    ('alexnet_gap_wide', (64, 192, 384, 256, 768), True, False),
    ('alexnet_gap_wideall', (64, 576, 1152, 768, 768), True, False),
    ('alexnet_gap_wide1024', (64, 192, 384, 256, 1024), True, False),
    ('alexnet_gap_wide2048', (64, 192, 384, 256, 2048), True, False),
])
def test_variant_layers_and_parameters(name, widths, gap, bn):
  model = models.MODELS[name](rngs=nnx.Rngs(0), num_classes=10)
  assert n_params(model) == alexnet_count(widths, 10, gap, bn)
  kinds = [op.kind for op in model.ops]
  assert kinds.count('conv') == 5 and kinds.count('bn') == (5 if bn else 0)
  assert kinds.count('pool') == (2 if gap else 3)
  dropouts = [op for op in model.classifier_ops if op.kind == 'dropout']
  assert len(dropouts) == (0 if gap or name == 'alexnet_nodropout' else 2)
  images = np.random.default_rng(0).integers(0, 256, (2, 113, 113, 3), np.uint8)
  out = model(images, ('conv5',))['conv5']
  assert out.shape[-1] == widths[-1] and (np.asarray(out) >= 0).all()      # post-ReLU conv5
  assert model.logits(images).shape == (2, 10)
  if bn:
    assert 'BatchNorm2d' in model.describe('features.1')
