"""BrodenWriter on a tiny planted set, re-read with plain csv / PIL (not with ndjax's reader)."""
import csv

import numpy as np
import pytest
from PIL import Image

from ndjax.data import broden
from ndjax.probes.broden_writer import BrodenWriter

THINGS = [f'thing{i:03d}' for i in range(300)]   # enough labels that numbers pass 255
LABELS = ['red-c', 'blue-c', 'house', 'roof', 'window', 'fabric', 'street-s', 'striped', 'rare-s'] + THINGS
N = {name: i for i, name in enumerate(LABELS, 1)}
SIZE = (20, 20)


def _planted():
  """Four images: (source, image, {category: [mask arrays or image-level ints]})."""
  def blank():
    return np.zeros(SIZE, np.int64)
  color0, object0, part0a, part0b, material0 = blank(), blank(), blank(), blank(), blank()
  color0[:10], color0[10:] = N['red-c'], N['blue-c']
  object0[:10], object0[10:15, :5] = N['house'], N['window']
  part0a[:5] = N['roof']
  part0b[5:7, :10] = N['window']                  # second part layer
  material0[15:] = N['fabric']
  object2 = blank()
  object2[:10], object2[10:] = N['fabric'], N['house']
  object3 = blank()
  object3.ravel()[:300] = [N[t] for t in THINGS]   # one pixel per thing; thing299 -> 309
  rng = np.random.default_rng(0)
  image = lambda: rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)
  return [
      ('ade', image(), {'color': [color0], 'object': [object0], 'part': [part0a, part0b],
                        'material': [material0], 'scene': [N['street-s']]}),
      ('dtd', image(), {'color': [np.full(SIZE, N['red-c'])], 'texture': [N['striped']]}),
      ('pascal', image(), {'object': [object2]}),
      ('pascal', image(), {'object': [object3], 'scene': [N['rare-s']]}),
  ]


def _expected_stats(planted):
  """category -> label -> (images, coverage), computed straight from the planted masks."""
  stats = {}
  for _, _, masks in planted:
    for category, items in masks.items():
      per_image = {}
      for item in items:
        if isinstance(item, int):
          per_image[item] = 1.0
          continue
        for label in np.unique(item[item > 0]):
          per_image[int(label)] = per_image.get(int(label), 0) + float(np.mean(item == label))
      for label, coverage in per_image.items():
        images, total = stats.setdefault(category, {}).get(label, (0, 0.0))
        stats[category][label] = (images + 1, total + coverage)
  return stats


def _read(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def _decode(path):
  rgb = np.asarray(Image.open(path).convert('RGB')).astype(np.int64)
  assert (rgb[..., 2] == 0).all()
  return rgb[..., 0] + 256 * rgb[..., 1]


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  out = tmp_path_factory.mktemp('w') / 'set'
  planted = _planted()
  with BrodenWriter(out, LABELS, mask_size=SIZE, image_format='png') as writer:
    for source, image, masks in planted:
      writer.add(image, masks, source=source)
  return out, planted


def test_index_fields(written):
  out, planted = written
  rows = _read(out / 'index.csv')
  assert list(rows[0]) == ['image', 'split', 'ih', 'iw', 'sh', 'sw', 'color', 'object', 'part',
                           'material', 'scene', 'texture']
  assert [r['image'] for r in rows] == ['ade/00000000.png', 'dtd/00000001.png',
                                        'pascal/00000002.png', 'pascal/00000003.png']
  assert all((r['ih'], r['iw'], r['sh'], r['sw']) == ('40', '40', '20', '20') for r in rows)
  assert len(rows[0]['part'].split(';')) == 2
  assert rows[0]['scene'] == str(N['street-s']) and rows[1]['texture'] == str(N['striped'])
  assert rows[1]['object'] == rows[1]['part'] == rows[2]['color'] == rows[2]['scene'] == ''
  for row, (_, image, masks) in zip(rows, planted):
    np.testing.assert_array_equal(np.asarray(Image.open(out / 'images' / row['image'])), image)
    for category, items in masks.items():
      files = [f for f in row[category].split(';') if f and not f.isdigit()]
      arrays = [item for item in items if not isinstance(item, int)]
      assert len(files) == len(arrays)
      for name, planted_mask in zip(files, arrays):
        np.testing.assert_array_equal(_decode(out / 'images' / name), planted_mask)


def test_label_above_255_is_encoded_in_green(written):
  out, _ = written
  rgb = np.asarray(Image.open(out / 'images' / 'pascal' / '00000003_object.png'))
  assert N['thing299'] == 309 and tuple(rgb.reshape(-1, 3)[299]) == (309 - 256, 1, 0)


def test_label_csv_frequency_coverage_and_categories(written):
  out, planted = written
  stats = _expected_stats(planted)
  rows = {r['name']: r for r in _read(out / 'label.csv')}
  assert [int(r['number']) for r in rows.values()] == list(range(1, len(LABELS) + 1))
  for name, row in rows.items():
    number = N[name]
    images_seen = sum(any(number in _labels_of(items) for items in masks.values())
                      for _, _, masks in planted)
    assert int(row['frequency']) == images_seen, name
    coverage = sum(per[number][1] for per in stats.values() if number in per)
    assert float(row['coverage']) == pytest.approx(coverage, abs=1e-8), name
  assert rows['fabric']['category'] == 'object(1);material(1)'
  assert rows['window']['category'] == 'object(1);part(1)'
  assert rows['house']['category'] == 'object(2)' and float(rows['house']['coverage']) == 1.0
  assert float(rows['window']['coverage']) == pytest.approx(25 / 400 + 20 / 400)


def _labels_of(items):
  found = set()
  for item in items:
    found |= {item} if isinstance(item, int) else set(np.unique(item[item > 0]).tolist())
  return found


def test_dense_category_codes(written):
  out, planted = written
  stats = _expected_stats(planted)
  categories = _read(out / 'category.csv')
  assert [c['name'] for c in categories] == ['color', 'object', 'part', 'material', 'scene', 'texture']
  for row in categories:
    category = row['name']
    codes = _read(out / f'c_{category}.csv')
    expected_numbers = sorted(stats[category])
    assert [int(c['code']) for c in codes] == list(range(1, len(expected_numbers) + 1))
    assert [int(c['number']) for c in codes] == expected_numbers
    for c in codes:
      images, coverage = stats[category][int(c['number'])]
      assert int(c['frequency']) == images and float(c['coverage']) == pytest.approx(coverage)
      assert c['name'] == LABELS[int(c['number']) - 1]
    assert (int(row['count']), int(row['first']), int(row['last'])) == (
        len(expected_numbers), expected_numbers[0], expected_numbers[-1])
    assert int(row['frequency']) == sum(category in masks for _, _, masks in planted)


def test_reader_opens_it(written):
  out, _ = written
  ds = broden.open_broden(out)
  layers, image_labels = ds.load_labels(3)
  assert layers.max() == 309 and list(image_labels) == [N['rare-s']]
  assert ds.label_names[N['fabric']] == 'fabric'


def test_min_images_drops_rare_labels_and_renumbers(tmp_path):
  labels = ['a-c', 'b', 'gone', 'd', 'once-s', 'e-s']
  object0, object1 = np.zeros((4, 4), np.int64), np.zeros((4, 4), np.int64)
  object0[0], object0[1], object0[2] = 2, 3, 4          # b, gone, d
  object1[3] = 4
  object1[0] = 2
  image = np.zeros((8, 8, 3), np.uint8)
  with BrodenWriter(tmp_path / 'set', labels, min_images=2, mask_size=(4, 4)) as writer:
    writer.add(image, {'color': [np.ones((4, 4), np.int64)], 'object': [object0], 'scene': [6]})
    writer.add(image, {'color': [np.ones((4, 4), np.int64)], 'object': [object1], 'scene': [5, 6]})
  rows = _read(tmp_path / 'set' / 'index.csv')
  assert rows[0]['scene'] == '4' and rows[1]['scene'] == '0;4'     # once-s -> 0, e-s 6 -> 4
  expected0 = np.zeros((4, 4)); expected0[0], expected0[2] = 2, 3   # gone -> 0, d 4 -> 3
  np.testing.assert_array_equal(_decode(tmp_path / 'set' / 'images' / rows[0]['object']), expected0)
  expected1 = np.zeros((4, 4)); expected1[0], expected1[3] = 2, 3
  np.testing.assert_array_equal(_decode(tmp_path / 'set' / 'images' / rows[1]['object']), expected1)
  names = [(r['number'], r['name']) for r in _read(tmp_path / 'set' / 'label.csv')]
  assert names == [('1', 'a-c'), ('2', 'b'), ('3', 'd'), ('4', 'e-s')]


def test_failure_inside_with_leaves_nothing(tmp_path):
  with pytest.raises(RuntimeError, match='boom'):
    with BrodenWriter(tmp_path / 'set', ['a-c'], mask_size=(2, 2)) as writer:
      writer.add(np.zeros((4, 4, 3), np.uint8), {'color': [np.ones((2, 2), np.int64)]})
      raise RuntimeError('boom')
  assert list(tmp_path.iterdir()) == []


def test_refuses_existing_out_dir_and_bad_masks(tmp_path):
  (tmp_path / 'set').mkdir()
  with pytest.raises(FileExistsError):
    BrodenWriter(tmp_path / 'set', ['a-c'])
  writer = BrodenWriter(tmp_path / 'other', ['a-c'], mask_size=(2, 2))
  with pytest.raises(ValueError):
    writer.add(np.zeros((4, 4, 3), np.uint8), {'color': [np.full((2, 2), 2)]})   # unknown label
  writer.abort()
  assert not (tmp_path / 'other').exists()
