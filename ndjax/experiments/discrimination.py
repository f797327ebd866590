"""Discriminative power against interpretability (paper Sec 3.9, Figs 25-26): a linear SVM on each
network's globally pooled last-conv features, on classification datasets, beside the number of
unique detectors its dissection finds.

  features   each image's (N, K) spatial mean of the layer (one jit-compiled forward per batch,
             `activations.make_forward`), images read through `ndjax.train.input_pipeline` (the
             built-in task's cached .npz, or a prepared TFDS dataset, centre-cropped and resized to
             --image_size): the same reader the training runs use;
  classifier scikit-learn's LinearSVC (one-vs-rest, squared hinge, C = --svm_c = 0.001 as in the
             paper) after StandardScaler fitted on the TRAINING features only (every feature to
             mean 0, variance 1; constant features, e.g. dead units, are only centred), so that one
             C means the same for networks whose activations differ in scale by orders of
             magnitude;
  score      class-averaged accuracy on the test split (= balanced accuracy, the paper's measure);
             chance is 1 / classes;
  detectors  unique detectors (distinct labels of units with IoU > --detector_iou) of that
             network's dissection at the same layer, via `Experiment.dissect` (finished folders in
             <outdir>/runs/ are reused).

Datasets: --tasks (built-in label sets over the real-photo composites: probe_task = largest object
group, probe_task_material = largest material) and --tfds (prepared TFDS datasets, e.g. the
paper's sun397, caltech256 under --tfds_dir). Pooled features are cached under <outdir>/features/
(keyed by the weights' identity, layer, dataset and images).

python -m ndjax.experiments.discrimination --train_images=2000
python -m ndjax.experiments.discrimination --tasks= --tfds=caltech101 --tfds_dir=/data/tfds \\
    --networks=vgg16:imagenet:conv5_3,vgg16:random:conv5_3:1
"""
from __future__ import annotations

import hashlib
import io
import json
import sys

import numpy as np
from absl import flags

from ndjax.experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_list('networks', ['vgg16:imagenet:conv5_3', 'vgg16:random:conv5_3:1',
                               'mobilenet_v2:imagenet:features'],
                  'Networks as model:weights:layer[:seed]; weights may be a weights directory '
                  '(a training snapshot).')
flags.DEFINE_list('tasks', ['probe_task'], 'Built-in classification tasks: probe_task (object '
                  'group), probe_task_material (material); empty for none.')
flags.DEFINE_list('task_images', ['6000', '1000'], 'Train,test images rendered for the built-in '
                  'tasks (cached under ~/.cache/ndjax/train/, shared with the training runs).')
flags.DEFINE_list('tfds', [], 'Prepared TFDS image classification datasets (e.g. sun397).')
flags.DEFINE_string('tfds_dir', None, 'data_dir of the --tfds datasets.')
flags.DEFINE_integer('image_size', 112, 'Images are centre-cropped and resized to this size.')
flags.DEFINE_integer('train_images', 0, 'Use a seeded random N of the training images (0 = all).')
flags.DEFINE_integer('test_images', 0, 'Use a seeded random N of the test images (0 = all).')
flags.DEFINE_float('svm_c', 0.001, 'LinearSVC C (the paper: 0.001).')
flags.DEFINE_float('detector_iou', 0.04, 'A unit is a detector when its best IoU > this.')
flags.DEFINE_enum('detector_category', 'all', ['all', 'object'], 'x axis of the scatter: unique '
                  'detectors of all categories, or object detectors only (the paper\'s Fig 26).')
flags.DEFINE_integer('probe_size', 0, 'Dissect over the built-in composite set rendered at this '
                     'size (3,000 images; 0 = the --probe default set at 224 px).')

BUILT_IN = ('probe_task', 'probe_task_material')


# --- the classifier ---------------------------------------------------------------------------
def svm_balanced_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                          y_test: np.ndarray, c: float = 0.001) -> float:
  """Class-averaged test accuracy of a linear SVM on standardised features (scaler fitted on the
  training features: the test split must not leak into the standardisation)."""
  from sklearn.metrics import balanced_accuracy_score
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  from sklearn.svm import LinearSVC
  if len(np.unique(y_train)) < 2:
    raise common.ExperimentError('the training split holds fewer than 2 classes')
  clf = make_pipeline(StandardScaler(), LinearSVC(C=c, max_iter=20_000))
  clf.fit(np.asarray(x_train, np.float64), y_train)
  return float(balanced_accuracy_score(y_test, clf.predict(np.asarray(x_test, np.float64))))


def display_label(net: common.Network) -> str:
  """Network.label, with a weights directory shortened to its last two path parts (a training
  snapshot: <run>/snapshots/<step> -> <run> step <step>): figure legends stay readable."""
  import pathlib
  path = pathlib.Path(net.weights)
  if not path.is_dir():
    return net.label
  short = (f'{path.parent.parent.name} step {path.name}' if path.parent.name == 'snapshots'
           else '/'.join(path.parts[-2:]))
  return f'{net.model} {short} {net.layer}'


def subset(n: int, limit: int, seed: int) -> np.ndarray:
  """Sorted indices of a seeded random `limit` of n (all when limit is 0 or >= n): a random draw,
  since some datasets store their examples sorted by class."""
  if not limit or limit >= n:
    return np.arange(n)
  return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


# --- features ---------------------------------------------------------------------------------
def split_features(module, split, layer: str, indices: np.ndarray, batch_size: int = 8,
                   progress: bool = True, desc: str = 'pooled features') -> np.ndarray:
  """(len(indices), K) float64 spatial mean of `layer` over images `indices` of a Split (arrays
  or a TFDS source: `Split.get` reads both). The array counterpart of `activations.pooled`."""
  from tqdm import tqdm
  from ndjax import activations
  forward = activations.make_forward(module, [layer])
  out = []
  for start in tqdm(range(0, len(indices), batch_size), desc=desc, disable=not progress,
                    mininterval=2, file=sys.stderr):
    images, _ = split.get(np.asarray(indices[start:start + batch_size]))
    acts = forward(np.asarray(images, np.uint8))[layer]
    out.append(np.asarray(acts, np.float64).mean(axis=(1, 2)))
  return np.concatenate(out) if out else np.zeros((0, 0))


def cached_features(folder, key: dict, compute) -> tuple[np.ndarray, bool]:
  """(features, read from the cache?): compute() once per key (weights identity, layer, dataset,
  images), kept under folder/<sha>.npz."""
  from ndjax import fileio
  name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  path = folder / f'{name}.npz'
  if path.is_file():
    with np.load(path) as z:
      return z['features'], True
  features = compute()
  folder.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  np.savez(buf, features=features, key=json.dumps(key, sort_keys=True))
  fileio.atomic_write(path, buf.getvalue())
  return features, False


# --- datasets ---------------------------------------------------------------------------------
def open_datasets() -> dict:
  """{dataset name: input_pipeline.Data} of --tasks and --tfds, read by the training pipeline."""
  from ndjax.probes import ingredients
  from ndjax.train import input_pipeline
  n_train, n_test = task_images()
  out = {}
  try:
    for task in FLAGS.tasks:
      out[task] = input_pipeline.task_data(FLAGS.image_size, n_train, n_test, FLAGS.progress, task)
    for name in FLAGS.tfds:
      out[f'tfds:{name}'] = input_pipeline.tfds_data(name, FLAGS.image_size, FLAGS.tfds_dir)
  except (input_pipeline.DataError, ingredients.IngredientError) as e:
    # the training pipeline's words name its own flag, and tfds lists every dataset it knows
    text = ' '.join(str(e).split()).replace('--tfds_data_dir', '--tfds_dir')
    raise common.ExperimentError(text if len(text) < 400 else f'{text[:300]} ... (--tfds_dir '
                                 f'is {FLAGS.tfds_dir})') from None
  return out


def task_images() -> tuple[int, int]:
  """--task_images as (train, test) counts."""
  try:
    n_train, n_test = (int(v) for v in FLAGS.task_images)
  except ValueError:
    raise common.ExperimentError(f'--task_images={",".join(FLAGS.task_images)} is not '
                                 'train,test image counts') from None
  if min(n_train, n_test) < 1:
    raise common.ExperimentError('--task_images must be two positive counts')
  return n_train, n_test


def check_flags() -> None:
  """Every flag checked before anything is computed or written."""
  if not FLAGS.networks:
    raise common.ExperimentError('--networks is empty')
  if not FLAGS.tasks and not FLAGS.tfds:
    raise common.ExperimentError('no dataset: give --tasks and/or --tfds')
  if FLAGS.svm_c <= 0:
    raise common.ExperimentError(f'--svm_c={FLAGS.svm_c} must be > 0')
  if FLAGS.image_size < 32:
    raise common.ExperimentError(f'--image_size={FLAGS.image_size} must be >= 32')
  unknown = [t for t in FLAGS.tasks if t not in BUILT_IN]
  if unknown:
    raise common.ExperimentError(f'--tasks={",".join(unknown)}: use {", ".join(BUILT_IN)} '
                                 '(TFDS datasets go in --tfds)')
  task_images()
  for name in ('train_images', 'test_images', 'probe_size'):
    if FLAGS[name].value < 0:
      raise common.ExperimentError(f'--{name}={FLAGS[name].value} must be >= 0')


# --- figures ----------------------------------------------------------------------------------
def scatter_figure(rows: list[dict], x_key: str, xlabel: str):
  """Fig 26: per dataset, balanced accuracy (%) against unique detectors, one point per network
  (plotted from the rows' own values: what results.csv holds)."""
  datasets = list(dict.fromkeys(r['dataset'] for r in rows))
  networks = list(dict.fromkeys(r['network'] for r in rows))
  fig, axes = common.panels(len(datasets), width=5.5, height=4.2)
  colors = {n: f'C{i % 10}' for i, n in enumerate(networks)}
  for ax, dataset in zip(axes, datasets):
    for r in (r for r in rows if r['dataset'] == dataset):
      x, y = r[x_key], 100 * r['balanced_accuracy']
      ax.scatter([x], [y], s=50, color=colors[r['network']], label=r['network'], zorder=3)
      ax.annotate(r['network'], (x, y), fontsize=7, xytext=(4, 4), textcoords='offset points')
    ax.axhline(100 * rows[[r['dataset'] for r in rows].index(dataset)]['chance'], color='grey',
               ls=':', lw=1, label='chance')
    ax.set(title=dataset, xlabel=xlabel, ylabel='class-averaged accuracy (%)')
    ax.margins(x=0.12, y=0.08)
    ax.grid(alpha=0.3)
  axes[0].legend(handles=axes[0].get_lines()[:1], fontsize=7, loc='lower right')
  return fig


def bars_figure(rows: list[dict]):
  """Fig 25: class-averaged accuracy per network (bars) on each dataset (groups), chance dotted."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  datasets = list(dict.fromkeys(r['dataset'] for r in rows))
  networks = list(dict.fromkeys(r['network'] for r in rows))
  value = {(r['network'], r['dataset']): r for r in rows}
  fig, ax = plt.subplots(figsize=(2.2 * len(datasets) * max(1, len(networks) / 3) + 3, 4.0))
  width = 0.8 / len(networks)
  x = np.arange(len(datasets))
  for i, net in enumerate(networks):
    ys = [100 * value[net, d]['balanced_accuracy'] if (net, d) in value else np.nan
          for d in datasets]
    bars = ax.bar(x + (i - (len(networks) - 1) / 2) * width, ys, width, label=net, color=f'C{i}')
    ax.bar_label(bars, fmt='%.1f', fontsize=7)
  for j, d in enumerate(datasets):
    chance = 100 * next(r['chance'] for r in rows if r['dataset'] == d)
    ax.hlines(chance, j - 0.45, j + 0.45, colors='k', linestyles=':', lw=1,
              label='chance' if j == 0 else None)
  ax.set_xticks(x, datasets)
  ax.set(ylabel='class-averaged accuracy (%)')
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1, 1))
  ax.grid(axis='y', alpha=0.3)
  return fig


# --- the experiment ---------------------------------------------------------------------------
def main(argv):
  del argv
  check_flags()
  nets = [common.Network.parse(n) for n in FLAGS.networks]
  from ndjax import api, tally, views
  exp = common.Experiment('discrimination')
  if FLAGS.probe_size:
    exp.probe_spec = (3000, FLAGS.probe_size)
  models = []
  for net in nets:                   # every network loads and has its layer before any output
    model = api.load_model(net.model, net.weights, net.seed)
    api.resolve_layers(model, [net.layer])
    models.append(model)
  data = open_datasets()
  spec = views.ViewSpec()
  rows, cache_hits = [], []
  for net, model in zip(nets, models):
    vd = exp.dissect(net, [net.layer], spec)[(net.layer, '')]
    labels = vd.labels()
    unique = tally.unique_detectors(labels, vd.probe, FLAGS.detector_iou)
    identity = common.weights_identity(net)
    for name, d in data.items():
      train = subset(len(d.train), FLAGS.train_images, 0)
      test = subset(len(d.test), FLAGS.test_images, 1)
      key = dict(weights=identity, layer=net.layer, dataset=name, size=FLAGS.image_size,
                 tfds_dir=FLAGS.tfds_dir if name.startswith('tfds:') else None,
                 task_images=list(FLAGS.task_images) if name in BUILT_IN else None,
                 train=hashlib.sha1(train.tobytes()).hexdigest(),
                 test=hashlib.sha1(test.tobytes()).hexdigest())
      feats = {}
      for split_name, split, idx in (('train', d.train, train), ('test', d.test, test)):
        feats[split_name], hit = cached_features(
            exp.outdir / 'features', {**key, 'split': split_name},
            lambda split=split, idx=idx, s=split_name: split_features(
                model.module, split, net.layer, idx, FLAGS.batch_size, FLAGS.progress,
                f'{net.label} {name} {s}'))
        cache_hits.append(hit)
      y_train, y_test = d.train.labels[train], d.test.labels[test]
      acc = svm_balanced_accuracy(feats['train'], y_train, feats['test'], y_test, FLAGS.svm_c)
      classes = len(np.unique(y_test))
      rows.append(dict(network=display_label(net), model=net.model, weights=net.weights, layer=net.layer,
                       dataset=name, n_train=len(train), n_test=len(test), classes=classes,
                       balanced_accuracy=round(acc, 4), chance=round(1 / classes, 4),
                       unique_detectors=sum(unique.values()),
                       unique_object_detectors=unique.get('object', 0),
                       detectors=int(np.sum(labels.best_iou > FLAGS.detector_iou)),
                       units=len(labels.best_iou), features=feats['train'].shape[1]))
      print(f'{rows[-1]["network"]} on {name}: class-averaged accuracy {100 * acc:.1f} % (chance '
            f'{100 / classes:.1f} %), {rows[-1]["unique_detectors"]} unique detectors', flush=True)
  x_key = ('unique_detectors' if FLAGS.detector_category == 'all'
           else f'unique_{FLAGS.detector_category}_detectors')
  xlabel = ('unique detectors' if FLAGS.detector_category == 'all'
            else f'unique {FLAGS.detector_category} detectors')
  lines = [f'- **{r["network"]}** on {r["dataset"]}: {100 * r["balanced_accuracy"]:.1f} % '
           f'class-averaged accuracy (chance {100 * r["chance"]:.1f} %, {r["classes"]} classes, '
           f'{r["n_train"]} train / {r["n_test"]} test images), {r["unique_detectors"]} unique '
           f'detectors ({r["unique_object_detectors"]} object), {r["detectors"]}/{r["units"]} '
           'detector units' for r in rows]
  readme = ('## Headline\n\n' + '\n'.join(lines) + '\n\n## Method\n\nLinear SVM (scikit-learn '
            f'LinearSVC, C = {FLAGS.svm_c:g}) on the global spatial mean of each network\'s layer, '
            'features standardised per dimension (StandardScaler fitted on the training split), '
            f'images centre-cropped and resized to {FLAGS.image_size} px; score = class-averaged '
            '(balanced) test accuracy. Unique detectors: distinct concepts of units with IoU > '
            f'{FLAGS.detector_iou:g} in the dissection of the same layer over the probe set '
            f'(runs/). Pooled features: {cache_hits.count(False)} splits computed in this run, '
            f'{cache_hits.count(True)} read from {exp.outdir / "features"}/ (computed by an earlier '
            'run of the same networks, images and size).')
  exp.write(rows, {'svm_c': FLAGS.svm_c, 'standardisation': 'StandardScaler on train features',
                   'datasets': list(data), 'networks': [n.label for n in nets]},
            {'fig25_accuracy': bars_figure(rows),
             'fig26_accuracy_vs_detectors': scatter_figure(rows, x_key, xlabel)}, readme)


if __name__ == '__main__':
  common.run(main)
