"""Networks and supervision side by side (paper Figs 9, 14): unique detectors per category at each
network's last conv layer, and the proportion of its detectors in each category.

Default: VGG16 ImageNet (classification), VGG16 HED (edges, fine-tuned from it), VGG16-BN CRAFT
(text detection; its weights end at conv5_2), VGG16 random init, MobileNetV2 ImageNet. Result
folders already complete in <outdir>/runs/ are reused.

python -m ndjax.experiments.networks
python -m ndjax.experiments.networks --models=vgg16:imagenet:conv5_3,resnet18:/p/places.pth.tar:layer4
"""
from __future__ import annotations

import numpy as np
from absl import flags

from ndjax.experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_list('models', ['vgg16:imagenet:conv5_3', 'vgg16:hed:conv5_3',
                             'vgg16_bn:craft:conv5_2', 'vgg16:random:conv5_3:1',
                             'mobilenet_v2:imagenet:features'],
                  'Networks as model:weights:layer[:seed], comma-separated.')
flags.DEFINE_float('tau', 0.005, 'Top quantile.')
flags.DEFINE_float('iou_threshold', 0.04, 'A unit is a detector when its best IoU > this.')


def main(argv):
  del argv
  nets = [common.Network.parse(m) for m in FLAGS.models]
  from ndjax import tally, views
  exp = common.Experiment('networks')
  threshold = FLAGS.iou_threshold
  rows, per_net, cats = [], [], None
  for net in nets:
    vd = exp.dissect(net, [net.layer], views.ViewSpec(taus=(FLAGS.tau,)))[(net.layer, '')]
    labels = vd.labels()
    cats = cats or common.category_order(vd.categories)
    u = tally.unique_detectors(labels, vd.probe, threshold)
    detectors = labels.best_iou > threshold
    by_cat = {c: int(np.sum(detectors & (labels.best_cat == vd.categories.index(c))))
              for c in cats}
    total_det = int(detectors.sum())
    per_net.append((net.label, u, by_cat, total_det, len(detectors)))
    rows.append(dict(network=net.label, model=net.model, weights=net.weights, layer=net.layer,
                     units=len(detectors), detectors=total_det, total=sum(u.values()),
                     **{c: u[c] for c in cats},
                     **{f'{c}_detector_share': round(by_cat[c] / max(total_det, 1), 4)
                        for c in cats}))
  lines = [f'- **{label}**: {sum(u.values())} unique detectors ({det}/{units} units), '
           + ', '.join(f'{c} {u[c]}' for c in cats) for label, u, _, det, units in per_net]
  exp.write(rows, {'networks': [r['network'] for r in rows], 'tau': FLAGS.tau,
                   'iou_threshold': threshold},
            {'fig9_unique': plot_unique(cats, per_net), 'fig14_proportions':
             plot_proportions(cats, per_net)}, '## Headline\n\n' + '\n'.join(lines))
  for line in lines:
    print(line.replace('**', ''))


def plot_unique(cats, per_net):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from ndjax import report
  fig, ax = plt.subplots(figsize=(1.6 * len(per_net) + 3, 3.8))
  x = np.arange(len(per_net))
  width = 0.8 / len(cats)
  for i, c in enumerate(cats):
    ax.bar(x + (i - (len(cats) - 1) / 2) * width, [u[c] for _, u, *_ in per_net], width,
           color=report.category_color(c), label=c)
  ax.set_xticks(x, [label for label, *_ in per_net], rotation=20)
  ax.set(ylabel='unique detectors')
  ax.legend(fontsize=8)
  return fig


def plot_proportions(cats, per_net):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from ndjax import report
  fig, ax = plt.subplots(figsize=(1.6 * len(per_net) + 3, 3.8))
  x = np.arange(len(per_net))
  bottom = np.zeros(len(per_net))
  for c in cats:
    share = np.array([by_cat[c] / max(det, 1) for _, _, by_cat, det, _ in per_net])
    ax.bar(x, share, 0.6, bottom=bottom, color=report.category_color(c), label=c)
    bottom += share
  ax.set_xticks(x, [label for label, *_ in per_net], rotation=20)
  ax.set(ylabel='share of detector units', ylim=(0, 1))
  ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1, 1))
  return fig


if __name__ == '__main__':
  common.run(main)
