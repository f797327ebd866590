"""The composite probe set on the real fetched ingredients (shared cache; skipped when they cannot be
fetched): the catalogue's files and annotations, determinism, and (slow) the full default set."""
import csv
import time

import numpy as np
import pytest
from PIL import Image

from ndjax.data import broden
from ndjax.probes import composite, composite_catalogue, contact_sheet, ingredients
from ndjax.fileio import cache_root


@pytest.fixture(scope='module')
def catalogue():
  try:
    found = ingredients.ensure_ingredients(cache_root())
  except ingredients.IngredientError as e:
    pytest.skip(f'real-photo ingredients unavailable: {e}')
  return composite.load_catalogue(found)


def test_every_cutout_loads_with_its_parts_on_the_object(catalogue):
  assert len(catalogue.stamps) == len(composite_catalogue.STAMPS) + 1      # + the quokka
  for stamp in catalogue.stamps:
    rgba, parts = composite.load_stamp(stamp)
    alpha = np.asarray(rgba)[..., 3]
    solid = alpha >= 128
    assert max(rgba.size) <= composite.STAMP_MAX_SIDE and solid.mean() > 0.05, stamp.path
    assert alpha.min() == 0 or stamp.polygon is not None, stamp.path   # really cut out
    for name, mask in parts.items():
      # a part drawn off its object would vanish when clipped to the alpha, or swallow it whole
      assert 0.003 < mask.sum() / solid.sum() < 0.7, (stamp.path, name)
  labelled = {s.label for s in catalogue.stamps if s.parts}
  assert {'car', 'bus', 'truck', 'elephant', 'dog', 'horse', 'duck', 'person', 'quokka'} <= labelled


def test_tiles_and_photos_decode(catalogue):
  for tile in catalogue.tiles:
    pixels = composite._tile_pixels(tile.path)
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 3 and min(pixels.shape[:2]) >= 8
    assert pixels.std() > 1, tile.path                   # not a blank tile
  for photo in catalogue.photos:
    rgb, classes = composite._photo_pixels(photo)
    assert rgb.shape[:2] == classes.shape
    assert (classes > 0).any() == (photo.mask is not None), photo.path
  materials = {t.material for t in catalogue.tiles if t.material}
  assert {'wood', 'stone', 'water', 'sky', 'fabric', 'brick', 'bark'} <= materials


def test_real_build_is_deterministic_and_opens(catalogue, tmp_path):
  one = composite.generate(tmp_path / 'one', catalogue, 48, seed=3, progress=False, workers=1,
                           min_images=1, contact_sheet=False)
  two = composite.generate(tmp_path / 'two', catalogue, 48, seed=3, progress=False, workers=2,
                           min_images=1, contact_sheet=False)
  for name in ('index.csv', 'label.csv', 'c_object.csv'):
    assert (one / name).read_bytes() == (two / name).read_bytes()
  for path in sorted((one / 'images').rglob('*.png')):
    assert path.read_bytes() == (two / path.relative_to(one)).read_bytes()
  dataset = broden.open_broden(one)
  for i in range(len(dataset.records)):
    dataset.load_labels(i)


@pytest.mark.slow
def test_default_set_has_every_category_with_ten_images_per_label(catalogue, tmp_path):
  start = time.time()
  path = composite.generate(tmp_path / composite.probe_set_path('.').name, catalogue,
                            progress=False)
  elapsed = time.time() - start
  dataset = broden.open_broden(path)
  assert len(dataset.records) == composite.DEFAULT_IMAGES >= 3000
  assert {(r.ih, r.iw, r.sh, r.sw) for r in dataset.records} == {(224, 224, 112, 112)}
  with open(path / 'label.csv', newline='') as f:
    labels = list(csv.DictReader(f))
  assert min(int(row['frequency']) for row in labels) >= composite.MIN_IMAGES
  with open(path / 'category.csv', newline='') as f:
    counts = {row['name']: int(row['count']) for row in csv.DictReader(f)}
  assert counts['color'] == 11 and counts['object'] >= 150 and counts['part'] >= 2
  assert counts['material'] >= 12 and counts['scene'] >= 3 and counts['texture'] >= 12
  with Image.open(contact_sheet.sheet_path(path)) as sheet:
    assert sheet.height > 1000
  assert elapsed < 600, f'building the default set took {elapsed:.0f} s'
