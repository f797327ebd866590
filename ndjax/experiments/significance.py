"""Is a detector significant? A p-value for every unit's best IoU against a null (ndjax/significance.py).

"Is IoU 0.04 too low: would a random direction score as much?" For each network, each unit's best
IoU (over all labels, each judged in its primary category: the dissection's own statistic) is
compared with the same statistic of a null:
  --null=directions   D random unit-norm directions of the same layer (one forward pass: a
                      directions view beside the plain layer); the null is shared by the units;
  --null=permutation  N copies of the probe set's labels, each category's masks moved to other
                      images (one dissection counts all copies); the null is per unit.
p = (1 + #{null >= observed}) / (D + 1); Benjamini-Hochberg at --fdr over the layer's units.
Writes significance.csv beside each layer's tally.csv (shown on the report's unit pages) and
the experiment's results.csv/json, figures and README.

python -m ndjax.experiments.significance        # VGG16 conv5_3: ImageNet vs random init, 1000 directions
python -m ndjax.experiments.significance --null=permutation --null_draws=99 \\
    --networks=alexnet:imagenet:conv5 --images=300
"""
from __future__ import annotations

import dataclasses
import io

import numpy as np
from absl import flags

from ndjax.experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_list('networks', ['vgg16:imagenet:conv5_3', 'vgg16:random:conv5_3'],
                  'model:weights:layer[:seed] per network (the random-init one is the baseline).')
flags.DEFINE_enum('null', 'directions', ['directions', 'permutation'], 'The null (see above).')
flags.DEFINE_integer('null_draws', 0, 'D directions or N permutations (0: 1000 directions, 99 '
                     'permutations). The smallest p-value is 1/(D+1).')
flags.DEFINE_integer('null_seed', 0, 'Seed of the directions / permutations.')
flags.DEFINE_float('fdr', 0.05, 'False discovery rate of Benjamini-Hochberg.')
flags.DEFINE_float('tau', 0.005, 'Top quantile (units and null directions alike).')
flags.DEFINE_enum('denominator', 'paper', ['paper', 'lite', 'dataset'], 'IoU union.')
flags.DEFINE_float('iou_threshold', 0.04, 'A unit is a detector when its best IoU > this.')
flags.DEFINE_bool('count_label_sets', False, 'Also count label sets (sets.npz) in the directions '
                  'run, for `compositional --results=<layer folder>` to reuse the dissection.')


def main(argv):
  del argv
  from ndjax import api, report, results, significance, tally
  if FLAGS.null_draws < 0:
    raise common.ExperimentError(f'--null_draws={FLAGS.null_draws} must be >= 1 (0 = default)')
  if not 0.0 < FLAGS.fdr < 1.0:
    raise common.ExperimentError(f'--fdr={FLAGS.fdr} must be in (0, 1)')
  draws = FLAGS.null_draws or (1000 if FLAGS.null == 'directions' else 99)
  exp = common.Experiment('significance')
  rows, summary, panels = [], [], []
  for text in FLAGS.networks:
    net = common.Network.parse(text)
    model = api.load_model(net.model, net.weights, net.seed)
    layer = api.resolve_layers(model, [net.layer])[0]
    if FLAGS.null == 'directions':
      folder, null = _directions_null(exp, net, model, layer, draws)
      null_name = f'{draws} random directions (seed {FLAGS.null_seed})'
    else:
      folder, null = _permutation_null(exp, net, model, layer, draws)
      null_name = f'{draws} label permutations (seed {FLAGS.null_seed})'
    vd = results.load(folder)
    labels = vd.labels(FLAGS.denominator)
    observed = labels.best_iou
    p = significance.p_values(observed, null)
    reject = significance.benjamini_hochberg(p, FLAGS.fdr)
    null_k = np.broadcast_to(null, (len(observed), null.shape[-1]))
    q95, q99 = np.quantile(null_k, 0.95, axis=1), np.quantile(null_k, 0.99, axis=1)
    det = observed > FLAGS.iou_threshold
    names = [vd.probe.label_names[l] for l in labels.best_label]
    cats = [vd.probe.categories[c] for c in labels.best_cat]
    unit_rows = [dict(unit=k + 1, label=names[k], category=cats[k], iou=float(observed[k]),
                      p_value=float(p[k]), null_q95=float(q95[k]), null_q99=float(q99[k]),
                      bh_reject=int(reject[k]), detector=int(det[k]), null=null_name,
                      fdr=FLAGS.fdr) for k in range(len(observed))]
    common.write_csv(folder / 'significance.csv', unit_rows)
    report.write_report(folder, dataset=exp.ds)
    rows += [dict(network=net.label, **r) for r in unit_rows]
    uniq = {l for l, d, r in zip(names, det, reject) if d and r}
    summary.append(dict(network=net.label, folder=str(folder), units=len(observed),
                        null=null_name, p_floor=1.0 / (draws + 1),
                        detectors=int(det.sum()), significant=int(reject.sum()),
                        p_below_0_05=int((p < 0.05).sum()),
                        at_floor=int((p == 1.0 / (draws + 1)).sum()),
                        significant_detectors=int((det & reject).sum()),
                        unique_significant_detectors=len(uniq),
                        unique_detectors=int(sum(tally.unique_detectors(
                            labels, vd.probe, FLAGS.iou_threshold).values())),
                        null_median=float(np.median(null)), null_q95=float(np.quantile(null, 0.95)),
                        null_q99=float(np.quantile(null, 0.99)), null_max=float(np.max(null))))
    panels.append((net.label, observed, np.asarray(null).ravel(), p, reject))
  lines = [f"- **{s['network']}**: {s['detectors']} detectors (IoU > {FLAGS.iou_threshold:g}), "
           f"{s['significant']} units significant at FDR {FLAGS.fdr:g} ({s['significant_detectors']}"
           f" of them detectors, {s['unique_significant_detectors']} unique concepts); null "
           f"{s['null']}: 95th / 99th percentile {s['null_q95']:.4f} / {s['null_q99']:.4f}, max "
           f"{s['null_max']:.4f}; smallest p-value {s['p_floor']:.2g} ({s['at_floor']} units); "
           f"{s['p_below_0_05']} units with p < 0.05 before the FDR correction" for s in summary]
  exp.write(rows, {'networks': summary, 'null': FLAGS.null, 'draws': draws,
                   'denominator': FLAGS.denominator, 'tau': FLAGS.tau},
            {'significance': _figure(panels)},
            '## Headline\n\n' + '\n'.join(lines) +
            '\n\nPer unit: results.csv, and significance.csv beside each dissection\'s '
            'tally.csv (its report shows the p-value on every unit page).')
  for line in lines:
    print(line.replace('**', ''))


def _directions_null(exp, net, model, layer, draws):
  """The plain layer and D random directions of it, in one dissection; the directions' best
  IoUs (D,)."""
  from ndjax import fileio, significance
  from ndjax import views as views_lib
  units = model.module.channels(layer)
  exp.runs.mkdir(parents=True, exist_ok=True)
  path = exp.runs / f'null_directions_k{units}_d{draws}_s{FLAGS.null_seed}.npy'
  if not path.is_file():
    buf = io.BytesIO()
    np.save(buf, significance.random_directions(units, draws, FLAGS.null_seed))
    fileio.atomic_write(str(path), buf.getvalue())
  spec = views_lib.ViewSpec(taus=(FLAGS.tau,), directions=(str(path),), with_identity=True)
  extra = (dict(label_sets=True, required=('sets.npz',)) if FLAGS.count_label_sets else {})
  vds = exp.dissect(net, [layer], views=spec, **extra)
  plain = vds[(layer, '')]
  null = vds[(layer, f'dir_{path.stem}')].labels(FLAGS.denominator).best_iou
  return plain.path, np.asarray(null)


def _permutation_null(exp, net, model, layer, draws):
  """One dissection over N label copies (`significance.PermutedLabels`); copy 0 is written as the
  plain layer folder, the copies' best IoUs per unit are the null (K, N)."""
  from ndjax import api, significance, tally
  ds = exp.ds
  perms = significance.image_permutations(ds, draws, FLAGS.null_seed)
  wrapped = significance.PermutedLabels.of(ds, perms)
  out = api.dissect(model, wrapped, [layer], tau=FLAGS.tau, batch_size=FLAGS.batch_size,
                    cache_gb=FLAGS.cache_gb, progress=FLAGS.progress)
  res = out.results[0]
  nl, nc = ds.num_labels, len(ds.categories)
  null = np.stack([tally.label_units(significance.copy_counts(res.counts, nl, nc, p), ds,
                                     FLAGS.denominator).best_iou for p in range(1, draws + 1)], 1)
  plain = dataclasses.replace(out, results=[dataclasses.replace(
      res, counts=significance.copy_counts(res.counts, nl, nc, 0))])
  run_dir = exp.run_dir(net)
  api.write_outputs(plain, ds, str(run_dir), model=model, report=False,
                    meta={'experiment': exp.name, 'experiment_command': exp.command,
                          'probe': exp.probe_identity, 'null': f'{draws} label permutations',
                          'resolved': {'dataset': str(getattr(ds, 'root', '') or '')}})
  exp.computed.append(f'{net.label}: 1 dissection of {draws + 1} label copies')
  return run_dir / plain.results[0].folder, null


def _figure(panels):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(len(panels), 2, figsize=(9.2, 3.4 * len(panels)), squeeze=False,
                           layout='constrained')
  axes = axes.ravel()
  for i, (name, observed, null, p, reject) in enumerate(panels):
    ax = axes[2 * i]
    top = max(observed.max(), null.max()) * 1.05 + 1e-9
    bins = np.linspace(0, top, 40)
    ax.hist(null, bins=bins, density=True, alpha=0.55, label=f'null ({len(null)})', color='grey')
    ax.hist(observed, bins=bins, density=True, alpha=0.55, label=f'units ({len(observed)})',
            color='tab:blue')
    ax.axvline(FLAGS.iou_threshold, color='k', ls=':', lw=1, label=f'IoU {FLAGS.iou_threshold:g}')
    ax.set_xlabel('best IoU')
    ax.set_title(f'{name}: {int(reject.sum())} significant', fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[2 * i + 1]
    ax.hist(p, bins=np.linspace(0, 1, 21), color='tab:orange')
    ax.set_xlabel('p-value')
    ax.set_title(f'{name}: p-values', fontsize=9)
  return fig


if __name__ == '__main__':
  common.run(main)
