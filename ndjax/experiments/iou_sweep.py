"""Unique detectors against the IoU threshold, rescored from saved counts (no forward pass).

A dissection's counts.npz holds every unit x label intersection and union term, so any IoU
threshold (and either denominator) is a rescore, not a rerun.

python -m ndjax.experiments.iou_sweep                       # ./ndjax_results/vgg16_imagenet
python -m ndjax.experiments.iou_sweep --runs=ndjax_results/vgg16_imagenet/conv5_3,other_run
"""
from __future__ import annotations

import numpy as np
from absl import flags

from ndjax.experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_list('runs', ['ndjax_results/vgg16_imagenet'], 'Result folders (<run>/<layer>[@<view>]) '
                  'or run folders (every layer/view in them), comma-separated.')
flags.DEFINE_list('thresholds', ['0.01', '0.02', '0.03', '0.04', '0.05', '0.06', '0.08', '0.1',
                                 '0.15', '0.2'], 'IoU thresholds.')
flags.DEFINE_enum('denominator', 'paper', ['paper', 'lite', 'dataset'],
                  'IoU union (see the README).')


def main(argv):
  del argv
  from ndjax import results, tally
  thresholds = sorted(common.floats('thresholds'))
  folders = [vd for path in FLAGS.runs for vd in results.find(path)]
  if not folders:
    raise common.ExperimentError(f'no result folders under {", ".join(FLAGS.runs)}')
  exp = common.Experiment('iou_sweep')
  images = {vd.results.get('images') for vd in folders}
  exp.probe_images = images.pop() if len(images) == 1 else None
  rows, curves, summary = [], {}, []
  for vd in folders:
    labels = vd.labels(FLAGS.denominator)
    cats = common.category_order(vd.categories)
    name = f'{vd.run}/{vd.folder}'
    per = []
    for t in thresholds:
      u = tally.unique_detectors(labels, vd.probe, t)
      per.append(u)
      rows.append(dict(folder=name, threshold=t, total=sum(u.values()),
                       detectors=int(np.sum(labels.best_iou > t)), **{c: u[c] for c in cats}))
    curves[name] = (cats, thresholds, per)
    summary.append({'folder': name, 'path': str(vd.path), 'thresholds': thresholds,
                    'unique': [sum(u.values()) for u in per]})
  lines = [f"- **{s['folder']}**: " + ', '.join(f'IoU>{t:g}: {n}' for t, n in
                                                zip(thresholds, s['unique'])) for s in summary]
  exp.write(rows, {'folders': summary, 'denominator': FLAGS.denominator},
            {'iou_sweep': common.curves_figure(curves, 'IoU threshold', mark=0.04)},
            '## Headline (unique detectors)\n\n' + '\n'.join(lines))
  for line in lines:
    print(line.replace('**', ''))


if __name__ == '__main__':
  common.run(main)
