"""The training studies (training_dynamics, regularization, width, finetune): their bookkeeping on
hand-made label sequences, and end to end with the `smoke` preset, each number checked against an
independent computation (an in-memory dissection of the snapshot through `ndjax.api`, a NumPy
accuracy from the snapshot's logits)."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from ndjax import api, tally
from tests.conftest import REPO, ndjax_module


def test_label_history_by_hand():
  from ndjax.experiments.training_dynamics import label_history
  a, b, x = ('a', 'object'), ('b', 'texture'), ('x', 'color')
  steps = [0, 1, 2, 5, 10]
  per_step = [[None, None, a, None], [a, None, a, None], [b, x, a, None], [a, x, a, None],
              [a, x, a, b]]
  h = label_history(steps, per_step)
  assert h[0] == dict(unit=0, final='a', final_category='object', first_seen=1, stable_since=5,
                      label_changes=2, categories=['object', 'texture', 'object'],
                      category_changes=2)
  assert (h[1]['first_seen'], h[1]['stable_since'], h[1]['label_changes']) == (2, 2, 0)
  assert (h[2]['first_seen'], h[2]['stable_since'], h[2]['category_changes']) == (0, 0, 0)
  assert (h[3]['final'], h[3]['first_seen'], h[3]['stable_since']) == ('b', 10, 10)


def test_unit_evolution_classes():
  from ndjax.experiments.finetune import evolution
  a, b = ('dog', 'object'), ('grass', 'material')
  assert evolution([a, a, a, None, None], [a, b, None, b, None]) == [
      'kept', 'changed', 'lost', 'gained', 'neither']


def test_variants_and_their_errors():
  from ndjax.experiments import common, regularization, width
  assert [m['model'] for _, m in regularization.variants(2)] == [
      'alexnet', 'alexnet', 'alexnet', 'alexnet_nodropout', 'alexnet_bn']
  assert [m['seed'] for _, m in regularization.variants(2)][:3] == [0, 1, 2]
  assert [m['model'] for _, m in width.variants(['1024'])][-1] == 'alexnet_gap_wide1024'
  with pytest.raises(common.ExperimentError, match='registered widths: 1024, 2048'):
    width.variants(['999'])


def test_presets_train_at_their_probe_size():
  """Each preset's config has every field of the default config, and trains at the resolution its
  probe set is rendered at (a network dissected at another scale than it saw would mislead)."""
  import importlib
  from ndjax.experiments import training
  from ndjax.train.configs import default
  for name, preset in training.PRESETS.items():
    c = importlib.import_module(f'ndjax.train.configs.{preset.config}').get_config()
    assert set(c.keys()) == set(default.get_config().keys()), name
    assert c.image_size == preset.probe_size, name
    assert preset.finetune_dataset != c.dataset, name


# --- end to end with the smoke preset -------------------------------------------------------------
@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
  from ndjax.probes import ingredients
  from ndjax.fileio import cache_root
  try:
    ingredients.ensure_ingredients(cache_root(), progress=False)
  except ingredients.IngredientError as e:
    pytest.skip(f'probe ingredients unavailable: {e}')
  return tmp_path_factory.mktemp('studies')


def run(smoke, name, *args):
  outdir = smoke / name
  r = ndjax_module(f'ndjax.experiments.{name}', '--preset=smoke', f'--train_dir={smoke}/train',
                   f'--outdir={outdir}', '--noprogress', *args)
  assert r.returncode == 0, r.stderr[-3000:]
  with open(outdir / 'results.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  return rows, json.loads((outdir / 'results.json').read_text())


def snapshot_model(smoke, run_name, step, model='alexnet'):
  return api.load_model(model, str(smoke / 'train' / 'smoke' / run_name / 'snapshots' / str(step)))


def smoke_probe():
  from ndjax.data import open_dataset
  from ndjax.experiments import training
  from ndjax.fileio import cache_root
  from ndjax.probes import composite
  p = training.PRESETS['smoke']
  return open_dataset(str(composite.ensure_composite_set(cache_root(), p.probe_images,
                                                         progress=False, image_size=p.probe_size)))


def test_training_dynamics_end_to_end(smoke):
  """Every step of the log schedule is dissected; the first and last rows equal in-memory
  dissections of the snapshots, and the accuracies equal NumPy's from the snapshots' logits."""
  rows, doc = run(smoke, 'training_dynamics')
  steps = [int(r['step']) for r in rows]
  assert steps == [0, 1, 2, 5, 10, 12] == doc['steps']
  ds = smoke_probe()
  from ndjax.train import input_pipeline
  from ndjax.train.configs import smoke as smoke_config
  test = input_pipeline.get_data(smoke_config.get_config(), progress=False).test
  for row in (rows[0], rows[-1]):
    model = snapshot_model(smoke, 'alexnet_s0', int(row['step']))
    out = api.dissect(model, ds, ['conv5'], progress=False)
    labels = tally.label_units(out.results[0].counts, ds, 'paper')
    unique = tally.unique_detectors(labels, ds, 0.04)
    assert {c: int(row[c]) for c in unique} == unique
    assert int(row['detectors']) == int(np.sum(labels.best_iou > 0.04))
    logits = np.asarray(model.module.logits(test.images))
    assert float(row['test_accuracy']) == pytest.approx(
        np.mean(logits.argmax(-1) == test.labels), abs=1e-4)
  # the history of the last step's detectors is the labels the last row counted
  history = doc['all_units_history']
  assert sum(h['final'] is not None for h in history) == int(rows[-1]['detectors'])
  # a rerun trains and dissects nothing
  again, doc2 = run(smoke, 'training_dynamics')
  assert again == rows and not doc2['computed'] and doc2['training'] == ['alexnet_s0: reused']


def test_finetune_end_to_end(smoke):
  """Fine-tuning starts from the baseline's trunk: step 0 scores exactly like the baseline's last
  snapshot, and the kept/changed/lost/gained counts add up to the layer's units."""
  rows, doc = run(smoke, 'finetune', '--directions=forward')
  d, = doc['directions']
  assert d['name'] == 'objects -> material'
  assert sum(d['counts'].values()) == d['units'] == 256
  ds = smoke_probe()
  base = api.dissect(snapshot_model(smoke, 'alexnet_s0', 12), ds, ['conv5'], progress=False)
  labels = tally.label_units(base.results[0].counts, ds, 'paper')
  assert int(rows[0]['step']) == 0
  assert int(rows[0]['detectors']) == int(np.sum(labels.best_iou > 0.04)) == d['detectors_before']
  assert d['counts']['kept'] + d['counts']['changed'] + d['counts']['lost'] == d['detectors_before']
  manifest = json.loads((smoke / 'train' / 'smoke' / 'alexnet_s0_to_material' / 'snapshots' / '6'
                         / 'manifest.json').read_text())
  assert manifest['num_classes'] == 19 and manifest['arch'] == 'alexnet'


def test_width_and_regularization_reuse_the_baseline(smoke):
  rows, doc = run(smoke, 'width')
  assert [r['variant'] for r in rows] == ['baseline', 'GAP-Wide 768', 'GAP-WideAll']
  assert [int(r['units']) for r in rows] == [256, 768, 768]
  assert doc['training'][0] == 'alexnet_s0: reused'
  # the CLI dissects a snapshot without --model: the manifest names the variant
  from ndjax.experiments import training
  snapshot = smoke / 'train' / 'smoke' / 'alexnet_gap_wide_s0' / 'snapshots' / '12'
  probe = smoke_probe().root
  relative = os.path.relpath(snapshot, REPO)     # from the command's cwd: Orbax wants absolute
  r = ndjax_module('ndjax.main', f'--weights={relative}', f'--dataset={probe}', '--noprogress',
                   f'--outdir={smoke}/cli', '--noreport')
  assert r.returncode == 0, r.stderr[-2000:]
  assert f'conv5: {rows[1]["detectors"]}/768 units are detectors' in r.stdout
  assert training.PRESETS['smoke'].probe_size == 64
  rows, doc = run(smoke, 'regularization', '--repeats=1')
  assert [r['variant'] for r in rows] == ['baseline', 'repeat1', 'nodropout', 'batchnorm']
  assert doc['training'][0] == 'alexnet_s0: reused'
