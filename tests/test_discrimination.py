"""The discrimination experiment (paper Sec 3.9): its SVM on planted feature sets, its pooled
features against a brute-force spatial mean, its figure against its results.csv, and bad input."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from ndjax import api
from ndjax.experiments import discrimination as disc
from ndjax.train import input_pipeline
from tests.conftest import ndjax_module

NET = 'alexnet:random:conv5:1'


def _planted(seed: int, n: int, k: int = 64, classes: int = 4, scale_signal: float = 1.0):
  """Classes whose means sit 20 noise-sds apart along their own coordinate (linearly separable
  with a wide margin), every coordinate rescaled by a fixed random factor over 4 orders of
  magnitude."""
  rng = np.random.default_rng(seed)
  y = np.arange(n) % classes
  x = rng.normal(0, 1, (n, k))
  x[np.arange(n), y] += 20.0
  x *= 10.0 ** np.random.default_rng(99).uniform(-2, 2, k)     # one scale for every split
  x[:, :classes] *= scale_signal
  return x, y


def test_svm_separable_is_perfect_and_shuffled_labels_are_chance():
  x, y = _planted(0, 800)
  xt, yt = _planted(1, 800)
  assert disc.svm_balanced_accuracy(x, y, xt, yt, 0.001) == 1.0
  # labels independent of the features: the balanced accuracy of 2,000 test images over 4
  # classes has sd ~0.011 around chance 0.25; 0.07 is > 6 sd
  rng = np.random.default_rng(2)
  x, _ = _planted(3, 2000)
  xt, _ = _planted(4, 2000)
  acc = disc.svm_balanced_accuracy(x, rng.integers(0, 4, 2000), xt, rng.integers(0, 4, 2000))
  assert abs(acc - 0.25) < 0.07, acc


def test_svm_standardises_features():
  """The signal lives in 4 coordinates scaled down by 1e-6 among 60 large noise coordinates: with
  C = 0.001 an unstandardised SVM cannot afford the weights it needs; standardised, it can."""
  x, y = _planted(5, 800, scale_signal=1e-6)
  xt, yt = _planted(6, 800, scale_signal=1e-6)
  assert disc.svm_balanced_accuracy(x, y, xt, yt, 0.001) == 1.0


def test_balanced_accuracy_is_the_class_average():
  """Imbalanced test classes: class-averaged accuracy, not the fraction of images right. The
  planted features make class 2 images look like class 0 (wrong), everything else right."""
  x, y = _planted(7, 600, classes=3)
  xt, yt = _planted(8, 600, classes=3)
  keep = (yt != 2) | (np.arange(len(yt)) < 60)       # 200 + 200 + 20 test images
  xt, yt = xt[keep], yt[keep]
  xt[yt == 2] = x[y == 0][:int(np.sum(yt == 2))]
  acc = disc.svm_balanced_accuracy(x, y, xt, yt, 0.001)
  assert acc == pytest.approx((1 + 1 + 0) / 3)
  assert acc != pytest.approx(400 / 420)


def test_subset_is_a_seeded_random_sorted_draw():
  a = disc.subset(1000, 100, 0)
  assert len(a) == 100 == len(set(a.tolist())) and np.all(np.diff(a) > 0)
  assert np.array_equal(a, disc.subset(1000, 100, 0)) and a.max() > 500   # not the first 100
  assert np.array_equal(disc.subset(50, 0, 0), np.arange(50))
  assert np.array_equal(disc.subset(50, 80, 0), np.arange(50))


def test_pooled_features_equal_a_brute_force_spatial_mean():
  model = api.load_model('alexnet', 'random', seed=1).module
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (7, 67, 67, 3), dtype=np.uint8)
  split = input_pipeline.Split(images, np.zeros(7, np.int32), 67)
  indices = np.array([0, 2, 3, 5, 6])
  got = disc.split_features(model, split, 'conv5', indices, batch_size=2, progress=False)
  for row, i in zip(got, indices):
    acts = np.asarray(model(images[i:i + 1], ('conv5',))['conv5'][0], np.float64)  # eager
    h, w, k = acts.shape
    total = np.zeros(k)
    for y in range(h):
      for x in range(w):
        total += acts[y, x]
    np.testing.assert_allclose(row, total / (h * w), rtol=1e-4, atol=1e-6)
  # and the Broden-dataset path of the library gives the same numbers
  from ndjax import activations

  class Images:                       # the two things `activations.pooled` reads
    records = list(range(7))
    load_image = staticmethod(lambda i: images[i])
  np.testing.assert_allclose(got, activations.pooled(model, Images, 'conv5', 3, False, indices),
                             rtol=1e-6)


def test_scatter_plots_the_rows_it_is_given():
  rows = [dict(network=f'n{i}', dataset=d, balanced_accuracy=a, chance=0.1, unique_detectors=u,
               unique_object_detectors=o)
          for i, (d, a, u, o) in enumerate([('t1', 0.5, 12, 3), ('t1', 0.25, 40, 9),
                                            ('t2', 0.75, 12, 3)])]
  fig = disc.scatter_figure(rows, 'unique_object_detectors', 'x')
  assert _points(fig) == {('t1', 3, 50.0), ('t1', 9, 25.0), ('t2', 3, 75.0)}


def _points(fig) -> set:
  """(panel title, x, y) of every scatter point in the figure."""
  return {(ax.get_title(), float(x), float(y)) for ax in fig.axes if ax.get_visible()
          for c in ax.collections for x, y in np.asarray(c.get_offsets())}


@pytest.fixture(scope='module')
def probe(tmp_path_factory):
  root = tmp_path_factory.mktemp('discrimination') / 'probe'
  r = ndjax_module('ndjax.probes.build', '--probe=synthetic', f'--out={root}', '--n_images=16',
                   '--noprogress')
  assert r.returncode == 0, r.stderr
  return root


def test_end_to_end_csv_matches_figure_and_dissection(probe, tmp_path, monkeypatch):
  """The experiment in process on 2 random AlexNets, the built-in task at 64 px: the figure's
  points are results.csv's numbers, and the detector columns match the result folders."""
  from absl import flags
  from ndjax import results
  figures = []
  real = disc.scatter_figure
  monkeypatch.setattr(disc, 'scatter_figure', lambda *a: figures.append(real(*a)) or figures[-1])
  outdir = tmp_path / 'out'
  argv = ['discrimination', f'--networks={NET},alexnet:random:conv5:2', f'--dataset={probe}',
          f'--outdir={outdir}', '--tasks=probe_task', '--task_images=256,64', '--image_size=64',
          '--train_images=200', '--noprogress']
  flags.FLAGS(argv)
  try:
    disc.main(argv)
  finally:
    flags.FLAGS.unparse_flags()
  with open(outdir / 'results.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert [r['network'] for r in rows] == ['alexnet random s1 conv5', 'alexnet random s2 conv5']
  assert _points(figures[0]) == {('probe_task', float(r['unique_detectors']),
                                  100 * float(r['balanced_accuracy'])) for r in rows}
  for r, seed in zip(rows, (1, 2)):
    assert (int(r['n_train']), int(r['n_test'])) == (200, 64)
    assert float(r['chance']) == pytest.approx(1 / int(r['classes']), abs=1e-4)
    assert 0.0 <= float(r['balanced_accuracy']) <= 1.0
    vd = results.load(outdir / 'runs' / f'alexnet_random_s{seed}' / 'conv5')
    labels = vd.labels()
    det = labels.best_iou > 0.04
    assert int(r['detectors']) == int(det.sum())
    assert int(r['unique_detectors']) == len(set(labels.best_label[det].tolist()))
  assert (outdir / 'fig26_accuracy_vs_detectors.png').is_file()
  assert 'python -m ndjax.experiments.discrimination' in (outdir / 'README.md').read_text()


@pytest.mark.parametrize('args,message', [
    (['--networks=vgg16'], 'is not model:weights:layer'),
    ([f'--networks={NET}', '--tasks=bogus'], '--tasks=bogus'),
    ([f'--networks={NET}', '--svm_c=0'], '--svm_c=0.0 must be > 0'),
    ([f'--networks={NET}', '--tasks=', '--tfds=no_such_dataset_xyz'], 'no_such_dataset_xyz'),
])
def test_bad_input_is_one_line(args, message, probe, tmp_path):
  r = ndjax_module('ndjax.experiments.discrimination', *args, f'--dataset={probe}',
                   f'--outdir={tmp_path / "x"}', '--noprogress')
  assert r.returncode == 2, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and message in last, last
  assert not (tmp_path / 'x').exists()


def test_display_label_shortens_a_snapshot_path(tmp_path):
  from ndjax.experiments import common
  snap = tmp_path / 'alexnet_s0' / 'snapshots' / '800'
  snap.mkdir(parents=True)
  assert disc.display_label(common.Network('alexnet', str(snap), 'conv5')) == (
      'alexnet alexnet_s0 step 800 conv5')
  assert disc.display_label(common.Network('vgg16', 'random', 'conv5_3', 1)) == (
      'vgg16 random s1 conv5_3')
