"""Converted weights on disk: an Orbax checkpoint of a model's variables plus `manifest.json`.

Layout of a checkpoint directory:
  manifest.json   arch, preprocessing, source and its sha256, parameter count (for humans and for
                  the arch/preprocessing checks on load)
  params/         Orbax checkpoint of the model's nnx.Param and nnx.BatchStat variables, as the
                  pure nested dict `nnx.to_pure_dict` gives ({'features_0': {'kernel', 'bias'}})

A directory only ever appears complete: it is written under a temp name beside the target and
renamed into place, so an interrupted conversion never leaves something `load_into` would accept.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from ndjax.models.layers import PREPROCESSING, TapModel
from ndjax.ported_weights.fetch import WeightsError

MANIFEST_FILE = 'manifest.json'
PARAMS_DIR = 'params'
MANIFEST_FORMAT = 'ndjax-weights/1'
# Everything a trained model needs besides its code: weights and BN running statistics (no RNG).
SAVED_VARIABLES = (nnx.Param, nnx.BatchStat)


@contextlib.contextmanager
def _orbax_quiet():
  """Hide Orbax's INFO records (dozens per save/load) from programs that log at INFO, e.g. absl apps.

  Orbax logs through absl, i.e. the stdlib 'absl' logger; its warnings and errors still pass.
  """
  absl_logger = logging.getLogger('absl')
  previous = absl_logger.level
  if absl_logger.getEffectiveLevel() < logging.WARNING:
    absl_logger.setLevel(logging.WARNING)
  try:
    yield
  finally:
    absl_logger.setLevel(previous)


def model_arch(model: nnx.Module) -> str:
  return getattr(model, 'arch', type(model).__name__)


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'features_0': {'kernel': x}} -> {'features_0.kernel': x}."""
  flat = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping):
      flat.update(_flatten(value, name + '.'))
    else:
      flat[name] = value
  return flat


def variable_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
  """'features_0.kernel' -> shape, for every variable a checkpoint holds."""
  pure = nnx.to_pure_dict(nnx.state(model, SAVED_VARIABLES))
  return {name: tuple(value.shape) for name, value in _flatten(pure).items()}


def param_count(model: nnx.Module) -> int:
  pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return int(sum(np.prod(value.shape, dtype=np.int64) for value in _flatten(pure).values()))


def check_shapes(model_shapes: Mapping[str, tuple], given_shapes: Mapping[str, tuple], *,
                 arch: str, source: str) -> None:
  """Raise a one-line WeightsError naming the first param that does not fit, and how many more."""
  problems = []
  for name in sorted(set(model_shapes) | set(given_shapes)):
    if name not in given_shapes:
      problems.append(f'{name} is missing from {source} (model shape {model_shapes[name]})')
    elif name not in model_shapes:
      problems.append(f'{name} in {source} (shape {given_shapes[name]}) is not a {arch} param')
    elif tuple(model_shapes[name]) != tuple(given_shapes[name]):
      problems.append(f'{name} has shape {tuple(given_shapes[name])} in {source} but '
                      f'{tuple(model_shapes[name])} in {arch}')
  if problems:
    more = f' (and {len(problems) - 1} more mismatched params)' if len(problems) > 1 else ''
    raise WeightsError(f'weights do not fit {arch}: {problems[0]}{more}')


def assign_params(model: nnx.Module, params: Mapping[str, Any], *, source: str) -> None:
  """Write a pure nested dict of arrays into `model`, after checking every name and shape.

  The values are COPIED: on CPU, jax may alias a numpy array's memory, and a caller's array (a
  torch tensor's `.numpy()` view, which torch's train mode updates in place) must never be able
  to change the model's weights behind its back."""
  check_shapes(variable_shapes(model), {k: np.shape(v) for k, v in _flatten(params).items()},
               arch=model_arch(model), source=source)
  state = nnx.state(model, SAVED_VARIABLES)
  current = nnx.to_pure_dict(state)
  nnx.replace_by_pure_dict(
      state, jax.tree.map(lambda new, old: jnp.array(np.array(new, old.dtype, copy=True)), dict(params),
                             current))
  nnx.update(model, state)


def save_checkpoint(model: nnx.Module, ckpt_dir: str | os.PathLike, *, source: str,
                    source_sha256: str, overwrite: bool = False) -> Path:
  """Save `model`'s variables and manifest to `ckpt_dir` atomically; returns `ckpt_dir`."""
  ckpt_dir = Path(ckpt_dir).expanduser().absolute()
  if ckpt_dir.exists() and not overwrite:
    raise WeightsError(f'{ckpt_dir} already exists; pass overwrite=True (--overwrite) to replace it')
  manifest = {
      'format': MANIFEST_FORMAT,
      'arch': model_arch(model),
      'preprocessing': getattr(model, 'preprocessing', None),
      'preprocessing_spec': PREPROCESSING.get(getattr(model, 'preprocessing', None)),
      'source': source,
      'source_sha256': source_sha256,
      'param_count': param_count(model),
      # None: trunk only (no classifier head); else its class count (ImageNet 1000, Places 365)
      'num_classes': getattr(model, 'num_classes', None),
      # None: the whole trunk; else the last module path the weights cover (CRAFT's VGG16-BN)
      'trunk_end': getattr(model, 'trunk_end', None),
  }
  staging = ckpt_dir.parent / f'.{ckpt_dir.name}.tmp-{uuid.uuid4().hex[:12]}'
  try:
    staging.mkdir(parents=True)
    with _orbax_quiet():
      ocp.v1.save(staging / PARAMS_DIR, nnx.to_pure_dict(nnx.state(model, SAVED_VARIABLES)))
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + '\n')
    if ckpt_dir.exists():  # overwrite: move the old one aside first, a rename cannot replace it
      retired = ckpt_dir.parent / f'.{ckpt_dir.name}.old-{uuid.uuid4().hex[:12]}'
      os.rename(ckpt_dir, retired)
      os.rename(staging, ckpt_dir)
      shutil.rmtree(retired, ignore_errors=True)
    else:
      os.rename(staging, ckpt_dir)
  except OSError as e:
    raise WeightsError(f'cannot write checkpoint {ckpt_dir}: {e.strerror or e}') from None
  finally:
    if staging.exists():
      shutil.rmtree(staging, ignore_errors=True)
  return ckpt_dir


def read_manifest(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
  path = Path(ckpt_dir).expanduser() / MANIFEST_FILE
  try:
    manifest = json.loads(path.read_text())
  except FileNotFoundError:
    raise WeightsError(f'{Path(ckpt_dir)} is not a converted ndjax checkpoint: no {MANIFEST_FILE}'
                       ) from None
  except (OSError, ValueError) as e:
    raise WeightsError(f'cannot read {path}: {e}') from None
  if not isinstance(manifest, dict) or manifest.get('format') != MANIFEST_FORMAT:
    raise WeightsError(f'{path} is not an ndjax weights manifest (format '
                       f'{manifest.get("format") if isinstance(manifest, dict) else None!r}, '
                       f'expected {MANIFEST_FORMAT!r})')
  return manifest


def saved_num_classes(model: nnx.Module, saved_shapes: Mapping[str, tuple]) -> int | None:
  """Class count of the checkpoint's classifier (its last layer's width); None if it has none."""
  head_paths = model.head_paths()
  if not head_paths:
    return None
  kernel = saved_shapes.get(f'{model.attribute(head_paths[-1])}.kernel')
  return None if kernel is None else int(kernel[-1])


def adapt_model(model: nnx.Module, manifest: Mapping[str, Any],
                saved_shapes: Mapping[str, tuple]) -> None:
  """Shape `model` like the weights about to be loaded: their input convention, their classifier
  (a trunk-only file drops the head, Places365 has 365 classes) and their trunk end.

  Preprocessing belongs to the weights, not the architecture: the same vgg16 runs Caffe-convention
  ImageNet weights, HED's own BGR mean, or torchvision's RGB mean/std.
  """
  preprocessing = manifest.get('preprocessing')
  if preprocessing not in PREPROCESSING:
    raise WeightsError(f'weights for {manifest.get("arch")} expect unknown preprocessing '
                       f'{preprocessing!r} (known: {", ".join(PREPROCESSING)})')
  model.preprocessing = preprocessing
  if not isinstance(model, TapModel):
    return
  try:
    model.truncate(manifest.get('trunk_end'))
  except KeyError as e:
    raise WeightsError(f'weights end at {manifest.get("trunk_end")!r}, which is not a layer of '
                       f'{model_arch(model)}') from None
  if model.trunk_end is None:
    model.reset_classifier(saved_num_classes(model, saved_shapes))


def load_into(model: nnx.Module, ckpt_dir: str | os.PathLike) -> dict[str, Any]:
  """Restore a converted checkpoint into an existing model in place; returns its manifest.

  The arch and every variable's shape are checked before any value is restored, so a mismatch
  leaves the model's weights untouched and says exactly which param does not fit. Before the
  check the model takes on the checkpoint's structure (`adapt_model`: preprocessing, head, trunk
  end), which is part of what the weights are.
  """
  ckpt_dir = Path(ckpt_dir).expanduser().absolute()     # Orbax refuses relative paths
  manifest = read_manifest(ckpt_dir)
  arch = model_arch(model)
  if manifest.get('arch') != arch:
    raise WeightsError(f'{ckpt_dir} holds weights for arch {manifest.get("arch")!r}, '
                       f'not {arch!r}')
  params_dir = ckpt_dir / PARAMS_DIR
  try:
    with _orbax_quiet():
      saved_tree = ocp.v1.metadata(params_dir).metadata
  except Exception as e:  # Orbax raises assorted types for missing/corrupt dirs; one line for all
    raise WeightsError(f'cannot read Orbax checkpoint {params_dir}: {type(e).__name__}: '
                       f'{str(e).splitlines()[0] if str(e) else ""}') from None
  saved_shapes = {name: tuple(meta.shape) for name, meta in _flatten(saved_tree).items()}
  adapt_model(model, manifest, saved_shapes)
  check_shapes(variable_shapes(model), saved_shapes, arch=arch, source=str(ckpt_dir))

  state = nnx.state(model, SAVED_VARIABLES)
  # Restore onto the devices the model's arrays already live on (and say so: Orbax warns if not).
  abstract = jax.tree.map(
      lambda value: jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=value.sharding),
      nnx.to_pure_dict(state))
  with _orbax_quiet():
    restored = ocp.v1.load(params_dir, abstract)
  nnx.replace_by_pure_dict(state, restored)
  nnx.update(model, state)
  return manifest
