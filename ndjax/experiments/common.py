"""What every experiment shares: flags, the networks it dissects, reusing finished result folders,
and writing results.csv / results.json / figures / README.md atomically.

An experiment is a thin absl program over `ndjax.api`: it asks for dissections here (`dissect`),
which runs the engine only for result folders not already complete on disk, reads every number
back through `ndjax.results` (fresh and reused runs read alike), and hands rows and figures to
`Output.write`. The engine never imports this package.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pathlib
import platform
import shlex
import sys
import time
from typing import Sequence

from absl import flags

FLAGS = flags.FLAGS

flags.DEFINE_string('outdir', None, 'Output folder. Default ./ndjax_experiments/<experiment>/.')
flags.DEFINE_string('dataset', None, 'Broden-format probe directory (e.g. broden1_224) or its TFDS '
                    'copy. Default: the built-in probe set chosen by --probe.')
flags.DEFINE_enum('probe', 'composite', ['composite', 'synthetic'],
                  'Built-in probe set when no --dataset is given.')
flags.DEFINE_integer('images', 0, 'Use only the first N images of the probe set (0 = all): for a '
                     'quick look; the paper\'s numbers use all.')
flags.DEFINE_integer('batch_size', 8, 'Images per forward batch.')
flags.DEFINE_float('cache_gb', 4.0, 'Memory budget for activations kept between the two passes.')
flags.DEFINE_bool('progress', True, 'Show progress bars.')

CATEGORY_ORDER = ('object', 'part', 'scene', 'material', 'texture', 'color')


class ExperimentError(ValueError):
  """Bad flags or inputs: one line for the user, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Network:
  """One (model, weights, layer) the experiment dissects: 'vgg16:imagenet:conv5_3', with an
  optional fourth field for random weights' seed ('vgg16:random:conv5_3:1')."""
  model: str
  weights: str
  layer: str | None
  seed: int = 0

  @classmethod
  def parse(cls, text: str, *, need_layer: bool = True) -> 'Network':
    parts = text.split(':')
    if not 2 <= len(parts) <= 4 or not all(parts[:2]) or (need_layer and len(parts) < 3):
      raise ExperimentError(f'{text!r} is not model:weights:layer[:seed] (e.g. '
                            'vgg16:imagenet:conv5_3, vgg16:random:conv5_3:1)')
    seed = 0
    if len(parts) == 4:
      try:
        seed = int(parts[3])
      except ValueError:
        raise ExperimentError(f'{text!r}: the seed {parts[3]!r} is not an integer') from None
    return cls(parts[0], parts[1], parts[2] if len(parts) > 2 and parts[2] else None, seed)

  @property
  def label(self) -> str:
    seed = f' s{self.seed}' if self.weights == 'random' else ''
    return f'{self.model} {self.weights}{seed} {self.layer or ""}'.strip()


def floats(name: str) -> tuple[float, ...]:
  """A list flag's values as numbers, or one line naming the flag."""
  try:
    return tuple(float(v) for v in FLAGS[name].value)
  except ValueError:
    raise ExperimentError(f'--{name}={",".join(FLAGS[name].value)} holds a non-number') from None


def panels(n: int, width: float = 5.0, height: float = 3.6):
  """(figure, flat list of n axes) in rows of at most three."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  cols = min(n, 3)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                           layout='constrained')
  flat = list(axes.ravel())
  for ax in flat[n:]:
    ax.set_visible(False)
  return fig, flat[:n]


def curves_figure(curves: dict, xlabel: str, *, log_x: bool = False, mark: float | None = None):
  """One panel per network/folder: unique detectors (all, and per category) against x.
  curves: {title: (categories, xs, [unique-per-category dict per x])}."""
  from ndjax import report
  fig, axes = panels(len(curves))
  for ax, (title, (cats, xs, per_x)) in zip(axes, curves.items()):
    ax.plot(xs, [sum(u.values()) for u in per_x], 'k-o', label='all')
    for c in cats:
      ax.plot(xs, [u[c] for u in per_x], '-o', ms=3, color=report.category_color(c), label=c)
    if log_x:
      ax.set_xscale('log')
      ax.minorticks_off()
      ax.set_xticks(xs, [f'{x:g}' for x in xs])
    if mark is not None:
      ax.axvline(mark, color='grey', ls=':', lw=1)
    ax.set(title=title, xlabel=xlabel, ylabel='unique detectors')
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  return fig


def category_order(categories: Sequence[str]) -> list[str]:
  """The paper's order of categories, then any others in the probe set's order."""
  return [c for c in CATEGORY_ORDER if c in categories] + [
      c for c in categories if c not in CATEGORY_ORDER]


class Experiment:
  """One experiment's run: its output folder, probe set, dissections, and what it writes."""

  def __init__(self, name: str):
    self.name = name
    self.started = time.time()
    self.outdir = pathlib.Path(FLAGS.outdir or os.path.join('ndjax_experiments', name))
    self.runs = self.outdir / 'runs'
    self._ds = None
    self.probe_images: int | None = None     # for experiments that never open the probe set
    # (images, size): the built-in composite set of that many images at that size (the training
    # studies' presets), instead of --probe's default set
    self.probe_spec: tuple[int, int] | None = None
    self.reused: list[str] = []
    self.computed: list[str] = []
    self.reused_seconds = 0.0      # what the reused dissections took when they ran
    self.reused_from: str | None = None   # where they are, when not under runs/

  # --- inputs ------------------------------------------------------------------------------------
  @property
  def ds(self):
    """The probe set (opened once; the first --images records when asked)."""
    if self._ds is None:
      from ndjax import api
      if self.probe_spec and not FLAGS.dataset:
        ds = _composite(*self.probe_spec)
      else:
        ds = api.open_probe(FLAGS.dataset, probe=FLAGS.probe, progress=FLAGS.progress)
      if FLAGS.images < 0:
        raise ExperimentError(f'--images={FLAGS.images} must be >= 0 (0 = all)')
      if FLAGS.images:
        if not dataclasses.is_dataclass(ds) or not hasattr(ds, 'records'):
          raise ExperimentError('--images needs a Broden directory or the built-in probe set')
        ds = dataclasses.replace(ds, records=list(ds.records[:FLAGS.images]))
      self._ds = ds
    return self._ds

  @property
  def probe_identity(self) -> dict:
    """What a reused folder must have been dissected over: this probe set and image count."""
    where = os.path.abspath(FLAGS.dataset) if FLAGS.dataset else f'built-in {FLAGS.probe}'
    if not FLAGS.dataset and self.probe_spec:
      where = f'built-in composite {self.probe_spec[1]}px'
    return {'dataset': where, 'images': len(self.ds.records)}

  def run_dir(self, net: Network, name: str | None = None) -> pathlib.Path:
    from ndjax import api
    return self.runs / (name or api.run_name(net.model, net.weights, net.seed))

  # --- dissections -------------------------------------------------------------------------------
  def dissect(self, net: Network, layers: Sequence[str], views=None, name: str | None = None,
              required: Sequence[str] = (), **options) -> dict:
    """{(layer, view name): ViewDir} for every layer x view, dissecting only when some folder is
    missing or incomplete (results.json and counts.npz are written last and atomically).
    name: the run folder under runs/ (default <model>_<weights>[_s<seed>]); required: further
    files a reused plain-layer folder must hold (sets.npz when `options` ask for label sets,
    which only plain layers get)."""
    from ndjax import api, results
    from ndjax import views as views_lib
    model = api.load_model(net.model, net.weights, net.seed)
    layers = api.resolve_layers(model, list(layers))
    spec = views or views_lib.ViewSpec()
    wanted = {(layer, v.name): (v.folder(layer), v) for layer in layers
              for v in views_lib.build(spec, model.module.channels(layer))}
    run_dir = self.run_dir(net, name)
    identity = weights_identity(net)

    def complete(folder: str, view) -> bool:
      """Written to the end (results.json and counts.npz come last, atomically) by the same
      view: the same tau, kind, and rotation seed/alpha or directions file."""
      extra = tuple(required) if view.kind == 'identity' else ()
      if not all((run_dir / folder / f).is_file()
                 for f in ('results.json', 'counts.npz', *extra)):
        return False
      try:
        vd = results.load(run_dir / folder)
      except results.ResultsError:
        return False
      saved = vd.view
      same = lambda key: saved.meta.get(key) == view.meta.get(key)
      found = vd.results.get('weights_identity')
      return (saved.tau == view.tau and saved.kind == view.kind
              and all(same(k) for k in ('seed', 'alpha', 'sha256'))
              and vd.results.get('probe') == self.probe_identity
              # a weights directory (a training snapshot) must hold the same bytes as when it
              # was dissected: a retrained run reuses the folder names
              and (found == identity if 'sha256' in identity else found in (None, identity)))

    if all(complete(folder, view) for folder, view in wanted.values()):
      self.reused.append(f'{net.label}: {len(wanted)} folders')
      # all folders of one run share one dissect call: its timings are in each of them
      timings = results.load(run_dir / next(iter(wanted.values()))[0]).results.get('timings_s', {})
      self.reused_seconds += sum(timings.get(k, 0.0) for k in ('forward_and_threshold',
                                                               'threshold_refine', 'count'))
    else:
      out = api.dissect(model, self.ds, layers, views=spec, batch_size=FLAGS.batch_size,
                        cache_gb=FLAGS.cache_gb, progress=FLAGS.progress, **options)
      api.write_outputs(out, self.ds, str(run_dir), model=model, report=False,
                        meta={'experiment': self.name, 'experiment_command': self.command,
                              'probe': self.probe_identity, 'weights_identity': identity,
                              'resolved': {'dataset': str(getattr(self.ds, 'root', '') or '')}})
      self.computed.append(f'{net.label}: {len(wanted)} folders')
    return {key: results.load(run_dir / folder) for key, (folder, _) in wanted.items()}

  # --- outputs -----------------------------------------------------------------------------------
  @property
  def command(self) -> str:
    return shlex.join(['python', '-m', f'ndjax.experiments.{self.name}', *sys.argv[1:]])

  def write(self, rows: list[dict], summary: dict, figures: dict, readme: str) -> None:
    """results.csv (rows), results.json (summary + flags, versions, timings), each figure as
    PNG + SVG, and README.md (what was run, its wall time, `readme`, the figures)."""
    from ndjax import fileio
    self.outdir.mkdir(parents=True, exist_ok=True)
    wall = time.time() - self.started
    images = len(self._ds.records) if self._ds is not None else self.probe_images
    buf = io.StringIO()
    if rows:
      fields = list(dict.fromkeys(k for row in rows for k in row))
      writer = csv.DictWriter(buf, fieldnames=fields, lineterminator='\n')
      writer.writeheader()
      writer.writerows(rows)
    fileio.atomic_write(self.outdir / 'results.csv', buf.getvalue().encode())
    doc = {'experiment': self.name, 'command': self.command,
           'flags': _flag_values(), 'probe_images': images, 'wall_time_s': round(wall, 1),
           'reused': self.reused, 'computed': self.computed,
           'reused_dissections_s': round(self.reused_seconds, 1), 'machine': _machine(),
           'versions': _versions(), **summary}
    fileio.atomic_write(self.outdir / 'results.json',
                        json.dumps(doc, indent=1, default=_jsonable).encode())
    shown = []
    for stem, fig in figures.items():
      for ext in ('png', 'svg'):
        out = io.BytesIO()
        fig.savefig(out, format=ext, dpi=110, bbox_inches='tight')
        fileio.atomic_write(self.outdir / f'{stem}.{ext}', out.getvalue())
      shown.append(f'![{stem}]({stem}.png)')
    import matplotlib.pyplot as plt
    plt.close('all')
    text = (f'# {self.name}\n\nMade by\n\n```bash\n{self.command}\n```\n\n'
            f'Wall time {wall / 60:.1f} min on {_machine()} ({len(self.computed)} dissections run, '
            f'{len(self.reused)} reused from {self.reused_from or str(self.runs) + "/"}'
            + (f', which took {self.reused_seconds / 60:.1f} min when they ran'
               if self.reused else '') + f'); probe set: {images} '
            f'images. Numbers: results.csv, results.json.\n\n{readme.strip()}\n\n'
            + '\n\n'.join(shown) + '\n')
    fileio.atomic_write(self.outdir / 'README.md', text.encode())


def write_csv(path, rows: list[dict]) -> None:
  """rows (dicts with the same keys) as a CSV file, atomically."""
  from ndjax import fileio
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [], lineterminator='\n')
  writer.writeheader()
  writer.writerows(rows)
  fileio.atomic_write(str(path), buf.getvalue().encode())


def weights_identity(net: Network) -> dict:
  """What a dissection's weights were: model, weights and seed, plus for a weights directory (a
  training snapshot, a converted checkpoint) the SHA-256 of its files' names and bytes."""
  import hashlib
  out = {'model': net.model, 'weights': net.weights, 'seed': net.seed}
  root = pathlib.Path(net.weights)
  if root.is_dir():
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob('*') if p.is_file()):
      digest.update(str(path.relative_to(root)).encode() + b'\0')
      with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
          digest.update(block)
    out.update(weights=str(root.absolute()), sha256=digest.hexdigest())
  return out


def _composite(images: int, size: int):
  """The built-in real-photo composite set of `images` images rendered at `size` px."""
  from ndjax import api
  from ndjax.data import open_dataset
  from ndjax.fileio import cache_root
  from ndjax.probes import composite, ingredients
  try:
    return open_dataset(str(composite.ensure_composite_set(
        cache_root(), images, progress=FLAGS.progress, image_size=size)))
  except (ingredients.IngredientError, OSError, ValueError) as e:
    raise api.NdjaxError(f'cannot build the {size} px composite probe set: '
                         f'{" ".join(str(e).split())}') from None


def _flag_values() -> dict:
  """Every flag an experiment module or this one defines, with its value."""
  out = {}
  for module, defined in FLAGS.flags_by_module_dict().items():
    if 'experiments' in module:
      out.update({f.name: f.value for f in defined})
  return out


def _machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  import jax
  return f'{cpu}, {os.cpu_count()} cores, {jax.devices()[0].platform}'


def _versions() -> dict:
  import flax
  import jax
  import numpy as np
  from ndjax import api
  return {'ndjax': api._version(), 'jax': jax.__version__, 'flax': flax.__version__,
          'numpy': np.__version__, 'python': platform.python_version()}


def _jsonable(x):
  import numpy as np
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)


def run(main) -> None:
  """absl.app.run(main) with ExperimentError / NdjaxError / ResultsError as one line, exit 2."""
  from absl import app

  def wrapped(argv):
    import logging
    from ndjax import api, results
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    logging.getLogger().setLevel(logging.WARNING)      # library INFO chatter off the terminal
    for name in ('absl', 'jax', 'orbax'):
      logging.getLogger(name).setLevel(logging.WARNING)
    from ndjax.viz.common import VizError
    try:
      main(argv)
    except (ExperimentError, api.NdjaxError, results.ResultsError, VizError) as e:
      print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
      sys.exit(2)
  app.run(wrapped)
