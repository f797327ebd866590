"""Unique detectors and unit labels as the activation threshold loosens (paper Figs 28-29).

Every tau reads the same forward pass (views that differ only in tau share one threshold buffer):
unique detectors per category against tau, and the units whose label changes most often as tau
goes from tight to loose (the paper's "painting and horse units both become brown").

python -m ndjax.experiments.tau_sweep                      # VGG16 ImageNet conv5_3
python -m ndjax.experiments.tau_sweep --taus=0.001,0.005,0.02,0.08
"""
from __future__ import annotations

import numpy as np
from absl import flags

from ndjax.experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_list('models', ['vgg16:imagenet:conv5_3'], 'Networks as model:weights:layer[:seed].')
flags.DEFINE_list('taus', ['0.0025', '0.005', '0.01', '0.02', '0.04'],
                  'Top quantiles, tight to loose.')
flags.DEFINE_float('iou_threshold', 0.04, 'A unit is a detector when its best IoU > this.')
flags.DEFINE_integer('changing_units', 5, 'How many of the most often relabelled units to list.')


def label_changes(sequences: np.ndarray) -> np.ndarray:
  """(K, T) label per unit per tau -> (K,) how many times each unit's label changes."""
  return np.sum(sequences[:, 1:] != sequences[:, :-1], axis=1)


def main(argv):
  del argv
  nets = [common.Network.parse(m) for m in FLAGS.models]
  taus = sorted(common.floats('taus'))
  from ndjax import tally, views
  try:
    spec = views.ViewSpec(taus=tuple(taus))
  except views.ViewError as e:
    raise common.ExperimentError(str(e)) from None
  exp = common.Experiment('tau_sweep')
  threshold = FLAGS.iou_threshold
  rows, summary, curves = [], [], {}
  for net in nets:
    dirs = exp.dissect(net, [net.layer], spec)
    by_tau = sorted(((vd.view.tau, vd) for vd in dirs.values()), key=lambda p: p[0])
    cats = common.category_order(by_tau[0][1].categories)
    per_tau = []
    for tau, vd in by_tau:
      labels = vd.labels()
      u = tally.unique_detectors(labels, vd.probe, threshold)
      det = int(np.sum(labels.best_iou > threshold))
      per_tau.append(u)
      rows.append(dict(network=net.label, layer=net.layer, folder=vd.folder, tau=tau,
                       total=sum(u.values()), detectors=det, **{c: u[c] for c in cats}))
    curves[net.label] = (cats, [t for t, _ in by_tau], per_tau)
    names = by_tau[0][1].label_names
    sequences = np.stack([vd.labels().best_label for _, vd in by_tau], axis=1)     # (K, T)
    ious = np.stack([vd.labels().best_iou for _, vd in by_tau], axis=1)
    changes = label_changes(sequences)
    top = np.argsort(-changes, kind='stable')[:FLAGS.changing_units]
    changing = [{'unit': int(k), 'changes': int(changes[k]),
                 'labels': [names[j] for j in sequences[k]],
                 'ious': [round(float(x), 4) for x in ious[k]]} for k in top]
    summary.append({'network': net.label, 'taus': [t for t, _ in by_tau],
                    'unique': [sum(u.values()) for u in per_tau],
                    'unique_per_category': per_tau, 'most_relabelled_units': changing,
                    'units_relabelled': int(np.sum(changes > 0)), 'units': int(len(changes))})
  lines = []
  for s in summary:
    lines.append(f"- **{s['network']}**: unique detectors " + ', '.join(
        f'τ={t:g}: {n}' for t, n in zip(s['taus'], s['unique'])) +
        f"; {s['units_relabelled']}/{s['units']} units change label across the sweep")
    for unit in s['most_relabelled_units']:
      lines.append(f"  - unit {unit['unit']}: " + ' → '.join(unit['labels']))
  exp.write(rows, {'networks': summary, 'iou_threshold': threshold},
            {'fig28_tau': common.curves_figure(curves, 'τ (top quantile)', log_x=True)}, '## Headline\n\n' + '\n'.join(lines))
  for line in lines:
    print(line.replace('**', ''))


if __name__ == '__main__':
  common.run(main)
