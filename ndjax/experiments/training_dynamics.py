"""When do units become interpretable? Detectors and accuracy across training (paper Figs 18-19).

Trains the preset's baseline AlexNet (or reuses it), dissects every log-spaced snapshot (0, 1, 2,
5, 10, 20, 50, ... and the last) at --layer, and measures each snapshot's test accuracy: unique
detectors per category and accuracy against the training step on a log axis, and the label
history of units: at which step a unit's final label first appears (and holds to the end), and
whether its label ever changes category on the way (the paper saw no category transitions).

python -m ndjax.experiments.training_dynamics --preset=cpu
"""
from __future__ import annotations

import numpy as np
from absl import flags

from ndjax.experiments import common, training

FLAGS = flags.FLAGS
flags.DEFINE_string('model', 'alexnet', 'The network trained (a name of ndjax.models.MODELS).')
flags.DEFINE_integer('seed', 0, 'Training seed (init, data order, dropout).')
flags.DEFINE_list('units', [], 'Units whose label history is drawn (default: the --history_units '
                  'units with the highest IoU at the last step).')
flags.DEFINE_integer('history_units', 12, 'How many units the history figure shows by default.')


def label_history(steps: list[int], per_step: list[list]) -> list[dict]:
  """Per unit, from its (label, category) or None at each step (ascending):
  final label, `first_seen` (first step it holds the final label), `stable_since` (first step
  from which it holds it to the end, without a gap), label changes among the steps at which it is
  a detector, `categories` (its categories in order, consecutive repeats merged: object, texture,
  object) and `category_changes` (transitions between them)."""
  out = []
  for k in range(len(per_step[0])):
    seq = [labels[k] for labels in per_step]
    final = seq[-1]
    first = stable = None
    if final is not None:
      first = next(s for s, x in zip(steps, seq) if x == final)
      stable = steps[max((i for i, x in enumerate(seq) if x != final), default=-1) + 1]
    named = [x for x in seq if x is not None]
    changes = sum(a != b for a, b in zip(named, named[1:]))
    cats = [c for i, (_, c) in enumerate(named) if i == 0 or named[i - 1][1] != c]
    out.append(dict(unit=k, final=final[0] if final else None,
                    final_category=final[1] if final else None, first_seen=first,
                    stable_since=stable, label_changes=changes, categories=cats,
                    category_changes=max(len(cats) - 1, 0)))
  return out


def figure(steps, per_step_unique, accuracies, chance, categories):
  from ndjax import report
  fig, (ax, acc) = common.panels(2, width=6.0)
  x = np.maximum(steps, 0)
  ax.plot(x, [sum(u.values()) for u in per_step_unique], 'k-o', label='all')
  for c in categories:
    ax.plot(x, [u[c] for u in per_step_unique], '-o', ms=3, color=report.category_color(c),
            label=c)
  acc.plot(x, [100 * a for a in accuracies], 'k-o')
  acc.axhline(100 * chance, color='grey', ls=':', lw=1, label='most frequent class')
  for a, title, ylabel in ((ax, 'unique detectors', 'unique detectors'),
                           (acc, 'test accuracy', '%')):
    a.set_xscale('symlog', linthresh=1)
    a.set_xlim(-0.3, max(x) * 1.4)
    a.minorticks_off()
    a.set_xticks(x, [str(s) for s in steps], fontsize=7)
    a.set(title=title, xlabel='training step (log axis; 0 at the left)', ylabel=ylabel)
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
  return fig


def history_figure(steps, per_step, units):
  """One row per unit, one cell per snapshot: the unit's label (coloured by category) or '-'."""
  from ndjax import report
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(1.1 * len(steps) + 1.5, 0.38 * len(units) + 1.0),
                         layout='constrained')
  for row, k in enumerate(units):
    for col, labels in enumerate(per_step):
      x = labels[k]
      ax.text(col, row, x[0] if x else '-', ha='center', va='center', fontsize=7,
              color=report.category_color(x[1]) if x else '0.6')
  ax.set_xlim(-0.5, len(steps) - 0.5)
  ax.set_ylim(len(units) - 0.5, -0.5)
  ax.set_xticks(range(len(steps)), [str(s) for s in steps], fontsize=7)
  ax.set_yticks(range(len(units)), [f'unit {k}' for k in units], fontsize=7)
  ax.set(xlabel='training step', title='label of each unit across training (colour = category)')
  for side in ('top', 'right'):
    ax.spines[side].set_visible(False)
  return fig


def main(argv):
  del argv
  exp = common.Experiment('training_dynamics')
  study = training.Study(exp)
  config = study.config(model=FLAGS.model, seed=FLAGS.seed)
  workdir = study.train(f'{FLAGS.model}_s{FLAGS.seed}', config)
  steps = study.snapshots(workdir)
  rows, per_step_unique, per_step, accuracies = [], [], [], []
  categories, vd = None, None
  for step in steps:
    vd = study.dissect(workdir, step, FLAGS.model)
    scored = study.score(vd)
    categories = categories or common.category_order(vd.categories)
    accuracies.append(study.accuracy(workdir, step, config))
    per_step_unique.append(scored['unique'])
    per_step.append(training.unit_labels(vd, FLAGS.iou_threshold))
    rows.append(dict(step=step, test_accuracy=round(accuracies[-1], 4), total=scored['total'],
                     detectors=scored['detectors'], **{c: scored['unique'][c] for c in categories}))
  history = label_history(steps, per_step)
  final = vd.labels()
  if FLAGS.units:
    try:
      units = [int(u) for u in FLAGS.units]
    except ValueError:
      raise common.ExperimentError(f'--units={",".join(FLAGS.units)} holds a non-integer') from None
    if any(not 0 <= u < len(history) for u in units):
      raise common.ExperimentError(f'--units must lie in 0..{len(history) - 1}')
  else:
    units = [int(k) for k in np.argsort(-final.best_iou, kind='stable')[:FLAGS.history_units]]
  detectors = [h for h in history if h['final'] is not None]
  emerged = [h['stable_since'] for h in detectors]
  chance = study.chance(config)
  summary = {**study.summary(), 'model': FLAGS.model, 'seed': FLAGS.seed, 'steps': steps,
             'test_accuracy': accuracies, 'chance_accuracy': chance,
             'unique_per_step': per_step_unique,
             'unique_first_last': [rows[0]['total'], rows[-1]['total']],
             'final_detectors': len(detectors),
             'final_detectors_changing_category': sum(h['category_changes'] > 0 for h in detectors),
             'final_label_stable_since_median_step': float(np.median(emerged)) if emerged else None,
             'history': [history[k] for k in units], 'all_units_history': history}
  lines = [f'- {FLAGS.model} seed {FLAGS.seed}, preset {FLAGS.preset}: test accuracy '
           f'{100 * accuracies[0]:.1f} % at step {steps[0]} -> {100 * accuracies[-1]:.1f} % at '
           f'step {steps[-1]} (most frequent class: {100 * chance:.1f} %)',
           f'- unique detectors at {FLAGS.layer}: ' + ', '.join(
               f'step {r["step"]}: {r["total"]}' for r in rows),
           f'- {len(detectors)} detectors at the last step; '
           f'{summary["final_detectors_changing_category"]} of them changed category on the way; '
           f'median step since which the final label holds: '
           f'{summary["final_label_stable_since_median_step"]}']
  for k in units:
    h = history[k]
    lines.append(f'  - unit {k}: {h["final"] or "no detector"} (first seen at step '
                 f'{h["first_seen"]}, held since {h["stable_since"]}; categories '
                 f'{" -> ".join(h["categories"]) or "none"})')
  readme = ('## Headline\n\n' + '\n'.join(lines) + '\n\nall_units_history in results.json has every '
            'unit; label_history in this module defines the fields.')
  exp.write(rows, summary, {'fig18_dynamics': figure(steps, per_step_unique, accuracies, chance,
                                                     categories),
                            'fig19_label_history': history_figure(steps, per_step, units)}, readme)
  for line in lines:
    print(line)


if __name__ == '__main__':
  common.run(main)
