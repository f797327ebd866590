"""The result-folder reader (`ndjax.results`) on folders written by hand: its rescored IoUs against
intersection / union computed by hand, the folder order of a run with views, and one-line errors.

Nothing here runs a dissection: the folders are what a dissection writes, typed in, so the reader
is checked against the file format and not against ndjax's own writer.
"""
import csv
import json
from fractions import Fraction as F

import numpy as np
import pytest

from ndjax import iou, results

CATEGORIES = ['color', 'object', 'part']
LABEL_NAMES = ['-', 'red-c', 'car', 'tree', 'wheel']
PRIMARY = np.array([-1, 0, 1, 1, 2], np.int32)        # '-' has no category
# three units x five labels: unit 3 never fires
INTER = np.array([[0, 10, 20, 5, 0],
                  [0, 2, 40, 0, 15],
                  [0, 0, 0, 0, 0]], np.int64)
LABEL_PIXELS = np.array([0, 30, 50, 20, 25], np.int64)
ACT_PAPER = np.array([[40, 60, 10], [20, 80, 30], [0, 0, 0]], np.int64)   # per category
ACT_LITE = np.array([[20, 50, 10], [20, 40, 30], [0, 0, 0]], np.int64)
THRESHOLDS = np.array([0.5, 1.25, 2.0], np.float32)

# IoU = inter / (act[unit, primary category] + label pixels - inter), worked out by hand
HAND_IOU = {
    'paper': [
        # red: 10/(40+30-10)  car: 20/(60+50-20)  tree: 5/(60+20-5)  wheel: 0/(10+25)
        [0, F(10, 60), F(20, 90), F(5, 75), 0],
        # red: 2/(20+30-2)    car: 40/(80+50-40)  tree: 0/(80+20)    wheel: 15/(30+25-15)
        [0, F(2, 48), F(40, 90), 0, F(15, 40)],
        [0, 0, 0, 0, 0]],
    'lite': [
        # red: 10/(20+30-10)  car: 20/(50+50-20)  tree: 5/(50+20-5)  wheel: 0/(10+25)
        [0, F(10, 40), F(20, 80), F(5, 65), 0],
        # red: 2/(20+30-2)    car: 40/(40+50-40)  tree: 0/(40+20)    wheel: 15/(30+25-15)
        [0, F(2, 48), F(40, 50), 0, F(15, 40)],
        [0, 0, 0, 0, 0]],
}
# per unit, per category: (best label, IoU), each label judged in its primary category only
HAND_BEST = {
    'paper': [{'color': ('red-c', F(1, 6)), 'object': ('car', F(2, 9)), 'part': ('wheel', 0)},
              {'color': ('red-c', F(1, 24)), 'object': ('car', F(4, 9)),
               'part': ('wheel', F(3, 8))},
              {'color': ('red-c', 0), 'object': ('car', 0), 'part': ('wheel', 0)}],
    'lite': [{'color': ('red-c', F(1, 4)), 'object': ('car', F(1, 4)), 'part': ('wheel', 0)},
             {'color': ('red-c', F(1, 24)), 'object': ('car', F(4, 5)), 'part': ('wheel', F(3, 8))},
             {'color': ('red-c', 0), 'object': ('car', 0), 'part': ('wheel', 0)}],
}
# the overall best: the best category, ties to the earlier one (lite unit 1: color 1/4 = object 1/4)
HAND_OVERALL = {'paper': [('object', 'car'), ('object', 'car'), ('color', 'red-c')],
                'lite': [('color', 'red-c'), ('object', 'car'), ('color', 'red-c')]}


def _results_doc(layer, view=None, folder=None, layers=None, unique=None) -> dict:
  doc = {'layer': layer, 'iou_threshold': 0.04, 'denominator': 'paper',
         'flags': {'tau': ['0.005', '0.01']},
         'resolved': {'layers': layers or [layer], 'run_dir': '/somewhere/run'},
         'unique_detectors': unique or {'color': 1, 'object': 1, 'part': 0},
         'units': [{'unit': u + 1, 'threshold': float(t)} for u, t in enumerate(THRESHOLDS)]}
  if view is not None:
    doc.update(view=view, folder=folder, precision='default')
  return doc


def _write_folder(path, doc, counts=True, tally_rows=None):
  path.mkdir(parents=True)
  (path / 'results.json').write_text(json.dumps(doc))
  if counts:
    np.savez_compressed(path / 'counts.npz', inter=INTER, label_pixels=LABEL_PIXELS,
                        act_paper=ACT_PAPER, act_lite=ACT_LITE, act_pixels=INTER.sum(1),
                        thresholds=THRESHOLDS, label_names=np.array(LABEL_NAMES),
                        primary=PRIMARY, categories=np.array(CATEGORIES))
  if tally_rows is not None:
    with open(path / 'tally.csv', 'w', newline='') as f:
      csv.writer(f).writerows(tally_rows)
  return path


ROT = {'name': 'rot_s0_a0.5', 'kind': 'rotation', 'tau': 0.005, 'seed': 0, 'alpha': 0.5,
       'units': 3, 'orthogonality_error': 2e-7, 'det': 1.0}


@pytest.fixture
def view_dir(tmp_path):
  rows = [['unit', 'category', 'label', 'score', 'object-label', 'object-truth',
           'object-activation', 'object-intersect', 'object-iou'],
          [2, 'object', 'car', 0.4444444444444444, 'car', 50, 80, 40, 0.4444444444444444],
          [1, 'object', 'car', 0.2222222222222222, 'car', 50, 60, 20, 0.2222222222222222]]
  doc = _results_doc('conv5', ROT, 'conv5@rot_s0_a0.5')
  return _write_folder(tmp_path / 'run' / 'conv5@rot_s0_a0.5', doc, tally_rows=rows)


@pytest.mark.parametrize('denominator', ['paper', 'lite'])
def test_rescored_labels_equal_hand_computation(view_dir, denominator):
  v = results.load(view_dir)
  assert (v.folder, v.layer, v.run) == ('conv5@rot_s0_a0.5', 'conv5', 'run')
  np.testing.assert_array_equal(v.iou_matrix(denominator),
                                np.array(HAND_IOU[denominator], np.float64))
  labels = v.labels(denominator)
  for u, best in enumerate(HAND_BEST[denominator]):
    for c, cat in enumerate(CATEGORIES):
      label, value = best[cat]
      assert LABEL_NAMES[labels.best_per_cat[u, c]] == label
      assert labels.best_iou_per_cat[u, c] == float(value)
    cat, label = HAND_OVERALL[denominator][u]
    assert (CATEGORIES[labels.best_cat[u]], LABEL_NAMES[labels.best_label[u]]) == (cat, label)
    assert labels.best_iou[u] == float(best[cat][1])
  # the same numbers as results.json-style records and the CLI's summary line
  records = v.unit_records(denominator)
  assert [r['per_category']['object']['iou'] for r in records] == [
      float(b['object'][1]) for b in HAND_BEST[denominator]]
  assert [r['threshold'] for r in records] == [0.5, 1.25, 2.0]
  detectors = sum(float(b[c][1]) > 0.04 for b, (c, _) in
                  zip(HAND_BEST[denominator], HAND_OVERALL[denominator]))
  assert v.summary_line(denominator).startswith(
      f'conv5@rot_s0_a0.5: {detectors}/3 units are detectors (IoU > 0.04)')


def test_typed_files_and_view_record(view_dir):
  v = results.load(view_dir)
  assert v.view == results.ViewRecord('rot_s0_a0.5', 'rotation', 0.005, {
      'seed': 0, 'alpha': 0.5, 'units': 3, 'orthogonality_error': 2e-7, 'det': 1.0})
  assert not v.view.plain and 'Q^0.5' in v.view.describe() and 'seed 0' in v.view.describe()
  assert 'tau 0.005' in v.view.describe() and v.precision == 'default'
  assert v.tally[0] == {'unit': 2, 'category': 'object', 'label': 'car',
                        'score': pytest.approx(4 / 9), 'object-label': 'car', 'object-truth': 50,
                        'object-activation': 80, 'object-intersect': 40,
                        'object-iou': pytest.approx(4 / 9)}
  assert type(v.tally[0]['object-truth']) is int and type(v.tally[1]['score']) is float
  assert v.categories == CATEGORIES and v.label_names == LABEL_NAMES
  np.testing.assert_array_equal(v.primary, PRIMARY)
  np.testing.assert_array_equal(v.thresholds, THRESHOLDS)
  counts = v.counts
  assert isinstance(counts, iou.Counts) and counts.inter.dtype == np.int64
  np.testing.assert_array_equal(counts.act_lite, ACT_LITE)
  assert v.top is None                                  # dissected with --topk=0
  top = {'images': np.array([[3, -1]]), 'values': np.array([[1.0, np.nan]], np.float32),
         'maps': np.zeros((1, 2, 2, 2), np.float32), 'map_hw': np.ones((1, 2, 2), np.int32)}
  np.savez(view_dir / 'topk.npz', **top)
  assert results.load(view_dir).top['images'].tolist() == [[3, -1]]


def test_find_orders_layers_then_plain_then_views(tmp_path):
  run = tmp_path / 'run'
  layers = ['features.2', 'features.10']      # dissection order, not the alphabet's
  names = {'features.10': ['', 'rot_s0_a1', 'rot_s0_a0.25', 'tau0.01', 'rot_s0_a1_tau0.01'],
           'features.2': ['rot_s0_a1', '', 'tau0.01']}
  for layer, views in names.items():
    for name in views:
      folder = f'{layer}@{name}' if name else layer
      kind = 'rotation' if name.startswith('rot') else 'identity'
      view = {'name': name, 'kind': kind, 'tau': 0.01 if 'tau' in name else 0.005}
      _write_folder(run / folder, _results_doc(layer, view, folder, layers), counts=False)
  (run / '.resume').mkdir()                    # not a result folder: passed over
  found = results.find(run)
  assert [v.folder for v in found] == [
      'features.2', 'features.2@rot_s0_a1', 'features.2@tau0.01',
      'features.10', 'features.10@rot_s0_a0.25', 'features.10@rot_s0_a1',
      'features.10@rot_s0_a1_tau0.01', 'features.10@tau0.01']
  assert [v.view.tau for v in found[:3]] == [0.005, 0.005, 0.01]
  # one folder of the run: just it
  assert [v.folder for v in results.find(run / 'features.10@tau0.01')] == ['features.10@tau0.01']


def test_find_brief_layout(tmp_path):
  """<layer>, <layer>@rot_s0_a1, <layer>@tau0.01: in that order."""
  run = tmp_path / 'run'
  for folder in ('conv5@tau0.01', 'conv5@rot_s0_a1', 'conv5'):
    name = folder.partition('@')[2]
    view = {'name': name, 'kind': 'rotation' if name.startswith('rot') else 'identity',
            'tau': 0.005}
    _write_folder(run / folder, _results_doc('conv5', view, folder), counts=False)
  assert [v.folder for v in results.find(run)] == ['conv5', 'conv5@rot_s0_a1', 'conv5@tau0.01']


def test_older_folder_loads_without_counts_or_view(tmp_path):
  path = _write_folder(tmp_path / 'run' / 'conv5', _results_doc('conv5'), counts=False)
  v = results.load(path)
  assert v.view.plain and v.view.kind == 'identity' and v.view.tau == 0.005
  assert v.folder == 'conv5' and v.categories == ['color', 'object', 'part']
  np.testing.assert_array_equal(v.thresholds, THRESHOLDS)     # from results.json's units
  assert not v.has_counts and v.top is None
  for ask in (lambda: v.counts, lambda: v.labels(), lambda: v.label_names):
    with pytest.raises(results.ResultsError, match='counts.npz is missing') as e:
      ask()
    assert '\n' not in str(e.value)
  # an older view folder: its name says what it is
  old = _write_folder(tmp_path / 'run' / 'conv5@rot_s1_a1', _results_doc('conv5'), counts=False)
  assert results.load(old).view.name == 'rot_s1_a1' and results.load(old).view.kind == 'rotation'


def _one_line_error(call, match):
  with pytest.raises(results.ResultsError, match=match) as e:
    call()
  assert '\n' not in str(e.value) and str(e.value).strip() == str(e.value)
  return str(e.value)


def test_missing_and_corrupt_files_are_one_line_errors(tmp_path, view_dir):
  empty = tmp_path / 'conv5'
  empty.mkdir()
  (empty / 'tally.csv').write_text('unit\n')
  msg = _one_line_error(lambda: results.load(empty), 'holds no results.json')
  assert msg.startswith(str(empty))
  _one_line_error(lambda: results.find(empty), 'holds no results.json, nor do its subfolders')
  _one_line_error(lambda: results.find(tmp_path / 'nothing'), 'is not a directory')
  (empty / 'results.json').write_text('{"layer": "conv5",\n')
  _one_line_error(lambda: results.load(empty), 'is not a readable dissection results.json')
  (empty / 'results.json').write_text('{"layer": "conv5"}')
  _one_line_error(lambda: results.load(empty), r'results.json \(no unique_detectors\)')
  # corrupt or inconsistent counts.npz, tally.csv, topk.npz: loading works, asking fails
  v = results.load(view_dir)
  (view_dir / 'counts.npz').write_bytes(b'PK\x03\x04 not really a zip')
  _one_line_error(lambda: v.counts, 'is not a readable counts.npz')
  np.savez(view_dir / 'counts.npz', inter=INTER)
  _one_line_error(lambda: results.load(view_dir).counts, r'\(no label_pixels, act_paper')
  arrays = dict(inter=INTER, label_pixels=LABEL_PIXELS[:4], act_paper=ACT_PAPER,
                act_lite=ACT_LITE, act_pixels=INTER.sum(1), thresholds=THRESHOLDS,
                label_names=np.array(LABEL_NAMES), primary=PRIMARY,
                categories=np.array(CATEGORIES))
  np.savez(view_dir / 'counts.npz', **arrays)
  _one_line_error(lambda: results.load(view_dir).labels(), r'shapes disagree: label_pixels \(4,\)')
  arrays['label_pixels'] = LABEL_PIXELS
  np.savez(view_dir / 'counts.npz', **arrays)
  _one_line_error(lambda: results.load(view_dir).labels('median'), 'unknown denominator')
  with open(view_dir / 'tally.csv', 'a') as f:
    f.write('3,object,car,not-a-number,car,50,0,0,0\n')
  _one_line_error(lambda: results.load(view_dir).tally, 'is not a readable tally.csv')
  (view_dir / 'tally.csv').unlink()
  _one_line_error(lambda: results.load(view_dir).tally, 'tally.csv is missing')
  (view_dir / 'topk.npz').write_bytes(b'\x00' * 10)
  _one_line_error(lambda: results.load(view_dir).top, 'is not a readable topk.npz')


def test_real_run_rescores_to_its_own_results(tmp_path_factory):
  """On the CLI's own output: counts.npz rescored with the run's denominator gives results.json's
  unit records and tally.csv's scores, so nothing the reader needs is missing from the folder."""
  from tests.conftest import dissected_runs
  run = dissected_runs(tmp_path_factory)[1]
  found = results.find(run)
  assert [v.folder for v in found] == ['conv3', 'conv5']
  for v in found:
    assert v.view.plain and v.view.tau == 0.005 and v.has_counts
    assert v.unit_records(v.denominator) == v.units
    best = v.labels(v.denominator).best_iou
    assert [r['score'] for r in v.tally] == [float(best[r['unit'] - 1]) for r in v.tally]
    printed = (run / 'done').read_text().splitlines()
    assert v.summary_line(v.denominator) in printed
