"""Label sets and compositional formulas against brute force over explicit pixel masks.

The probe set is written by hand (conftest.make_broden) at mask resolution, the layer is a 1x1 conv
+ ReLU on it (its map IS the mask grid: `rf` upsampling is the identity there), so every unit mask
is `act > T` with T = numpy.quantile(act, 1 - tau), and every label mask is known from the arrays
we wrote. Formulas are evaluated on those pixels with NumPy, never through ndjax's label sets.
"""
import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ndjax import activations, dissect, formulas, iou
from ndjax.data import broden
from ndjax.models import convstack

CATS = ['color', 'object', 'part', 'material', 'scene', 'texture']
LABELS = {1: ('green-c', 'color'), 2: ('blue-c', 'color'), 3: ('ball', 'object'),
          4: ('car', 'object'), 5: ('wheel', 'part'), 6: ('metal', 'material'),
          7: ('beach-s', 'scene'), 8: ('street-s', 'scene')}
SIZE = 32


def _images(rng, n=16):
  """Balls: red, with a green patch labelled green-c (so 'red' = ball AND NOT green-c); cars: blue,
  labelled car, blue-c and metal, with a wheel row; a scene label per image."""
  items = []
  for _ in range(n):
    img = rng.integers(100, 156, (SIZE, SIZE, 3)).astype(np.uint8)      # grey-ish noise
    colour, obj, part, mat = (np.zeros((SIZE, SIZE), np.int32) for _ in range(4))
    for _ in range(rng.integers(1, 4)):
      y, x = rng.integers(0, SIZE - 8, 2)
      s = int(rng.integers(3, 8))
      if rng.random() < 0.6:
        img[y:y + s, x:x + s] = (220, 20, 10)
        obj[y:y + s, x:x + s] = 3
        for lay in (colour, part, mat):                # a ball painted over anything
          lay[y:y + s, x:x + s] = 0
        g = int(rng.integers(1, s))
        img[y:y + g, x:x + s] = (15, 210, 20)
        colour[y:y + g, x:x + s] = 1
      else:
        img[y:y + s, x:x + s] = (10, 25, 230)
        obj[y:y + s, x:x + s] = 4
        colour[y:y + s, x:x + s] = 2
        mat[y:y + s, x:x + s] = 6
        part[y:y + s, x:x + s] = 0
        part[y + s - 1, x:x + s] = 5
    items.append({'image': img, 'masks': {'color': [colour], 'object': [obj], 'part': [part],
                                          'material': [mat]},
                  'image_labels': {'scene': [int(rng.choice([7, 8]))]}})
  return items


def _model(units: int, seed: int = 0):
  """1x1 conv + ReLU; unit 0 = R - G - B (fires on red), unit 1 = B - R - G, the rest random."""
  ops = (convstack.Op('conv', units, 1, 1, 0), convstack.Op('relu'))
  model = convstack.ConvStack(ops, preprocessing='none', rngs=nnx.Rngs(0))
  w = np.random.default_rng(seed).standard_normal((3, units)).astype(np.float32)
  w[:, 0] = (1, -1, -1)
  w[:, 1] = (-1, -1, 1)
  model.features_0.kernel[...] = jnp.asarray(w[None, None])
  model.features_0.bias[...] = jnp.asarray(
      np.random.default_rng(seed + 1).normal(0, 20, units).astype(np.float32) * (np.arange(units) > 1))
  return model


@pytest.fixture(scope='module')
def probe(tmp_path_factory):
  from tests.conftest import make_broden
  items = _images(np.random.default_rng(0))
  ds = broden.open_broden(make_broden(tmp_path_factory.mktemp('formulas'), CATS, LABELS, items))
  # label masks by hand, from the arrays written: (labels, images, pixels)
  masks = np.zeros((max(LABELS) + 1, len(items), SIZE * SIZE), bool)
  for i, it in enumerate(items):
    for layers in it['masks'].values():
      for lay in layers:
        for n in np.unique(lay[lay > 0]):
          masks[n, i] |= (lay == n).ravel()
    for nums in it['image_labels'].values():
      for n in nums:
        masks[n, i] = True
  return ds, masks


def _dissect(ds, model, tau):
  cfg = dissect.DissectConfig(layers=('features.1',), tau=tau, batch_size=4, progress=False,
                              topk=0, label_sets=True)
  return dissect.dissect(model, ds, cfg).layers['features.1']


def _unit_masks(ds, model, tau):
  """(K, images, pixels) act > numpy.quantile(act, 1 - tau), from the model's forward."""
  forward = activations.make_forward(model, ['features.1'])
  acts = np.concatenate([np.asarray(forward(np.stack([ds.load_image(i) for i in range(s, min(s + 4, len(ds.records)))]))['features.1'])
                         for s in range(0, len(ds.records), 4)])
  t = np.quantile(acts.reshape(-1, acts.shape[-1]), 1 - tau, axis=0)
  return np.moveaxis(acts > t, -1, 0).reshape(acts.shape[-1], len(acts), -1), t


def _brute_iou(unit, formula_mask):
  inter = np.sum(unit & formula_mask)
  union = np.sum(unit | formula_mask)
  return inter / union if union else 0.0


def _formula_mask(masks, f: formulas.Formula):
  m = masks[f.labels[0]].copy()
  for op, l in zip(f.ops, f.labels[1:]):
    m = m | masks[l] if op == formulas.OR else (m & masks[l] if op == formulas.AND else m & ~masks[l])
  return m


def test_label_sets_are_the_pixels_label_sets(probe):
  ds, masks = probe
  model = _model(6)
  res = _dissect(ds, model, 0.05)
  units, thresholds = _unit_masks(ds, model, 0.05)
  np.testing.assert_allclose(res.thresholds, thresholds, rtol=0, atol=0)
  # by hand: each pixel's tuple of labels, counted
  labels = np.arange(masks.shape[0])
  keys = [tuple(labels[masks[:, i, x]]) for i in range(masks.shape[1]) for x in range(masks.shape[2])]
  flat_units = units.reshape(len(units), -1)
  want_px, want_unit = {}, {}
  for j, key in enumerate(keys):
    want_px[key] = want_px.get(key, 0) + 1
    want_unit[key] = want_unit.get(key, 0) + flat_units[:, j].astype(np.int64)
  got = {tuple(int(l) for l in row if l >= 0): s for s, row in enumerate(res.sets.members)}
  assert set(got) == set(want_px)
  for key, s in got.items():
    assert res.sets.pixels[s] == want_px[key]
    np.testing.assert_array_equal(res.sets.unit_pixels[:, s], want_unit[key])
  # and the sets sum back to the dissection's own counts
  z = res.sets.membership(ds.num_labels).astype(np.int64)
  np.testing.assert_array_equal(res.sets.unit_pixels @ z, res.counts.inter)
  np.testing.assert_array_equal(res.sets.unit_pixels.sum(1), res.counts.act_pixels)


def test_formulas_of_length_two_against_brute_force(probe):
  ds, masks = probe
  model = _model(6)
  tau = 0.05
  res = _dissect(ds, model, tau)
  units, _ = _unit_masks(ds, model, tau)
  present = [l for l in range(1, masks.shape[0]) if masks[l].any()]
  singles = [formulas.Formula((l,)) for l in present]
  got = formulas.extension_ious(res.sets, ds.num_labels, range(len(units)), singles)
  # the 'dataset' denominator is the length-1 formula IoU
  scores, _ = iou.iou(res.counts, ds.primary, 'dataset')
  best_brute = []
  for k, unit in enumerate(units):
    everything = {}
    for a in present:
      single = _brute_iou(unit, masks[a])
      assert scores[k, a] == pytest.approx(single, abs=1e-15)
      everything[formulas.Formula((a,))] = single
    for (ia, a), b, op in itertools.product(enumerate(present), present, range(3)):
      if a == b:
        continue
      f = formulas.Formula((a,)).extend(op, b)
      want = _brute_iou(unit, _formula_mask(masks, f))
      assert got[k, ia, b, op] == pytest.approx(want, abs=1e-15), (k, f)
      everything[f] = want
    best_brute.append(max(everything.values()))
    # a beam as wide as the labels is exhaustive at length 2: the same best formula
    ex = formulas.explain(res.sets, ds.num_labels, beam_size=len(present), max_length=2,
                          units=[k])[0]
    assert ex.iou == pytest.approx(best_brute[-1], abs=1e-15)
    if ex.formula is None:                            # the unit's mask meets no label
      assert best_brute[-1] == 0
    else:
      assert _brute_iou(unit, _formula_mask(masks, ex.formula)) == pytest.approx(ex.iou, abs=1e-15)
  assert sorted(best_brute)[-2] > 0.2                 # the probe is not degenerate


def test_planted_and_not_is_found(probe):
  """Unit 0 fires on red pixels: balls minus their green patches, and no single label says so."""
  ds, masks = probe
  res = _dissect(ds, _model(4), 0.3)
  assert res.thresholds[0] == 0                       # red covers < 30 % of the pixels
  ex = formulas.explain(res.sets, ds.num_labels)[0]
  names = ds.label_names
  assert ex.formula.to_str(names) == 'ball AND NOT green-c'
  assert ex.iou == 1.0
  assert ds.label_names[ex.single.labels[0]] == 'ball' and ex.single_iou < 0.9
  # with a complexity penalty the single label can win instead
  plain = formulas.explain(res.sets, ds.num_labels, penalty=ex.single_iou / 1.01)[0]
  assert plain.formula == ex.single


def test_bad_search_settings_are_one_line(probe):
  ds, _ = probe
  res = _dissect(ds, _model(2), 0.3)
  for kwargs in (dict(beam_size=0), dict(max_length=0), dict(penalty=0.0), dict(penalty=1.5)):
    with pytest.raises(formulas.FormulaError):
      formulas.explain(res.sets, ds.num_labels, **kwargs)


@pytest.mark.slow
def test_compositional_experiment_end_to_end(tmp_path):
  """The experiment's command dissects with label sets and writes formulas.csv beside tally.csv:
  every formula scores at least its unit's best single label, whose IoU is the dissection's own
  under the 'dataset' denominator (recomputed here from counts.npz)."""
  import csv
  import subprocess
  import sys
  from ndjax import results
  out = tmp_path / 'comp'
  cmd = [sys.executable, '-m', 'ndjax.experiments.compositional', '--network=alexnet:random',
         '--layer=conv5', '--probe=synthetic', '--images=40', f'--outdir={out}', '--noprogress']
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-2000:]
  folder = out / 'runs' / 'alexnet_random_s0' / 'conv5'
  rows = list(csv.DictReader(open(folder / 'formulas.csv')))
  assert len(rows) == 256
  single = results.load(folder).iou_matrix('dataset').max(axis=1)
  for r in rows:
    assert float(r['formula_iou']) >= float(r['single_iou'])
    assert float(r['single_iou']) == pytest.approx(single[int(r['unit']) - 1], abs=1e-12)
    assert int(r['length']) <= 3
  assert 'Formula: <b>' in (folder / 'report.html').read_text()
  assert (out / 'compositional.png').is_file()
  again = subprocess.run(cmd + ['--formula_categories=nope'], capture_output=True, text=True,
                         timeout=600)
  assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1, again.stderr
