"""The library API: every entry point (CLI, experiments, training, toolbox, benchmarks) calls these.

  from ndjax import api
  model = api.load_model('vgg16')                       # real ImageNet weights, by checksum
  ds = api.open_probe()                                 # the default probe set (or a path/object)
  out = api.dissect(model, ds, ['conv5_3'], views=api.ViewSpec(rotation_seed=0,
                                                                rotation_alphas=(0, 0.5, 1)))
  lines = api.write_outputs(out, ds, 'ndjax_results/vgg16_imagenet', model=model)

Nothing here reads flags or prints: bad input raises `NdjaxError` (or a subclass) with a one-line
message, which the CLI turns into `ndjax: error: ...` and exit status 2.
"""
from __future__ import annotations

import dataclasses
import io
import os
import platform
import sys
from typing import Sequence

import numpy as np

from ndjax import dissect as dissect_lib
from ndjax import fileio, tally
from ndjax.data import broden
from ndjax.dissect import DissectConfig, DissectOutput, ViewResult   # noqa: F401  (re-exported)
from ndjax.views import View, ViewSpec                               # noqa: F401  (re-exported)

COUNTS_NAME = 'counts.npz'


class NdjaxError(ValueError):
  """Bad input, one line for the user: unknown model, weights, layer, dataset, view..."""


@dataclasses.dataclass
class LoadedModel:
  module: object                # the nnx model (TapModel contract, see ndjax/models/layers.py)
  name: str
  weights: str                  # 'random', a registered name, or a path
  seed: int
  manifest: dict | None = None  # where the weights came from (None for random init)

  @property
  def run_name(self) -> str:
    return run_name(self.name, self.weights, self.seed)


def default_weights(name: str) -> str:
  """'imagenet' where the registry has it for this model, else 'random'."""
  import ndjax.ported_weights.registry as registry
  return 'imagenet' if name in registry.PRETRAINED['imagenet'] else 'random'


def run_name(model: str, weights: str, seed: int) -> str:
  """Default run folder: <model>_<weights>, plus _s<seed> for random weights."""
  wname = os.path.basename(os.path.normpath(weights)) if os.sep in weights else weights
  return f'{model}_{wname}' + (f'_s{seed}' if weights == 'random' else '')


def build_model(name: str, seed: int = 0) -> LoadedModel:
  """A zoo model with the definition's own random init from `seed`."""
  from ndjax import models
  if name not in models.MODELS:
    raise NdjaxError(f'unknown model {name!r}; valid: {", ".join(sorted(models.MODELS))}')
  return LoadedModel(models.build(name, seed), name, 'random', seed)


def set_weights(model: LoadedModel, weights: str) -> LoadedModel:
  """Load `weights` into the model in place: a registered name, 'random' (keep the init), a
  checkpoint made by ndjax.ported_weights.convert or a raw weights file (converted once, cached)."""
  import ndjax.ported_weights.registry as registry
  if weights != 'random':
    try:
      model.manifest = registry.load_weights(model.module, weights)
    except registry.WeightsError as e:
      raise NdjaxError(str(e)) from None
  model.weights = weights
  return model


def weights_arch(weights: str | None) -> str | None:
  """The zoo model a checkpoint directory was saved from (its manifest's arch: a training
  snapshot records its variant), or None for anything else."""
  import ndjax.ported_weights.checkpoint as checkpoint
  from ndjax import models
  if not weights or not os.path.isfile(os.path.join(weights, checkpoint.MANIFEST_FILE)):
    return None
  try:
    arch = checkpoint.read_manifest(weights).get('arch')
  except checkpoint.WeightsError as e:
    raise NdjaxError(str(e)) from None
  return arch if arch in models.MODELS else None


def load_model(name: str, weights: str | None = None, seed: int = 0) -> LoadedModel:
  """A zoo model with its weights (default: 'imagenet' where it exists, else 'random')."""
  return set_weights(build_model(name, seed), weights or default_weights(name))


def resolve_layers(model, layers: Sequence[str] | None = None) -> list[str]:
  """`layers` (or the model's default: its last conv layer) checked against what it has."""
  from ndjax import models
  module = getattr(model, 'module', model)
  if isinstance(layers, str):
    layers = [layers]
  layers = list(layers) if layers else list(models.default_layers(module))
  if len(set(layers)) != len(layers):
    raise NdjaxError(f'a layer is listed twice: {",".join(layers)}')
  for l in layers:
    try:
      module.resolve(l)
    except KeyError as e:
      raise NdjaxError(e.args[0]) from None
  return layers


def open_probe(dataset=None, probe: str = 'composite', probe_images: int = 1000,
               progress: bool = True, notices=sys.stderr):
  """The probe set: a Broden-format object (returned as is), a directory or TFDS copy, or — with
  no dataset — the built-in set `probe` ('composite', falling back to 'synthetic' with a notice
  when its ingredients cannot be fetched; or 'synthetic'), built once into the cache."""
  if dataset is not None and not isinstance(dataset, (str, os.PathLike)):
    return dataset
  from ndjax.data import open_dataset
  from ndjax.fileio import cache_root
  try:
    if dataset is not None:
      path = dataset
    elif probe == 'composite':
      from ndjax.probes import composite
      path, notice = composite.resolve_default_probe(cache_root(), progress=progress)
      if notice and notices is not None:
        print(notice, file=notices, flush=True)
    elif probe == 'synthetic':
      from ndjax.probes import synthetic
      path = synthetic.ensure_probe_set(cache_root(), n_images=probe_images, seed=0,
                                        progress=progress)
    else:
      raise NdjaxError(f'unknown probe set {probe!r}; valid: composite, synthetic')
    return open_dataset(str(path))
  except (broden.BrodenFormatError, ValueError) as e:   # a probe set that cannot be built
    raise NdjaxError(' '.join(str(e).split())) from None


def dissect(model, dataset=None, layers: Sequence[str] | None = None, *,
            views: ViewSpec | None = None, tau: float | None = None, weights: str | None = None,
            seed: int = 0, **options) -> DissectOutput:
  """Dissect `layers` of `model` over `dataset` through `views`, in memory.

  model: an nnx zoo/TapModel module, a `LoadedModel`, or a model name (loaded with `weights`,
  `seed`). dataset: a Broden-format object, a path, or None for the default probe set.
  options: the remaining `DissectConfig` fields (upsample, batch_size, topk, cache_gb, ...).
  """
  if isinstance(model, str):
    model = load_model(model, weights, seed)
  module = getattr(model, 'module', model)
  ds = open_probe(dataset, progress=options.get('progress', True))
  layers = resolve_layers(module, layers)
  try:
    cfg = DissectConfig(layers=layers, tau=tau, views=views, **options)
  except (TypeError, ValueError) as e:
    raise NdjaxError(str(e)) from None
  if cfg.upsample not in ('rf', 'center'):
    raise NdjaxError(f'unknown upsample mode {cfg.upsample!r}; valid: rf, center')
  if cfg.batch_size <= 0:
    raise NdjaxError(f'batch_size must be positive, got {cfg.batch_size}')
  try:
    return dissect_lib.dissect(module, ds, cfg)
  except broden.BrodenFormatError as e:
    raise NdjaxError(f'{e} (rerun with --skip_bad_images to skip such files)') from None
  except dissect_lib.DissectError as e:
    raise NdjaxError(str(e)) from None
  except ValueError as e:                # resume.ResumeError and view errors are ValueErrors
    if type(e).__module__.startswith('ndjax'):
      raise NdjaxError(str(e)) from None
    raise


def precision_policy() -> str:
  """How the models' convolutions and matmuls run on accelerators (recorded in results.json)."""
  try:
    from ndjax.models.layers import PRECISION
  except ImportError:
    return 'highest'
  return str(PRECISION)


BAD_IMAGE_POLICY = ('an image that fails to decode is excluded from thresholds and counts; an '
                    'image whose label mask fails in pass 2 is excluded from the counts, but its '
                    'activations already entered the thresholds T_k (listed in in_thresholds)')


def run_metadata(out: DissectOutput, ds, model=None, extra: dict | None = None) -> dict:
  """The run-wide part of results.json: versions, devices, images, bad images, timings."""
  import flax
  import jax
  meta = dict(extra or {})
  if isinstance(model, LoadedModel):
    meta.setdefault('model', model.name)
    meta.setdefault('weights', model.weights)
    meta.setdefault('weights_manifest', model.manifest)
    meta.setdefault('seed', model.seed)
  meta.update({
      'versions': {'ndjax': _version(), 'jax': jax.__version__, 'flax': flax.__version__,
                   'numpy': np.__version__, 'python': platform.python_version()},
      'devices': [str(d) for d in jax.devices()],
      'processes': jax.process_count(),
      'precision': precision_policy(),
      'compute_dtype': out.compute_dtype,
      'threshold_selection': out.selection,
      'images': len(ds.records), 'images_used': out.images_used,
      'bad_images': {'count': len(out.bad_images),
                     'files': {str(i): msg for i, msg in out.bad_images.items()},
                     'in_thresholds': [int(i) for i in out.bad_in_thresholds],
                     'policy': BAD_IMAGE_POLICY},
      'timings_s': dict(out.timings),
      'resumed_from': out.resumed_from,
  })
  return meta


def counts_npz(res: ViewResult, ds) -> bytes:
  """The raw counts of one layer/view, enough to rescore it without the dataset."""
  buf = io.BytesIO()
  np.savez_compressed(buf, **res.counts.as_dict(), thresholds=np.asarray(res.thresholds),
                      label_names=np.asarray(ds.label_names), primary=np.asarray(ds.primary),
                      categories=np.asarray(ds.categories))
  return buf.getvalue()


def write_outputs(out: DissectOutput, ds, run_dir: str, *, model=None, meta: dict | None = None,
                  denominator: str = 'paper', iou_threshold: float = 0.04, upsample: str = 'rf',
                  report: bool = True, topk: int = 10, viz: int = 0,
                  progress: bool = False) -> list[str]:
  """Write every layer/view folder of `out` under `run_dir` and return their summary lines.

  Per folder (`<layer>` or `<layer>@<view>`): tally.csv, results.json, counts.npz, topk.npz,
  sets.npz (when the dissection counted label sets) and report.html, each written atomically; a
  folder appears only once its results are complete.
  viz: for plain (unrotated) layers, the report's gradient view of each unit on its `viz` top
  images (guided backpropagation, `ndjax.viz.unitviews`), stored as viz.npz; 0 = none.
  """
  module = getattr(model, 'module', model)
  meta = run_metadata(out, ds, model, meta)
  lines = []
  for res in out.results:
    labels = tally.label_units(res.counts, ds, denominator)
    folder = os.path.join(run_dir, res.folder)
    os.makedirs(folder, exist_ok=True)
    geometry = module.rf_geometry(res.layer) if module else None
    rf = module.receptive_field(res.layer) if module else None
    layer_meta = {'layer': res.layer, 'folder': res.folder, 'view': res.view.describe(),
                  'activation': res.description, 'denominator': denominator,
                  'iou_threshold': iou_threshold,
                  # a tap whose model declares no geometry is upsampled with `center`
                  'upsample': {'mode': upsample if geometry is not None else 'center',
                               'rf_geometry': list(geometry) if geometry is not None else None},
                  # where each unit looks in the input (top patches crop these windows)
                  'receptive_field': dataclasses.asdict(rf) if rf is not None else None}
    if res.top is not None:
      res.top.save(os.path.join(folder, 'topk.npz'))
    if res.sets is not None:     # before counts.npz: a folder with counts has its sets too
      from ndjax import labelsets
      fileio.atomic_write(os.path.join(folder, labelsets.FILE), res.sets.to_bytes())
    fileio.atomic_write(os.path.join(folder, COUNTS_NAME), counts_npz(res, ds))
    fileio.atomic_write(os.path.join(folder, 'tally.csv'), tally.tally_csv(labels, res.counts, ds))
    fileio.atomic_write(os.path.join(folder, 'results.json'),
                        tally.results_json(meta, layer_meta, labels, res.thresholds, ds,
                                           iou_threshold))
    # after the results are on disk: a failure here cannot cost the dissection
    if viz and res.top is not None and module is not None and res.view.kind == 'identity':
      from ndjax.viz import common as viz_common
      from ndjax.viz import unitviews
      top = {'images': res.top.images, 'values': res.top.values, 'maps': res.top.maps,
             'map_hw': res.top.map_hw}
      unitviews.write(folder, unitviews.unit_views(
          viz_common.Net.of(module), ds, top, res.layer, module.receptive_field(res.layer),
          min(viz, res.top.k), progress=progress))
    if report:
      from ndjax import report as report_lib
      report_lib.write_report(folder, k=topk, dataset=ds)
    lines.append(tally.summary_line(res.folder, labels, ds, iou_threshold))
  return lines


def summary_lines(out: DissectOutput, ds, denominator: str = 'paper',
                  iou_threshold: float = 0.04) -> list[str]:
  """The CLI's summary line per layer/view, without writing anything."""
  return [tally.summary_line(r.folder, tally.label_units(r.counts, ds, denominator), ds,
                             iou_threshold) for r in out.results]


def _version() -> str:
  from importlib import metadata
  try:
    return metadata.version('ndjax')
  except metadata.PackageNotFoundError:
    return 'unknown'

