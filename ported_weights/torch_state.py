"""PyTorch checkpoints -> ndjax params: torchvision state_dicts, Places365 .pth.tar, CRAFT.

Reading a .pth needs PyTorch (the optional `torch` extra); everything after reading is numpy.

Key mapping: an ndjax model stores the layer at torchvision module path `a.b.c` in attribute
`a_b_c` (see `models.layers.TapModel`), so a state_dict key `<module path>.<tensor>` maps by one
rule; only the tensor layout changes:
  Conv2d       weight (out, in/groups, kh, kw) -> kernel (kh, kw, in/groups, out); bias
  BatchNorm2d  weight -> scale, bias, running_mean -> mean, running_var -> var
               (num_batches_tracked only matters for training: dropped)
  Linear       weight (out, in) -> kernel (in, out); bias
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Mapping

import numpy as np

from ndjax.models import layers
from ndjax.ported_weights import checkpoint
from ndjax.ported_weights.fetch import WeightsError

TORCH_MISSING = ("reading PyTorch weights ({path}) needs PyTorch, which ndjax does not install by "
                 "default: pip install 'ndjax[torch]' (or pip install 'torch>=2.4'), then rerun")

# torchvision's old DenseNet checkpoints (the ones its download URLs serve) name `norm1` as
# `norm.1`; torchvision's own loader renames them with this pattern.
_OLD_DENSENET_KEY = re.compile(r'^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.'
                               r'(?:weight|bias|running_mean|running_var|num_batches_tracked))$')

# Module paths a checkpoint may carry that the eval-mode network never runs, per arch.
UNUSED_IN_EVAL = {'googlenet': ('aux1.', 'aux2.')}

# What torch.load(weights_only=True) says when a pickle needs a class (a whole nn.Module) or is
# not a pickle at all.
_REFUSED_GLOBAL = re.compile(r'Unsupported global: GLOBAL ([\w.]+)')
_WEIGHTS_UNPICKLER_DETAIL = re.compile(r'WeightsUnpickler error:\s*(.+?)(?:\n\n|$)', re.S)

# CRAFT (easyocr's craft_mlt_25k.pth): `basenet.slice<k>.<N>` are torchvision vgg16_bn
# `features.<N>` (CRAFT kept the indices) for N = 0..38, i.e. up to conv5_2's BatchNorm; slice5
# (an extra pool + dilated fc6/fc7 convs) and the U-net decoder are not VGG16-BN.
_CRAFT_TRUNK_KEY = re.compile(r'^basenet\.slice[1-4]\.(\d+)\.(\w+)$')
# The deepest vgg16_bn module CRAFT's weights determine: conv5_2 after its (parameter-free) ReLU.
CRAFT_TRUNK_END = 'features.39'


def read_torch_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A .pth / .pth.tar file -> {key: float32 numpy array}, with `module.` prefixes removed.

  Accepts a bare state_dict or a training checkpoint holding one under 'state_dict' (Places365's
  format). Refuses whole pickled models with a message saying how to re-save them.
  """
  try:
    import torch
  except ImportError:
    raise WeightsError(TORCH_MISSING.format(path=path)) from None
  try:
    # weights_only: never run code from a downloaded pickle; it also rejects whole models
    loaded = torch.load(os.fspath(path), map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    raise WeightsError(_unpickling_message(path, str(e))) from None
  except EOFError:
    raise WeightsError(f'cannot read {path} with torch.load: the file is empty or truncated'
                       ) from None
  except (RuntimeError, OSError, ValueError, zipfile.BadZipFile) as e:
    raise WeightsError(f'cannot read {path} with torch.load: {type(e).__name__}: '
                       f'{_first_line(str(e))}') from None
  state = loaded
  if isinstance(state, Mapping) and 'state_dict' in state:
    state = state['state_dict']
  if not isinstance(state, Mapping) or not state:
    raise WeightsError(f'{path} holds a {type(loaded).__name__}, not a state_dict (a mapping of '
                       "parameter names to tensors, optionally under a 'state_dict' key)")
  arrays = {}
  for key, value in state.items():
    if not isinstance(value, torch.Tensor):
      top_level = ', '.join(map(str, list(loaded)[:8]))
      raise WeightsError(f'{path}: entry {key!r} is a {type(value).__name__}, not a tensor; is '
                         f'this a state_dict? (top-level keys: {top_level})')
    name = key[len('module.'):] if key.startswith('module.') else key   # nn.DataParallel
    tensor = value.detach().cpu()
    arrays[name] = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
  return arrays


def _first_line(text: str) -> str:
  return text.strip().splitlines()[0][:200] if text.strip() else ''


def _unpickling_message(path, error: str) -> str:
  """One line for torch.load(weights_only=True)'s refusal: whole pickled models get the way out."""
  refused = _REFUSED_GLOBAL.search(error)
  if refused and not refused.group(1).startswith(('collections.', 'torch.')):
    return (f'{path} is a whole pickled model ({refused.group(1)}), not a state_dict, and ndjax '
            'does not run code from pickles; re-save its weights where that class imports: '
            f"python -c \"import torch; torch.save(torch.load('{path}', weights_only=False)"
            ".state_dict(), 'state_dict.pth')\" and pass state_dict.pth")
  detail = _WEIGHTS_UNPICKLER_DETAIL.search(error)
  return (f'cannot read {path} with torch.load: not a PyTorch checkpoint, or a corrupt one '
          f'({detail.group(1).strip() if detail else _first_line(error)})')


def is_craft(state: Mapping[str, np.ndarray]) -> bool:
  return any(key.startswith('basenet.slice') for key in state)


def craft_trunk(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """CRAFT's VGG16-BN trunk under torchvision vgg16_bn names (`features.N.*`)."""
  trunk = {}
  for key, value in state.items():
    match = _CRAFT_TRUNK_KEY.match(key)
    if match:
      trunk[f'features.{match.group(1)}.{match.group(2)}'] = value
  if not trunk:
    raise WeightsError('no CRAFT VGG16-BN trunk keys (basenet.slice1..4.N.*) found')
  return trunk


_DROP = 'drop'


def _layout(layer, tensor: str, value: np.ndarray) -> tuple[str, np.ndarray] | None:
  """(ndjax variable name, value in ndjax layout) for one torch tensor, (_DROP, value) for a
  tensor eval mode does not use, None for a tensor this layer does not have."""
  if isinstance(layer, layers.Conv2d):
    if tensor == 'weight':   # a wrong rank is left as is for the shape check to name
      return 'kernel', value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
    if tensor == 'bias':
      return 'bias', value
  elif isinstance(layer, layers.BatchNorm2d):
    if tensor == 'num_batches_tracked':
      return _DROP, value
    names = {'weight': 'scale', 'bias': 'bias', 'running_mean': 'mean', 'running_var': 'var'}
    if tensor in names:
      return names[tensor], value
  elif isinstance(layer, layers.Linear):
    if tensor == 'weight':
      return 'kernel', value.T if value.ndim == 2 else value
    if tensor == 'bias':
      return 'bias', value
  elif tensor in getattr(layer, 'TORCH_NAMES', {}):   # layers that say how torch names them
    return layer.TORCH_NAMES[tensor], value
  return None


def _torch_shape(name: str, shape: tuple) -> tuple:
  """An ndjax variable's shape as torch would write it, for messages in the checkpoint's terms."""
  if name == 'kernel' and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if name == 'kernel' and len(shape) == 2:
    return (shape[1], shape[0])
  return shape


def _torch_tensor_name(layer, name: str) -> str:
  if hasattr(layer, 'TORCH_NAMES'):
    return {v: k for k, v in layer.TORCH_NAMES.items()}[name]
  if isinstance(layer, layers.BatchNorm2d):
    return {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}[name]
  return {'kernel': 'weight', 'bias': 'bias'}[name]


def prepare_model(model, state: Mapping[str, np.ndarray]) -> None:
  """Give `model` the head the state_dict has: none, or its class count (Places365: 365)."""
  head_paths = model.head_paths()
  if not head_paths:
    return
  weight = state.get(f'{head_paths[-1]}.weight')
  model.reset_classifier(None if weight is None else int(weight.shape[0]))


def load_state_dict(model, state: Mapping[str, np.ndarray], *, source: str) -> None:
  """Shape `model` like a torchvision-named state_dict (its head) and assign every tensor.

  torchvision, Places365 and CRAFT weights all expect torchvision's input normalisation.
  """
  prepare_model(model, state)
  model.preprocessing = 'torch'
  params = params_from_state_dict(model, state, source=source)
  checkpoint.assign_params(model, params, source=source)


def params_from_state_dict(model, state: Mapping[str, np.ndarray], *,
                           source: str) -> dict[str, dict[str, np.ndarray]]:
  """torchvision-named state_dict -> `model`'s pure param dict ({'layer1_0_conv1': {'kernel'}}).

  Every tensor must land on a variable of the same shape and every variable must be filled;
  otherwise one WeightsError names the offending key in the checkpoint's own terms.
  """
  arch = model.arch
  unused = UNUSED_IN_EVAL.get(arch, ())
  expected = checkpoint.variable_shapes(model)   # 'layer1_0_conv1.kernel' -> shape, every variable
  params: dict[str, dict[str, np.ndarray]] = {}
  problems = []
  rename = getattr(model, 'torch_key', None)       # a model whose torch keys need renaming
  for key, value in state.items():
    key = _OLD_DENSENET_KEY.sub(r'\1\2', key)
    key = rename(key) if rename else key
    if key.startswith(unused):
      continue
    path, _, tensor = key.rpartition('.')
    if not path or not model.has_layer(path):
      problems.append(f'{key} {tuple(value.shape)} is not a parameter of {arch}')
      continue
    layer = model.layer(path)
    mapped = _layout(layer, tensor, value)
    if mapped is not None and mapped[0] == _DROP:
      continue
    target = f'{model.attribute(path)}.{mapped[0]}' if mapped else None
    if target not in expected:
      problems.append(f'{key} {tuple(value.shape)} is not a parameter of {arch}')
    elif tuple(mapped[1].shape) != expected[target]:
      problems.append(f'{key} has shape {tuple(value.shape)} in {source} but '
                      f'{_torch_shape(mapped[0], expected[target])} in {arch}')
    else:
      params.setdefault(model.attribute(path), {})[mapped[0]] = np.ascontiguousarray(
          mapped[1], np.float32)
  paths = {model.attribute(path): path for path in model.parameter_paths()}
  for target in expected:
    attribute, name = target.rsplit('.', 1)
    if name not in params.get(attribute, {}):
      path = paths[attribute]
      problems.append(f'{path}.{_torch_tensor_name(model.layer(path), name)} is missing from '
                      f'{source}')
  if problems:
    more = f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''
    raise WeightsError(f'{source} does not fit {arch}: {problems[0]}{more}')
  return params
