"""The explain experiment (paper Sec 3.10, Fig 27) against independent computations.

  * w_n x_n + b_c = the logit: against torch's logits on random-init MobileNetV2 (perturbed and
    calibrated BatchNorm, random classifier bias, ported weights), against the forward's own on
    the AlexNet GAP variant, and on a planted head whose contributions are known by hand.
  * The per-image segmentation: the upsampled map equals a per-pixel bilinear by hand on the
    receptive-field grid; the mask holds round(0.2 N) pixels when nothing ties, and otherwise the
    largest upper set not above that count (counted by brute force).
  * Ranking = a brute-force sort (ties by unit number); labels are read 1-based from results.json.
  * Bad input is one line with no output; end to end on a random-init AlexNet GAP with a 16-image
    synthetic probe set dissected through Experiment.dissect, then reused through --results.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ndjax import models, results
from ndjax.experiments import explain
from ndjax.viz import common as viz
from tests.conftest import bilinear_by_hand, ndjax_module, photo_like_images, relative_error

ARCH = 'alexnet_gap_wide'


def _gap_net(seed=3, bias_seed=0):
  """AlexNet GAP variant (random init) with a random classifier bias (its init is zero, which
  would not test the bias term)."""
  model = models.build(ARCH, seed=seed)
  linear = model.layer('classifier.0')
  linear.bias[...] = np.random.default_rng(bias_seed).normal(0, 0.5, linear.bias.shape).astype(
      np.float32)
  return viz.Net.of(model)


def _explained(net, images, true=None, units=4):
  names = [f'img{i}' for i in range(len(images))]
  tap, linear = explain.gap_head(net)
  return explain.explain(net, tap, linear, images, names, true or {}, {}, 'rf', units, 0.2)


def _check_sums(explained, reference_logits=None, rtol=1e-5):
  for e in explained:
    decomposed = e.contrib.sum() + e.bias
    assert relative_error(np.float64(decomposed), np.float64(e.logit)) <= rtol
    if reference_logits is not None:
      b = int(e.photo[3:])
      scale = np.abs(reference_logits[b]).max()
      assert abs(decomposed - reference_logits[b, e.cls]) <= 1e-4 * scale


# --- contributions sum to the logit --------------------------------------------------------------
def test_contributions_plus_bias_equal_torch_logits_on_random_mobilenet():
  from tests.test_viz_cam import _torch_pair, _torch_x
  import torch
  torch_model, net, _ = _torch_pair('mobilenet_v2')
  images = photo_like_images(2, 96, seed=5)
  x = np.asarray(net.preprocess(images))
  with torch.no_grad():
    torch_logits = torch_model(_torch_x(x)).numpy().astype(np.float64)
  top = torch_logits.argmax(1)
  true = {'img0': int(torch_logits[0].argmin()), 'img1': int(np.argsort(torch_logits[1])[500])}
  explained = _explained(net, images, true)
  assert [e.cls for e in explained] == [top[0], true['img0'], top[1], true['img1']]
  assert len({e.logit for e in explained}) == 4
  _check_sums(explained, torch_logits)


def test_contributions_plus_bias_equal_the_logit_on_the_alexnet_gap_variant():
  net = _gap_net()
  images = photo_like_images(3, 128, seed=2)
  logits = np.asarray(viz.logits_fn(net)(net.state, net.preprocess(images)), np.float64)
  explained = _explained(net, images, {'img2': 7})
  assert len(explained) == 4 and explained[-1].cls == 7
  _check_sums(explained, logits)


def test_a_planted_head_splits_into_the_planted_contributions():
  model = models.build(ARCH, seed=1)
  linear = model.layer('classifier.0')
  c = 42
  planted = {3: 2.0, 7: -1.0, 11: 0.5, 20: 0.75}
  kernel = np.zeros(linear.kernel.shape, np.float32)
  for unit, w in planted.items():
    kernel[unit, c] = w
  bias = np.full(linear.bias.shape, -1e3, np.float32)      # every other class far below c
  bias[c] = 0.25
  linear.kernel[...] = kernel
  linear.bias[...] = bias
  net = viz.Net.of(model)
  images = photo_like_images(2, 128, seed=4)
  conv5 = np.asarray(net.apply(net.state, net.preprocess(images), ('conv5',))['conv5'],
                     np.float64)
  explained = _explained(net, images, units=3)
  for b, e in enumerate(explained):
    x = conv5[b].mean(axis=(0, 1))
    by_hand = {unit: w * x[unit] for unit, w in planted.items()}
    assert e.cls == c and e.bias == pytest.approx(0.25)
    assert np.count_nonzero(e.contrib) == sum(x[u] != 0 for u in planted)
    for unit, value in by_hand.items():
      assert e.contrib[unit] == pytest.approx(value, rel=1e-12, abs=1e-12)
    assert e.logit == pytest.approx(0.25 + sum(by_hand.values()), rel=1e-5)
    expected = sorted(range(len(x)), key=lambda n: (-by_hand.get(n, 0.0), n))[:3]
    assert list(e.order) == expected
    assert x[3] > 0 and e.order[0] in (3, 20)        # a positive weight on a live unit leads


# --- segmentation ---------------------------------------------------------------------------------
def _brute_force_upper_set(values, mask, k):
  """mask is an upper set of `values` with at most k members, maximal up to ties."""
  inside, outside = values[mask], values[~mask]
  assert mask.sum() <= k
  if inside.size and outside.size:
    assert inside.min() > outside.max()
  if outside.size:
    # taking in the largest value left out (and everything tied with it) would pass k
    assert np.sum(values >= outside.max()) > k


def test_the_mask_holds_the_top_fifth_of_the_pixels():
  rng = np.random.default_rng(0)
  for shape in ((224, 224), (37, 53), (5, 5)):
    values = rng.normal(size=shape).astype(np.float32)          # no ties
    k = round(0.2 * values.size)
    mask = explain.segment(values, 0.2)
    assert mask.sum() == k
    _brute_force_upper_set(values, mask, k)
  # ties at the level: a ReLU map mostly zero, a ReLU6 map with a plateau at 6 across the level
  relu = np.maximum(rng.normal(-1.5, 1, (224, 224)), 0).astype(np.float32)
  assert np.mean(relu > 0) < 0.2
  assert np.array_equal(explain.segment(relu, 0.2), relu > 0)
  capped = np.minimum(np.maximum(rng.normal(5, 2, (100, 100)), 0), 6).astype(np.float32)
  assert 0.1 < np.mean(capped == 6) and np.mean(capped > 6 - 1e-6) > 0.2
  for values in (relu, capped):
    _brute_force_upper_set(values, explain.segment(values, 0.2), round(0.2 * values.size))


def test_unit_maps_are_upsampled_on_the_receptive_field_grid_and_segmented_per_image():
  net = _gap_net(seed=5)
  images = photo_like_images(1, 128, seed=9)
  acts = np.asarray(net.apply(net.state, net.preprocess(images), ('conv5',))['conv5'])[0]
  rf = net.module.rf_geometry('conv5')
  wy, wx = explain.upsampler('rf', acts.shape[:2], (128, 128), rf)
  e = _explained(net, images)[0]
  up = np.asarray(explain.upsample_maps(acts[..., e.order], wy, wx))
  k = round(0.2 * 128 * 128)
  for i, unit in enumerate(e.order):
    by_hand = bilinear_by_hand(acts[..., unit].astype(np.float64), (128, 128), (128, 128), rf)
    assert relative_error(up[i], by_hand) <= 1e-5
    assert np.array_equal(e.masks[i], explain.segment(up[i], 0.2))
    _brute_force_upper_set(up[i], e.masks[i], k)
  assert any(m.sum() == k for m in e.masks)


# --- ranking and labels ---------------------------------------------------------------------------
def test_ranking_equals_a_brute_force_sort():
  rng = np.random.default_rng(1)
  for _ in range(20):
    contrib = rng.integers(-3, 4, 50).astype(np.float64)        # many ties
    expected = sorted(range(50), key=lambda n: (-contrib[n], n))
    assert list(explain.rank_units(contrib)) == expected


def test_labels_are_read_one_based_from_results_json(tmp_path):
  rng = np.random.default_rng(2)
  units = [{'unit': u, 'label': f'label{u}', 'category': 'object', 'iou': u / 100}
           for u in rng.permutation(np.arange(1, 11)).tolist()]
  (tmp_path / 'results.json').write_text(json.dumps(
      {'layer': 'conv5', 'unique_detectors': {}, 'units': units}))
  labels = explain.unit_labels(results.load(tmp_path))
  assert sorted(labels) == list(range(10))
  for n in range(10):
    assert labels[n]['label'] == f'label{n + 1}' and labels[n]['iou'] == (n + 1) / 100


def test_true_class_pairs():
  assert explain.true_classes(['horse:sorrel', 'a:b:7'], ['horse', 'a:b'], 1000) == {
      'horse': 339, 'a:b': 7}
  for pairs, message in ((['horse'], 'is not photo:class'), (['cow:sorrel'], "photo 'cow'"),
                         (['horse:sorel'], 'did you mean sorrel'),
                         (['horse:1000'], 'out of range'),
                         (['horse:sorrel', 'horse:7'], 'twice')):
    with pytest.raises(explain.common.ExperimentError, match=message):
      explain.true_classes(pairs, ['horse'], 1000)


# --- the command ----------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  """A 16-image synthetic probe set and two photo files."""
  root = tmp_path_factory.mktemp('explain')
  r = ndjax_module('ndjax.probes.build', '--probe=synthetic', f'--out={root / "probe"}',
                   '--n_images=16', '--noprogress')
  assert r.returncode == 0, r.stderr
  from PIL import Image
  photos = []
  for i, image in enumerate(photo_like_images(2, 160, seed=3)):
    photos.append(root / f'photo{i}.png')
    Image.fromarray(image).save(photos[-1])
  return root, photos


@pytest.mark.parametrize('args,message', [
    (['--classifier=vgg16:random'], 'global-average-pooling'),
    ([f'--classifier={ARCH}:random:1', '--true_class=photo0:not a class'], 'unknown ImageNet class'),
    ([f'--classifier={ARCH}:random:1', '--true_class=cat:sorrel'], "photo 'cat'"),
    ([f'--classifier={ARCH}:random:1', '--results=/nonexistent/conv5'], 'not a directory'),
])
def test_bad_input_is_one_line(args, message, inputs, tmp_path):
  root, photos = inputs
  r = ndjax_module('ndjax.experiments.explain', *args, f'--photos={photos[0]}',
                   f'--dataset={root / "probe"}', f'--outdir={tmp_path / "x"}', '--noprogress')
  assert r.returncode == 2, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and message in last, last
  assert not (tmp_path / 'x').exists()


def _rows(outdir):
  with open(outdir / 'results.csv', newline='') as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
def test_end_to_end_on_a_random_alexnet_gap(inputs, tmp_path):
  root, photos = inputs
  net = viz.Net.of(models.build(ARCH, seed=1))
  images, _ = viz.load_images([str(p) for p in photos])
  conv5 = np.asarray(net.apply(net.state, net.preprocess(images), ('conv5',))['conv5'], np.float64)
  logits = np.asarray(viz.logits_fn(net)(net.state, net.preprocess(images)), np.float64)
  true = int(np.argsort(logits[1])[-10])                          # not the prediction
  outdir = tmp_path / 'out'
  r = ndjax_module('ndjax.experiments.explain', f'--classifier={ARCH}:random:1',
                   f'--photos={photos[0]},{photos[1]}', f'--true_class=photo1:{true}',
                   f'--dataset={root / "probe"}', f'--outdir={outdir}', '--noprogress')
  assert r.returncode == 0, r.stderr[-3000:]
  rows = _rows(outdir)
  assert [(row['photo'], row['role'], row['rank']) for row in rows] == [
      (p, role, str(k)) for p, role in (('photo0', 'predicted'), ('photo1', 'predicted'),
                                        ('photo1', 'true')) for k in range(1, 5)]
  kernel = np.asarray(net.module.layer('classifier.0').kernel[...], np.float64)
  folder = outdir / 'runs' / f'{ARCH}_random_s1' / 'conv5'
  saved = {u['unit']: u for u in json.loads((folder / 'results.json').read_text())['units']}
  for row in rows:
    b, cls, unit = int(row['photo'][-1]), int(row['class_index']), int(row['unit'])
    assert cls == (true if row['role'] == 'true' else logits[b].argmax())
    contrib = kernel[:, cls] * conv5[b].mean(axis=(0, 1))
    assert float(row['contribution']) == pytest.approx(contrib[unit], abs=1e-4)
    assert np.sum(contrib > contrib[unit] + 1e-6) == int(row['rank']) - 1
    assert row['label'] == saved[unit + 1]['label']               # 1-based in results.json
    assert float(row['iou']) == pytest.approx(saved[unit + 1]['iou'], abs=1e-5)
  names = {p.name for p in outdir.iterdir()}
  assert {'explain_photo0.png', 'explain_photo1.png', 'contact_sheet.png', 'README.md'} <= names
  assert '--true_class=photo1' in (outdir / 'README.md').read_text()
  # the same labels through --results, without a probe set
  again = tmp_path / 'again'
  r = ndjax_module('ndjax.experiments.explain', f'--classifier={ARCH}:random:1',
                   f'--photos={photos[0]},{photos[1]}', f'--true_class=photo1:{true}',
                   f'--results={folder}', f'--outdir={again}', '--noprogress')
  assert r.returncode == 0, r.stderr[-3000:]
  assert _rows(again) == rows
  assert not (again / 'runs').exists()
  r = ndjax_module('ndjax.experiments.explain', f'--classifier={ARCH}:random:2', f'--photos={photos[0]}',
                   f'--results={folder}', f'--outdir={tmp_path / "wrong"}', '--noprogress')
  assert r.returncode == 2 and 'seed 1, not alexnet_gap_wide:random seed 2' in r.stderr, r.stderr
