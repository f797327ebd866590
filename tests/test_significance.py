"""Significance of detectors: uniform p-values for noise units, the floor for a planted detector,
Benjamini-Hochberg by hand, and the label-permutation null counted in one dissection."""
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from ndjax import dissect, significance, tally
from ndjax import views as views_lib
from ndjax.data import broden
from ndjax.models import convstack

CATS = ['color', 'object', 'part', 'material', 'scene', 'texture']
LABELS = {1: ('red-c', 'color'), 2: ('ball', 'object'), 3: ('car', 'object'), 4: ('wheel', 'part'),
          5: ('beach-s', 'scene'), 6: ('street-s', 'scene')}
SIZE = 32


def _images(rng, n=24, red=True):
  """Noise images; labelled blobs placed at random. With `red`, the ball blobs are painted red
  (a unit can see them); without, labels and pixels are independent."""
  items = []
  for _ in range(n):
    img = rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
    colour, obj, part = (np.zeros((SIZE, SIZE), np.int32) for _ in range(3))
    for _ in range(rng.integers(1, 4)):
      y, x = rng.integers(0, SIZE - 8, 2)
      s = int(rng.integers(3, 8))
      if rng.random() < 0.5:
        obj[y:y + s, x:x + s] = 2
        colour[y:y + s, x:x + s] = 1
        if red:
          img[y:y + s, x:x + s] = (250, 5, 5)
      else:
        obj[y:y + s, x:x + s] = 3
        part[y + s - 1, x:x + s] = 4
    items.append({'image': img, 'masks': {'color': [colour], 'object': [obj], 'part': [part]},
                  'image_labels': {'scene': [int(rng.choice([5, 6]))]}})
  return items


def _noise_layer(units: int, seed: int, planted: bool = False):
  """A 3x3 conv with i.i.d. Gaussian filters and no ReLU: its units are exchangeable with random
  unit-norm directions of the layer. `planted`: unit 0 is a red detector instead."""
  model = convstack.ConvStack((convstack.Op('conv', units, 3, 1, 1),), preprocessing='none',
                              rngs=nnx.Rngs(0))
  w = np.random.default_rng(seed).standard_normal((3, 3, 3, units)).astype(np.float32)
  if planted:
    w[..., 0] = np.array([1, -1, -1], np.float32)      # R - G - B summed over the window
  model.features_0.kernel[...] = jnp.asarray(w)
  model.features_0.bias[...] = jnp.zeros(units)
  return model


def _directions_null(ds, model, draws, seed, tau, path):
  np.save(path, significance.random_directions(model.channels('features.0'), draws, seed))
  spec = views_lib.ViewSpec(taus=(tau,), directions=(str(path),), with_identity=True)
  cfg = dissect.DissectConfig(layers=('features.0',), views=spec, batch_size=8, progress=False,
                              topk=0)
  out = dissect.dissect(model, ds, cfg)
  plain, null = out.results
  assert plain.view.kind == 'identity' and null.view.kind == 'directions'
  obs = tally.label_units(plain.counts, ds, 'paper').best_iou
  return obs, tally.label_units(null.counts, ds, 'paper').best_iou


def test_noise_units_get_uniform_p_values(broden_factory, tmp_path):
  ds = broden.open_broden(broden_factory(CATS, LABELS, _images(np.random.default_rng(1), red=False)))
  p = []
  for seed in range(3):                        # independent layers and nulls, pooled
    obs, null = _directions_null(ds, _noise_layer(48, seed), 199, 100 + seed, 0.02,
                                 tmp_path / f'dirs{seed}.npy')
    p.append(significance.p_values(obs, null))
  p = np.concatenate(p)
  assert stats.kstest(p, 'uniform').pvalue > 0.01, np.sort(p)
  assert p.min() >= 1 / 200


def test_planted_detector_gets_the_floor(broden_factory, tmp_path):
  ds = broden.open_broden(broden_factory(CATS, LABELS, _images(np.random.default_rng(2))))
  obs, null = _directions_null(ds, _noise_layer(32, 0, planted=True), 999, 7, 0.02,
                               tmp_path / 'dirs.npy')
  p = significance.p_values(obs, null)
  assert p[0] == pytest.approx(1 / 1000)
  assert obs[0] > 0.3 and null.max() < obs[0]
  # the floor must be below BH's first step (0.05 / 32 units) for a lone detector to survive
  assert significance.benjamini_hochberg(p, 0.05)[0]


def test_p_values_by_hand():
  null = np.array([0.1, 0.2, 0.2, 0.3])
  np.testing.assert_allclose(significance.p_values([0.35, 0.2, 0.05], null),
                             [1 / 5, 4 / 5, 5 / 5])     # ties count as >=
  per_unit = np.array([[0.1, 0.5], [0.0, 0.0]])
  np.testing.assert_allclose(significance.p_values([0.4, 0.0], per_unit), [2 / 3, 3 / 3])


@pytest.mark.parametrize('p, q, want', [
    # sorted 0.005 <= .05/6, 0.01 <= .1/6, then 0.03 > .15/6, 0.04 > .2/6 ...: ranks 1-2
    ([0.01, 0.04, 0.03, 0.005, 0.2, 0.5], 0.05, [1, 0, 0, 1, 0, 0]),
    # step-up: 0.03 > 2 * .05/4 fails, but 0.04 <= 4 * .05/4 passes, so all four are rejected
    ([0.001, 0.03, 0.035, 0.04], 0.05, [1, 1, 1, 1]),
    ([0.02, 0.5], 0.01, [0, 0]),
    ([0.049, 0.049, 0.049], 0.05, [1, 1, 1]),
])
def test_benjamini_hochberg_by_hand(p, q, want):
  np.testing.assert_array_equal(significance.benjamini_hochberg(np.array(p), q), np.array(want, bool))


def test_permutation_copies_count_like_plain_dissections(broden_factory):
  """Copy 0 of the permuted set is the probe set itself (the same counts as a plain run); copy p
  counts exactly like a plain dissection over a set whose labels were moved by hand."""
  items = _images(np.random.default_rng(3), n=12)
  ds = broden.open_broden(broden_factory(CATS, LABELS, items))
  model = _noise_layer(8, 0, planted=True)
  cfg = dissect.DissectConfig(layers=('features.0',), tau=0.05, batch_size=4, progress=False,
                              topk=0)
  perms = significance.image_permutations(ds, 2, 0)
  assert all(sorted(perms[p, c]) == list(range(12)) for p in range(2) for c in range(len(CATS)))
  wrapped = significance.PermutedLabels.of(ds, perms)
  both = dissect.dissect(model, wrapped, cfg).layers['features.0'].counts
  plain = dissect.dissect(model, ds, cfg).layers['features.0'].counts
  nl, nc = ds.num_labels, len(CATS)
  for field in ('inter', 'label_pixels', 'act_paper', 'act_lite', 'act_pixels'):
    np.testing.assert_array_equal(getattr(significance.copy_counts(both, nl, nc, 0), field),
                                  getattr(plain, field))
  # copy 1 by hand: image i gets category C's masks of image perms[0, C, i]
  cat_of = {1: 'color', 2: 'object', 3: 'object', 4: 'part', 5: 'scene', 6: 'scene'}
  moved = []
  for i, it in enumerate(items):
    masks = {c: [items[perms[0, CATS.index(c), i]]['masks'][c][0]] for c in ('color', 'object', 'part')}
    scene = items[perms[0, CATS.index('scene'), i]]['image_labels']['scene']
    moved.append({'image': it['image'], 'masks': masks, 'image_labels': {'scene': scene}})
  assert all(cat_of[n] == ds.categories[ds.primary[n]] for n in cat_of)
  by_hand = broden.open_broden(broden_factory(CATS, LABELS, moved, name='moved'))
  want = dissect.dissect(model, by_hand, cfg).layers['features.0'].counts
  got = significance.copy_counts(both, nl, nc, 1)
  for field in ('inter', 'label_pixels', 'act_paper', 'act_lite', 'act_pixels'):
    np.testing.assert_array_equal(getattr(got, field), getattr(want, field))


@pytest.mark.slow
def test_significance_experiment_end_to_end(tmp_path):
  """The experiment's command on a small random network: companion CSV, report line, outputs."""
  out = tmp_path / 'sig'
  cmd = [sys.executable, '-m', 'ndjax.experiments.significance', '--networks=alexnet:random:conv5',
         '--probe=synthetic', '--images=40', '--null=permutation', '--null_draws=9',
         f'--outdir={out}', '--noprogress']
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-2000:]
  import csv
  rows = list(csv.DictReader(open(out / 'runs' / 'alexnet_random_s0' / 'conv5' / 'significance.csv')))
  assert len(rows) == 256
  p = np.array([float(r['p_value']) for r in rows])
  assert p.min() >= 0.1 and p.max() <= 1.0
  html = (out / 'runs' / 'alexnet_random_s0' / 'conv5' / 'report.html').read_text()
  assert 'label permutations' in html and 'Benjamini-Hochberg' in html
  assert (out / 'significance.png').is_file() and (out / 'README.md').is_file()
  bad = subprocess.run(cmd[:3] + ['--fdr=2'], capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
