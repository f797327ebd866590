"""Interpretability is not rotation-invariant (paper Sec 3.2, Figs 6-8).

A layer's K units are one basis of its activation space. Rotating it by Q^alpha (Q Haar-random on
SO(K), alpha along the geodesic from I to Q) keeps every bit of information the layer holds, yet
the paper found unique detectors fall by ~80 % at alpha = 1 (AlexNet-Places205 conv5): the
network's own axes are special. All views of a network come from ONE forward pass.

  Fig 6  unique detectors per category as alpha goes 0 -> 1 (one Q, seed --rotation_seed);
  Fig 8  --repeats independent Q at alpha = 1 (seeds rotation_seed, rotation_seed + 1, ...): mean
         +- std of unique detectors per category beside the unrotated layer;
  Fig 7  for the five concepts with the best single-unit IoU, that IoU against the best IoU of any
         direction of the rotated bases (mean +- std over the repeats).

python -m ndjax.experiments.rotation                       # VGG16 ImageNet conv5_3
python -m ndjax.experiments.rotation --models=vgg16:hed:conv5_3,mobilenet_v2:imagenet:features
"""
from __future__ import annotations

import numpy as np
from absl import flags

from ndjax.experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_list('models', ['vgg16:imagenet:conv5_3'], 'Networks as model:weights:layer[:seed], '
                  'comma-separated (e.g. vgg16:hed:conv5_3, mobilenet_v2:imagenet:features, '
                  'vgg16:random:conv5_3:1).')
flags.DEFINE_list('alphas', ['0', '0.2', '0.4', '0.6', '0.8', '1'],
                  'Fractions along the geodesic I -> Q (Fig 6).')
flags.DEFINE_integer('repeats', 10, 'Independent rotations at alpha = 1 (Fig 8).')
flags.DEFINE_integer('rotation_seed', 0, 'Seed of the first Q; repeat r uses seed + r.')
flags.DEFINE_float('tau', 0.005, 'Top quantile thresholding every view.')
flags.DEFINE_float('iou_threshold', 0.04, 'A unit (direction) is a detector when its IoU > this.')
flags.DEFINE_integer('top_concepts', 5, 'Concepts compared in Fig 7.')
flags.DEFINE_bool('linear_probe', True, 'Also compare the discriminative power of the rotated and '
                  'unrotated layer: linear classifiers on pooled features (one more forward pass).')
flags.DEFINE_string('probe_category', 'object', 'Linear probe targets: per image, the label of this '
                    'category covering the most pixels (composite set: the largest cut-out\'s '
                    'object group).')
flags.DEFINE_integer('min_class_images', 20, 'Linear probe classes need at least this many images.')
flags.DEFINE_integer('split_seed', 0, 'Seed of the linear probe\'s half/half train/test split.')
flags.DEFINE_integer('adam_seeds', 5, 'Seeds of the optax Adam linear classifier (init, shuffles).')


def spec_for(alphas, repeats: int, seed: int, tau: float):
  """One ViewSpec: seed x alphas (Fig 6) plus seeds seed+1.. at alpha = 1 (Fig 8)."""
  from ndjax import views
  if 1.0 not in alphas:
    alphas = (*alphas, 1.0)
  extra = tuple((seed + r, 1.0) for r in range(1, repeats))
  return views.ViewSpec(taus=(tau,), rotation_seed=seed, rotation_alphas=tuple(alphas),
                        rotations=extra)


def unique(vd, threshold: float) -> dict[str, int]:
  from ndjax import tally
  return tally.unique_detectors(vd.labels(), vd.probe, threshold)


def main(argv):
  del argv
  nets = [common.Network.parse(m) for m in FLAGS.models]
  alphas = common.floats('alphas')
  if FLAGS.repeats < 1:
    raise common.ExperimentError(f'--repeats={FLAGS.repeats} must be >= 1')
  exp = common.Experiment('rotation')
  seed, threshold = FLAGS.rotation_seed, FLAGS.iou_threshold
  spec = spec_for(alphas, FLAGS.repeats, seed, FLAGS.tau)
  rows, nets_summary, curves, repeats, concepts = [], [], {}, {}, {}
  for net in nets:
    dirs = exp.dissect(net, [net.layer], spec)
    cats = common.category_order(next(iter(dirs.values())).categories)
    by_view = {}
    for (layer, name), vd in dirs.items():
      meta = vd.view.meta
      alpha = float(meta.get('alpha', 0.0))
      s = int(meta.get('seed', seed))
      u = unique(vd, threshold)
      by_view[(s, alpha)] = (vd, u)
      rows.append(dict(network=net.label, model=net.model, weights=net.weights, layer=layer,
                       folder=vd.folder, seed=s, alpha=alpha, total=sum(u.values()),
                       detectors=int(np.sum(vd.labels().best_iou > threshold)),
                       **{c: u[c] for c in cats}))
    plain_vd, plain = by_view[(seed, 0.0)] if (seed, 0.0) in by_view else (None, None)
    curve = sorted((a, u) for (s, a), (_, u) in by_view.items() if s == seed)
    at_one = [by_view[(seed + r, 1.0)][1] for r in range(FLAGS.repeats)]
    totals = np.array([sum(u.values()) for u in at_one], float)
    curves[net.label] = (cats, [a for a, _ in curve], [u for _, u in curve])
    repeats[net.label] = (cats, plain, at_one)
    entry = {'network': net.label, 'alphas': [a for a, _ in curve],
             'unique_by_alpha': [sum(u.values()) for _, u in curve],
             'at_alpha_1': {'mean': float(totals.mean()), 'std': float(totals.std(ddof=1))
                            if len(totals) > 1 else 0.0, 'per_repeat': totals.tolist(),
                            'per_category_mean': {c: float(np.mean([u[c] for u in at_one]))
                                                  for c in cats}}}
    if plain is not None:
      entry['unrotated'] = plain
      entry['unrotated_total'] = sum(plain.values())
      change = (totals.mean() - entry['unrotated_total']) / max(entry['unrotated_total'], 1)
      entry['change_at_alpha_1'] = float(change)
      concepts[net.label] = best_concepts(plain_vd, [by_view[(seed + r, 1.0)][0]
                                                     for r in range(FLAGS.repeats)])
      entry['fig7'] = concepts[net.label]
    if FLAGS.linear_probe:
      entry['linear_probe'] = discrimination(exp, net, seed)
    nets_summary.append(entry)
  figures = {'fig6_alpha': common.curves_figure(curves, 'α (rotation I → Q)'),
             'fig8_repeats': plot_repeats(repeats)}
  if concepts:
    figures['fig7_concepts'] = plot_concepts(concepts)
  lines = []
  for e in nets_summary:
    at1 = e['at_alpha_1']
    lines.append(f"- **{e['network']}**: unique detectors "
                 + ', '.join(f"α={a:g}: {n}" for a, n in zip(e['alphas'], e['unique_by_alpha']))
                 + f"; at α=1 over {len(at1['per_repeat'])} rotations {at1['mean']:.1f} ± "
                 f"{at1['std']:.1f}"
                 + (f" ({100 * e['change_at_alpha_1']:+.0f} % vs unrotated "
                    f"{e['unrotated_total']})" if 'unrotated_total' in e else ''))
    if 'linear_probe' in e:
      lp = e['linear_probe']
      lines.append(f"  - linear probe ({len(lp['classes'])} {FLAGS.probe_category} classes, "
                   f"{lp['train_images']} train / {lp['test_images']} test images): ridge "
                   f"{100 * lp['ridge']['unrotated']:.2f} % vs rotated "
                   f"{100 * lp['ridge']['rotated']:.2f} %; gradient descent "
                   f"{100 * lp['gd']['unrotated']:.2f} % vs {100 * lp['gd']['rotated']:.2f} %; "
                   f"Adam {100 * lp['adam']['unrotated_mean']:.1f} ± "
                   f"{100 * lp['adam']['unrotated_std']:.1f} % vs "
                   f"{100 * lp['adam']['rotated_mean']:.1f} ± {100 * lp['adam']['rotated_std']:.1f} %"
                   f" ({len(lp['adam']['unrotated'])} seeds)")
  exp.write(rows, {'networks': nets_summary, 'tau': FLAGS.tau, 'iou_threshold': threshold},
            figures, '## Headline\n\n' + '\n'.join(lines) + '\n\nPaper (AlexNet-Places205 '
            'conv5, Broden): about -80 % unique detectors at α = 1.')
  for line in lines:
    print(line.lstrip('- ').replace('**', ''))


def discrimination(exp, net, seed: int) -> dict:
  """Linear classifiers on the layer's pooled features, unrotated and rotated by Q (alpha = 1,
  the rotation seed's Q, in float64): see `linear_probe`."""
  from ndjax import api, fileio, rotation
  from ndjax.experiments import linear_probe as lp
  cache = exp.run_dir(net) / f'pooled_{net.layer}.npz'
  ds = exp.ds
  if cache.is_file():
    with np.load(cache) as z:
      features, targets = z['features'], z['targets']
  else:
    module = api.load_model(net.model, net.weights, net.seed).module
    features = lp.pooled_features(module, ds, net.layer, FLAGS.batch_size, FLAGS.progress)
    targets = lp.image_targets(ds, FLAGS.probe_category)
    import io
    buf = io.BytesIO()
    np.savez(buf, features=features, targets=targets)
    fileio.atomic_write(cache, buf.getvalue())
  try:
    data = lp.make_probe_data(features, targets, ds.label_names, FLAGS.min_class_images,
                              FLAGS.split_seed)
  except ValueError as e:
    raise common.ExperimentError(str(e)) from None
  q = rotation.random_rotation(seed, features.shape[1])
  rotated = data.features @ q
  adam = {'unrotated': [lp.adam_accuracy(data, data.features, s) for s in range(FLAGS.adam_seeds)],
          'rotated': [lp.adam_accuracy(data, rotated, s) for s in range(FLAGS.adam_seeds)]}
  for key in ('unrotated', 'rotated'):
    values = np.array(adam[key])
    adam[f'{key}_mean'] = float(values.mean())
    adam[f'{key}_std'] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
  return {'category': FLAGS.probe_category, 'classes': data.classes,
          'train_images': int(data.train.sum()), 'test_images': int((~data.train).sum()),
          'split_seed': FLAGS.split_seed, 'rotation_seed': seed,
          'ridge': {'unrotated': lp.ridge_accuracy(data, data.features),
                    'rotated': lp.ridge_accuracy(data, rotated)},
          'gd': {'unrotated': lp.gd_accuracy(data, data.features),
                 'rotated': lp.gd_accuracy(data, rotated)},
          'adam': adam}


def best_concepts(plain_vd, rotated_vds, n: int | None = None) -> list[dict]:
  """The n concepts with the best single-unit IoU, and the best IoU any direction of each
  rotated basis reaches for them."""
  n = n or FLAGS.top_concepts
  iou = plain_vd.iou_matrix()                     # (K, N)
  best = iou.max(axis=0)
  order = [int(j) for j in np.argsort(-best, kind='stable')[:n] if best[j] > 0]
  out = []
  for j in order:
    rotated = [float(vd.iou_matrix()[:, j].max()) for vd in rotated_vds]
    out.append({'concept': plain_vd.label_names[j],
                'category': plain_vd.categories[int(plain_vd.primary[j])],
                'unit': int(np.argmax(iou[:, j])), 'unit_iou': float(best[j]),
                'rotated_best_iou_mean': float(np.mean(rotated)),
                'rotated_best_iou_std': float(np.std(rotated, ddof=1)) if len(rotated) > 1 else 0.0,
                'rotated_best_iou': rotated})
  return out


def plot_repeats(repeats):
  fig, axes = common.panels(len(repeats))
  for ax, (label, (cats, plain, at_one)) in zip(axes, repeats.items()):
    x = np.arange(len(cats))
    if plain is not None:
      ax.bar(x - 0.2, [plain[c] for c in cats], 0.4, label='unrotated', color='#4c72b0')
    values = np.array([[u[c] for c in cats] for u in at_one], float)
    std = values.std(axis=0, ddof=1) if len(values) > 1 else None
    ax.bar(x + 0.2, values.mean(axis=0), 0.4, yerr=std, capsize=3, color='#dd8452',
           label=f'rotated α=1 (mean ± std, {len(values)} Q)')
    ax.set_xticks(x, cats, rotation=30)
    ax.set(title=label, ylabel='unique detectors')
    ax.legend(fontsize=8)
  return fig


def plot_concepts(concepts):
  fig, axes = common.panels(len(concepts))
  for ax, (label, rows) in zip(axes, concepts.items()):
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r['unit_iou'] for r in rows], 0.4, label='best unit', color='#4c72b0')
    ax.bar(x + 0.2, [r['rotated_best_iou_mean'] for r in rows], 0.4,
           yerr=[r['rotated_best_iou_std'] for r in rows], capsize=3, color='#dd8452',
           label='best rotated direction (α=1)')
    ax.set_xticks(x, [r['concept'] for r in rows], rotation=30)
    ax.set(title=label, ylabel='IoU')
    ax.legend(fontsize=8)
  return fig


if __name__ == '__main__':
  common.run(main)
