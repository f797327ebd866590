"""The model zoo's contract with the engine: names, descriptions, geometry, early stop, dissection.

Parity with torchvision is in `test_models_parity.py`; here: that every architecture answers the
engine's questions the way the semantics reference says, and dissects end to end.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ndjax import models
from ndjax import activations, dissect, upsample
from ndjax.data import broden
from ndjax.probes import synthetic


@functools.lru_cache(maxsize=None)
def headless(name: str, seed: int = 0):
  """The model without its classifier: everything the engine touches, built faster (and once:
  no test here changes a model)."""
  return models.MODELS[name](rngs=nnx.Rngs(seed), num_classes=None)


@pytest.mark.parametrize('name', sorted(models.MODELS))
def test_registry_contract(name):
  model = models.build(name, seed=0)
  backbone = name == 'dinov2_vits14'                  # a ViT without a classifier
  assert model.arch == name and model.num_classes == (None if backbone else 1000)
  vit = name.startswith('vit_') or backbone
  assert model.preprocessing == ('caffe' if name == 'vgg16' else 'inception'
                                 if name.startswith('vit_') else 'torch')
  (default,) = models.DEFAULT_LAYERS[name]
  assert default in model.layer_names()
  assert model.describe(default).startswith(model.resolve(default) + ': ')
  assert ('patch tokens as an' if vit else 'post-ReLU') in model.describe(default)
  names = model.layer_names()
  assert len(names) == len(set(names))
  for layer in names:
    model.resolve(layer)
    model.rf_geometry(layer)


@pytest.mark.parametrize('name,alias,path', [
    ('alexnet', 'conv5', 'features.11'), ('alexnet', 'pool5', 'features.12'),
    ('vgg16', 'conv5_3', 'features.29'), ('vgg16', 'pool5', 'features.30'),
    ('vgg16_bn', 'conv5_3', 'features.42'), ('vgg16_bn', 'conv1_1', 'features.2'),
    ('googlenet', 'inception_4e', 'inception4e'), ('googlenet', 'pool4', 'maxpool4'),
    ('resnet50', 'res2c', 'layer1.2'), ('resnet50', 'res4f', 'layer3.5'),
    ('resnet152', 'res3b7', 'layer2.7'), ('resnet152', 'res4b35', 'layer3.35'),
    ('resnet152', 'res5c', 'layer4.2'), ('resnet152', 'pool1', 'maxpool'),
])
def test_paper_names(name, alias, path):
  model = headless(name)
  assert model.resolve(alias) == path
  assert model.describe(alias).startswith(f'{path}: ')
  assert model.describe(alias).endswith(f'; paper name {alias}')


def test_module_paths_mean_that_module_and_paper_names_mean_post_relu():
  vgg = headless('vgg16')
  assert vgg.describe('features.28') == 'features.28: Conv2d output (pre-ReLU)'
  assert vgg.describe('conv5_3') == 'features.29: ReLU output (post-ReLU); paper name conv5_3'
  resnet = headless('resnet18')
  assert 'post-ReLU' in resnet.describe('layer4')
  assert 'pre-activation' in resnet.describe('layer4.1.bn2')
  googlenet = headless('googlenet')
  assert 'post-ReLU' in googlenet.describe('inception4e.branch1')
  assert 'pre-ReLU' in googlenet.describe('inception4e.branch1.bn')
  densenet = headless('densenet161')
  assert 'pre-ReLU' in densenet.describe('features')
  assert 'post-ReLU' in densenet.describe('relu5')


def test_a_module_called_twice_means_its_last_call():
  """A ResNet block's one ReLU module runs after bn1 and after the sum: a torch hook that keeps
  the latest output sees the block output."""
  model = headless('resnet18')
  images = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), np.uint8)
  out = model(images, ('layer1.0.relu', 'layer1.0', 'layer1.0.bn1'))
  np.testing.assert_array_equal(np.asarray(out['layer1.0.relu']), np.asarray(out['layer1.0']))
  assert 'runs 2 times per pass, this is its last call' in model.describe('layer1.0.relu')


# Unit centres by hand: conv/pool (k, s, p) move the first centre by spacing * ((k - 1)/2 - p).
@pytest.mark.parametrize('name,layer,expected', [
    # 11/4/2 conv: 0.5 + 3 = 3.5, x4; 3/2 pool: +4 -> 7.5, x8; 5/1/2 conv: +0; pool: +8 -> 15.5, x16
    ('alexnet', 'conv5', (15.5, 16.0)),
    ('alexnet', 'features.0', (3.5, 4.0)),
    ('vgg16', 'conv5_3', (8.0, 16.0)),            # pad-1 convs, 2x2 pools: (j + 0.5) * 16
    ('resnet18', 'layer4', (0.5, 32.0)),          # 7/2/3 conv and 3/2/1 pool keep 0.5
    ('resnet50', 'layer2.0.downsample', (0.5, 8.0)),
    # 7/2/3: 0.5, x2; 3/2/0 ceil pools: +2 -> 2.5, x4; +4 -> 6.5, x8; +8 -> 14.5, x16 (4e)
    ('googlenet', 'inception4e', (14.5, 16.0)),
    ('googlenet', 'inception5b', (22.5, 32.0)),   # 2/2 pool: +16 * 0.5
    ('densenet161', 'relu5', (14.5, 32.0)),       # three 2x2 average pools: +2, +4, +8
    ('mobilenet_v2', 'features', (0.5, 32.0)),
])
def test_rf_geometry_by_hand(name, layer, expected):
  assert headless(name).rf_geometry(layer) == expected


def test_rf_upsampling_differs_from_center_on_alexnet_conv5():
  """AlexNet's unpadded 11x11/4 conv shifts the unit grid: `rf` is not plain bilinear there."""
  model = headless('alexnet')
  shape = activations.tap_shapes(model, ('conv5',), (227, 227))['conv5']
  assert shape == (13, 13, 256)
  rf = upsample.matrices('rf', (13, 13), (227, 227), (113, 113), model.rf_geometry('conv5'))
  center = upsample.matrices('center', (13, 13), (227, 227), (113, 113), None)
  assert np.abs(rf[0] - center[0]).max() > 0.1
  x = np.random.default_rng(0).standard_normal(13)
  origin, spacing = model.rf_geometry('conv5')
  for m in (0, 20, 56, 112):
    position = np.clip(((m + 0.5) * 227 / 113 - origin) / spacing, 0, 12)
    lo = int(np.floor(position))
    hi, f = min(lo + 1, 12), position - lo
    assert float(rf[0][m] @ x) == pytest.approx((1 - f) * x[lo] + f * x[hi], abs=1e-5)


def test_forward_stops_after_the_deepest_tap():
  model = headless('resnet18')
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.uint8)

  def convolutions(taps):
    jaxpr = jax.make_jaxpr(lambda x: model(x, taps))(images)
    return str(jaxpr).count('conv_general_dilated')
  assert convolutions(('layer1',)) == 1 + 4        # stem + two BasicBlocks of two convs
  assert convolutions(('layer1', 'layer2.0.conv1')) == 6
  assert convolutions(('layer4',)) == 20           # 1 + 16 + 3 downsample convs


def test_unknown_layer_message_lists_names_and_suggests():
  with pytest.raises(KeyError) as caught:
    headless('resnet152').resolve('layer5')
  message = caught.value.args[0]
  assert message.startswith("unknown layer 'layer5' for resnet152 (did you mean layer")
  assert 'res5c' in message and 'layer4.2' in message and 'layer3.35' in message
  assert 'deeper module paths such as' in message and '\n' not in message
  with pytest.raises(KeyError) as caught:
    headless('vgg16').resolve('conv6_1')
  paper = ('conv1_1, conv1_2, pool1, conv2_1, conv2_2, pool2, conv3_1, conv3_2, conv3_3, pool3, '
           'conv4_1, conv4_2, conv4_3, pool4, conv5_1, conv5_2, conv5_3, pool5, ')
  paths = ''.join(f'features.{i}, ' for i in range(31)) + 'features'
  assert caught.value.args[0].endswith(f'valid: {paper}{paths}')


def test_logits_need_a_head():
  with pytest.raises(ValueError, match='no classifier head'):
    headless('resnet18').logits(np.zeros((1, 64, 64, 3), np.uint8))


# --- dissection on every family -------------------------------------------------------------------
@pytest.fixture(scope='module')
def probe(tmp_path_factory):
  root = synthetic.generate(tmp_path_factory.mktemp('zoo') / 'probe', n_images=16, seed=0,
                            image_size=112, mask_size=56, progress=False)
  return broden.open_broden(str(root))


@pytest.mark.parametrize('name,layers', [
    ('alexnet', ('conv5', 'features.10')),
    ('googlenet', ('inception4e', 'inception5b.branch2')),
    ('resnet18', ('layer4', 'layer3.1.conv2')),
    ('densenet161', ('relu5', 'features.denseblock3.denselayer2')),
    ('mobilenet_v2', ('features', 'features.14')),
])
def test_dissection_runs_on_each_family(probe, name, layers):
  model = headless(name, seed=1)
  out = dissect.dissect(model, probe, dissect.DissectConfig(
      layers=layers, tau=0.02, batch_size=8, progress=False, cache_dir=None, topk=0))
  assert out.images_used == 16
  for layer in layers:
    result = out.layers[layer]
    units = model.channels(layer)
    assert result.thresholds.shape == (units,) and np.isfinite(result.thresholds).all()
    assert result.description == model.describe(layer)
    assert result.counts.inter.shape[0] == units and result.counts.act_pixels.sum() > 0
