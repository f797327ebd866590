"""Views of a layer (rotations, tau sets, directions) against independent plain dissections."""
import csv
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ndjax import api, iou, rotation, tally
from ndjax.data import broden
from ndjax.models import convstack
from tests.conftest import CATS, LABELS, make_broden, random_images
from tests.test_main import ndjax
from tests.test_planted import CATS as PLANTED_CATS, LABELS as PLANTED_LABELS
from tests.test_planted import _planted_images, _planted_model

LAYER = 'features.1'


@pytest.fixture(scope='module')
def ds(tmp_path_factory):
  root = make_broden(tmp_path_factory.mktemp('views') / 'b', CATS, LABELS,
                     random_images(np.random.default_rng(3), 10))
  return broden.open_broden(root)


@pytest.fixture(scope='module')
def model():
  ops = (convstack.Op('conv', 6, 3, 1, 1), convstack.Op('relu'), convstack.Op('pool', kernel=2, stride=2))
  return convstack.ConvStack(ops, preprocessing='none', rngs=nnx.Rngs(7))


def _run(model, ds, **kw):
  return api.dissect(model, ds, [LAYER], batch_size=4, progress=False, **kw).results


def _same(a, b, perm=None):
  """Thresholds, every count and the tally of view result `a` equal `b` (units permuted)."""
  perm = np.arange(len(b.thresholds)) if perm is None else perm
  np.testing.assert_array_equal(a.thresholds, b.thresholds[perm])
  for (key, x), y in zip(a.counts.as_dict().items(), b.counts.as_dict().values()):
    np.testing.assert_array_equal(x, y[perm] if key.startswith(('inter', 'act')) else y, err_msg=key)


def test_alpha0_identity_directions_and_no_view_are_identical(model, ds, tmp_path):
  eye = tmp_path / 'eye.npy'
  np.save(eye, np.eye(6, dtype=np.float32))
  plain, = _run(model, ds, tau=0.1)
  alpha0, = _run(model, ds, views=api.ViewSpec(taus=(0.1,), rotation_seed=0, rotation_alphas=(0.0,)))
  direct, = _run(model, ds, views=api.ViewSpec(taus=(0.1,), directions=(str(eye),)))
  assert direct.view.matrix is not None and direct.folder == f'{LAYER}@dir_eye'
  assert alpha0.folder == LAYER and alpha0.view.meta['alpha'] == 0.0
  for other in (alpha0, direct):
    _same(other, plain)
    labels = [tally.label_units(r.counts, ds, 'paper') for r in (other, plain)]
    assert tally.tally_csv(labels[0], other.counts, ds) == tally.tally_csv(labels[1], plain.counts, ds)


def test_permutation_directions_permute_units_exactly(model, ds, tmp_path):
  perm = np.array([3, 0, 5, 1, 4, 2])
  p = np.zeros((6, 6), np.float32)
  p[perm, np.arange(6)] = 1.0                  # column j reads unit perm[j]
  np.save(tmp_path / 'perm.npy', p)
  plain, = _run(model, ds, tau=0.1)
  view, = _run(model, ds, views=api.ViewSpec(taus=(0.1,), directions=(str(tmp_path / 'perm.npy'),)))
  _same(view, plain, perm)
  np.testing.assert_array_equal(view.top.images, plain.top.images[perm])


def test_tau_list_equals_separate_runs(model, ds):
  both = _run(model, ds, views=api.ViewSpec(taus=(0.05, 0.2)))
  assert [r.folder for r in both] == [LAYER, f'{LAYER}@tau0.2']
  for res, tau in zip(both, (0.05, 0.2)):
    alone, = _run(model, ds, tau=tau)
    _same(res, alone)
    # thresholds are numpy's quantile of every value of the unit, whatever the tau list
    acts = np.concatenate([np.asarray(model(ds.load_image(i)[None], (LAYER,))[LAYER]).reshape(-1, 6)
                           for i in range(len(ds.records))])
    np.testing.assert_allclose(res.thresholds, np.quantile(acts, 1 - tau, axis=0), rtol=1e-6)


def test_rotation_view_equals_dissecting_rotated_weights(model, ds):
  """Q^a of a 1x1-conv layer's outputs = the same conv with its kernel multiplied by Q^a:
  an independent route to the same counts (pre-ReLU layer: linear in the kernel)."""
  layer = 'features.0'
  q = rotation.fractional_power(rotation.random_rotation(5, 6), 0.5).astype(np.float32)
  got = api.dissect(model, ds, [layer], views=api.ViewSpec(taus=(0.1,), rotation_seed=5,
                                                           rotation_alphas=(0.5,)),
                    batch_size=4, progress=False).results[0]
  ops = (convstack.Op('conv', 6, 3, 1, 1),)
  rotated = convstack.ConvStack(ops, preprocessing='none', rngs=nnx.Rngs(0))
  k = np.asarray(model.features_0.kernel[...])
  rotated.features_0.kernel[...] = jnp.asarray(np.einsum('hwio,od->hwid', k, q))
  rotated.features_0.bias[...] = jnp.asarray(np.asarray(model.features_0.bias[...]) @ q)
  ref = api.dissect(rotated, ds, [layer], tau=0.1, batch_size=4, progress=False).results[0]
  np.testing.assert_allclose(got.thresholds, ref.thresholds, rtol=1e-5, atol=1e-5)
  for key, x in got.counts.as_dict().items():     # conv rounding may move a pixel or two
    y = ref.counts.as_dict()[key]
    assert np.abs(x - y).sum() <= 0.002 * max(1, y.sum()), key


def test_planted_detectors_keep_labels_at_alpha0_and_lose_them_at_alpha1(broden_factory):
  ds = broden.open_broden(broden_factory(PLANTED_CATS, PLANTED_LABELS,
                                         _planted_images(np.random.default_rng(0))))
  views = api.ViewSpec(taus=(0.3,), rotation_seed=1, rotation_alphas=(0.0, 0.5, 1.0))
  out = api.dissect(_planted_model(), ds, ['pool1'], views=views, batch_size=8, progress=False)
  best = {}
  for r in out.results:
    labels = tally.label_units(r.counts, ds, 'paper')
    best[r.view.meta['alpha']] = ([ds.label_names[l] for l in labels.best_label], labels.best_iou)
  assert best[0.0][0] == ['red-c', 'green-c', 'car']
  np.testing.assert_allclose(best[0.0][1], 1.0)
  # the three maps have disjoint supports and T = 0, so a rotated unit fires on the union of the
  # colours its column weighs positively: it stays a perfect detector only if exactly one is
  q = rotation.fractional_power(rotation.random_rotation(1, 3), 1.0)
  still_one = (q > 0).sum(axis=0) == 1
  assert not still_one.all()
  np.testing.assert_array_equal(best[1.0][1] == 1.0, still_one)
  assert best[1.0][1].mean() < 1.0 and best[0.5][1].mean() < 1.0


def test_nonfinite_activation_stops_with_one_line(ds):
  ops = (convstack.Op('conv', 6, 3, 1, 1), convstack.Op('relu'), convstack.Op('pool', kernel=2, stride=2))
  bad = convstack.ConvStack(ops, preprocessing='none', rngs=nnx.Rngs(7))
  bad.features_0.bias[...] = bad.features_0.bias[...].at[2].set(jnp.nan)
  with pytest.raises(api.NdjaxError, match=r'non-finite activation nan in layer features.1, unit 3, '
                                           r'image src/img0000.png \(index 0\)'):
    _run(bad, ds, tau=0.1)


def test_cli_rotation_views(tmp_path):
  rng = np.random.default_rng(0)
  items = [{'image': rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
            'masks': {'color': [np.where(rng.random((32, 32)) < .4, 1, 0)],
                      'object': [np.where(rng.random((32, 32)) < .4, 3, 0)]}} for _ in range(6)]
  data = make_broden(tmp_path / 'b', CATS, LABELS, items)
  out = tmp_path / 'out'
  r = ndjax('--model=alexnet', '--weights=random', f'--dataset={data}', '--batch_size=3',
            '--rotation=random', '--rotation_seed=0', '--rotation_alpha=0,0.5,1', '--noreport',
            f'--outdir={out}')
  assert r.returncode == 0, r.stderr
  lines = [l for l in r.stdout.splitlines() if 'units are detectors' in l]
  assert [l.split(':')[0] for l in lines] == ['conv5', 'conv5@rot_s0_a0.5', 'conv5@rot_s0_a1']
  run = out / 'alexnet_random_s0'
  for folder, alpha in (('conv5', 0.0), ('conv5@rot_s0_a0.5', 0.5), ('conv5@rot_s0_a1', 1.0)):
    doc = json.loads((run / folder / 'results.json').read_text())
    assert doc['view']['alpha'] == alpha and doc['view']['seed'] == 0 and doc['folder'] == folder
    assert doc['view']['orthogonality_error'] < 1e-6 and abs(doc['view']['det'] - 1) < 1e-6
    with np.load(run / folder / 'counts.npz') as z:
      assert z['inter'].shape == (256, len(z['label_names']))
      with open(run / folder / 'tally.csv') as f:
        rows = {int(row['unit']): row for row in csv.DictReader(f)}
      labels = tally.label_units(iou.Counts(
          **{k: z[k] for k in ('inter', 'label_pixels', 'act_paper', 'act_lite', 'act_pixels')}),
          broden.open_broden(data), 'paper')
      assert all(abs(float(rows[u + 1]['score']) - labels.best_iou[u]) < 1e-12 for u in range(256))


def test_cli_view_flags_documented_and_checked(tmp_path):
  r = ndjax('--helpfull')
  for flag in ('--rotation:', '--rotation_seed', '--rotation_alpha', '--directions', '--tau'):
    assert flag in r.stdout, flag
  data = make_broden(tmp_path / 'b', CATS, LABELS, random_images(np.random.default_rng(1), 4))
  np.save(tmp_path / 'wide.npy', np.ones((7, 2), np.float32))
  np.savez(tmp_path / 'd.npz', d=np.ones((256, 2), np.float32))
  np.save(tmp_path / 'a.npy', np.ones((256, 2), np.float32))
  np.save(tmp_path / 'a_tau0.01.npy', np.ones((256, 3), np.float32))
  for args, needle in ((['--rotation=random', '--rotation_alpha=2'], '--rotation_alpha=2 is outside [0, 1]'),
                       (['--tau=0.005,abc'], '--tau=abc is not a number'),
                       ([f'--directions={tmp_path / "none.npy"}'], 'is not a readable .npy'),
                       ([f'--directions={tmp_path / "wide.npy"}'], 'expected (K, D) with K = 256'),
                       ([f'--directions={tmp_path / "d.npz"}'], 'is an .npz archive'),
                       ([f'--directions={tmp_path / "a.npy"},{tmp_path / "a_tau0.01.npy"}',
                         '--tau=0.005,0.01'], "share the folder name 'dir_a_tau0.01'"),
                       (['--cache_gb=nan'], '--cache_gb must be a size in GB >= 0'),
                       (['--topk=-1'], '--topk must be >= 0')):
    r = ndjax('--model=alexnet', '--weights=random', f'--dataset={data}', f'--outdir={tmp_path / "o"}',
              *args)
    assert r.returncode == 2 and 'Traceback' not in r.stderr and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / 'o').exists()


def test_view_names_are_exact_and_distinct():
  from ndjax import views
  built = views.build(views.ViewSpec(taus=(0.005, 0.01, 0.01000001), rotation_seed=2,
                                     rotation_alphas=(0.0, 0.25, 1.0)), 4)
  assert [v.name for v in built] == [
      '', 'tau0.01', 'tau0.01000001', 'rot_s2_a0.25', 'rot_s2_a0.25_tau0.01',
      'rot_s2_a0.25_tau0.01000001', 'rot_s2_a1', 'rot_s2_a1_tau0.01', 'rot_s2_a1_tau0.01000001']
  with pytest.raises(views.ViewError, match='listed twice'):
    views.ViewSpec(rotation_seed=0, rotation_alphas=(0.5, 0.5))


def test_with_identity_keeps_the_plain_layer_once(tmp_path):
  from ndjax import views
  path = tmp_path / 'null.npy'
  np.save(path, np.eye(4, 3))
  built = views.build(views.ViewSpec(directions=(str(path),), with_identity=True), 4)
  assert [(v.name, v.kind) for v in built] == [('', 'identity'), ('dir_null', 'directions')]
  assert built[0].matrix is None
  built = views.build(views.ViewSpec(rotation_seed=1, rotation_alphas=(0.0, 1.0),
                                     with_identity=True), 4)
  assert [v.name for v in built] == ['', 'rot_s1_a1']           # alpha 0 is not a second copy
  assert [v.name for v in views.build(views.ViewSpec(directions=(str(path),)), 4)] == ['dir_null']
