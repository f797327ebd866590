"""The embedded synthetic probe set: determinism, structure, and masks against planted truth."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ndjax.data import broden
from ndjax.probes import colors, synthetic

N_IMAGES = 40
CATEGORY_VOCABULARY = {
    'color': set(synthetic.COLOUR_LABELS), 'object': set(synthetic.OBJECTS),
    'part': set(synthetic.PART_NAMES), 'material': set(synthetic.MATERIALS),
    'scene': set(synthetic.SCENES), 'texture': set(synthetic.TEXTURES)}


def _files(root):
  """relative path -> bytes of index.csv and every mask PNG."""
  found = {'index.csv': (root / 'index.csv').read_bytes()}
  for path in sorted((root / 'images').rglob('*.png')):
    found[str(path.relative_to(root))] = path.read_bytes()
  return found


def _rows(root, name='index.csv'):
  with open(root / name, newline='') as f:
    return list(csv.DictReader(f))


def _decode(path):
  rgb = np.asarray(Image.open(path).convert('RGB')).astype(np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1]


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp('synthetic')
  serial = synthetic.generate(root / 'serial', N_IMAGES, seed=0, progress=False, workers=1)
  parallel = synthetic.generate(root / 'parallel', N_IMAGES, seed=0, progress=False, workers=2)
  other = synthetic.generate(root / 'other', N_IMAGES, seed=1, progress=False, workers=1)
  return serial, parallel, other


def test_same_seed_is_byte_identical_whatever_the_workers(built):
  serial, parallel, _ = built
  assert _files(serial) == _files(parallel)


def test_different_seed_differs(built):
  serial, _, other = built
  assert (serial / 'index.csv').read_bytes() != (other / 'index.csv').read_bytes()
  assert not np.array_equal(_decode(serial / 'images' / _rows(serial)[0]['color']),
                            _decode(other / 'images' / _rows(other)[0]['color']))


def test_vocabulary_size_and_labels_spanning_two_categories():
  assert len(synthetic.VOCABULARY) >= 80 and len(set(synthetic.VOCABULARY)) == len(synthetic.VOCABULARY)
  sizes = (len(synthetic.TEXTURES), len(synthetic.MATERIALS), len(synthetic.OBJECTS),
           len(synthetic.PART_NAMES), len(synthetic.SCENES))
  assert all(size >= least for size, least in zip(sizes, (14, 10, 20, 10, 8))), sizes
  spanning = {name for name in synthetic.VOCABULARY
              if sum(name in vocab for vocab in CATEGORY_VOCABULARY.values()) > 1}
  assert {'window', 'fabric'} <= spanning


def test_all_six_categories_present_and_some_cells_empty(built):
  serial = built[0]
  counts = {row['name']: int(row['count']) for row in _rows(serial, 'category.csv')}
  assert set(counts) == set(CATEGORY_VOCABULARY) and min(counts.values()) > 0
  rows = _rows(serial)
  assert len(rows) == N_IMAGES
  assert all(row['color'] for row in rows)              # every kind names its colours
  empty = sum(not row[c] for row in rows for c in CATEGORY_VOCABULARY)
  assert empty > N_IMAGES                                # images label subsets of categories
  assert any(';' in row['category'] for row in _rows(serial, 'label.csv'))   # a two-category label


def test_reader_opens_it_and_masks_hold_their_categorys_labels(built):
  serial = built[0]
  ds = broden.open_broden(serial)
  assert len(ds.records) == N_IMAGES
  for i in range(len(ds.records)):
    ds.load_labels(i)                                    # every mask decodes to known labels
  names = {int(row['number']): row['name'] for row in _rows(serial, 'label.csv')}
  for row in _rows(serial):
    for category, vocabulary in CATEGORY_VOCABULARY.items():
      for item in filter(None, row[category].split(';')):
        values = [int(item)] if item.isdigit() else np.unique(_decode(serial / 'images' / item))
        assert {names[v] for v in values if v} <= vocabulary, (row['image'], category)


def test_parts_lie_inside_their_own_objects():
  checked = 0
  for index in range(N_IMAGES):
    _, masks, _ = synthetic.render_image(0, index)
    for layer in masks.get('part', []):
      objects = masks['object'][0]
      for part, obj in set(zip(layer[layer > 0].tolist(), objects[layer > 0].tolist())):
        assert obj > 0
        part_name, object_name = synthetic.VOCABULARY[part - 1], synthetic.VOCABULARY[obj - 1]
        assert part_name in synthetic.PARTS[object_name], (index, part_name, object_name)
        checked += 1
  assert checked > 20


def test_later_objects_hide_earlier_objects_and_their_parts():
  canvas = synthetic._Canvas(100, np.random.default_rng(0))
  synthetic._draw_object(canvas, 'house', (10, 10, 80, 80))
  house_parts = canvas.part.copy()
  synthetic._draw_object(canvas, 'car', (0, 50, 100, 45))
  car = canvas.object == synthetic.LABEL['car']
  assert car.sum() > 500 and (canvas.object == synthetic.LABEL['house']).sum() > 500
  car_parts = {synthetic.LABEL[p] for p in synthetic.PARTS['car']} | {0}
  assert set(np.unique(canvas.part[:, car])) <= car_parts
  # a car body pixel that covered a house window or door carries no part at all now
  body = car & (canvas.part == 0).all(0) & (house_parts > 0).any(0)
  assert body.sum() > 0
  untouched = ~car
  np.testing.assert_array_equal(canvas.part[:, untouched], house_parts[:, untouched])


def test_colour_labels_name_the_image_sampled_at_mask_resolution(built):
  serial = built[0]
  points = synthetic.sample_points(224, 112)
  np.testing.assert_array_equal(points, np.arange(112) * 2 + 1)   # nearest pixel to each cell centre
  names = {int(row['number']): row['name'] for row in _rows(serial, 'label.csv')}
  agreement = []
  for index, row in enumerate(_rows(serial)[:12]):
    image, _, _ = synthetic.render_image(0, index)
    terms = colors.name_colours(image[points][:, points])
    expected = np.array([f'{t}-c' for t in colors.COLOUR_TERMS])[terms]
    written = _decode(serial / 'images' / row['color'])
    labelled = written > 0
    assert (np.vectorize(names.get)(written[labelled]) == expected[labelled]).all()
    dropped = set(expected[~labelled].tolist())
    assert not dropped & set(names.values())          # unlabelled pixels: only dropped terms
    stored = np.asarray(Image.open(serial / 'images' / row['image']).convert('RGB'))
    agreement.append(np.mean(colors.name_colours(stored[points][:, points]) == terms))
  assert np.mean(agreement) > .8          # the JPEG on disk still reads as the same colours


def test_ensure_probe_set_builds_once_and_atomically(tmp_path, monkeypatch):
  path = synthetic.ensure_probe_set(tmp_path, n_images=6, seed=3, progress=False)
  assert path == tmp_path / 'probe' / 'synthetic_v1_n6_s3' and (path / 'index.csv').is_file()
  stamp = os.stat(path / 'index.csv').st_mtime_ns
  assert synthetic.ensure_probe_set(tmp_path, n_images=6, seed=3) == path
  assert os.stat(path / 'index.csv').st_mtime_ns == stamp

  def broken(seed, index, *args):
    if index == 3:
      raise KeyboardInterrupt                       # a build killed half-way
    return render(seed, index, *args)
  render = synthetic.render_image
  monkeypatch.setattr(synthetic, 'render_image', broken)
  with pytest.raises(KeyboardInterrupt):
    synthetic.ensure_probe_set(tmp_path, n_images=5, seed=3, progress=False)
  assert sorted(p.name for p in (tmp_path / 'probe').iterdir()) == ['synthetic_v1_n6_s3']


def test_build_cli(tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, '-m', 'ndjax.probes.build', *args], capture_output=True,
                          text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  good = run('--probe=synthetic', f'--out={tmp_path / "p"}', '--n_images=8', '--noprogress')
  assert good.returncode == 0, good.stderr
  assert good.stdout.count('\n') == 1 and '8 images' in good.stdout and 'texture' in good.stdout
  for bad in (['--probe=broden', f'--out={tmp_path / "q"}'], ['--probe=synthetic'],
              ['--probe=synthetic', f'--out={tmp_path / "p"}'],
              ['--probe=synthetic', f'--out={tmp_path / "q"}', '--n_images=0']):
    result = run(*bad)
    assert result.returncode != 0 and result.stdout == ''
    assert result.stderr.count('\n') == 1 and 'Traceback' not in result.stderr, result.stderr
  assert not (tmp_path / 'q').exists()
