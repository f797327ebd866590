"""Top patches: the crops are exactly the receptive-field windows, computed here by hand.

AlexNet conv5 (torchvision geometry): conv1 k11 s4 p2, pool k3 s2, conv2 k5 p2, pool k3 s2, conv3-5
k3 p1. Unit spacing 4 * 2 * 2 = 16 px; centre of unit 0: 0.5 + (5 - 2) = 3.5 after conv1,
3.5 + 4 * 1 = 7.5 after pool1, 7.5 + 8 * (2 - 2) = 7.5 after conv2, 7.5 + 8 = 15.5 after pool2, and
the 3x3 pad-1 convs keep it. Size 11 + 2*4 + 4*8 + 2*8 + 3 * 2*16 = 163. So unit (i, j) sees rows
[15.5 + 16 i - 81.5, 15.5 + 16 i + 81.5) = [16 i - 66, 16 i + 97).
VGG16 conv5_3: 3x3 pad-1 convs keep centres, each 2x2 pool adds half a spacing: centre 8 + 16 i;
size 1 + 2*(2*1 + 2*2 + 3*4 + 3*8 + 3*16) + (1 + 2 + 4 + 8) = 196: rows [16 i - 90, 16 i + 106).
VGG16 conv3_3: centre 2 + 4 i, size 1 + 2*(2 + 4 + 12) + 1 + 2 = 40: rows [4 i - 18, 4 i + 22).
"""
from __future__ import annotations

import numpy as np
import pytest

from ndjax import models
from ndjax.viz import common, patches

HAND = {  # (arch, layer) -> (rows of unit i as (a, b): [a*i + b, a*i + c)), size
    ('alexnet', 'conv5'): (16, -66, 97),
    ('vgg16', 'conv5_3'): (16, -90, 106),
    ('vgg16', 'conv3_3'): (4, -18, 22),
}


def planted_top(units: int, k: int, hw: tuple[int, int], peaks: dict) -> dict:
  """A topk.npz-like dict whose maps peak where `peaks[(unit, rank)] = (i, j)` says."""
  rng = np.random.default_rng(0)
  maps = rng.uniform(0, 1, (units, k) + hw).astype(np.float32)
  for (u, r), (i, j) in peaks.items():
    maps[u, r, i, j] = 5.0
  return {'images': np.arange(units * k, dtype=np.int32).reshape(units, k),
          'values': maps.max(axis=(2, 3)),
          'maps': maps, 'map_hw': np.broadcast_to(np.array(hw, np.int32), (units, k, 2)).copy()}


@pytest.mark.parametrize('arch,layer', list(HAND))
def test_windows_equal_the_hand_computed_receptive_fields(arch, layer):
  rf = models.build(arch).receptive_field(layer)
  step, start, stop = HAND[arch, layer]
  peaks = {(0, 0): (0, 0), (0, 1): (3, 5), (1, 0): (6, 2), (1, 2): (13, 13)}
  top = planted_top(2, 3, (14, 14), peaks)
  for unit in range(2):
    for p in patches.top_patches(top, unit, rf, k=3):
      i, j = peaks.get((unit, p.rank), p.position)
      assert p.position == (i, j)
      assert p.window == (step * i + start, step * j + start, step * i + stop, step * j + stop)
      assert p.image == top['images'][unit, p.rank]


def test_k_limits_and_missing_images_are_skipped():
  rf = models.build('alexnet').receptive_field('conv5')
  top = planted_top(1, 4, (6, 6), {})
  top['images'][0, 2] = -1                          # fewer valid images than slots
  found = patches.top_patches(top, 0, rf, k=9)
  assert [p.rank for p in found] == [0, 1, 3]
  assert [p.rank for p in patches.top_patches(top, 0, rf, k=2)] == [0, 1]


def test_crop_is_the_window_with_grey_off_the_image():
  h, w = 20, 30
  image = np.stack([*np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), np.zeros((h, w))],
                   -1).astype(np.uint8)                # pixel (y, x) holds (y, x, 0)
  out = patches.crop(image, (-3, 25, 7, 35))          # 10 x 10, off the top and the right
  assert out.shape == (10, 10, 3)
  for a in range(10):
    for b in range(10):
      y, x = a - 3, 25 + b
      expected = (y, x, 0) if 0 <= y < h and 0 <= x < w else (patches.FILL,) * 3
      assert tuple(out[a, b]) == expected
  inside = patches.crop(image, (2, 3, 12, 13))
  np.testing.assert_array_equal(inside, image[2:12, 3:13])


def test_receptive_field_is_rebuilt_for_folders_that_lack_it():
  results = {'model': 'vgg16', 'layer': 'conv5_3'}
  rf = patches.receptive_field(results)
  assert (rf.origin, rf.spacing, rf.size) == (8.0, 16.0, 196.0)
  recorded = patches.receptive_field({'receptive_field': {'origin': 1.5, 'spacing': 2.0,
                                                          'size': 7.0}})
  assert (recorded.origin, recorded.spacing, recorded.size) == (1.5, 2.0, 7.0)
  with pytest.raises(common.VizError, match='names no model'):
    patches.receptive_field({'layer': 'conv5'})
