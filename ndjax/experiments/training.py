"""What the training studies share (training_dynamics, regularization, width, finetune): presets,
training runs through `ndjax.train`'s library API, and dissecting their snapshots.

Training runs live in --train_dir (default ndjax_experiments/train_runs/<preset>/), shared by the
studies: the baseline trains once and every study that needs it reuses it. A run that finished is
reused as it is, one that was killed resumes from its newest Orbax checkpoint (same bytes as an
uninterrupted run), and a folder made with another config is refused (train.Run's check). Each
snapshot is dissected through `Experiment.dissect` into runs/<run>_step<N>/ (reused when done),
and its test accuracy is measured once and kept in <run>/snapshot_accuracy.json.

Presets (the probe set is the built-in composite set rendered at the training resolution, same
seed 0 compositions as the default 224 px set, unless --dataset names a Broden directory):
  cpu    AlexNet on the built-in 14-class task at 112 px (configs/cpu.py): each study ~1 h on 2 cores
  paper  the paper's sizes (configs/paper.py): Places365 at 224 px through TFDS, for an accelerator
  smoke  a minutes-long end-to-end check of the pipeline at 64 px (tests); its numbers mean nothing
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pathlib

import numpy as np
from absl import flags

from ndjax.experiments import common

FLAGS = flags.FLAGS

flags.DEFINE_enum('preset', 'cpu', ['cpu', 'paper', 'smoke'],
                  'Sizes: cpu (~1 h a study on 2 cores, 112 px), paper (the paper\'s sizes, for an '
                  'accelerator), smoke (a minutes-long pipeline check).')
flags.DEFINE_string('train_dir', None, 'Training runs, shared by the studies (the baseline trains '
                    'once). Default: ndjax_experiments/train_runs/.')
flags.DEFINE_string('tfds_data_dir', None, 'data_dir of prepared TFDS datasets (paper preset).')
flags.DEFINE_string('layer', 'conv5', 'The layer dissected.')
flags.DEFINE_float('iou_threshold', 0.04, 'A unit is a detector when its best IoU > this.')


@dataclasses.dataclass(frozen=True)
class Preset:
  config: str                # module of ndjax.train.configs: the baseline's training config
  probe_size: int            # built-in probe set rendered at this size ...
  probe_images: int          # ... with this many images
  finetune_dataset: str      # the second label set of the finetune study
  finetune_steps: int
  finetune_learning_rate: float


PRESETS = {
    'cpu': Preset('cpu', 112, 3000, 'probe_task_material', 400, 0.005),
    'paper': Preset('paper', 224, 3000, 'tfds:imagenet2012', 300_000, 0.001),
    'smoke': Preset('smoke', 64, 300, 'probe_task_material', 6, 0.01),
}


class Study:
  """One training study's access to runs, snapshots, their dissections and accuracies."""

  def __init__(self, exp: common.Experiment):
    self.exp = exp
    self.preset = PRESETS[FLAGS.preset]
    if not FLAGS.dataset:
      exp.probe_spec = (self.preset.probe_images, self.preset.probe_size)
    self.root = pathlib.Path(FLAGS.train_dir or os.path.join('ndjax_experiments', 'train_runs'),
                             FLAGS.preset).absolute()
    self._data = {}
    self.trained: list[str] = []

  # --- training ----------------------------------------------------------------------------------
  def config(self, **overrides):
    """The preset's training config with `overrides` (model, seed, dataset, init_from, ...)."""
    c = importlib.import_module(f'ndjax.train.configs.{self.preset.config}').get_config()
    c.update(overrides)
    return c

  def data(self, config):
    from ndjax.probes import ingredients
    from ndjax.train import input_pipeline
    key = (config.dataset, config.image_size, config.train_images, config.test_images)
    if key not in self._data:
      try:
        self._data[key] = input_pipeline.get_data(config, FLAGS.tfds_data_dir, FLAGS.progress)
      except (input_pipeline.DataError, ingredients.IngredientError) as e:
        raise common.ExperimentError(' '.join(str(e).split())) from None
    return self._data[key]

  def train(self, name: str, config) -> pathlib.Path:
    """Train run `name` to the end (reused when finished, resumed when killed) -> its folder.
    A fine-tuning run also checks that its starting snapshot still holds the bytes it started
    from (a retrained base reuses the snapshot's path)."""
    from ndjax.ported_weights import checkpoint
    from ndjax.train import input_pipeline, train
    workdir = self.root / name
    if config.init_from:
      start = common.weights_identity(common.Network(config.model, config.init_from, None))
      record = workdir / 'init_from.sha256'
      if record.is_file() and record.read_text().strip() != start['sha256']:
        raise common.ExperimentError(
            f'training run {workdir} was fine-tuned from other weights than {config.init_from} '
            'holds now (its base was retrained); delete the folder to fine-tune again')
      workdir.mkdir(parents=True, exist_ok=True)
      record.write_text(start['sha256'] + '\n')
    try:
      run = train.Run(config, workdir, self.data(config), progress=FLAGS.progress)
      before = run.manager.latest_step()
      run.train()
    except (train.TrainError, input_pipeline.DataError, checkpoint.WeightsError) as e:
      raise common.ExperimentError(f'training run {workdir}: {e}') from None
    self.trained.append(f'{name}: ' + ('reused' if before == config.total_steps else
                                       f'trained from step {before or 0}'))
    return workdir

  # --- snapshots -------------------------------------------------------------------------------
  @staticmethod
  def snapshots(workdir: pathlib.Path) -> list[int]:
    """The run's snapshot steps, ascending (complete ones: their manifest is written last)."""
    from ndjax.ported_weights import checkpoint
    folder = workdir / 'snapshots'
    return sorted(int(p.name) for p in folder.iterdir()
                  if p.name.isdigit() and (p / checkpoint.MANIFEST_FILE).is_file())

  def dissect(self, workdir: pathlib.Path, step: int, model: str):
    """The ViewDir of snapshot `step` of a run, at --layer (dissected once, then reused)."""
    net = common.Network(model, str(workdir / 'snapshots' / str(step)), FLAGS.layer)
    dirs = self.exp.dissect(net, [FLAGS.layer], name=f'{workdir.name}_step{step}')
    return next(iter(dirs.values()))

  def accuracy(self, workdir: pathlib.Path, step: int, config) -> float:
    """Test accuracy of snapshot `step` (eval mode), measured once and kept in the run folder."""
    from ndjax import api, fileio
    from ndjax.train import train
    path = workdir / 'snapshot_accuracy.json'
    try:
      known = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:                 # unreadable: measure again
      known = {}
    if str(step) not in known:
      model = api.load_model(config.model, str(workdir / 'snapshots' / str(step))).module
      put = lambda images, labels: (images, labels)
      known[str(step)] = train.evaluate(model, self.data(config).test, config.batch_size, put)[1]
      fileio.atomic_write(path, json.dumps(known, indent=1, sort_keys=True).encode())
    return float(known[str(step)])

  def chance(self, config) -> float:
    """Accuracy of always answering the test split's most frequent class."""
    labels = self.data(config).test.labels
    return float(np.bincount(labels).max() / len(labels))

  # --- scoring -----------------------------------------------------------------------------------
  def score(self, vd) -> dict:
    """Unique detectors per category, detector count, and the unit labels of one ViewDir."""
    from ndjax import tally
    labels = vd.labels()
    unique = tally.unique_detectors(labels, vd.probe, FLAGS.iou_threshold)
    return dict(unique=unique, total=sum(unique.values()), labels=labels,
                detectors=int(np.sum(labels.best_iou > FLAGS.iou_threshold)))

  def summary(self) -> dict:
    return {'preset': FLAGS.preset, 'train_dir': str(self.root.absolute()),
            'training': self.trained, 'layer': FLAGS.layer, 'iou_threshold': FLAGS.iou_threshold}


def unit_labels(vd, threshold: float) -> list[tuple[str, str] | None]:
  """Per unit: (label, category) when it is a detector (best IoU > threshold), else None."""
  labels = vd.labels()
  names, cats = vd.label_names, vd.categories
  return [(names[int(labels.best_label[k])], cats[int(labels.best_cat[k])])
          if labels.best_iou[k] > threshold else None for k in range(len(labels.best_iou))]


def bars_figure(variants: list[str], per_variant: list[dict], categories: list[str],
                accuracies: list[float], chance: float, title: str):
  """Unique detectors per category for each variant (grouped bars) beside their test accuracy."""
  from ndjax import report
  fig, (ax, acc) = common.panels(2, width=6.0)
  x = np.arange(len(variants))
  width = 0.8 / max(len(categories), 1)
  for i, c in enumerate(categories):
    ax.bar(x + (i - (len(categories) - 1) / 2) * width, [u[c] for u in per_variant], width,
           color=report.category_color(c), label=c)
  ax.set_xticks(x, variants, rotation=30, ha='right')
  ax.set(title=title, ylabel='unique detectors')
  ax.legend(fontsize=8)
  ax.grid(axis='y', alpha=0.3)
  acc.bar(x, [100 * a for a in accuracies], color='0.5')
  acc.axhline(100 * chance, color='k', ls=':', lw=1, label='most frequent class')
  acc.set_xticks(x, variants, rotation=30, ha='right')
  acc.set(title='test accuracy', ylabel='%')
  acc.legend(fontsize=8)
  acc.grid(axis='y', alpha=0.3)
  return fig


def compare(exp: common.Experiment, study: Study, variants: list[tuple[str, dict]], figure: str,
            title: str, notes: str = '') -> None:
  """Train each (label, config overrides) variant, dissect its last snapshot at --layer, and write
  unique detectors per category, detectors and test accuracy side by side (regularization, width)."""
  rows, uniques, accuracies, categories = [], [], [], None
  chance = None
  for label, overrides in variants:
    config = study.config(**overrides)
    workdir = study.train(f'{config.model}_s{config.seed}', config)
    step = study.snapshots(workdir)[-1]
    vd = study.dissect(workdir, step, config.model)
    scored = study.score(vd)
    categories = categories or common.category_order(vd.categories)
    accuracies.append(study.accuracy(workdir, step, config))
    chance = study.chance(config)
    uniques.append(scored['unique'])
    rows.append(dict(variant=label, model=config.model, seed=config.seed, step=step,
                     test_accuracy=round(accuracies[-1], 4), units=len(scored['labels'].best_iou),
                     detectors=scored['detectors'], total=scored['total'],
                     **{c: scored['unique'][c] for c in categories}))
  lines = [f'- {r["variant"]} ({r["model"]}, seed {r["seed"]}): test accuracy '
           f'{100 * r["test_accuracy"]:.1f} %, {r["detectors"]}/{r["units"]} detectors, '
           f'{r["total"]} unique (' + ', '.join(f'{c} {r[c]}' for c in categories) + ')'
           for r in rows]
  lines.append(f'- most frequent test class: {100 * chance:.1f} %')
  readme = '## Headline\n\n' + '\n'.join(lines) + (f'\n\n{notes.strip()}' if notes else '')
  summary = {**study.summary(), 'variants': rows, 'chance_accuracy': chance}
  exp.write(rows, summary, {figure: bars_figure([r['variant'] for r in rows], uniques, categories,
                                                accuracies, chance, title)}, readme)
  for line in lines:
    print(line)
