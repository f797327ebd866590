"""The Broden reader on a hand-written fixture covering the format's quirks."""
import os

import numpy as np
import pytest
from PIL import Image

from ndjax.data import broden
from tests.conftest import write_csv, write_mask


def _fixture(root):
  """Two images; every quirk of the real files, written byte by byte here."""
  img = root / 'images'
  (img / 'ade').mkdir(parents=True)
  (img / 'dtd').mkdir(parents=True)
  Image.fromarray(np.full((8, 10, 3), 200, np.uint8)).save(img / 'ade' / 'a.jpg')
  Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(img / 'dtd' / 'b.png')
  obj = np.zeros((4, 5), np.int64); obj[:2] = 300          # label 300 > 255: R=44, G=1
  obj[3, 4] = 2
  part1 = np.zeros((4, 5), np.int64); part1[0, 0] = 7
  part2 = np.zeros((4, 5), np.int64); part2[1, 1] = 7; part2[2, 2] = 8
  write_mask(img / 'ade' / 'a_object.png', obj)
  write_mask(img / 'ade' / 'a_part_1.png', part1)
  write_mask(img / 'ade' / 'a_part_2.png', part2)
  # columns in a different order than category.csv: read by header name, never position
  with open(root / 'index.csv', 'w') as f:
    f.write('image,split,ih,iw,sh,sw,scene,texture,color,object,part,material\n')
    f.write('ade/a.jpg,train,8,10,4,5,9,,,ade/a_object.png,ade/a_part_1.png;ade/a_part_2.png,\n')
    f.write('dtd/b.png,val,6,6,3,3,,10;0,,,,\n')                    # 0 = dropped label
  # label.csv: no row 0, a gap (numbers 3-6 and 11-299 absent), a two-category label
  write_csv(root / 'label.csv', ['number', 'name', 'category', 'frequency', 'coverage', 'syns'], [
      [1, 'red-c', 'color(1)', 1, 0.5, ''], [2, 'fabric', 'material(36);object(3)', 39, 5.0, ''],
      [7, 'head', 'part(1)', 1, 0.1, ''], [8, 'leg', 'part(1)', 1, 0.1, ''],
      [9, 'street-s', 'scene(1)', 1, 1.0, ''], [10, 'striped', 'texture(1)', 1, 1.0, ''],
      [300, 'car', 'object(1)', 1, 0.4, ''], [301, 'wood', 'material(2);part(5)', 5, 1, '']])
  write_csv(root / 'category.csv', ['name', 'first', 'last', 'count', 'frequency'], [
      ['color', 1, 1, 1, 1], ['object', 2, 300, 2, 2], ['part', 7, 301, 3, 2],
      ['material', 2, 301, 2, 2], ['scene', 9, 9, 1, 1], ['texture', 10, 10, 1, 1]])
  cols = ['code', 'number', 'name', 'frequency', 'coverage']
  write_csv(root / 'c_color.csv', cols, [[1, 1, 'red-c', 1, 0.5]])
  # fabric: larger IMAGE count in material, but larger COVERAGE in object -> primary object
  write_csv(root / 'c_object.csv', cols, [[1, 2, 'fabric', 3, 7.5], [2, 300, 'car', 1, 0.4]])
  # wood: equal coverage in part and material -> the later category (material) wins the tie
  write_csv(root / 'c_part.csv', cols, [[1, 7, 'head', 1, 0.1], [2, 8, 'leg', 1, 0.1],
                                        [3, 301, 'wood', 5, 2.0]])
  write_csv(root / 'c_material.csv', cols, [[1, 2, 'fabric', 36, 2.5], [2, 301, 'wood', 2, 2.0]])
  write_csv(root / 'c_scene.csv', cols, [[1, 9, 'street-s', 1, 1.0]])
  write_csv(root / 'c_texture.csv', cols, [[1, 10, 'striped', 1, 1.0]])
  return obj, part1, part2


def test_reader_quirks(tmp_path):
  obj, part1, part2 = _fixture(tmp_path)
  ds = broden.open_broden(tmp_path)
  assert ds.categories == ['color', 'object', 'part', 'material', 'scene', 'texture']
  assert ds.num_labels == 302 and ds.label_names[0] == '-' and ds.label_names[5] == '-'
  assert ds.label_names[300] == 'car'
  cat = {c: i for i, c in enumerate(ds.categories)}
  assert ds.primary[2] == cat['object']            # coverage, not label.csv's image counts
  assert ds.primary[301] == cat['material']        # tie -> later category
  assert ds.primary[7] == cat['part'] and ds.primary[9] == cat['scene']
  assert ds.primary[0] == -1 and ds.primary[5] == -1
  a, b = ds.records
  assert (a.ih, a.iw, a.sh, a.sw) == (8, 10, 4, 5) and (b.sh, b.sw) == (3, 3)
  assert a.image_labels == (9,) and b.image_labels == (10,)         # 0 dropped
  assert a.mask_files == ('ade/a_object.png', 'ade/a_part_1.png', 'ade/a_part_2.png')
  layers, img = ds.load_labels(0)
  np.testing.assert_array_equal(layers, np.stack([obj, part1, part2]))   # R + 256 G, no overflow
  assert layers.dtype == np.int32
  layers_b, img_b = ds.load_labels(1)
  assert layers_b.shape == (0, 3, 3) and list(img_b) == [10]
  assert ds.load_image(0).shape == (8, 10, 3) and ds.load_image(1).dtype == np.uint8
  assert broden.display_name('street_light-s') == 'street light'
  assert broden.display_name('red-c') == 'red'


@pytest.mark.parametrize('damage,message', [
    (lambda r: os.remove(r / 'label.csv'), 'label.csv is missing'),
    (lambda r: os.remove(r / 'c_part.csv'), 'c_part.csv is missing'),
    (lambda r: os.remove(r / 'images' / 'ade' / 'a_part_2.png'), 'a_part_2.png does not exist'),
    (lambda r: (r / 'index.csv').write_text('image,split\nx.jpg,train\n'), 'lacks column'),
    (lambda r: (r / 'index.csv').write_text(
        'image,split,ih,iw,sh,sw,scene\nade/a.jpg,train,8,10,4,5,42\n'), 'label 42 is not in label.csv'),
    (lambda r: (r / 'index.csv').write_text(
        'image,split,ih,iw,sh,sw,scene\nade/a.jpg,train,8,x,4,5,\n'), 'expected an integer'),
])
def test_reader_errors_are_one_line(tmp_path, damage, message):
  _fixture(tmp_path)
  damage(tmp_path)
  with pytest.raises(broden.BrodenFormatError) as e:
    broden.open_broden(tmp_path)
  assert message in str(e.value) and '\n' not in str(e.value)


def test_decode_errors(tmp_path):
  _fixture(tmp_path)
  ds = broden.open_broden(tmp_path)
  (tmp_path / 'images' / 'ade' / 'a.jpg').write_bytes(b'not a jpeg')
  with pytest.raises(broden.BrodenFormatError, match='cannot decode image .*a.jpg'):
    ds.load_image(0)
  bad = np.zeros((4, 5), np.int64); bad[0, 0] = 999                 # not in label.csv
  write_mask(tmp_path / 'images' / 'ade' / 'a_object.png', bad)
  with pytest.raises(broden.BrodenFormatError, match='label 999, which is not in label.csv'):
    ds.load_labels(0)
  bad[0, 0] = 5                                                     # a gap in label.csv
  write_mask(tmp_path / 'images' / 'ade' / 'a_object.png', bad)
  with pytest.raises(broden.BrodenFormatError, match='label 5, which is not in label.csv'):
    ds.load_labels(0)
  write_mask(tmp_path / 'images' / 'ade' / 'a_object.png', np.zeros((5, 5), np.int64))
  with pytest.raises(broden.BrodenFormatError, match='index.csv says 5x4'):
    ds.load_labels(0)


def test_not_a_directory(tmp_path):
  with pytest.raises(broden.BrodenFormatError, match='does not exist'):
    broden.open_broden(tmp_path / 'nope')
  with pytest.raises(broden.BrodenFormatError, match='category.csv is missing'):
    broden.open_broden(tmp_path)


def _png(path, image):
  image.save(path, format='PNG')


def _png16_rgb(path, labels):
  """A 16-bit-per-channel RGB PNG written chunk by chunk (PIL cannot write one): R = the label."""
  import struct
  import zlib
  h, w = labels.shape
  rgb = np.zeros((h, w, 3), '>u2')
  rgb[..., 0] = labels
  raw = b''.join(b'\x00' + rgb[y].tobytes() for y in range(h))
  def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
  header = struct.pack('>IIBBBBB', w, h, 16, 2, 0, 0, 0)           # 16 bits, colour type 2: RGB
  path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header)
                   + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))


def test_palette_and_rgba_masks_decode_as_rgb(tmp_path):
  obj, _, _ = _fixture(tmp_path)
  ds = broden.open_broden(tmp_path)
  path = tmp_path / 'images' / 'ade' / 'a_object.png'
  # P: palette index 0 -> (0, 0, 0), 1 -> (44, 1, 0) = label 300, 2 -> (2, 0, 0) = label 2
  index = np.select([obj == 300, obj == 2], [1, 2], 0).astype(np.uint8)
  pal = Image.fromarray(index, 'P')
  pal.putpalette([0, 0, 0, 44, 1, 0, 2, 0, 0])
  _png(path, pal)
  assert Image.open(path).mode == 'P'
  np.testing.assert_array_equal(ds.load_labels(0)[0][0], obj)
  # RGBA: the alpha channel is ignored (even where it is 0)
  rgba = np.zeros(obj.shape + (4,), np.uint8)
  rgba[..., 0], rgba[..., 1] = obj % 256, obj // 256
  rgba[..., 3] = np.arange(obj.size).reshape(obj.shape)
  _png(path, Image.fromarray(rgba))
  np.testing.assert_array_equal(ds.load_labels(0)[0][0], obj)


@pytest.mark.parametrize('named,write', [
    ('mode L image', lambda p, a: _png(p, Image.fromarray(a.astype(np.uint8)))),
    ('mode I;16 image', lambda p, a: _png(p, Image.fromarray(a.astype(np.uint16)))),
    ('mode LA image', lambda p, a: _png(p, Image.fromarray(np.stack([a, a], -1).astype(np.uint8)))),
    ('mode 1 image', lambda p, a: _png(p, Image.fromarray(a > 0))),
    # I and F cannot be PNGs; a TIFF under the mask's name is what a converter might leave behind
    ('mode I image', lambda p, a: Image.fromarray(a.astype(np.int32)).save(p, format='TIFF')),
    ('mode F image', lambda p, a: Image.fromarray(a.astype(np.float32)).save(p, format='TIFF')),
    ('16-bit-per-channel RGB image', _png16_rgb),
])
def test_non_rgb_masks_are_format_errors(tmp_path, named, write):
  """Masks that are not 8-bit R, G, B used to become other labels (L value v -> label 257 v; a
  16-bit RGB PNG kept the high bytes only: here label 0 everywhere, silently)."""
  _fixture(tmp_path)
  ds = broden.open_broden(tmp_path)
  labels = np.zeros((4, 5), np.int64)
  labels[0, :3] = 2                          # a known label: only the mode is wrong
  write(tmp_path / 'images' / 'ade' / 'a_object.png', labels)
  with pytest.raises(broden.BrodenFormatError) as e:
    ds.load_labels(0)
  message = str(e.value)
  assert 'a_object.png' in message and named in message and '\n' not in message
  assert 'must be' in message and 'RGB' in message and 'R + 256' in message
