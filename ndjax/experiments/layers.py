"""Unique detectors per layer (paper Fig 13): how interpretability builds up through a network.

By default the last conv layer of each block (VGG16: conv1_2, conv2_2, conv3_3, conv4_3, conv5_3),
`--layers=all` for every conv layer, all in ONE forward pass. Early layers are large (VGG16 conv1_2
at 224 px is 64 maps of 224 x 224 per image: 38 GB over 3,000 images), so activations that do not
fit in --cache_gb are recomputed by a second forward pass, never spilled to disk. Their exact
thresholds cost time linear in the images (top-m sets; the histogram selection where those would
not fit in memory), so the whole default probe set runs in about 40 minutes on 2 cores.

python -m ndjax.experiments.layers                          # VGG16 ImageNet, five blocks
python -m ndjax.experiments.layers --layers=all
python -m ndjax.experiments.layers --network=resnet18:/path/resnet18_places365.pth.tar
"""
from __future__ import annotations

import numpy as np
from absl import flags

from ndjax.experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string('network', 'vgg16:imagenet', 'The network as model:weights[::seed].')
flags.DEFINE_list('layers', None, 'Layers in forward order; default: the last conv layer of each '
                  'block; "all": every conv layer (paper names conv*).')
flags.DEFINE_float('tau', 0.005, 'Top quantile.')
flags.DEFINE_float('iou_threshold', 0.04, 'A unit is a detector when its best IoU > this.')

# The last conv layer (post-ReLU) of each block / stage.
BLOCK_LAST = {
    'alexnet': ('conv1', 'conv2', 'conv3', 'conv4', 'conv5'),
    'vgg16': ('conv1_2', 'conv2_2', 'conv3_3', 'conv4_3', 'conv5_3'),
    'vgg16_bn': ('conv1_2', 'conv2_2', 'conv3_3', 'conv4_3', 'conv5_3'),
    'googlenet': ('conv3', 'inception3b', 'inception4e', 'inception5b'),
    'resnet18': ('relu', 'layer1', 'layer2', 'layer3', 'layer4'),
    'resnet50': ('relu', 'layer1', 'layer2', 'layer3', 'layer4'),
    'resnet152': ('relu', 'layer1', 'layer2', 'layer3', 'layer4'),
    'densenet161': ('features.relu0', 'features.transition1.relu', 'features.transition2.relu',
                    'features.transition3.relu', 'relu5'),
    'mobilenet_v2': ('features.1', 'features.3', 'features.6', 'features.13', 'features'),
}


def choose_layers(module, arch: str, asked) -> list[str]:
  """The layers to dissect, in the network's forward order."""
  names = module.layer_names()
  if asked == ['all']:
    layers = [a for a in module.aliases if a.startswith('conv')]
    if not layers:
      raise common.ExperimentError(f'--layers=all means the paper-named conv layers, and '
                                   f'{arch} has none; list its layers instead')
  elif asked:
    layers = list(asked)
  else:
    layers = [l for l in BLOCK_LAST.get(arch, ()) if l in names]
    if not layers:
      raise common.ExperimentError(f'no default layers for {arch}; pass --layers')
  # layer_names() lists the aliases first, then every module path in forward order
  order = {n: i for i, n in enumerate(names)}
  try:
    return sorted(layers, key=lambda l: order[module.resolve(l)])
  except KeyError as e:
    raise common.ExperimentError(e.args[0]) from None


def main(argv):
  del argv
  net = common.Network.parse(FLAGS.network, need_layer=False)
  from ndjax import api, tally, views
  exp = common.Experiment('layers')
  module = api.load_model(net.model, net.weights, net.seed).module
  layers = choose_layers(module, net.model, FLAGS.layers)
  # cache_dir=None: what does not fit in memory is recomputed, never spilled to disk
  dirs = exp.dissect(net, layers, views.ViewSpec(taus=(FLAGS.tau,)), cache_dir=None)
  threshold = FLAGS.iou_threshold
  rows, per_layer = [], []
  cats = common.category_order(next(iter(dirs.values())).categories)
  for layer in layers:
    vd = dirs[(layer, '')]
    labels = vd.labels()
    u = tally.unique_detectors(labels, vd.probe, threshold)
    det = int(np.sum(labels.best_iou > threshold))
    units = len(labels.best_iou)
    per_layer.append((layer, u, det, units))
    rows.append(dict(network=net.label, layer=layer, units=units, detectors=det,
                     detector_fraction=round(det / units, 4), total=sum(u.values()),
                     **{c: u[c] for c in cats}))
  lines = [f'- **{layer}**: {sum(u.values())} unique detectors ({det}/{units} units are '
           f'detectors), ' + ', '.join(f'{c} {u[c]}' for c in cats)
           for layer, u, det, units in per_layer]
  exp.write(rows, {'network': net.label, 'layers': layers, 'tau': FLAGS.tau,
                   'iou_threshold': threshold},
            {'fig13_layers': plot(net.label, cats, per_layer)},
            f'## Headline: {net.label}\n\n' + '\n'.join(lines))
  for line in lines:
    print(line.replace('**', ''))


def plot(label, cats, per_layer):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from ndjax import report
  fig, ax = plt.subplots(figsize=(1.2 * len(per_layer) + 3, 3.8))
  x = np.arange(len(per_layer))
  bottom = np.zeros(len(per_layer))
  for c in cats:
    values = np.array([u[c] for _, u, _, _ in per_layer], float)
    ax.bar(x, values, 0.6, bottom=bottom, color=report.category_color(c), label=c)
    bottom += values
  ax.set_xticks(x, [layer for layer, *_ in per_layer], rotation=30)
  ax.set(title=label, ylabel='unique detectors')
  twin = ax.twinx()
  twin.plot(x, [det / units for _, _, det, units in per_layer], 'k--o', ms=3,
            label='detector fraction')
  twin.set(ylabel='fraction of units that are detectors', ylim=(0, 1))
  handles, names = ax.get_legend_handles_labels()
  more, more_names = twin.get_legend_handles_labels()
  ax.legend(handles + more, names + more_names, fontsize=8, loc='upper left')
  return fig


if __name__ == '__main__':
  common.run(main)
