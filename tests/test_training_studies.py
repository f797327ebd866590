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
  # a gap: held at 0, lost at 1, back from 2 on -> first seen 0, held (without a gap) since 2
  gap = label_history([0, 1, 2, 5], [[a], [None], [a], [a]])[0]
  assert (gap['first_seen'], gap['stable_since'], gap['label_changes']) == (0, 2, 0)


def test_unit_evolution_classes():
  from ndjax.experiments.finetune import evolution
  a, b = ('dog', 'object'), ('grass', 'material')
  assert evolution([a, a, a, None, None], [a, b, None, b, None]) == [
      'kept', 'changed', 'lost', 'gained', 'neither']


def test_finetune_plan_follows_the_preset():
  """The forward base is the preset's own baseline run (shared with the other studies), on the
  preset's dataset: Places365 for `paper`, not the built-in task."""
  from ndjax.experiments import finetune, training
  from ndjax.train.configs import paper
  first, second = paper.get_config().dataset, training.PRESETS['paper'].finetune_dataset
  assert finetune.plan(first, second, ['forward', 'reverse']) == [
      ('alexnet_s0', 'tfds:places365_small', 'tfds:imagenet2012'),
      ('alexnet_s0_imagenet2012', 'tfds:imagenet2012', 'tfds:places365_small')]
  assert finetune.plan('probe_task', 'probe_task_material', ['reverse']) == [
      ('alexnet_s0_material', 'probe_task_material', 'probe_task')]


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


@pytest.mark.slow
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
  # the history's final labels are the last snapshot's labels, dissected independently
  names = ds.label_names
  expected = [names[int(labels.best_label[k])] if labels.best_iou[k] > 0.04 else None
              for k in range(len(labels.best_iou))]
  assert [h['final'] for h in doc['all_units_history']] == expected
  # a rerun trains and dissects nothing
  again, doc2 = run(smoke, 'training_dynamics')
  assert again == rows and not doc2['computed'] and doc2['training'] == ['alexnet_s0: reused']


@pytest.mark.slow
def test_finetune_end_to_end(smoke):
  """Fine-tuning starts from the baseline's trunk (step 0 scores exactly like the baseline's last
  snapshot), and each unit's class equals the one read off two independent in-memory
  dissections: the baseline's last snapshot and the fine-tuned run's last."""
  rows, doc = run(smoke, 'finetune', '--directions=forward')
  d, = doc['directions']
  assert d['name'] == 'objects -> material'
  ds = smoke_probe()

  def detectors(run_name, step):
    out = api.dissect(snapshot_model(smoke, run_name, step), ds, ['conv5'], progress=False)
    labels = tally.label_units(out.results[0].counts, ds, 'paper')
    return [ds.label_names[int(labels.best_label[k])] if labels.best_iou[k] > 0.04 else None
            for k in range(len(labels.best_iou))]

  before, after = detectors('alexnet_s0', 12), detectors('alexnet_s0_to_material', 6)
  expected = {c: 0 for c in ('kept', 'changed', 'lost', 'gained', 'neither')}
  for b, a in zip(before, after):
    expected['neither' if b is None and a is None else 'gained' if b is None else
             'lost' if a is None else 'kept' if a == b else 'changed'] += 1
  assert d['counts'] == expected
  assert int(rows[0]['step']) == 0
  assert int(rows[0]['detectors']) == sum(b is not None for b in before) == d['detectors_before']
  manifest = json.loads((smoke / 'train' / 'smoke' / 'alexnet_s0_to_material' / 'snapshots' / '6'
                         / 'manifest.json').read_text())
  assert manifest['num_classes'] == 19 and manifest['arch'] == 'alexnet'


@pytest.mark.slow
def test_a_changed_snapshot_is_dissected_again(smoke, tmp_path):
  """Dissection folders are named by run and step; a snapshot whose bytes changed (a retrained
  run) must be dissected again, never reused. Works on a copy of the smoke runs."""
  import shutil
  train_dir = tmp_path / 'train'
  shutil.copytree(smoke / 'train', train_dir)
  outdir = tmp_path / 'td'
  args = ('ndjax.experiments.training_dynamics', '--preset=smoke', f'--train_dir={train_dir}',
          f'--outdir={outdir}', '--noprogress')
  assert ndjax_module(*args).returncode == 0
  snapshots = train_dir / 'smoke' / 'alexnet_s0' / 'snapshots'
  shutil.rmtree(snapshots / '12')
  shutil.copytree(snapshots / '0', snapshots / '12')       # step 12 now holds step 0's weights
  (train_dir / 'smoke' / 'alexnet_s0' / 'snapshot_accuracy.json').unlink()
  r = ndjax_module(*args)
  assert r.returncode == 0, r.stderr[-2000:]
  doc = json.loads((outdir / 'results.json').read_text())
  assert len(doc['computed']) == 1 and doc['computed'][0].split()[1].endswith('/snapshots/12')
  with open(outdir / 'results.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert {k: v for k, v in rows[-1].items() if k != 'step'} == \
         {k: v for k, v in rows[0].items() if k != 'step'}


@pytest.mark.slow
def test_width_and_regularization_reuse_the_baseline(smoke):
  rows, doc = run(smoke, 'width')
  assert [r['variant'] for r in rows] == ['baseline', 'GAP-Wide 768', 'GAP-WideAll']
  assert [int(r['units']) for r in rows] == [256, 768, 768]
  assert doc['training'][0] == 'alexnet_s0: reused'
  # the CLI dissects a snapshot without --model: the manifest names the variant
  snapshot = smoke / 'train' / 'smoke' / 'alexnet_gap_wide_s0' / 'snapshots' / '12'
  probe = smoke_probe().root
  relative = os.path.relpath(snapshot, REPO)     # from the command's cwd: Orbax wants absolute
  r = ndjax_module('ndjax.main', f'--weights={relative}', f'--dataset={probe}', '--noprogress',
                   f'--outdir={smoke}/cli', '--noreport')
  assert r.returncode == 0, r.stderr[-2000:]
  assert f'conv5: {rows[1]["detectors"]}/768 units are detectors' in r.stdout
  rows, doc = run(smoke, 'regularization', '--repeats=1')
  assert [r['variant'] for r in rows] == ['baseline', 'repeat1', 'nodropout', 'batchnorm']
  assert doc['training'][0] == 'alexnet_s0: reused'
