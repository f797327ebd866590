"""Every architecture against real torchvision (random init): logits and every tapped module.

For each model: build torchvision's randomly initialised network, perturb every BatchNorm tensor
(so that each one's mapping matters), convert its state_dict with the same code `--weights=FILE`
uses, run both on the same photo-like images, and compare the output of EVERY module path of the
trunk (captured in torch by forward hooks, last call wins) plus the logits: max|diff| / max|ref|
<= 1e-4 per tensor, in float32. The set of module paths itself must equal torchvision's, so every
module is tappable and nothing is invented.
"""
from __future__ import annotations

import time

import jax
import numpy as np
import pytest
from flax import nnx

import models
from models import geometry, layers
from ndjax import activations
from ported_weights import torch_state
from tests.test_vgg16_port import photo_like_images

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

PARITY_RTOL = 1e-4
# Odd, non-square inputs exercise ceil_mode's partial windows, asymmetric sizes and adaptive pools
# that enlarge (VGG's 7x7 avgpool over a 4x3 map).
IMAGE_HW = (131, 117)

TORCH_MODELS = {
    'alexnet': lambda: torchvision.models.alexnet(weights=None),
    'vgg16': lambda: torchvision.models.vgg16(weights=None),
    'vgg16_bn': lambda: torchvision.models.vgg16_bn(weights=None),
    # transform_input=True is what torchvision's ImageNet GoogLeNet runs (and ndjax's default)
    'googlenet': lambda: torchvision.models.googlenet(weights=None, aux_logits=False,
                                                      transform_input=True, init_weights=True),
    'resnet18': lambda: torchvision.models.resnet18(weights=None),
    'resnet50': lambda: torchvision.models.resnet50(weights=None),
    'resnet152': lambda: torchvision.models.resnet152(weights=None),
    'densenet161': lambda: torchvision.models.densenet161(weights=None),
    'mobilenet_v2': lambda: torchvision.models.mobilenet_v2(weights=None),
}
# Module paths after the spatial trunk (pooling to a vector, the classifier): not taps.
HEAD_MODULES = {
    'alexnet': ('avgpool', 'classifier'), 'vgg16': ('avgpool', 'classifier'),
    'vgg16_bn': ('avgpool', 'classifier'), 'googlenet': ('avgpool', 'dropout', 'fc'),
    'resnet18': ('avgpool', 'fc'), 'resnet50': ('avgpool', 'fc'), 'resnet152': ('avgpool', 'fc'),
    'densenet161': ('classifier',), 'mobilenet_v2': ('classifier',),
}
# Taps that are no torch module: path -> how to get them from the captured module outputs.
NON_MODULE_TAPS = {'densenet161': {'relu5': lambda captured: torch.relu(captured['features'])}}


def torch_input(images: np.ndarray) -> 'torch.Tensor':
  """torchvision's normalisation, done in float32 the way models.layers.preprocess does it."""
  p = layers.PREPROCESSING['torch']
  x = images.astype(np.float32) * np.float32(p['scale'])
  x = (x - np.asarray(p['mean'], np.float32)) / np.asarray(p['std'], np.float32)
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def perturbed_torch_model(arch: str, seed: int = 0):
  """torchvision's randomly initialised model with every BatchNorm tensor perturbed a little:
  enough that a swapped or misplaced BN tensor shows (errors of percents), little enough to keep
  torchvision's default conditioning (a deep random net whose BNs renormalise every branch
  amplifies float32 rounding: ResNet-152's layer4 then differs from float64 by 1e-3 in torch
  itself).
  """
  torch.manual_seed(seed)
  model = TORCH_MODELS[arch]()
  with torch.no_grad():
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
      bn.weight.uniform_(0.8, 1.2)
      bn.bias.normal_(0.0, 0.1)
      bn.running_mean.normal_(0.0, 0.1)
      bn.running_var.uniform_(0.8, 1.25)
  return model.eval()


def torch_outputs(model, arch: str, images: np.ndarray) -> tuple[dict, np.ndarray]:
  """({module path: NHWC numpy output of its last call}, logits) for the trunk's modules."""
  captured = {}

  def keep(name):
    def hook(module, inputs, output):
      # clone now: an in-place ReLU after this module would otherwise rewrite what we keep
      captured[name] = output.detach().clone()
    return hook

  handles = [module.register_forward_hook(keep(name)) for name, module in model.named_modules()
             if name and name.split('.')[0] not in HEAD_MODULES[arch]]
  with torch.no_grad():
    logits = model(torch_input(images)).numpy()
  for handle in handles:
    handle.remove()
  for path, derive in NON_MODULE_TAPS.get(arch, {}).items():
    captured[path] = derive(captured)
  return {k: v.numpy().transpose(0, 2, 3, 1) for k, v in captured.items()}, logits


def ported(arch: str, torch_model):
  """ndjax model with the torch model's weights, through the state_dict converter."""
  model = models.build(arch, seed=1)
  state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
  torch_state.load_state_dict(model, state, source='torch model')
  return model


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
  scale = float(np.abs(ref).max())
  diff = float(np.abs(ours - ref).max())
  return diff / scale if scale > 0 else diff


@pytest.mark.parametrize('arch', list(TORCH_MODELS))
def test_every_tap_and_logits_match_torchvision(arch):
  start = time.perf_counter()
  images = photo_like_images(2, max(IMAGE_HW), seed=3)[:, :IMAGE_HW[0], :IMAGE_HW[1]]
  torch_model = perturbed_torch_model(arch)
  reference, reference_logits = torch_outputs(torch_model, arch, images)
  model = ported(arch, torch_model)

  paths = [name for name in model.layer_names() if name not in model.aliases]
  only_ours, only_torch = set(paths) - set(reference), set(reference) - set(paths)
  assert not only_ours and not only_torch, (
      f'tappable paths differ from torchvision: only ours {sorted(only_ours)[:5]}, '
      f'only torch {sorted(only_torch)[:5]}')
  ours = jax.device_get(activations.make_forward(model, paths)(images))
  errors = {}
  for path in paths:
    assert ours[path].shape == reference[path].shape, (path, ours[path].shape)
    errors[path] = relative_error(ours[path], reference[path])
  logits = np.asarray(model.head(ours[paths[-1]]))
  errors['logits'] = relative_error(logits, reference_logits)
  worst = max(errors, key=errors.get)
  print(f'\n{arch}: {len(paths)} taps + logits, max rel err {errors[worst]:.2e} ({worst}), '
        f'logits {errors["logits"]:.2e}, {time.perf_counter() - start:.1f} s')
  assert np.abs(reference_logits).max() > 0 and np.abs(reference[paths[-1]]).max() > 0
  bad = {p: e for p, e in errors.items() if not e <= PARITY_RTOL}
  assert not bad, f'{len(bad)} tensors over {PARITY_RTOL}: {dict(list(bad.items())[:5])}'


def test_logits_method_equals_trunk_plus_head():
  model = models.build('resnet18', seed=0)
  images = photo_like_images(1, 64, seed=1)
  features = model(images, ('layer4',))['layer4']
  np.testing.assert_allclose(np.asarray(model.logits(images)), np.asarray(model.head(features)),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('arch', ['alexnet', 'vgg16'])
def test_geometry_pass_equals_op_spec_geometry(arch):
  """The geometry the upsampler gets (traced through the model's own code) equals the closed-form
  composition over the op spec."""
  model = models.MODELS[arch](rngs=nnx.Rngs(0), num_classes=None)
  for i in range(len(model.ops)):
    assert model.rf_geometry(f'features.{i}') == geometry.rf_centres(model.ops, i)
