"""The real-photo compositor on a small hand-made catalogue (no network): determinism, exact masks,
occlusion order, parts, the GIMP pattern reader, the default-probe resolution and the build CLI."""
import csv
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ndjax.data import broden
from ndjax.probes import composite, contact_sheet, ingredients, synthetic

N_IMAGES = 40
# flat-coloured cut-outs with hard alpha, so every pixel a cut-out covers shows its exact colour
CUTOUTS = {'redthing': (255, 0, 0), 'bluething': (0, 0, 255), 'greenthing': (0, 200, 0),
           'yellowthing': (255, 255, 0)}


def write_pattern(path, pixels, name='test'):
  """A GIMP .pat file: big-endian header, name, raw pixels."""
  pixels = np.asarray(pixels, np.uint8)
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  encoded = name.encode() + b'\0'
  header = struct.pack('>5I4s', 24 + len(encoded), 1, pixels.shape[1], pixels.shape[0],
                       pixels.shape[2], b'GPAT')
  path.write_bytes(header + encoded + pixels.tobytes())


def _cutout(path, size, colour, shape):
  canvas = Image.new('RGBA', size, (0, 0, 0, 0))
  draw = ImageDraw.Draw(canvas)
  width, height = size
  if shape == 'ellipse':
    draw.ellipse((2, 2, width - 3, height - 3), fill=colour + (255,))
  elif shape == 'ring':
    draw.rectangle((0, 0, width - 1, height - 1), fill=colour + (255,))
    draw.rectangle((width // 3, height // 3, 2 * width // 3, 2 * height // 3), fill=(0, 0, 0, 0))
  else:
    draw.polygon([(width / 2, 0), (width - 1, height - 1), (0, height - 1)], fill=colour + (255,))
  canvas.save(path)


@pytest.fixture(scope='module')
def catalogue(tmp_path_factory):
  root = tmp_path_factory.mktemp('ingredients')
  shapes = dict(redthing=((80, 60), 'ellipse'), bluething=((50, 90), 'ring'),
                greenthing=((70, 70), 'triangle'), yellowthing=((40, 40), 'ellipse'))
  stamps = []
  for label, (size, shape) in shapes.items():
    _cutout(root / f'{label}.png', size, CUTOUTS[label], shape)
    parts = (('head', 'ellipse', (0.55, 0.0, 1.0, 0.6)),) if label == 'redthing' else ()
    if label == 'greenthing':
      parts = (('top', 'poly', (0.2, 0.0, 0.8, 0.0, 0.8, 0.5, 0.2, 0.5)),
               ('eye', 'ellipse', (0.4, 0.6, 0.6, 0.8)))
    stamps.append(composite.Stamp(str(root / f'{label}.png'), label, label != 'yellowthing', parts))
  write_pattern(root / 'grey.pat', np.full((8, 8, 3), 128))
  write_pattern(root / 'stripes.pat', np.stack([np.zeros((6, 6))] * 3 + [
      np.tile([[255], [0]], (3, 6))], axis=-1))
  write_pattern(root / 'paper.pat', np.full((5, 7), 230))
  Image.fromarray(np.full((16, 16, 3), (40, 120, 40), np.uint8)).save(root / 'grass.png')
  tiles = (composite.Tile(str(root / 'grey.pat'), 'stone', 'flat'),
           composite.Tile(str(root / 'stripes.pat'), None, 'striped'),
           composite.Tile(str(root / 'paper.pat'), 'paper', None),
           composite.Tile(str(root / 'grass.png'), 'grass', None, (0.5, 1.0)))
  photo = np.full((80, 100, 3), (200, 190, 180), np.uint8)
  classes = np.zeros((80, 100), np.uint8)
  classes[40:70, 10:60] = 1
  classes[0:5] = 255                           # VOC's 'void' border: unlabelled
  photo[classes == 1] = (10, 10, 10)
  Image.fromarray(photo).save(root / 'photo.png')
  mask = Image.fromarray(classes, 'P')
  mask.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
  mask.save(root / 'photo_mask.png')
  photos = (composite.Photo(str(root / 'photo.png'), str(root / 'photo_mask.png'), 'png',
                            (None, 'car'), 'street-s'),)
  groups = (('bluething', 'thing'), ('car', 'vehicle'), ('redthing', 'thing'))
  return composite.Catalogue(tuple(stamps), tiles, photos, groups)


@pytest.fixture(scope='module')
def built(catalogue, tmp_path_factory):
  root = tmp_path_factory.mktemp('composite')
  serial = composite.generate(root / 'serial', catalogue, N_IMAGES, seed=0, progress=False,
                              workers=1, min_images=1)
  parallel = composite.generate(root / 'parallel', catalogue, N_IMAGES, seed=0, progress=False,
                                workers=2, min_images=1)
  other = composite.generate(root / 'other', catalogue, N_IMAGES, seed=1, progress=False,
                             workers=1, min_images=1, contact_sheet=False)
  return serial, parallel, other


def _files(root):
  found = {}
  for name in ('index.csv', 'label.csv', 'category.csv'):
    found[name] = (root / name).read_bytes()
  for path in sorted((root / 'images').rglob('*')):
    if path.is_file():
      found[str(path.relative_to(root))] = path.read_bytes()
  return found


def _rows(root, name='index.csv'):
  with open(root / name, newline='') as f:
    return list(csv.DictReader(f))


def test_same_seed_gives_identical_index_masks_and_images_whatever_the_workers(built):
  serial, parallel, other = built
  assert _files(serial) == _files(parallel)
  assert (serial / 'index.csv').read_bytes() != (other / 'index.csv').read_bytes()
  assert len(_rows(serial)) == N_IMAGES


def test_it_opens_as_broden_with_every_category(built):
  serial = built[0]
  dataset = broden.open_broden(serial)
  assert len(dataset.records) == N_IMAGES
  for i in range(len(dataset.records)):
    dataset.load_labels(i)
    assert dataset.load_image(i).shape == (224, 224, 3)
  assert {r.sh for r in dataset.records} == {112}
  counts = {row['name']: int(row['count']) for row in _rows(serial, 'category.csv')}
  assert all(counts[c] > 0 for c in ('color', 'object', 'part', 'material', 'scene', 'texture'))
  kinds = {row['image'].split('/')[0] for row in _rows(serial)}
  assert kinds == set(composite.KINDS)


def _expected_maps(catalogue, canvas, size=224):
  """Object label map and 'fully opaque, uncovered' colour map rebuilt from the placements alone."""
  expected = np.zeros((size, size), np.int32)
  top_alpha = np.zeros((size, size), np.int32)
  colour = np.zeros((size, size, 3), np.int32)
  for placement in canvas.placements:
    stamp = catalogue.stamps[placement['stamp']]
    rgba, _ = composite.load_stamp(stamp)
    x, y, width, height = placement['box']
    resized = np.asarray(rgba.resize((width, height), Image.BILINEAR))
    if placement['mirror']:
      resized = resized[:, ::-1]
    full = np.zeros((size, size, 4), np.int32)
    ys, xs = np.mgrid[0:height, 0:width]
    inside = (ys + y >= 0) & (ys + y < size) & (xs + x >= 0) & (xs + x < size)
    full[ys[inside] + y, xs[inside] + x] = resized[inside]
    covered = full[..., 3] >= 128
    expected[covered] = catalogue.number[stamp.label]
    touched = full[..., 3] > 0
    top_alpha[touched] = full[..., 3][touched]      # a later stamp's partial edge hides the colour
    colour[touched] = full[..., :3][touched]
  return expected, top_alpha, colour


def test_object_masks_are_the_cutouts_alpha_composited_far_to_near(catalogue):
  at = synthetic.sample_points(224, 112)
  checked = 0
  for index in range(N_IMAGES):
    image, masks, kind, canvas = composite.render(catalogue, 0, index)
    if kind not in ('objects', 'photo') or not canvas.placements:
      continue
    expected, top_alpha, colour = _expected_maps(catalogue, canvas)
    stamped = expected > 0
    np.testing.assert_array_equal(canvas.object[stamped], expected[stamped])
    # pixels no cut-out covers keep the background's labels (0 on tiles, the photo's car)
    assert set(np.unique(canvas.object[~stamped])) <= {0, catalogue.number['car']}
    # where the top cut-out is opaque, the image shows exactly that cut-out's colour
    opaque = top_alpha == 255
    assert np.abs(image[opaque].astype(int) - colour[opaque]).max() <= 1
    # ... and that colour is the labelled cut-out's own
    for label, rgb in CUTOUTS.items():
      shown = opaque & (canvas.object == catalogue.number[label])
      assert np.abs(image[shown].astype(int) - rgb).max(initial=0) <= 1   # premultiplied rounding
    np.testing.assert_array_equal(masks['object'][0], canvas.object[at][:, at])
    checked += 1
  assert checked >= 10


def test_later_cutout_takes_every_label_of_the_pixels_it_covers(catalogue):
  canvas = composite._Canvas(catalogue, 120)
  canvas.material[:] = catalogue.number['stone']
  red, blue = 0, 1
  canvas.place(red, (10, 10, 80, 60), mirror=False)
  head = canvas.part[0] == catalogue.number['head']
  red_pixels = canvas.object == catalogue.number['redthing']
  assert head.sum() > 200 and (head <= red_pixels).all()
  assert (canvas.group[red_pixels] == catalogue.number['thing']).all()
  assert (canvas.material[red_pixels] == 0).all()
  canvas.place(blue, (60, 0, 50, 90), mirror=False)
  blue_pixels = canvas.object == catalogue.number['bluething']
  overlap = blue_pixels & red_pixels
  assert overlap.sum() > 100
  assert not (canvas.part[:, blue_pixels] != 0).any()     # the red head under blue is gone
  assert (canvas.object[red_pixels & ~blue_pixels] == catalogue.number['redthing']).all()
  hole = (canvas.object == 0) & (np.arange(120)[None, :] > 62) & (np.arange(120)[:, None] < 88)
  assert (canvas.material[hole] == catalogue.number['stone']).any()   # the ring's hole shows through


def test_parts_lie_inside_their_own_cutout(catalogue):
  owners = {catalogue.number[s.label]: {catalogue.number[p[0]] for p in s.parts}
            for s in catalogue.stamps}
  seen = 0
  for index in range(N_IMAGES):
    _, _, _, canvas = composite.render(catalogue, 0, index)
    for layer in canvas.part:
      for part, obj in set(zip(layer[layer > 0].tolist(), canvas.object[layer > 0].tolist())):
        assert part in owners.get(obj, ()), (index, part, obj)
        seen += 1
  assert seen > 5


def test_mirrored_stamps_mirror_their_parts(catalogue):
  for mirror in (False, True):
    canvas = composite._Canvas(catalogue, 100)
    canvas.place(0, (0, 0, 100, 75), mirror=mirror)
    head_columns = np.flatnonzero((canvas.part[0] > 0).any(0))
    assert (head_columns.min() > 45) != mirror and (head_columns.max() < 55) == mirror


def test_gimp_pattern_reader(tmp_path):
  rgb = np.arange(4 * 3 * 3, dtype=np.uint8).reshape(4, 3, 3)
  write_pattern(tmp_path / 'rgb.pat', rgb)
  np.testing.assert_array_equal(composite.read_gimp_pattern(tmp_path / 'rgb.pat'), rgb)
  grey = np.array([[0, 100], [200, 255]], np.uint8)
  write_pattern(tmp_path / 'grey.pat', grey, name='Grey & more')
  np.testing.assert_array_equal(composite.read_gimp_pattern(tmp_path / 'grey.pat'),
                                np.repeat(grey[..., None], 3, axis=2))
  lines = np.zeros((2, 2, 4), np.uint8)
  lines[0, :, 3] = 255                                     # black line on transparency
  write_pattern(tmp_path / 'lines.pat', lines)
  flat = composite.read_gimp_pattern(tmp_path / 'lines.pat')
  assert (flat[0] == 0).all() and (flat[1] == 255).all()
  (tmp_path / 'bad.pat').write_bytes(b'\0' * 40)
  with pytest.raises(ValueError, match='not a GIMP pattern'):
    composite.read_gimp_pattern(tmp_path / 'bad.pat')


def test_slot_labels_share_slots_evenly_and_depend_on_the_image_only():
  n_labels, n_images = 37, 400
  counts = np.zeros(n_labels, int)
  for index in range(n_images):
    labels = composite._slot_labels(7, index, composite.MAX_STAMPS, n_labels)
    np.add.at(counts, labels, 1)
  assert counts.max() - counts.min() <= 1                  # whole epochs: every label equally
  composite._label_order.cache_clear()
  assert composite._slot_labels(7, 123, 3, n_labels) == composite._slot_labels(7, 123, 5, n_labels)[:3]
  assert composite._slot_labels(7, 123, 3, n_labels) != composite._slot_labels(8, 123, 3, n_labels)


def test_rare_labels_are_dropped(catalogue, tmp_path):
  path = composite.generate(tmp_path / 'set', catalogue, 30, seed=2, progress=False, workers=1,
                            min_images=10, contact_sheet=False)
  rows = _rows(path, 'label.csv')
  assert rows and all(int(row['frequency']) >= 10 for row in rows)
  assert 'car' not in {row['name'] for row in rows}        # one photo in 30 images: too rare


def test_contact_sheet_is_written_next_to_the_set(built):
  serial = built[0]
  sheet = contact_sheet.sheet_path(serial)
  assert sheet == serial.parent / 'serial_contact_sheet.png'
  with Image.open(sheet) as im:
    assert im.format == 'PNG' and im.width == contact_sheet.COLUMNS * (contact_sheet.CELL + 4)
    assert im.height > 6 * contact_sheet.CELL                # a block per category
  assert not list(serial.parent.glob('.*partial*'))


def test_resolve_default_probe_falls_back_with_a_one_line_notice(tmp_path, monkeypatch):
  def unavailable(*args, **kwargs):
    raise ingredients.IngredientError("apt-get download gimp-data failed: E: Unable to locate\n"
                                      "package gimp-data")
  calls = []
  def procedural(cache_root, n_images, seed, progress=True):
    calls.append((cache_root, n_images, seed))
    return tmp_path / 'procedural'
  monkeypatch.setattr(ingredients, 'ensure_ingredients', unavailable)
  monkeypatch.setattr(synthetic, 'ensure_probe_set', procedural)
  path, notice = composite.resolve_default_probe(tmp_path, progress=False)
  assert path == tmp_path / 'procedural' and calls == [(tmp_path, 1000, 0)]
  assert '\n' not in notice and 'procedural' in notice and 'Unable to locate package gimp-data' in notice


def test_resolve_default_probe_returns_the_cached_composite_set(tmp_path, monkeypatch):
  cached = composite.probe_set_path(tmp_path)
  cached.mkdir(parents=True)
  (cached / 'index.csv').write_text('image,split,ih,iw,sh,sw\n')
  contact_sheet.sheet_path(cached).write_bytes(b'png')
  def never(*args, **kwargs):
    raise AssertionError('a cached set must not fetch anything')
  monkeypatch.setattr(ingredients, 'ensure_ingredients', never)
  assert composite.resolve_default_probe(tmp_path, progress=False) == (cached, None)
  assert cached.name == f'{composite.VERSION}_n3000_s0'


def test_build_cli_reports_unfetchable_ingredients_in_one_line(tmp_path):
  env = dict(os.environ, PATH=str(tmp_path / 'no-tools'), NDJAX_CACHE=str(tmp_path / 'cache'))
  result = subprocess.run([sys.executable, '-m', 'ndjax.probes.build', '--probe=composite',
                           f'--out={tmp_path / "set"}', '--noprogress'], capture_output=True,
                          text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert result.returncode == 2 and result.stdout == ''
  assert result.stderr.count('\n') == 1 and 'apt-get' in result.stderr, result.stderr
  assert 'Traceback' not in result.stderr and not (tmp_path / 'set').exists()
