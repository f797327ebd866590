"""The ablation experiment: a planted classifier whose class rests on one unit (ablating it flips
the prediction, ablating any other does not, and P(class) equals the closed-form head), the
bootstrap over source photos (not images), the hand-made class map against ImageNet and the
catalogue, the source photos recovered from a hand-made composite set (checked against the
pixels' colours), and one-line errors. The slow case runs the real MobileNetV2 and recomputes its
numbers through `edits.zero_units`."""
from __future__ import annotations

import csv
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import stats

from ndjax import api
from ndjax.data import broden
from ndjax.experiments import ablation, common
from ndjax.models import edits
from ndjax.probes import composite, composite_catalogue, synthetic
from ndjax.viz import common as viz
from tests.conftest import ndjax_module

IMAGENET_TXT = pathlib.Path(viz.__file__).with_name('imagenet_classes.txt')


# --- a planted classifier -------------------------------------------------------------------------
@pytest.fixture(scope='module')
def planted():
  """Random MobileNetV2 whose head reads one unit u of `features` for class C and nothing else:
  logit_C = w * mean(f_u), logit_D = 5 (a constant), every other class -50. With u, C wins on
  every image (w * mean f_u >= 10); with u zeroed, D wins; zeroing any other unit changes no
  logit."""
  model = api.build_model('mobilenet_v2', seed=3)
  images = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
  net = viz.Net.of(model)
  x = net.preprocess(jnp.asarray(images))
  pooled = np.asarray(net.apply(net.state, x, ('features',))['features']).mean(axis=(1, 2))
  u = int(np.argmax(pooled.min(axis=0)))          # the unit most surely on in every image
  assert pooled[:, u].min() > 0
  c, d = 805, 3
  kernel = np.zeros((pooled.shape[1], 1000), np.float32)
  kernel[u, c] = 10.0 / pooled[:, u].min()
  bias = np.full(1000, -50.0, np.float32)
  bias[c], bias[d] = 0.0, 5.0
  head = model.module.layer('classifier.1')
  head.kernel[...] = jnp.asarray(kernel)
  head.bias[...] = jnp.asarray(bias)
  return dict(net=viz.Net.of(model), images=images, u=u, c=c, d=d, kernel=kernel, bias=bias,
              pooled=pooled)


def test_ablating_the_planted_unit_flips_the_class_and_no_other_unit_does(planted):
  net, images, u, c = planted['net'], planted['images'], planted['u'], planted['c']
  k = planted['kernel'].shape[0]
  others = np.random.default_rng(1).choice(np.setdiff1d(np.arange(k), [u]), 12, replace=False)
  keeps = np.stack([np.ones(k, bool), ablation.keep_mask([u], k)]
                   + [ablation.keep_mask([v], k) for v in others]
                   + [~ablation.keep_mask([u], k)])           # every unit but u zeroed at once
  classes = np.full(len(images), c)
  p, correct = ablation.evaluate(net, 'features', images, classes, keeps, batch_size=8)
  assert correct[:, 0].all()
  assert not correct[:, 1].any()                  # the planted unit zeroed: the class flips
  assert correct[:, 2:].all()                     # any other unit, or all others: it stays
  # P(class) is the closed-form head on the pooled features with the masked units zeroed
  for j, keep in enumerate(keeps):
    logits = (planted['pooled'] * keep) @ planted['kernel'] + planted['bias']
    np.testing.assert_allclose(p[:, j], jax.nn.softmax(logits, axis=-1)[:, c], rtol=1e-4,
                               atol=1e-6)


def test_the_mask_edit_equals_edits_zero_units_through_the_hook(planted):
  """One compiled program serves every unit set by taking the set as a mask; it must be the
  arithmetic of edits.zero_units."""
  net, u = planted['net'], planted['u']
  x = net.preprocess(jnp.asarray(planted['images']))
  units = [u, 7, 100]
  ours, _ = ablation.evaluate(net, 'features', planted['images'], np.full(5, planted['d']),
                              ablation.keep_mask(units, planted['kernel'].shape[0])[None])
  logits = net.apply(net.state, x, logits=True, edits={'features': edits.zero_units(units)})
  expected = np.asarray(jax.nn.softmax(logits['logits'], axis=-1))[:, planted['d']]
  np.testing.assert_allclose(ours[:, 0], expected, rtol=1e-6)


def test_units_and_random_sets():
  best_label = np.array([3, 3, 5, 3, 7, 3])
  best_iou = np.array([0.2, 0.01, 0.3, 0.05, 0.02, 0.041])
  names = ['-', 'a', 'b', 'soccer_ball', 'c', 'lemon', 'd', 'e']
  concept = ablation.concept_units(best_label, best_iou, names, 'soccer_ball', 0.04)
  assert concept.tolist() == [0, 3, 5]            # unit 1's IoU is below the threshold
  assert ablation.random_pool(concept, best_iou, 0.04, 'non_concept').tolist() == [1, 2, 4]
  assert ablation.random_pool(concept, best_iou, 0.04, 'non_detector').tolist() == [1, 4]
  assert ablation.random_pool(concept, best_iou, 0.04, 'all').tolist() == list(range(6))
  sets = ablation.random_sets(np.random.default_rng(0), np.arange(10, 60), 7, 20)
  assert sets.shape == (20, 7)
  assert all(len(set(row)) == 7 and set(row) <= set(range(10, 60)) for row in sets)
  with pytest.raises(common.ExperimentError):
    ablation.random_sets(np.random.default_rng(0), np.arange(3), 4, 1)


def test_main_object_is_the_largest_region():
  layer = np.zeros((10, 10), np.int32)
  layer[:3] = 7                                   # 30 pixels
  layer[5:] = 4                                   # 50 pixels
  layer[3, :4] = 9
  assert ablation.main_object(layer) == (4, 0.5)
  layer[3:5] = 7                                  # now 7 and 4 tie at 50: the lower number
  assert ablation.main_object(layer) == (4, 0.5)
  assert ablation.main_object(np.zeros((4, 4), np.int32)) == (0, 0.0)


# --- the bootstrap over source photos -------------------------------------------------------------
def test_identical_images_within_a_photo_give_the_interval_of_one_image_per_photo():
  rng = np.random.default_rng(0)
  per_photo = rng.normal(size=(6, 3))             # 6 photos x 3 random draws
  sizes = [1, 9, 2, 5, 1, 14]
  expanded = np.repeat(per_photo, sizes, axis=0)
  groups = np.repeat([f'photo{g}' for g in range(6)], sizes)
  for cols in (slice(0, 1), slice(0, 3)):
    one = ablation.bootstrap_ci(per_photo[:, cols], list(range(6)), 4000, seed=5)
    many = ablation.bootstrap_ci(expanded[:, cols], groups, 4000, seed=5)
    assert one[:3] == pytest.approx(many[:3], rel=1e-12) and one[3] == many[3]
    assert one[0] == pytest.approx(per_photo[:, cols].mean())       # not the image mean
  assert one[3] == 'photos+draws'
  # resampling images instead would weigh the 14-image photo 14 times: another interval
  flat = expanded[:, 0]
  picks = np.random.default_rng(5).integers(len(flat), size=(4000, len(flat)))
  by_image = np.percentile(flat[picks].mean(axis=1), [2.5, 97.5])
  by_photo = ablation.bootstrap_ci(expanded[:, :1], groups, 4000, seed=5)
  assert not np.allclose(by_image, by_photo[1:3], atol=0.05)


def test_the_photo_bootstrap_agrees_with_scipy_on_photo_means():
  rng = np.random.default_rng(1)
  values = rng.gamma(2.0, size=40)
  groups = rng.integers(0, 8, size=40)
  means = np.array([values[groups == g].mean() for g in dict.fromkeys(groups)])
  est, low, high, over = ablation.bootstrap_ci(values, groups, 20000, seed=0)
  ref = stats.bootstrap((means,), np.mean, n_resamples=20000, method='percentile',
                        random_state=np.random.default_rng(9)).confidence_interval
  assert over == 'photos'
  assert est == pytest.approx(means.mean())
  spread = ref.high - ref.low
  assert abs(low - ref.low) < 0.05 * spread and abs(high - ref.high) < 0.05 * spread


def test_one_photo_leaves_the_draws_alone_or_no_interval():
  est, low, high, over = ablation.bootstrap_ci(np.array([0.3, 0.5, 0.1]), ['a'] * 3, 500, 0)
  assert est == pytest.approx(0.3) and np.isnan(low) and np.isnan(high)
  assert over == 'none (1 photo)'
  draws = np.random.default_rng(2).normal(size=(4, 12))          # 4 images of one photo
  est, low, high, over = ablation.bootstrap_ci(draws, ['a'] * 4, 20000, 0)
  ref = stats.bootstrap((draws.mean(axis=0),), np.mean, n_resamples=20000, method='percentile',
                        random_state=np.random.default_rng(3)).confidence_interval
  assert over == 'draws (1 photo)'
  spread = ref.high - ref.low
  assert abs(low - ref.low) < 0.05 * spread and abs(high - ref.high) < 0.05 * spread


def test_pooled_interval_resamples_classes():
  """With one photo and one draw per class the two-stage bootstrap is a bootstrap over classes."""
  effects = np.random.default_rng(4).normal(size=15)
  est, low, high = ablation.pooled_ci([np.array([[e]]) for e in effects], 20000, 0)
  ref = stats.bootstrap((effects,), np.mean, n_resamples=20000, method='percentile',
                        random_state=np.random.default_rng(5)).confidence_interval
  assert est == pytest.approx(effects.mean())
  spread = ref.high - ref.low
  assert abs(low - ref.low) < 0.05 * spread and abs(high - ref.high) < 0.05 * spread
  # identical classes with identical photos: no spread at all
  same = ablation.pooled_ci([np.full((2, 3), -0.2)] * 5, 500, 0)
  assert same == pytest.approx((-0.2, -0.2, -0.2))


# --- the class map --------------------------------------------------------------------------------
def test_class_map_names_imagenet_classes_and_catalogue_stamps():
  names = [line for line in IMAGENET_TXT.read_text().splitlines() if line]
  assert len(names) == 1000
  index = ablation.check_class_map(ablation.CLASS_MAP, viz.imagenet_classes(),
                                   composite_catalogue.STAMPS)
  labels = set(composite_catalogue.STAMPS.values())
  for m in ablation.CLASS_MAP:
    assert names.index(m.imagenet) == index[m.imagenet]
    assert m.label in labels
    for stamp in m.stamps:
      assert composite_catalogue.STAMPS[stamp] == m.label
  # torchvision's indices of a few, known independently of the file
  known = {'soccer ball': 805, 'tennis ball': 852, 'lemon': 951, 'broccoli': 937,
           'bell pepper': 945, 'binoculars': 447, 'pitcher': 725, 'koala': 105, 'teapot': 849}
  assert {k: index[k] for k in known} == known
  stamps = [s for m in ablation.CLASS_MAP for s in m.stamps]
  assert len(stamps) == len(set(stamps))


@pytest.mark.parametrize('entry, message', [
    (ablation.ClassMap('kettle', 'kettle', ('household/kettle.png',)), 'not an ImageNet class'),
    (ablation.ClassMap('teapot', 'teapot', ('household/teapot2.png',)), 'not a stamp'),
    (ablation.ClassMap('teapot', 'kettle', ('household/dishes/teapot.png',)), 'carries the label'),
    (ablation.ClassMap('teapot', 'teapot', ()), 'lists no stamp'),
])
def test_class_map_faults_are_one_line(entry, message):
  with pytest.raises(common.ExperimentError, match=message) as e:
    ablation.check_class_map((entry,), viz.imagenet_classes(), composite_catalogue.STAMPS)
  assert '\n' not in str(e.value)
  twice = (ablation.ClassMap('lemon', 'lemon', ('food/fruit/lemon.png',)),) * 2
  with pytest.raises(common.ExperimentError, match='mapped twice'):
    ablation.check_class_map(twice, viz.imagenet_classes(), composite_catalogue.STAMPS)


# --- source photos from a hand-made composite set -------------------------------------------------
COLOURS = {'red.png': (250, 0, 0), 'darkred.png': (110, 0, 0), 'blue.png': (0, 0, 250),
           'green.png': (0, 200, 0)}


@pytest.fixture(scope='module')
def composite_set(tmp_path_factory):
  """40 composites of flat-coloured cut-outs: two photos of 'disc' (red, dark red), one 'ring'
  (blue) and one 'tri' (green), on one grey tile and a photo with a 'car' mask."""
  root = tmp_path_factory.mktemp('ablation_ingredients')
  stamps = []
  for name, label in (('red.png', 'disc'), ('darkred.png', 'disc'), ('blue.png', 'ring'),
                      ('green.png', 'tri')):
    canvas = Image.new('RGBA', (60, 60), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).ellipse((2, 2, 57, 57), fill=COLOURS[name] + (255,))
    canvas.save(root / name)
    stamps.append(composite.Stamp(str(root / name), label))
  tile = root / 'grey.png'
  Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tile)
  photo = np.full((80, 100, 3), 200, np.uint8)
  mask = np.zeros((80, 100), np.uint8)
  mask[40:70, 10:60] = 1
  Image.fromarray(photo).save(root / 'photo.png')
  im = Image.fromarray(mask, 'P')
  im.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
  im.save(root / 'photo_mask.png')
  catalogue = composite.Catalogue(
      tuple(stamps), (composite.Tile(str(tile), 'stone', 'flat'),),
      (composite.Photo(str(root / 'photo.png'), str(root / 'photo_mask.png'), 'png',
                       (None, 'car'), 'street-s'),))
  out = tmp_path_factory.mktemp('ablation_probe') / 'composite_v1_n40_s0'
  composite.generate(out, catalogue, 40, seed=0, progress=False, workers=1, min_images=1,
                     contact_sheet=False)
  return catalogue, root, out


HAND_MAP = (ablation.ClassMap('A', 'disc', ('red.png', 'darkred.png')),
            ablation.ClassMap('B', 'ring', ('blue.png',)))


def test_source_photos_match_the_pixels(composite_set):
  catalogue, root, out = composite_set
  ds = broden.open_broden(out)
  selected, skipped = ablation.select_images(ds, HAND_MAP, 0.0, catalogue=catalogue,
                                             stamps_root=root)
  assert {s.stamp for s in selected} == {'red.png', 'darkred.png', 'blue.png'}
  assert len(selected) + sum(v for k, v in skipped.items() if k != 'candidates') == \
      skipped['candidates']
  at = synthetic.sample_points(224, 112)
  names = ds.label_names
  with open(out / 'index.csv', newline='') as f:
    object_cells = [row['object'] for row in csv.DictReader(f)]
  for s in selected:
    rec = ds.records[s.index]
    layer = ds.load_mask(object_cells[s.index].split(';')[0], rec)
    values, counts = np.unique(layer[layer > 0], return_counts=True)
    main = values[np.argmax(counts)]
    assert names[main] == {'A': 'disc', 'B': 'ring'}[s.imagenet]
    pixels = ds.load_image(s.index)[at][:, at][layer == main]
    colour = np.median(pixels, axis=0)              # a JPEG: the stamp's colour, roughly
    nearest = min(COLOURS, key=lambda n: np.abs(np.array(COLOURS[n]) - colour).sum())
    assert nearest == s.stamp, (s, colour)


def test_a_set_the_renderer_did_not_make_is_refused(composite_set, tmp_path):
  catalogue, root, out = composite_set
  wrong = tmp_path / 'composite_v1_n40_s1'           # the same files under another seed's name
  os.symlink(out, wrong)
  with pytest.raises(common.ExperimentError, match='cannot be recovered') as e:
    ablation.select_images(broden.open_broden(wrong), HAND_MAP, 0.0, catalogue=catalogue,
                           stamps_root=root)
  assert '\n' not in str(e.value)
  other = tmp_path / 'broden1_224'
  os.symlink(out, other)
  with pytest.raises(common.ExperimentError, match='not the built-in composite'):
    ablation.select_images(broden.open_broden(other), HAND_MAP, 0.0, catalogue=catalogue,
                           stamps_root=root)


@pytest.mark.parametrize('args, message', [
    (('--classes=kettle',), 'not in the class map'),
    (('--draws=-1',), '--draws=-1'),
    (('--ablate=mobilenet_v2',), 'model:weights:layer'),
    (('--min_share=1.5',), '--min_share'),
])
def test_bad_flags_are_one_line_and_write_nothing(args, message, tmp_path):
  outdir = tmp_path / 'out'
  r = ndjax_module('ndjax.experiments.ablation', f'--outdir={outdir}', '--noprogress', *args)
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:') and message in lines[0], r.stderr
  assert not outdir.exists()


# --- the real network -----------------------------------------------------------------------------
@pytest.mark.slow
def test_real_run_matches_zero_units_recomputed(tmp_path):
  """MobileNetV2 ImageNet over the first 600 composites (it dissects them itself): every class's
  base and after-ablation P(class) recomputed image by image through edits.zero_units, averaged
  per source photo."""
  outdir = tmp_path / 'ablation'
  r = ndjax_module('ndjax.experiments.ablation', f'--outdir={outdir}', '--noprogress',
                   '--images=600', '--classes=soccer ball,koala,basketball', '--draws=2',
                   '--boot=200', '--min_images=2')
  assert r.returncode == 0, r.stderr[-3000:]
  doc = json.loads((outdir / 'results.json').read_text())
  with open(outdir / 'results.csv', newline='') as f:
    rows = {(row['class'], row['ablation']): row for row in csv.DictReader(f)}
  model = api.load_model('mobilenet_v2', 'imagenet')
  net = viz.Net.of(model)
  ds = api.open_probe(None, progress=False)
  where = {rec.image: i for i, rec in enumerate(ds.records)}
  checked = 0
  for record in doc['classes']:
    if 'families' not in record:
      continue
    units = record['families']['concept detectors']['units']
    mine = [im for im in doc['images'] if im['imagenet'] == record['class']]
    x = net.preprocess(jnp.asarray(np.stack([ds.load_image(where[im['image']]) for im in mine])))
    c = record['imagenet_index']
    base = jax.nn.softmax(net.apply(net.state, x, logits=True)['logits'], -1)[:, c]
    cut = jax.nn.softmax(net.apply(net.state, x, logits=True, edits={
        'features': edits.zero_units(units)})['logits'], -1)[:, c]
    photos = [im['stamp'] for im in mine]
    per_photo = lambda v: np.mean([np.mean([a for a, p in zip(v, photos) if p == g])
                                   for g in dict.fromkeys(photos)])
    row = rows[(record['class'], 'concept detectors')]
    assert float(row['base_p']) == pytest.approx(per_photo(np.asarray(base)), abs=1e-5)
    assert float(row['after_p']) == pytest.approx(per_photo(np.asarray(cut)), abs=1e-5)
    checked += 1
  assert checked >= 1
  assert (outdir / 'ablation_delta_p.png').is_file() and (outdir / 'README.md').is_file()
