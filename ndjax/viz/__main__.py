"""python -m ndjax.viz <method> --model=... --weights=... --layer=... --unit=... --images=...

Writes <outdir>/<method>_<model>[_<layer>_u<unit>].png (the figure) and .npz (its arrays), and
prints what it computed. `python -m ndjax.viz list` lists the methods.
"""
from __future__ import annotations

import importlib
import logging
import os
import pathlib

from absl import app, flags

from ndjax import cli

# method -> (module, function, what it needs: 'images' (photos), 'model', 'results')
METHODS = {
    'patches': ('ndjax.viz.patches', 'main', {'results'}),
    'views': ('ndjax.viz.unitviews', 'main', {'results'}),   # the report's --viz views, after the fact
    'occlusion': ('ndjax.viz.occlusion', 'main', {'model', 'images'}),
    'saliency': ('ndjax.viz.saliency', 'main', {'model', 'images'}),
    'deconvnet': ('ndjax.viz.backprop', 'main_deconvnet', {'model', 'images'}),
    'guided': ('ndjax.viz.backprop', 'main_guided', {'model', 'images'}),
    'class_model': ('ndjax.viz.class_model', 'main', {'model'}),
    'inversion': ('ndjax.viz.inversion', 'main', {'model', 'images'}),
    'deepdream': ('ndjax.viz.deepdream', 'main', {'model', 'images'}),
    'tsne': ('ndjax.viz.tsne', 'main', {'model'}),
    'cam': ('ndjax.viz.cam', 'main_cam', {'model', 'images'}),
    'gradcam': ('ndjax.viz.cam', 'main_gradcam', {'model', 'images'}),
    # per-unit analyses of dissection result folders (no forward pass)
    'concepts': ('ndjax.viz.analyses', 'main_concepts', {'results'}),
    'concept_units': ('ndjax.viz.analyses', 'main_concept_units', {'results'}),
    'parts': ('ndjax.viz.analyses', 'main_parts', {'results'}),
    'filtering': ('ndjax.viz.analyses', 'main_filtering', {'results'}),
}

# methods whose output depends on --unit (the stem names it)
UNIT_METHODS = {'patches', 'deconvnet', 'guided', 'class_model', 'concepts'}

FLAGS = flags.FLAGS
flags.DEFINE_string('model', 'mobilenet_v2', 'Zoo model (ndjax.models.MODELS).')
flags.DEFINE_string('weights', None, "Weights: a registered name ('imagenet'), a checkpoint "
                    "directory or weights file, or 'random'. Default: 'imagenet' where it exists.")
flags.DEFINE_integer('seed', 0, 'Seed of random weights and of random starts (noise, jitter).')
flags.DEFINE_string('layer', None, "Layer name (paper alias or module path). Default: the model's "
                    'default dissection layer.')
flags.DEFINE_integer('unit', None, 'Unit (channel) index in --layer, from 0.')
flags.DEFINE_string('target', None, 'Class: an index or (1000-class models) an ImageNet name such '
                    "as 'Egyptian cat'. Default: each image's predicted class.")
flags.DEFINE_list('images', ['chelsea'], 'Photos: names of scikit-image photos (chelsea, coffee, '
                  'astronaut, rocket, motorcycle_left, horse, hubble_deep_field) or image files.')
flags.DEFINE_integer('size', 224, 'Images are resized (shorter side) and centre-cropped to this.',
                     lower_bound=32)
flags.DEFINE_list('results', [], 'Dissection layer folders (<outdir>/<run>/<layer>) for patches, '
                  't-SNE and the analyses.')
flags.DEFINE_string('outdir', 'ndjax_viz', 'Output folder.')
flags.DEFINE_enum('format', 'png', ['png', 'svg', 'pdf'], 'Figure format.')
# method options (see ndjax.viz.common.Options)
flags.DEFINE_enum('keep', 'max', ['map', 'max'], "deconvnet/guided: keep the unit's whole map, or "
                  'only its strongest activation (Zeiler & Fergus).')
flags.DEFINE_integer('window', 32, 'occlusion: side of the grey square, in input pixels.',
                     lower_bound=1)
flags.DEFINE_integer('stride', 8, 'occlusion: step of the square, in input pixels.', lower_bound=1)
flags.DEFINE_float('baseline', 0.0, "occlusion: the square's value in model input space (0: the "
                   'mean colour).')
flags.DEFINE_integer('steps', None, 'Optimisation steps. Default per method: class_model 200, '
                     'inversion 100, deepdream 10 per octave.', lower_bound=1)
flags.DEFINE_float('lr', None, 'Step size of those optimisations. Default per method: class_model '
                   '300 (SGD, grey levels), inversion 0.05 (Adam), deepdream 1.5 (normalised step, '
                   'grey levels).', lower_bound=0)
flags.DEFINE_float('l2', 1e-4, 'class_model: L2 decay of the image.', lower_bound=0)
flags.DEFINE_integer('blur_every', 0, 'class_model: Gaussian blur every k steps (0: off).',
                     lower_bound=0)
flags.DEFINE_float('blur_sigma', 0.5, 'class_model: that blur\'s sigma, in pixels.', lower_bound=0)
flags.DEFINE_float('clip_norm_pct', 0.0, 'class_model: zero pixels whose norm is below this '
                   'percentile.', lower_bound=0, upper_bound=100)
flags.DEFINE_float('clip_contrib_pct', 0.0, 'class_model: zero pixels whose contribution is below '
                   'this percentile.', lower_bound=0, upper_bound=100)
flags.DEFINE_float('tv_weight', 0.01, 'inversion: total-variation weight.', lower_bound=0)
flags.DEFINE_float('alpha', 6.0, 'inversion: alpha of the alpha-norm regulariser.', lower_bound=1)
flags.DEFINE_float('alpha_weight', 1e-5, 'inversion: weight of the alpha-norm.', lower_bound=0)
flags.DEFINE_integer('octaves', 4, 'deepdream: octaves.', lower_bound=1)
flags.DEFINE_float('octave_scale', 1.4, 'deepdream: scale between octaves.', lower_bound=1)
flags.DEFINE_integer('jitter', 16, 'deepdream: random shift, in pixels.', lower_bound=0)
flags.DEFINE_integer('top', None, 'patches: patches per unit (9); views: views per unit (3); '
                     'analyses: concepts or units listed (5).', lower_bound=1)
flags.DEFINE_string('concept', None, 'analyses: a concept label (e.g. dog, grass).')
flags.DEFINE_float('perplexity', 30.0, 't-SNE perplexity.', lower_bound=1)
flags.DEFINE_integer('probe_images', 500, "t-SNE: embed the first N images of the probe set (the "
                     "--results folder's, else the built-in one).", lower_bound=2)
flags.DEFINE_integer('batch_size', 16, 'Images per forward batch (occlusion: occluded copies '
                     'per forward pass).', lower_bound=1)

PROG = 'ndjax.viz'


def options():
  from ndjax.viz import common
  names = [f.name for f in common.dataclasses.fields(common.Options)]
  return common.Options(**{n: getattr(FLAGS, n) for n in names})


def context(method: str):
  """The flags -> a `common.Context` (model loaded and photos read only where the method needs)."""
  from ndjax import api
  from ndjax.viz import common
  needs = METHODS[method][2]
  net = layer = None
  images, names = common.np.zeros((0, FLAGS.size, FLAGS.size, 3), common.np.uint8), []
  weights = FLAGS.weights
  if 'model' in needs:
    model = api.load_model(FLAGS.model, FLAGS.weights, FLAGS.seed)
    weights = model.weights
    net = common.Net.of(model)
    layer = api.resolve_layers(model, [FLAGS.layer] if FLAGS.layer else None)[0]
  elif FLAGS.layer:
    layer = FLAGS.layer
  if 'images' in needs:
    images, names = common.load_images(FLAGS.images, FLAGS.size)
  if 'results' in needs and not FLAGS.results:
    raise common.VizError(f'{method} reads dissection results: give --results=<outdir>/<run>/<layer>')
  return common.Context(net=net, model=FLAGS.model, weights=weights or '', layer=layer,
                        unit=FLAGS.unit, target=FLAGS.target, images=images, image_names=names,
                        results=list(FLAGS.results), options=options())


def output_stem(method: str, ctx) -> str:
  """<method>_<model>[_<layer>] (or, from result folders, _<run>[-<layer>] of the first)
  [_u<unit>][_<concept>]."""
  if ctx.net is not None:
    parts = [method, ctx.model] + ([ctx.layer.replace('.', '-')] if ctx.layer else [])
  else:
    first = pathlib.Path(ctx.results[0]).resolve() if ctx.results else pathlib.Path('results')
    is_layer = (first / 'results.json').is_file()
    parts = [method, f'{first.parent.name}-{first.name}' if is_layer else first.name]
  if ctx.unit is not None and method in UNIT_METHODS:
    parts.append(f'u{ctx.unit}')
  if ctx.options.concept:
    parts.append(ctx.options.concept.replace(' ', '_').replace(os.sep, '_'))
  return os.path.join(FLAGS.outdir, '_'.join(parts))


def main(argv):
  logging.getLogger().setLevel(logging.WARNING)
  for name in ('absl', 'jax', 'matplotlib'):
    logging.getLogger(name).setLevel(logging.WARNING)
  if len(argv) != 2 or argv[1] not in (*METHODS, 'list'):
    cli.fail(f'give one method: {", ".join(METHODS)} (or list)', PROG)
  method = argv[1]
  if method == 'list':
    for name, (module, function, needs) in METHODS.items():
      print(f'{name:14s} {module}.{function}  needs: {", ".join(sorted(needs))}')
    return
  from ndjax import api
  from ndjax.results import ResultsError
  from ndjax.viz import common
  module, function, _ = METHODS[method]
  try:
    ctx = context(method)
    out = getattr(importlib.import_module(module), function)(ctx)
    paths = common.save_output(out, output_stem(method, ctx), FLAGS.format)
  except (common.VizError, api.NdjaxError, ResultsError) as e:
    cli.fail(str(e), PROG)
  except OSError as e:
    cli.fail(f'{e.filename or ""}: {e.strerror or e}' if e.filename else str(e), PROG)
  for line in out.lines:
    print(line)
  for path in paths:
    print(path)


if __name__ == '__main__':
  app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, allow_positional=True, prog=PROG))
