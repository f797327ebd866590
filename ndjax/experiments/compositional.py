"""Compositional explanations (Mu & Andreas, NeurIPS'20): the formula of labels each unit detects.

A unit's label becomes a logical formula over probe labels, `(water OR river) AND NOT blue-c`,
found by beam search over the dataset-wide IoU (`ndjax/formulas.py`). The dissection counts each
unit's mask per label SET once (`ndjax/labelsets.py`: an exact sufficient statistic of every
formula), so the search itself never reads a pixel: all units, all beam entries and all labels of
a step are a few batched sums over the label sets.

Writes formulas.csv beside the layer's tally.csv (formula, formula_iou, single label and IoU per
unit; shown on the report's unit pages) and the experiment's results.csv/json, figure and README.

python -m ndjax.experiments.compositional --layer=conv5_3          # VGG16 ImageNet, length 3
python -m ndjax.experiments.compositional --results=<run>/conv5_3   # a dissection with sets.npz
"""
from __future__ import annotations

import pathlib
import time

import numpy as np
from absl import flags

from ndjax.experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string('network', 'vgg16:imagenet', 'model:weights[::seed] of the network dissected.')
flags.DEFINE_string('layer', 'conv5_3', 'The layer.')
flags.DEFINE_string('results', None, 'Use this dissected layer folder (it must hold sets.npz: '
                    'dissected with label sets, e.g. by significance --count_label_sets) instead '
                    'of dissecting --network.')
flags.DEFINE_integer('beam_size', 5, 'Formulas kept per step (compexp: 5).')
flags.DEFINE_integer('max_formula_length', 3, 'Most labels in a formula (compexp: 3).')
flags.DEFINE_float('complexity_penalty', 1.0, "compexp's penalty: a formula of n labels scores "
                   'IoU * penalty^(n-1) (1 = none).')
flags.DEFINE_list('formula_categories', [], 'Categories whose labels formulas may use (default: '
                  'all; compexp leaves out material).')
flags.DEFINE_float('tau', 0.005, 'Top quantile.')
flags.DEFINE_integer('examples', 5, 'Example formulas in the README and the output.')


def main(argv):
  del argv
  from ndjax import formulas, labelsets, report, results
  exp = common.Experiment('compositional')
  t0 = time.perf_counter()
  if FLAGS.results:
    folder = pathlib.Path(FLAGS.results)
    try:
      vd = results.load(folder)
    except results.ResultsError as e:
      raise common.ExperimentError(str(e)) from None
    exp.reused.append(f'{folder}')
    exp.reused_from = str(folder)
    timings = vd.results.get('timings_s', {})
    exp.reused_seconds = sum(timings.get(k, 0.0) for k in ('forward_and_threshold',
                                                            'threshold_refine', 'count'))
    exp.probe_images = vd.results.get('images')
    ds = None
  else:
    net = common.Network.parse(f'{FLAGS.network}:{FLAGS.layer}' if FLAGS.network.count(':') < 2
                               else FLAGS.network)
    from ndjax import views as views_lib
    vds = exp.dissect(net, [net.layer], views=views_lib.ViewSpec(taus=(FLAGS.tau,)),
                      label_sets=True, required=(labelsets.FILE,))
    vd = next(iter(vds.values()))
    folder, ds = vd.path, exp.ds
  sets_path = folder / labelsets.FILE
  if not sets_path.is_file():
    raise common.ExperimentError(f'{folder} has no {labelsets.FILE}: dissect it with label sets '
                                 '(leave out --results to let this experiment do it)')
  dissect_s = time.perf_counter() - t0
  sets = labelsets.LabelSets.load(sets_path)
  probe = vd.probe
  allowed = None
  if FLAGS.formula_categories:
    unknown = [c for c in FLAGS.formula_categories if c not in probe.categories]
    if unknown:
      raise common.ExperimentError(f'--formula_categories: unknown {",".join(unknown)}; valid: '
                                   f'{", ".join(probe.categories)}')
    cats = [probe.categories.index(c) for c in FLAGS.formula_categories]
    allowed = np.isin(probe.primary, cats)
  t1 = time.perf_counter()
  try:
    found = formulas.explain(sets, len(probe.label_names), beam_size=FLAGS.beam_size,
                             max_length=FLAGS.max_formula_length,
                             penalty=FLAGS.complexity_penalty, allowed=allowed,
                             progress=FLAGS.progress)
  except formulas.FormulaError as e:
    raise common.ExperimentError(str(e)) from None
  search_s = time.perf_counter() - t1
  names = list(probe.label_names)
  show = lambda f: f.to_str(names) if f is not None else ''
  rows = [dict(unit=e.unit + 1, formula=show(e.formula), formula_iou=e.iou,
               length=len(e.formula) if e.formula else 0, single_label=show(e.single),
               single_iou=e.single_iou,
               beam=' | '.join(f'{show(f)} ({i:.4f})' for f, i in e.beam)) for e in found]
  common.write_csv(folder / report.FORMULAS_CSV, rows)
  report.write_report(folder, dataset=ds)
  gain = np.array([r['formula_iou'] - r['single_iou'] for r in rows])
  lengths = np.array([r['length'] for r in rows])
  # examples: the units whose formula adds most to their best single label
  examples = sorted((r for r in rows if r['length'] >= 2),
                    key=lambda r: (r['single_iou'] - r['formula_iou'], r['unit']))[:FLAGS.examples]
  summary = dict(folder=str(folder), units=len(rows), num_sets=sets.num_sets,
                 beam_size=FLAGS.beam_size, max_formula_length=FLAGS.max_formula_length,
                 complexity_penalty=FLAGS.complexity_penalty,
                 mean_single_iou=float(np.mean([r['single_iou'] for r in rows])),
                 mean_formula_iou=float(np.mean([r['formula_iou'] for r in rows])),
                 lengths={int(n): int((lengths == n).sum()) for n in np.unique(lengths)},
                 units_gaining_over_0_01=int((gain > 0.01).sum()),
                 dissection_s=round(dissect_s, 1), search_s=round(search_s, 2),
                 examples=examples)
  lines = [f"- unit {r['unit']}: **{r['formula']}** IoU {r['formula_iou']:.4f} (single label "
           f"{r['single_label']}: {r['single_iou']:.4f})" for r in examples]
  head = (f"{len(rows)} units of {folder}; {sets.num_sets} label sets; beam {FLAGS.beam_size}, "
          f"length <= {FLAGS.max_formula_length}, penalty {FLAGS.complexity_penalty:g}. Mean IoU "
          f"single label {summary['mean_single_iou']:.4f} -> formula "
          f"{summary['mean_formula_iou']:.4f} (dataset-wide IoU); formula lengths "
          f"{summary['lengths']}; {summary['units_gaining_over_0_01']} units gain > 0.01 IoU. "
          f"Beam search {search_s:.1f} s"
          + (f" after a dissection of {dissect_s / 60:.1f} min" if not FLAGS.results else ''))
  exp.write(rows, summary, {'compositional': _figure(rows, gain)},
            '## Headline\n\n' + head + '\n\nExamples (the units whose formula gains most over '
            'their best single label):\n\n'
            + '\n'.join(lines) + '\n\nPer unit: results.csv, and formulas.csv beside the '
            "dissection's tally.csv (its report shows the formula on every unit page).")
  print(head)
  for line in lines:
    print(line.replace('**', ''))


def _figure(rows, gain):
  fig, (a, b) = common.panels(2, width=4.6, height=3.6)
  single = np.array([r['single_iou'] for r in rows])
  best = np.array([r['formula_iou'] for r in rows])
  a.scatter(single, best, s=6, alpha=0.6)
  top = max(best.max(), single.max(), 1e-3) * 1.05
  a.plot([0, top], [0, top], 'k:', lw=1)
  a.set_xlabel('best single label IoU')
  a.set_ylabel('best formula IoU')
  a.set_title('formula vs single label (dataset-wide IoU)', fontsize=9)
  b.hist(gain, bins=30, color='tab:green')
  b.set_xlabel('IoU gain of the formula')
  b.set_title(f'{len(rows)} units', fontsize=9)
  return fig


if __name__ == '__main__':
  common.run(main)
