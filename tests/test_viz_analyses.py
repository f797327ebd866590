"""Per-unit analyses of result folders (ndjax.viz.analyses) against planted answers and brute force.

Hand-built folders: results.json + counts.npz typed in with planted counts, so each top-k list,
best unit, IoU and outside fraction is known by construction (IoU = I / (A + L - I), worked out
here as fractions). A hand-written Broden set with rectangles of known area plants the object x
part co-occurrence. One real tiny dissection (alexnet, random weights, the procedural probe set)
is checked against counts recomputed from the probe masks and a forward pass, by the definition.
"""
from __future__ import annotations

import pathlib

import json
from fractions import Fraction as F

import numpy as np
import pytest

from ndjax import results
from ndjax.data import broden
from ndjax.viz import analyses, common
from tests.by_hand import axis_sources
from tests.conftest import dissected_runs, ndjax_module

CATS = ['color', 'object', 'part', 'scene']
NAMES = ['-', 'red-c', 'car', 'tree', 'wheel', 'street-s', 'ghost', 'roof']
PRIMARY = np.array([-1, 0, 1, 1, 2, 3, -1, 2], np.int32)    # ghost: listed in no c_<cat>.csv


def write_folder(path, inter, act_paper, *, label_pixels=None, act_lite=None, act_pixels=None,
                 names=NAMES, primary=PRIMARY, cats=CATS, denominator='paper', layer=None,
                 doc=None):
  """A result folder as a dissection writes it: results.json and counts.npz (what `results.load`
  and the analyses read), every count planted."""
  inter = np.asarray(inter, np.int64)
  k, n = inter.shape
  act_paper = np.asarray(act_paper, np.int64)
  path.mkdir(parents=True)
  body = {'layer': layer or path.name, 'folder': path.name, 'denominator': denominator,
          'iou_threshold': 0.04, 'unique_detectors': {c: 0 for c in cats}}
  body.update(doc or {})
  (path / 'results.json').write_text(json.dumps(body))
  np.savez_compressed(
      path / 'counts.npz', inter=inter,
      label_pixels=np.full(n, 100, np.int64) if label_pixels is None else label_pixels,
      act_paper=act_paper, act_lite=act_paper if act_lite is None else np.asarray(act_lite),
      act_pixels=act_paper.max(1) if act_pixels is None else np.asarray(act_pixels),
      thresholds=np.ones(k, np.float32), label_names=np.array(names), primary=primary,
      categories=np.array(cats))
  return path


def iou(i, a, l=100):
  """Paper Eq. 1 from the planted numbers: I / (A + L - I)."""
  return F(i, a + l - i)


# unit 0: every label 100 pixels, every category's activation 100 -> IoU = I / (200 - I)
UNIT0 = [0, 50, 80, 20, 60, 6, 100, 0]       # red 1/3, car 2/3, tree 1/9, wheel 3/7, street 3/97
UNIT1 = [0, 0, 90, 0, 0, 0, 0, 0]            # car 9/11: the layer's best detector
UNIT2 = [0, 0, 0, 0, 0, 0, 0, 0]             # never fires on a label


@pytest.fixture
def layer(tmp_path):
  act = np.full((3, 4), 100)
  act_lite = act.copy()
  act_lite[0, 0] = 50                 # lite: unit 0 touches colour on half its images
  return (write_folder(tmp_path / 'run' / 'conv5', [UNIT0, UNIT1, UNIT2], act),
          write_folder(tmp_path / 'lite' / 'conv5', [UNIT0, UNIT1, UNIT2], act, act_lite=act_lite,
                       denominator='lite'))


def test_unit_concepts_planted(layer):
  view = results.load(layer[0])
  rows = analyses.unit_concepts(view, 0, top=5)
  # ghost (inter 100: IoU 1 if it were scored) has no primary category; roof IoU 0 is left out
  assert [(r['label'], r['category']) for r in rows] == [
      ('car', 'object'), ('wheel', 'part'), ('red-c', 'color'), ('tree', 'object'),
      ('street-s', 'scene')]
  want = [iou(80, 100), iou(60, 100), iou(50, 100), iou(20, 100), iou(6, 100)]
  assert [r['iou'] for r in rows] == pytest.approx([float(w) for w in want], rel=1e-12)
  assert [r['detector'] for r in rows] == [True, True, True, True, False]    # 3/97 < 0.04
  assert [r['rank'] for r in rows] == list(range(5)) and {r['unit'] for r in rows} == {0}
  assert len(analyses.unit_concepts(view, 0, top=10)) == 5
  assert [r['label'] for r in analyses.unit_concepts(view, 0, top=2)] == ['car', 'wheel']
  assert analyses.unit_concepts(view, 2) == []
  assert analyses.best_unit(view) == 1
  # the run's own denominator: with lite, red is 50 / (50 + 100 - 50) = 1/2, above wheel's 3/7
  lite = analyses.unit_concepts(results.load(layer[1]), 0, top=3)
  assert [r['label'] for r in lite] == ['car', 'red-c', 'wheel']
  assert lite[1]['iou'] == pytest.approx(0.5, rel=1e-12)
  with pytest.raises(common.VizError, match='unit 3 is out of range'):
    analyses.unit_concepts(view, 3)


@pytest.fixture
def three_layers(tmp_path):
  """conv5, conv1, conv3 given in that (not alphabetical) order, with 3, 4 and 2 units."""
  def units(car):
    rows = np.zeros((len(car), len(NAMES)), np.int64)
    rows[:, 2] = car
    rows[:, 3] = 40           # tree: 40/160 = 1/4 for every unit
    return rows
  acts = lambda k, paper, total: (np.full((k, 4), paper), np.full(k, total))
  plant = {'conv5': [20, 80, 80], 'conv1': [0, 10, 30, 5], 'conv3': [50, 60]}
  # activated pixels on images with object labels (100), on all images (more, and per layer)
  totals = {'conv5': 125, 'conv1': 400, 'conv3': 200}
  paths = []
  for name, car in plant.items():
    a, t = acts(len(car), 100, totals[name])
    paths.append(write_folder(tmp_path / 'run' / name, units(car), a, act_pixels=t))
  return paths


def test_concept_units_planted(three_layers):
  views = [results.load(p) for p in three_layers]
  rows = analyses.concept_units(views, 'Car', top=2)
  got = [(r['layer'], r['depth'], r['rank'], r['unit']) for r in rows]
  # conv5: units 1 and 2 tie at 2/3 (the lower first); conv1: 3/17 then 1/19; conv3: 3/7, 1/3
  assert got == [('conv5', 0, 0, 1), ('conv5', 0, 1, 2), ('conv1', 1, 0, 2), ('conv1', 1, 1, 1),
                 ('conv3', 2, 0, 1), ('conv3', 2, 1, 0)]
  want = [iou(80, 100), iou(80, 100), iou(30, 100), iou(10, 100), iou(60, 100), iou(50, 100)]
  assert [r['iou'] for r in rows] == pytest.approx([float(w) for w in want], rel=1e-12)
  # the unit's own label: car where it beats tree's 1/4, else tree
  assert [r['unit_label'] for r in rows] == ['car', 'car', 'tree', 'tree', 'car', 'car']
  assert [r['detector'] for r in rows] == [True, True, True, True, True, True]
  assert all(r['concept'] == 'car' for r in rows)


def test_concept_names(layer):
  view = results.load(layer[0])
  assert analyses.find_label(view, 'street') == 5 == analyses.find_label(view, 'Street-s')
  with pytest.raises(common.VizError, match='never scored'):
    analyses.find_label(view, 'ghost')
  with pytest.raises(common.VizError, match=r"unknown concept 'cra'.*car"):
    analyses.find_label(view, 'cra')


def test_filtering_effect_planted(three_layers, tmp_path):
  views = [results.load(p) for p in three_layers]
  rows = analyses.filtering_effect(views, 'car', top=1)
  # outside = 1 - I / A over the images where objects are labelled (A = act_paper = 100);
  # outside_all over every image (act_pixels): 125, 400, 200 per layer
  assert [(r['layer'], r['unit'], r['activated'], r['inside']) for r in rows] == [
      ('conv5', 1, 100, 80), ('conv1', 2, 100, 30), ('conv3', 1, 100, 60)]
  assert [r['outside'] for r in rows] == pytest.approx([0.2, 0.7, 0.4], rel=1e-12)
  assert [r['outside_all'] for r in rows] == pytest.approx(
      [1 - 80 / 125, 1 - 30 / 400, 1 - 60 / 200], rel=1e-12)
  # the IoU the dissection reports uses the same pixels: I / (A + L - I)
  for r in rows:
    assert r['iou'] == pytest.approx(r['inside'] / (r['activated'] + 100 - r['inside']))
  # lite: the denominator (and so the image set) is act_lite's; a unit that never fires: nan
  inter = np.zeros((2, len(NAMES)), np.int64)
  inter[0, 2] = 30
  paper = np.array([[0, 90, 0, 0], [0, 0, 0, 0]])
  lite = np.array([[0, 60, 0, 0], [0, 0, 0, 0]])
  view = results.load(write_folder(tmp_path / 'l' / 'x', inter, paper, act_lite=lite,
                                   act_pixels=[150, 0], denominator='lite'))
  rows = analyses.filtering_effect([view], 'car', top=2)
  assert rows[0]['activated'] == 60 and rows[0]['outside'] == pytest.approx(0.5)
  assert rows[0]['outside_all'] == pytest.approx(0.8)
  assert np.isnan(rows[1]['outside']) and np.isnan(rows[1]['outside_all'])


# --- parts: a hand-written Broden set with rectangles of known area ----------------------------
PART_CATS = ['object', 'part', 'scene']
PART_LABELS = {1: ('car', 'object'), 2: ('house', 'object'), 3: ('sky', 'object'),
               4: ('wheel', 'part'), 5: ('roof', 'part'), 6: ('door', 'part'),
               7: ('street-s', 'scene')}


def _rect(mask, label, rows, cols):
  mask[rows[0]:rows[1], cols[0]:cols[1]] = label


def _part_images():
  """Image 0: a car (wheels, a door drawn in both part layers) and a house (roof) side by side.
  Image 1: a house (roof, door), sky, and a stray wheel pixel on no object. Image 2: scene only."""
  img = np.zeros((40, 40, 3), np.uint8)
  obj0, p00, p01 = (np.zeros((20, 20), np.int32) for _ in range(3))
  _rect(obj0, 1, (0, 6), (0, 10))                  # car: 60 px
  _rect(p00, 4, (4, 6), (1, 3)); _rect(p00, 4, (4, 6), (6, 8))      # wheel: 8 px on the car
  _rect(p01, 6, (1, 4), (3, 6))                    # door: 9 px on the car (layer 2)...
  _rect(p00, 6, (1, 3), (3, 6))                    # ...6 of them again in layer 1: a set, 9 px
  _rect(obj0, 2, (10, 20), (10, 20))               # house: 100 px
  _rect(p01, 5, (10, 13), (10, 20))                # roof: 30 px on the house
  obj1, p10 = np.zeros((20, 20), np.int32), np.zeros((20, 20), np.int32)
  _rect(obj1, 2, (0, 10), (0, 10))                 # house
  _rect(p10, 5, (0, 2), (0, 10))                   # roof: 20 px
  _rect(p10, 6, (6, 10), (4, 6))                   # door: 8 px
  _rect(obj1, 3, (12, 20), (0, 20))                # sky: no parts
  p10[19, 19] = 4                                  # a stray wheel pixel...
  obj1[19, 19] = 0                                 # ...on no object
  return [{'image': img, 'masks': {'object': [obj0], 'part': [p00, p01]}},
          {'image': img, 'masks': {'object': [obj1], 'part': [p10]},
           'image_labels': {'scene': [7]}},
          {'image': img, 'masks': {}, 'image_labels': {'scene': [7]}, 'mask_size': (20, 20)}]


# (object, part) -> (co-occurring pixels, images); car & roof share image 0 but no pixel
PLANTED = {('car', 'door'): (9, 1), ('car', 'wheel'): (8, 1), ('house', 'roof'): (50, 2),
           ('house', 'door'): (8, 1)}


def test_cooccurrence_planted(broden_factory):
  ds = broden.open_broden(broden_factory(PART_CATS, PART_LABELS, _part_images()))
  co = analyses.cooccurrence(ds, workers=2)
  names = ds.label_names
  found = {(names[co.objects[o]], names[co.parts[p]]): (int(co.pixels[o, p]), int(co.images[o, p]))
           for o, p in zip(*np.nonzero(co.pixels))}
  assert found == PLANTED
  assert (co.images > 0).sum() == len(PLANTED) and co.num_images == 3
  part_pixels = dict(zip((names[p] for p in co.parts), co.part_pixels.tolist()))
  assert part_pixels == {'wheel': 9, 'roof': 50, 'door': 17}


def test_part_detectors_planted(broden_factory, tmp_path):
  ds = broden.open_broden(broden_factory(PART_CATS, PART_LABELS, _part_images()))
  names, cats = list(ds.label_names), list(ds.categories)
  n = len(names)
  cat = {name: cats.index(c) for name, c in PART_LABELS.values()}
  number = {name: i for i, name in enumerate(names)}
  assert [cat[names[i]] for i in range(1, n)] == ds.primary[1:].tolist()

  def folder(name, planted, k):
    inter = np.zeros((k, n), np.int64)
    for label, unit, i in planted:
      inter[unit, number[label]] = i
    return write_folder(tmp_path / 'run' / name, inter, np.full((k, len(cats)), 100),
                        names=np.array(names), primary=ds.primary, cats=cats)
  # wheel: best in conv5 unit 2 (70); roof: conv3 unit 0 (40); door: 30 in both (conv3 wins)
  conv3 = folder('conv3', [('roof', 0, 40), ('wheel', 1, 20), ('door', 3, 30)], 4)
  conv5 = folder('conv5', [('wheel', 2, 70), ('roof', 0, 10), ('door', 1, 30)], 3)
  views = [results.load(conv3), results.load(conv5)]
  rows = analyses.part_detectors(views, analyses.cooccurrence(ds))
  got = [(r['object'], r['part'], r['pixels'], r['images'], r['layer'], r['unit']) for r in rows]
  assert got == [('car', 'door', 9, 1, 'conv3', 3), ('car', 'wheel', 8, 1, 'conv5', 2),
                 ('house', 'roof', 50, 2, 'conv3', 0), ('house', 'door', 8, 1, 'conv3', 3)]
  assert [r['iou'] for r in rows] == pytest.approx(
      [float(iou(30, 100)), float(iou(70, 100)), float(iou(40, 100)), float(iou(30, 100))],
      rel=1e-12)
  assert [r['part_share'] for r in rows] == pytest.approx([9 / 17, 8 / 9, 1.0, 8 / 17])
  only = analyses.part_detectors(views, analyses.cooccurrence(ds), top=1, concept='house')
  assert [(r['object'], r['part']) for r in only] == [('house', 'roof')]
  doors = analyses.part_detectors(views, analyses.cooccurrence(ds), concept='door')
  assert [(r['object'], r['part']) for r in doors] == [('car', 'door'), ('house', 'door')]
  other = results.load(write_folder(tmp_path / 'other' / 'conv5', np.zeros((1, len(NAMES))),
                                    np.full((1, 4), 100)))
  with pytest.raises(common.VizError, match='another probe set'):
    analyses.part_detectors([other], analyses.cooccurrence(ds))


def test_table_and_cli_errors(three_layers):
  rows = analyses.filtering_effect([results.load(p) for p in three_layers], 'car', top=1)
  lines, arrays = analyses.table(rows, ['layer', 'unit', 'outside'])
  assert lines == ['layer,unit,outside', 'conv5,1,0.2', 'conv1,2,0.7', 'conv3,1,0.4']
  assert arrays['layer'].tolist() == ['conv5', 'conv1', 'conv3']
  assert arrays['outside'].dtype == np.float64 and arrays['unit'].dtype.kind == 'i'
  ctx = _context([str(p) for p in three_layers], unit=None, concept=None)
  with pytest.raises(common.VizError, match='give --concept'):
    analyses.main_filtering(ctx)
  with pytest.raises(common.VizError, match=r'unit 3 is out of range for conv5 \(3 units: 0..2\)'):
    analyses.main_concepts(_context([str(p) for p in three_layers], unit=3))
  out = analyses.main_concepts(_context([str(p) for p in three_layers], unit=None))
  # no --unit: each layer's best detector (conv5: units 1 and 2 tie on car, the lower)
  assert sorted(set(zip(out.arrays['layer'].tolist(), out.arrays['unit'].tolist()))) == [
      ('conv1', 0), ('conv3', 1), ('conv5', 1)]


def _context(paths, unit=None, concept=None, top=5):
  return common.Context(net=None, model='', weights='', layer=None, unit=unit, target=None,
                        images=np.zeros((0, 8, 8, 3), np.uint8), image_names=[], results=paths,
                        options=common.Options(top=top, concept=concept))


# --- one real tiny dissection, against the definition ---------------------------------------------
def _masks_by_hand(acts, thresholds, image_hw, mask_hw, rf):
  """(h, w, K) -> bool (K, sh*sw): tests/by_hand.mask_by_hand for every unit at once (a mask
  pixel is on iff its bilinear value > T_k and a source it reads with non-zero weight is > T_k)."""
  a = np.asarray(acts, np.float64)
  t = np.asarray(thresholds, np.float32).astype(np.float64)
  y0, y1, fy = axis_sources(mask_hw[0], image_hw[0], a.shape[0], *rf)
  x0, x1, fx = axis_sources(mask_hw[1], image_hw[1], a.shape[1], *rf)
  value = np.zeros(mask_hw + (a.shape[2],))
  above = np.zeros(value.shape, bool)
  for ys, wy in ((y0, 1 - fy), (y1, fy)):
    for xs, wx in ((x0, 1 - fx), (x1, fx)):
      weight = (wy[:, None] * wx[None, :])[..., None]
      source = a[ys[:, None], xs[None, :]]
      value += weight * source
      above |= (weight > 0) & (source > t)
  return ((value > t) & above).reshape(-1, a.shape[2]).T


@pytest.fixture(scope='module')
def real_run(tmp_path_factory):
  """The shared alexnet conv3/conv5 dissection, and its counts recomputed by the definition:
  paper denominator = activated pixels on images carrying a label of the concept's primary
  category; L_c a set over the image's mask layers."""
  from ndjax import api
  from ndjax.activations import make_forward
  run = dissected_runs(tmp_path_factory)[1]
  views = results.find(run)
  ds = broden.open_broden(views[0].resolved['dataset'])
  model = api.load_model('alexnet', 'random', 1).module
  brute = {}
  for view in views:
    forward = make_forward(model, [view.layer])
    rf = tuple(view.results['upsample']['rf_geometry'])
    k, n, c = len(view.thresholds), ds.num_labels, len(ds.categories)
    inter, act, act_all = np.zeros((k, n), np.int64), np.zeros((k, c), np.int64), np.zeros(k)
    truth = np.zeros(n, np.int64)
    for start in range(0, len(ds.records), 8):        # the dissection's batches (--batch_size=8)
      idx = range(start, min(start + 8, len(ds.records)))
      acts = np.asarray(forward(np.stack([ds.load_image(i) for i in idx]))[view.layer])
      for j, i in enumerate(idx):
        rec = ds.records[i]
        masks = _masks_by_hand(acts[j], view.thresholds, (rec.ih, rec.iw), (rec.sh, rec.sw), rf)
        layers, image_level = ds.load_labels(i)
        present = [lab for lab in np.union1d(np.unique(layers), image_level) if lab > 0]
        sets = np.stack([(layers == lab).any(axis=0).ravel() | (lab in image_level)
                         for lab in present], axis=1)
        inter[:, present] += masks.astype(np.int64) @ sets
        truth[present] += sets.sum(axis=0)
        for cat in {int(ds.primary[lab]) for lab in present}:
          act[:, cat] += masks.sum(axis=1)
        act_all += masks.sum(axis=1)
    with np.errstate(invalid='ignore', divide='ignore'):
      ious = inter / (act[:, np.maximum(ds.primary, 0)] + truth - inter)
    brute[view.folder] = dict(inter=inter, act=act, act_all=act_all, truth=truth,
                              iou=np.where(ds.primary >= 0, np.nan_to_num(ious), 0.0))
  return views, ds, brute


def test_real_run_against_definition(real_run):
  views, ds, brute = real_run
  names = ds.label_names
  # a concept with pixels in several images: the object with the most labelled pixels
  objects = np.flatnonzero(ds.primary == ds.categories.index('object'))
  concept = names[objects[np.argmax(brute[views[0].folder]['truth'][objects])]]
  c = names.index(concept)
  rows = analyses.concept_units(views, concept, top=3)
  for view in views:
    ref = brute[view.folder]
    mine = [r for r in rows if r['layer'] == view.folder]
    order = np.argsort(-ref['iou'][:, c], kind='stable')[:3]
    assert [r['unit'] for r in mine] == order.tolist()
    np.testing.assert_allclose([r['iou'] for r in mine], ref['iou'][order, c], rtol=1e-12)
    # filtering: integers equal the definition's, on the images where objects are labelled
    cat = int(ds.primary[c])
    for r in analyses.filtering_effect([view], concept, top=3):
      k = r['unit']
      assert (r['inside'], r['activated']) == (ref['inter'][k, c], ref['act'][k, cat])
      assert r['activated_all'] == ref['act_all'][k]
      assert r['outside'] == pytest.approx(1 - ref['inter'][k, c] / ref['act'][k, cat])
    # the best detector's concept distribution over every label
    unit = analyses.best_unit(view)
    got = analyses.unit_concepts(view, unit, top=5)
    order = np.argsort(-ref['iou'][unit], kind='stable')[:len(got)]
    assert [r['label'] for r in got] == [names[j] for j in order]
    np.testing.assert_allclose([r['iou'] for r in got], ref['iou'][unit, order], rtol=1e-12)
  print(f'\n{concept}: ' + ', '.join(f'{r["layer"]} u{r["unit"]} IoU {r["iou"]:.4f}'
                                     for r in rows if r['rank'] == 0))


def test_real_run_parts(real_run):
  """Co-occurrence equals one label pair at a time over the masks, and pairs each object only
  with its own parts (the procedural set's PARTS table: every part pixel lies on its object)."""
  from ndjax.probes import synthetic
  views, ds, _ = real_run
  co = analyses.cooccurrence(analyses.open_probe(views[0]))
  names = ds.label_names
  ref = np.zeros_like(co.pixels)
  same_image = set()
  for i in range(len(ds.records)):
    layers, image_level = ds.load_labels(i)
    has = lambda lab: (layers == lab).any(axis=0) | (lab in image_level)
    for a, o in enumerate(co.objects):
      for b, p in enumerate(co.parts):
        ref[a, b] += int((has(o) & has(p)).sum())
        if has(o).any() and has(p).any():
          same_image.add((names[o], names[p]))
  np.testing.assert_array_equal(co.pixels, ref)
  pairs = {(names[co.objects[a]], names[co.parts[b]]) for a, b in zip(*np.nonzero(co.pixels))}
  # a label spanning two categories is judged in its primary one: 'fabric' (a material the set
  # also lists as an object, primary object here) lies under the torsos it dresses
  assert pairs and all(p in synthetic.PARTS[o] or o in synthetic.MATERIALS for o, p in pairs)
  assert sum(o not in synthetic.MATERIALS for o, _ in pairs) >= 10, pairs
  # the same-image reading would pair parts with objects they do not belong to
  assert any(p not in synthetic.PARTS.get(o, ()) for o, p in same_image)
  rows = analyses.part_detectors(views, co)
  assert {(r['object'], r['part']) for r in rows} == pairs
  for r in rows:
    p = names.index(r['part'])
    best = max(float(v.iou_matrix(v.denominator)[:, p].max()) for v in views)
    assert r['iou'] == best


def test_cli_methods(real_run, tmp_path):
  views, ds, _ = real_run
  folders = [str(v.path) for v in views]
  out = tmp_path / 'viz'
  objects = np.flatnonzero(ds.primary == ds.categories.index('object'))
  concept = ds.label_names[objects[0]]
  for method, extra in (('concepts', ['--unit=3']), ('concept_units', [f'--concept={concept}']),
                        ('parts', []), ('filtering', [f'--concept={concept}', '--top=2'])):
    r = ndjax_module('ndjax.viz', method, f'--results={",".join(folders)}', f'--outdir={out}',
                     *extra)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(('run,', 'object,'))
    png, npz, csv = (pathlib.Path(line) for line in lines[-3:])
    assert (png.suffix, npz.suffix, csv.suffix) == ('.png', '.npz', '.csv')
    assert png.name.startswith(method + '_') and png.is_file() and png.stat().st_size > 5000
    assert csv.read_text().splitlines() == lines[:-3]      # the table, as printed
    with np.load(npz) as z:
      assert len(z[z.files[0]]) == len(lines) - 4          # header and the three paths
  r = ndjax_module('ndjax.viz', 'filtering', f'--results={folders[0]}', f'--outdir={out}',
                   '--concept=nosuchthing')
  assert r.returncode != 0 and 'unknown concept' in r.stderr and 'Traceback' not in r.stderr
