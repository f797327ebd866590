"""What happens to units when a network is fine-tuned to another task? (paper Sec 3.7, Figs 20-23)

Trains the preset's baseline AlexNet on the object-group task (or reuses it), fine-tunes its last
snapshot to a second label set (the built-in task's materials on the cpu preset; the head is
re-initialised for the new classes), dissects every log-spaced snapshot of the fine-tuning at
--layer, and classifies each unit by comparing its label before (the trained baseline) and after
(the last fine-tuning step):
  kept      a detector before and after, with the same label
  changed   a detector before and after, with another label (counted as "category before ->
            category after")
  lost      a detector before, not after
  gained    not a detector before, a detector after
With --directions=forward,reverse the opposite direction runs too (a network trained on the
materials from scratch, fine-tuned to the object groups), like the paper's ImageNet -> Places365
and Places365 -> ImageNet.

python -m ndjax.experiments.finetune --preset=cpu
"""
from __future__ import annotations

from absl import flags

from ndjax.experiments import common, training

FLAGS = flags.FLAGS
flags.DEFINE_list('directions', ['forward'], 'forward: object groups -> the preset\'s second label '
                  'set; reverse: that set -> object groups.')
flags.DEFINE_integer('examples', 3, 'Example units per class in the before/after strip.')

CLASSES = ('kept', 'changed', 'lost', 'gained', 'neither')


def evolution(before: list, after: list) -> list[str]:
  """Per unit, its class from its (label, category) or None before and after."""
  out = []
  for b, a in zip(before, after):
    if b is None:
      out.append('gained' if a is not None else 'neither')
    elif a is None:
      out.append('lost')
    else:
      out.append('kept' if a[0] == b[0] else 'changed')
  return out


def _short(dataset: str) -> str:
  return dataset.split(':', 1)[-1].replace('probe_task_', '').replace('probe_task', 'objects')


def strip_figure(exp, examples: list[dict], before_vd, after_vd, k: int = 3):
  """One row per example unit: its top-k probe images before and after fine-tuning."""
  import matplotlib.pyplot as plt
  rows = max(len(examples), 1)
  fig, axes = plt.subplots(rows, 2 * k, figsize=(1.5 * 2 * k, 1.7 * rows), squeeze=False,
                           layout='constrained')
  for row, ex in enumerate(examples):
    for side, vd in enumerate((before_vd, after_vd)):
      top = vd.top
      for j in range(k):
        ax = axes[row, side * k + j]
        ax.set_xticks([])
        ax.set_yticks([])
        if top is not None and j < top['images'].shape[1]:
          ax.imshow(exp.ds.load_image(int(top['images'][ex['unit'], j])))
        if j == 0:
          label = ex['before'] if side == 0 else ex['after']
          ax.set_title(f'{"before" if side == 0 else "after"}: {label or "-"}', fontsize=7,
                       loc='left')
    axes[row, 0].set_ylabel(f'unit {ex["unit"]}\n{ex["class"]}', fontsize=7)
  return fig


def plan(first: str, second: str, directions) -> list[tuple[str, str, str]]:
  """(base run name, base dataset, target dataset) per direction. The forward base is the
  preset's baseline run itself (`first` = its dataset), which the other studies share."""
  pairs = {'forward': (first, second), 'reverse': (second, first)}
  return [('alexnet_s0' if pairs[d][0] == first else f'alexnet_s0_{_short(pairs[d][0])}',
           *pairs[d]) for d in directions]


def direction(exp, study, base_name: str, base_dataset: str, target_dataset: str) -> dict:
  base_config = study.config(model='alexnet', seed=0, dataset=base_dataset)
  base = study.train(base_name, base_config)
  base_step = study.snapshots(base)[-1]
  p = study.preset
  config = study.config(model='alexnet', seed=0, dataset=target_dataset,
                        init_from=str((base / 'snapshots' / str(base_step)).absolute()),
                        total_steps=p.finetune_steps, learning_rate=p.finetune_learning_rate,
                        warmup_steps=min(base_config.warmup_steps, p.finetune_steps // 10))
  tuned = study.train(f'{base_name}_to_{_short(target_dataset)}', config)
  steps = study.snapshots(tuned)
  before_vd = study.dissect(base, base_step, 'alexnet')
  before = training.unit_labels(before_vd, FLAGS.iou_threshold)
  rows, uniques, categories, vd = [], [], None, None
  for step in steps:
    vd = study.dissect(tuned, step, 'alexnet')
    scored = study.score(vd)
    categories = categories or common.category_order(vd.categories)
    uniques.append(scored['unique'])
    rows.append(dict(direction=f'{_short(base_dataset)} -> {_short(target_dataset)}', step=step,
                     test_accuracy=round(study.accuracy(tuned, step, config), 4),
                     total=scored['total'], detectors=scored['detectors'],
                     **{c: scored['unique'][c] for c in categories}))
  after = training.unit_labels(vd, FLAGS.iou_threshold)
  classes = evolution(before, after)
  counts = {c: classes.count(c) for c in CLASSES}
  changed_to = {}
  for cls, b, a in zip(classes, before, after):
    if cls == 'changed':
      key = f'{b[1]} -> {a[1]}'
      changed_to[key] = changed_to.get(key, 0) + 1
  before_iou = before_vd.labels().best_iou
  examples = []
  for cls in ('kept', 'changed', 'lost'):
    units = [k for k, c in enumerate(classes) if c == cls]
    units = sorted(units, key=lambda k: -before_iou[k])[:FLAGS.examples]
    examples += [dict(unit=k, cls=cls, before=before[k][0] if before[k] else None,
                      after=after[k][0] if after[k] else None) for k in units]
  for ex in examples:
    ex['class'] = ex.pop('cls')
  return dict(name=f'{_short(base_dataset)} -> {_short(target_dataset)}', base=str(base),
              base_step=base_step, finetuned=str(tuned), steps=steps, rows=rows,
              uniques=uniques, categories=categories, counts=counts, changed_to=changed_to,
              examples=examples, before_vd=before_vd, after_vd=vd,
              detectors_before=sum(b is not None for b in before),
              base_accuracy=study.accuracy(base, base_step, base_config),
              chance=study.chance(config), units=len(classes))


def main(argv):
  del argv
  unknown = set(FLAGS.directions) - {'forward', 'reverse'}
  if unknown or not FLAGS.directions:
    raise common.ExperimentError(f'--directions={",".join(FLAGS.directions)}: use forward, '
                                 'reverse or both')
  exp = common.Experiment('finetune')
  study = training.Study(exp)
  steps = plan(study.config().dataset, study.preset.finetune_dataset, FLAGS.directions)
  results = [direction(exp, study, *step) for step in steps]
  rows = [r for res in results for r in res['rows']]
  figures = {'fig20_finetune': common.curves_figure(
      {f'{res["name"]} (fine-tuning)': (res['categories'], [max(s, 0) for s in res['steps']],
                                        res['uniques']) for res in results},
      'fine-tuning step', log_x=False)}
  for res in results:
    ax = figures['fig20_finetune'].axes[results.index(res)]
    ax.set_xscale('symlog', linthresh=1)
    tag = res['name'].replace(' -> ', '_to_')
    figures[f'fig21_units_{tag}'] = strip_figure(exp, res['examples'], res['before_vd'],
                                                 res['after_vd'])
  lines = []
  for res in results:
    c = res['counts']
    lines.append(
        f'- **{res["name"]}**: base accuracy {100 * res["base_accuracy"]:.1f} %, after '
        f'fine-tuning {100 * res["rows"][-1]["test_accuracy"]:.1f} % (most frequent class '
        f'{100 * res["chance"]:.1f} %); {res["detectors_before"]} detectors before; kept '
        f'{c["kept"]}, changed {c["changed"]}, lost {c["lost"]}, gained {c["gained"]} '
        f'(of {res["units"]} units); unique detectors '
        f'{res["rows"][0]["total"]} -> {res["rows"][-1]["total"]}')
    if res['changed_to']:
      lines.append('  - changed: ' + ', '.join(f'{k}: {v}' for k, v in
                                               sorted(res['changed_to'].items())))
    for ex in res['examples']:
      lines.append(f'  - unit {ex["unit"]} ({ex["class"]}): {ex["before"] or "-"} -> '
                   f'{ex["after"] or "-"}')
  summary = {**study.summary(), 'directions': [
      {k: v for k, v in res.items() if k not in ('before_vd', 'after_vd', 'rows')}
      for res in results]}
  exp.write(rows, summary, figures, '## Headline\n\n' + '\n'.join(lines))
  for line in lines:
    print(line.replace('**', ''))


if __name__ == '__main__':
  common.run(main)
