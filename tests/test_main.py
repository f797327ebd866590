"""The CLI end to end: outputs in NetDissect's layout, and one clear line for every bad input."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import make_broden

CATS = ['color', 'object', 'part', 'material', 'scene', 'texture']
LABELS = {1: ('red-c', 'color'), 2: ('blue-c', 'color'), 3: ('car', 'object'), 4: ('tree', 'object'),
          5: ('wheel', 'part'), 6: ('wood', 'material'), 7: ('street-s', 'scene'),
          8: ('striped', 'texture')}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  rng = np.random.default_rng(0)
  items = []
  for i in range(10):
    blob = lambda labels: np.where(rng.random((32, 32)) < 0.4, rng.choice(labels, (32, 32)), 0)
    items.append({'image': rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                  'masks': {'color': [blob([1, 2])], 'object': [blob([3, 4])], 'part': [blob([5])],
                            'material': [blob([6])]},
                  'image_labels': {'scene': [7], 'texture': [8] if i % 2 else []}})
  return make_broden(tmp_path_factory.mktemp('cli') / 'broden', CATS, LABELS, items)


def ndjax(*args, cwd=None):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'ndjax.main', '--noprogress', *args],
                        capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=600)


def test_end_to_end_outputs(dataset, tmp_path):
  out = tmp_path / 'out'
  r = ndjax('--model=vgg16', '--weights=random', '--seed=3', f'--dataset={dataset}',
            '--layers=conv4_3,conv5_3', '--batch_size=4', '--tau=0.01', f'--outdir={out}')
  assert r.returncode == 0, r.stderr
  lines = [l for l in r.stdout.splitlines() if ' units are detectors ' in l]
  assert [l.split(':')[0] for l in lines] == ['conv4_3', 'conv5_3']
  for l in lines:
    assert '/512 units are detectors (IoU > 0.04) of ' in l
    assert all(f'{c} ' in l for c in ('object', 'part', 'scene', 'material', 'texture', 'color'))
  run = out / 'vgg16_random_s3'
  results = {}
  for layer in ('conv4_3', 'conv5_3'):
    with open(run / layer / 'tally.csv') as f:
      rows = list(csv.DictReader(f))
    header = list(rows[0])
    expect = ['unit', 'category', 'label', 'score']
    for c in CATS:
      expect += [f'{c}-label', f'{c}-truth', f'{c}-activation', f'{c}-intersect', f'{c}-iou']
    assert header == expect and len(rows) == 512
    scores = [float(r['score']) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert sorted(int(r['unit']) for r in rows) == list(range(1, 513))
    assert {r['label'] for r in rows} <= {n for n, _ in LABELS.values()}
    for r in rows:   # the score is the IoU of the unit's label in its own category
      assert float(r['score']) == float(r[f'{r["category"]}-iou'])
      assert r['label'] == r[f'{r["category"]}-label']
    results[layer] = json.loads((run / layer / 'results.json').read_text())
  doc = results['conv5_3']
  assert doc['layer'] == 'conv5_3' and doc['activation'].startswith('features.29: ReLU')
  assert doc['seed'] == 3 and doc['view']['tau'] == 0.01 and 'jax' in doc['versions']
  assert doc['view']['name'] == '' and doc['folder'] == 'conv5_3' and doc['precision']
  assert len(doc['units']) == 512 and set(doc['units'][0]['per_category']) == set(CATS)
  for unit in doc['units']:
    for cat, best in unit['per_category'].items():
      ranked = unit['top_concepts'][cat]
      assert ranked[0] == [best['label'], best['iou']]
      assert [x[1] for x in ranked] == sorted((x[1] for x in ranked), reverse=True)
  top = np.load(run / 'conv5_3' / 'topk.npz')
  assert top['images'].shape == (512, 10) and top['maps'].shape == (512, 10, 4, 4)
  assert doc['detectors'] == sum(float(r['score']) > 0.04 for r in csv.DictReader(open(run / 'conv5_3' / 'tally.csv')))
  assert results['conv4_3']['units'][0]['threshold'] != doc['units'][0]['threshold']
  assert not [p for p in os.listdir(run / 'conv5_3') if p.startswith('.tmp')]


def _assert_one_line_error(r, *needles):
  assert r.returncode != 0
  assert 'Traceback' not in r.stderr, r.stderr
  err = [l for l in r.stderr.strip().splitlines() if l.strip()]
  assert err, 'no error message'
  text = r.stderr
  for n in needles:
    assert n in text, text


@pytest.mark.parametrize('args,needles', [
    (['--tau=1.5'], ['--tau=1.5 is outside (0, 1)']),
    (['--tau=0'], ['outside (0, 1)']),
    (['--model=resnet9000'], ["unknown model 'resnet9000'", 'vgg16']),
    (['--layers=conv9_9'], ["unknown layer 'conv9_9'", 'conv5_3', 'features.28']),
    (['--batch_size=0'], ['--batch_size must be positive']),
])
def test_bad_flags(dataset, tmp_path, args, needles):
  r = ndjax('--weights=random', f'--dataset={dataset}', f'--outdir={tmp_path / "o"}', *args)
  _assert_one_line_error(r, *needles)
  assert not (tmp_path / 'o').exists()


def test_not_broden_and_missing_file(dataset, tmp_path):
  r = ndjax('--weights=random', f'--dataset={tmp_path}', f'--outdir={tmp_path / "o"}')
  _assert_one_line_error(r, 'category.csv is missing')
  broken = tmp_path / 'broken'
  os.system(f'cp -r {dataset} {broken}')
  os.remove(broken / 'images' / 'src' / 'img0003.png')
  r = ndjax('--weights=random', f'--dataset={broken}', f'--outdir={tmp_path / "o"}')
  _assert_one_line_error(r, 'images/src/img0003.png does not exist')
  assert not (tmp_path / 'o').exists()


def test_unwritable_outdir(dataset, tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  r = ndjax('--weights=random', f'--dataset={dataset}', f'--outdir={blocker / "sub"}')
  _assert_one_line_error(r, 'cannot write to output directory', 'is not a directory')


def test_wrong_weights(dataset, tmp_path):
  r = ndjax(f'--weights={tmp_path / "nothing"}', f'--dataset={dataset}', f'--outdir={tmp_path / "o"}')
  _assert_one_line_error(r, 'unknown weights')
  # a real checkpoint of another architecture: vgg16_bn weights into vgg16
  code = ('from ndjax import models; from ndjax.ported_weights import checkpoint; '
          f'checkpoint.save_checkpoint(models.build("vgg16_bn"), r"{tmp_path / "bn"}", '
          'source="test", source_sha256="0")')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=REPO, capture_output=True)
  r = ndjax('--model=vgg16', f'--weights={tmp_path / "bn"}', f'--dataset={dataset}',
            f'--outdir={tmp_path / "o"}')
  _assert_one_line_error(r, 'vgg16_bn')
  assert not (tmp_path / 'o').exists()
  # without --model, the checkpoint's own arch is used
  r = ndjax(f'--weights={tmp_path / "bn"}', f'--dataset={dataset}', f'--outdir={tmp_path / "o"}')
  assert r.returncode == 0, r.stderr
  doc = json.loads((tmp_path / 'o' / 'vgg16_bn_bn' / 'conv5_3' / 'results.json').read_text())
  assert doc['resolved']['model'] == 'vgg16_bn'


def test_corrupt_image_mid_run(dataset, tmp_path):
  broken = tmp_path / 'broken'
  os.system(f'cp -r {dataset} {broken}')
  (broken / 'images' / 'src' / 'img0007.png').write_bytes(b'garbage')
  args = ['--weights=random', f'--dataset={broken}', '--batch_size=4', '--layers=conv3_3']
  r = ndjax(*args, f'--outdir={tmp_path / "o"}')
  _assert_one_line_error(r, 'cannot decode image', 'img0007.png', '--skip_bad_images')
  assert not (tmp_path / 'o').exists()
  r = ndjax(*args, '--skip_bad_images', f'--outdir={tmp_path / "o2"}')
  assert r.returncode == 0, r.stderr
  doc = json.loads((tmp_path / 'o2' / 'vgg16_random_s0' / 'conv3_3' / 'results.json').read_text())
  assert doc['bad_images']['count'] == 1 and doc['images_used'] == 9
  assert 'img0007.png' in list(doc['bad_images']['files'].values())[0]
