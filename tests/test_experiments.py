"""The paper's experiments, end to end on a 16-image probe set with random-weight AlexNet, each
checked against an independent computation: plain dissections through `ndjax.api` with one view
at a time (another code path than the experiment's single multi-view pass) and the result folders'
own tallies."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ndjax import api, tally, views
from tests.conftest import ndjax_module

NET = 'alexnet:random:conv5:1'


@pytest.fixture(scope='module')
def probe(tmp_path_factory):
  root = tmp_path_factory.mktemp('experiments') / 'probe'
  r = ndjax_module('ndjax.probes.build', '--probe=synthetic', f'--out={root}', '--n_images=16',
                   '--noprogress')
  assert r.returncode == 0, r.stderr
  return root


@pytest.fixture(scope='module')
def model():
  return api.load_model('alexnet', 'random', seed=1)


def run(name: str, *args) -> tuple[str, list[dict], dict]:
  r = ndjax_module(f'ndjax.experiments.{name}', '--noprogress', *args)
  assert r.returncode == 0, r.stderr[-3000:]
  outdir = next(a.split('=', 1)[1] for a in args if a.startswith('--outdir='))
  with open(f'{outdir}/results.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  with open(f'{outdir}/results.json') as f:
    doc = json.load(f)
  return r.stdout, rows, doc


def unique_of(out, ds) -> dict[str, int]:
  """{folder: unique detectors per category} of an in-memory dissection."""
  return {res.folder: tally.unique_detectors(tally.label_units(res.counts, ds, 'paper'), ds, 0.04)
          for res in out.results}


def per_category(row: dict, categories) -> dict[str, int]:
  return {c: int(row[c]) for c in categories}


def test_rotation_rows_equal_single_view_dissections(probe, model, tmp_path):
  outdir = tmp_path / 'rotation'
  args = (f'--models={NET}', f'--dataset={probe}', '--repeats=3', '--alphas=0,0.5,1',
          '--min_class_images=2', '--adam_seeds=2', f'--outdir={outdir}')
  stdout, rows, doc = run('rotation', *args)
  ds = api.open_probe(str(probe))
  cats = ds.categories
  by_folder = {row['folder']: row for row in rows}
  assert sorted(by_folder) == ['conv5', 'conv5@rot_s0_a0.5', 'conv5@rot_s0_a1', 'conv5@rot_s1_a1',
                               'conv5@rot_s2_a1']
  # alpha = 0 is the plain dissection
  plain = unique_of(api.dissect(model, ds, ['conv5'], progress=False), ds)['conv5']
  assert per_category(by_folder['conv5'], cats) == plain
  # every rotated row equals a dissection through that one rotation alone
  for seed, alpha in ((0, 0.5), (1, 1.0), (2, 1.0)):
    spec = views.ViewSpec(rotation_seed=seed, rotation_alphas=(alpha,))
    alone = unique_of(api.dissect(model, ds, ['conv5'], views=spec, progress=False), ds)
    (folder, expected), = alone.items()
    assert per_category(by_folder[folder], cats) == expected, folder
  net = doc['networks'][0]
  totals = [int(by_folder[f]['total']) for f in ('conv5@rot_s0_a1', 'conv5@rot_s1_a1',
                                                 'conv5@rot_s2_a1')]
  assert net['at_alpha_1']['per_repeat'] == totals
  assert net['at_alpha_1']['mean'] == pytest.approx(np.mean(totals))
  assert net['at_alpha_1']['std'] == pytest.approx(np.std(totals, ddof=1))
  assert net['unrotated_total'] == sum(plain.values())
  # Fig 7: the unrotated best IoU of each concept is the best unit's, checked against counts
  labels = tally.label_units(api.dissect(model, ds, ['conv5'], progress=False).results[0].counts,
                             ds, 'paper')
  for concept in net['fig7']:
    j = ds.label_names.index(concept['concept'])
    assert concept['unit_iou'] == pytest.approx(labels.iou[:, j].max())
  for stem in ('fig6_alpha', 'fig7_concepts', 'fig8_repeats'):
    assert (outdir / f'{stem}.png').stat().st_size > 1000
    assert (outdir / f'{stem}.svg').read_text().lstrip().startswith('<?xml')
  readme = (outdir / 'README.md').read_text()
  assert f'python -m ndjax.experiments.rotation --noprogress --models={NET}' in readme
  assert (outdir / 'runs' / 'alexnet_random_s1' / 'pooled_conv5.npz').is_file()
  assert 'alexnet random s1 conv5: unique detectors α=0' in stdout
  # a rerun reuses the complete folders and rewrites the same numbers
  _, again, doc2 = run('rotation', *args)
  assert again == rows and doc2['computed'] == [] and len(doc2['reused']) == 1
  first = json.loads((outdir / 'runs' / 'alexnet_random_s1' / 'conv5' / 'results.json').read_text())
  took = sum(first['timings_s'].get(k, 0) for k in ('forward_and_threshold', 'count'))
  assert doc2['reused_dissections_s'] == pytest.approx(took, abs=0.1) and took > 0
  assert 'which took' in (outdir / 'README.md').read_text()
  # the linear probe: equivariant solvers agree on the rotated layer, targets are object labels
  probe_doc = net['linear_probe']
  assert probe_doc['ridge']['rotated'] == probe_doc['ridge']['unrotated']
  assert probe_doc['gd']['rotated'] == probe_doc['gd']['unrotated']
  assert all(ds.categories[ds.primary[ds.label_names.index(c)]] == 'object'
             for c in probe_doc['classes'])
  assert doc2['networks'][0]['linear_probe'] == probe_doc      # pooled features reused


def test_tau_sweep_rows_equal_separate_runs(probe, model, tmp_path):
  taus = (0.005, 0.01, 0.02)
  _, rows, doc = run('tau_sweep', f'--models={NET}', f'--dataset={probe}',
                     '--taus=0.02,0.005,0.01', f'--outdir={tmp_path / "tau"}')
  ds = api.open_probe(str(probe))
  assert [float(r['tau']) for r in rows] == list(taus)
  for row, tau in zip(rows, taus):
    alone = unique_of(api.dissect(model, ds, ['conv5'], tau=tau, progress=False), ds)['conv5']
    assert per_category(row, ds.categories) == alone, tau
  # folders dissected over another probe set (here: its first 8 images) are never reused
  _, _, fewer = run('tau_sweep', f'--models={NET}', f'--dataset={probe}', '--images=8',
                    '--taus=0.02,0.005,0.01', f'--outdir={tmp_path / "tau"}')
  assert len(fewer['computed']) == 1 and fewer['reused'] == [] and fewer['probe_images'] == 8
  changing = doc['networks'][0]['most_relabelled_units']
  assert len(changing) == 5 and all(len(u['labels']) == 3 for u in changing)
  assert all(u['changes'] == sum(a != b for a, b in zip(u['labels'], u['labels'][1:]))
             for u in changing)


def test_layers_rows_equal_per_layer_runs(probe, model, tmp_path):
  _, rows, _ = run('layers', '--network=alexnet:random::1', f'--dataset={probe}',
                   '--layers=conv4,conv2', f'--outdir={tmp_path / "layers"}')
  ds = api.open_probe(str(probe))
  assert [r['layer'] for r in rows] == ['conv2', 'conv4']       # forward order
  for row in rows:
    out = api.dissect(model, ds, [row['layer']], progress=False)
    assert per_category(row, ds.categories) == unique_of(out, ds)[row['layer']]
    best = tally.label_units(out.results[0].counts, ds, 'paper').best_iou
    assert int(row['detectors']) == int(np.sum(best > 0.04))


def test_iou_sweep_at_the_run_threshold_equals_the_tally(probe, tmp_path):
  runs = tmp_path / 'out'
  r = ndjax_module('ndjax.main', '--model=alexnet', '--weights=random', '--seed=1',
                   f'--dataset={probe}', '--layers=conv3,conv5', '--noprogress', '--noreport',
                   f'--outdir={runs}')
  assert r.returncode == 0, r.stderr
  _, rows, doc = run('iou_sweep', f'--runs={runs / "alexnet_random_s1"}',
                     '--thresholds=0.02,0.04,0.08', f'--outdir={tmp_path / "iou"}')
  for layer in ('conv3', 'conv5'):
    saved = json.loads((runs / 'alexnet_random_s1' / layer / 'results.json').read_text())
    row = next(r for r in rows if r['folder'].endswith(f'/{layer}') and float(r['threshold'])
               == 0.04)
    assert {c: int(row[c]) for c in saved['unique_detectors']} == saved['unique_detectors']
    totals = [int(r['total']) for r in rows if r['folder'].endswith(f'/{layer}')]
    assert totals == sorted(totals, reverse=True)        # a higher threshold never adds
  assert doc['probe_images'] == 16


def test_networks_reads_each_network_like_a_plain_run(probe, tmp_path):
  _, rows, _ = run('networks', f'--models={NET},resnet18:random:layer4', f'--dataset={probe}',
                   f'--outdir={tmp_path / "networks"}')
  ds = api.open_probe(str(probe))
  for row, (name, layer) in zip(rows, (('alexnet', 'conv5'), ('resnet18', 'layer4'))):
    model = api.load_model(name, 'random', seed=1 if name == 'alexnet' else 0)
    expected = unique_of(api.dissect(model, ds, [layer], progress=False), ds)[layer]
    assert per_category(row, ds.categories) == expected
    shares = [float(row[f'{c}_detector_share']) for c in ds.categories]
    assert sum(shares) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize('name,args,message', [
    ('rotation', ['--models=vgg16'], 'is not model:weights:layer'),
    ('rotation', ['--models=alexnet:random:conv9'], "unknown layer 'conv9'"),
    ('tau_sweep', ['--taus=0.5,2'], 'outside (0, 1)'),
    ('iou_sweep', ['--runs=/nonexistent/run'], 'nonexistent'),
])
def test_bad_input_is_one_line(name, args, message, probe, tmp_path):
  r = ndjax_module(f'ndjax.experiments.{name}', *args, f'--dataset={probe}',
                   f'--outdir={tmp_path / "x"}', '--noprogress')
  assert r.returncode == 2, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and message in last, last
  assert not (tmp_path / 'x').exists()


def _clusters(seed=0, n=600, k=48, classes=5):
  rng = np.random.default_rng(seed)
  centres = rng.normal(0, 1.0, (classes, k)) * rng.uniform(0.2, 3.0, k)   # anisotropic features
  targets = rng.integers(0, classes, n)
  features = centres[targets] + rng.normal(0, 9.0, (n, k)) * rng.uniform(0.2, 3.0, k)
  return features, targets


def test_linear_probe_equivariant_solvers_agree_under_rotation_and_adam_does_not_have_to():
  from ndjax import rotation
  from ndjax.experiments import linear_probe as lp
  features, targets = _clusters()
  data = lp.ProbeData(features, targets, [f'c{i}' for i in range(5)], np.arange(len(targets)),
                      np.random.default_rng(1).permutation(len(targets)) < 300)
  q = rotation.random_rotation(3, features.shape[1])
  ridge, ridge_rot = lp.ridge_accuracy(data, features), lp.ridge_accuracy(data, features @ q)
  gd, gd_rot = lp.gd_accuracy(data, features), lp.gd_accuracy(data, features @ q)
  assert abs(ridge - ridge_rot) <= 1e-6 and abs(gd - gd_rot) <= 1e-6
  predicted = lp.ridge_predictions(data, features)
  np.testing.assert_array_equal(lp.ridge_predictions(data, features @ q), predicted)
  assert 0.4 < ridge < 0.95 and 0.4 < gd < 0.95      # chance is 0.2: the solvers learn
  # per-coordinate rescaling is no rotation: the same solver then predicts otherwise
  scale = np.random.default_rng(2).uniform(0.05, 20.0, features.shape[1])
  assert np.any(lp.ridge_predictions(data, features * scale) != predicted)
  adam = [lp.adam_accuracy(data, features, s) for s in (0, 1)]
  assert all(a > 0.4 for a in adam)


def test_linear_probe_targets_are_the_largest_label_of_the_category(broden_factory):
  from ndjax.data import open_dataset
  from ndjax.experiments import linear_probe as lp
  from tests.conftest import CATS, LABELS, random_images
  root = broden_factory(CATS, LABELS, random_images(np.random.default_rng(4), 8))
  ds = open_dataset(str(root))
  targets = lp.image_targets(ds, 'object')
  objects = set(np.flatnonzero(ds.primary == ds.categories.index('object')).tolist())
  assert np.count_nonzero(targets) >= 4
  for i, target in enumerate(targets):
    layers, image_labels = ds.load_labels(i)
    counts = {int(v): int(np.sum(layers == v)) for v in np.unique(layers) if int(v) in objects}
    expected = max(sorted(counts), key=lambda v: counts[v]) if counts else 0
    assert target == expected, i
  with pytest.raises(ValueError, match='not a category'):
    lp.image_targets(ds, 'animal')
