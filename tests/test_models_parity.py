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

from ndjax import models
from ndjax.models import geometry
from ndjax import activations
from tests.conftest import IMAGE_HW, TORCH_MODELS, perturbed_torch_model, photo_like_images, ported, relative_error, torch_outputs

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

PARITY_RTOL = 1e-4


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
