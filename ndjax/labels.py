"""The label side of the count, built on the host, one image at a time, while the device counts.

Per image, the labels present are numbered 0..n-1 and the image becomes one 0/1 matrix over its
mask pixels X (`ImageLabels`); a batch stacks them into one `LabelSide` whose columns are
  [0, Ci)          L_c(x) of the image's own labels, as SETS (a pixel carrying c in several part
                   layers, or c also as an image-level label, counts once: IoU <= 1); an
                   image-level label covers every pixel;
  [Ci, Ci + C)     the primary categories of the pixel-level labels at x;
  Ci + C           1 on every pixel (the mask's own area falls out of the same product).
One matmul of a unit's mask against this matrix gives, per image, the intersections, the
categories the mask touches and the mask's area (`iou._count`).

Why per image and on the host: an image holds 5-20 labels while a batch holds 60-130, so the
product against the image's own columns is 4-8x smaller; and decoding the masks already happens
in the loader's threads, so building the matrix there costs the counting device nothing.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class ImageLabels:
  ids: np.ndarray        # (n,) int64 label numbers present, sorted (only labels with a category)
  sets: np.ndarray       # (X, n) bool L_c(x)
  pix_cat: np.ndarray    # (X, C) bool primary categories of the pixel-level labels at x
  img_cat: np.ndarray    # (C,) bool ... of the image-level labels


def image_labels(layers: np.ndarray, image_level: np.ndarray, primary: np.ndarray,
                 num_cats: int) -> ImageLabels:
  """One image's label side. layers: (L, sh, sw) label numbers (0 = none); image_level: (I,)
  numbers (0 = none); primary: (N,) category index of each number (-1: no primary category,
  such labels cannot be scored and are dropped)."""
  x_pixels = layers.shape[1] * layers.shape[2]
  pix = layers.reshape(len(layers), x_pixels)
  img = np.asarray(image_level).ravel()
  ids = np.union1d(np.unique(pix), np.unique(img))
  ids = ids[ids > 0]
  ids = ids[primary[ids] >= 0]
  sets = np.zeros((x_pixels, len(ids) + 1), bool)           # last column: labels dropped
  pix_cat = np.zeros((x_pixels, num_cats + 1), bool)        # last column: no category
  cat_of = np.append(primary[ids], num_cats)                 # local number -> category
  rows = np.arange(x_pixels)
  for layer in pix:
    local = _local(ids, layer)
    sets[rows, local] = True
    pix_cat[rows, cat_of[local]] = True
  img_local = _local(ids, img)
  img_local = img_local[img_local < len(ids)]
  sets[:, img_local] = True
  img_cat = np.zeros(num_cats, bool)
  img_cat[cat_of[img_local]] = True
  return ImageLabels(ids, sets[:, :-1], pix_cat[:, :-1], img_cat)


def _local(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Position of each value in sorted `ids`; len(ids) where absent."""
  pos = np.searchsorted(ids, values)
  hit = pos < len(ids)
  hit[hit] = ids[pos[hit]] == values[hit]
  return np.where(hit, pos, len(ids))


@dataclasses.dataclass
class LabelSide:
  side: np.ndarray          # (B, X, Ci + C + 1) bool, see the module docstring
  ids: np.ndarray           # (B, Ci) int32 batch-local number of each column; num_local = padding
  img_cat: np.ndarray       # (B, C) bool
  relevant: np.ndarray      # (B, C) bool: a label of category C anywhere on the image
  label_pixels: np.ndarray  # (n_present,) int64 |L_c| summed over the batch
  global_ids: np.ndarray    # (n_present,) label number of each batch-local number
  num_local: int            # bucketed n_present: the count arrays' label axis

  def device(self) -> dict:
    """The per-image arrays `iou.count_batch` takes."""
    return dict(side=self.side, ids=self.ids, img_cat=self.img_cat, relevant=self.relevant)


def bucket(n: int, least: int) -> int:
  """Pad a label count to a power of two (>= least): few shapes, few compiles."""
  return max(least, 1 << max(0, n - 1).bit_length())


def stack(images: list[ImageLabels | None], x_pixels: int, num_cats: int) -> LabelSide:
  """A batch's label side; None = no image in that slot (padding, bad image): all zeros."""
  real = [im for im in images if im is not None]
  present = np.unique(np.concatenate([im.ids for im in real])) if real else np.zeros(0, np.int64)
  num_local = bucket(len(present), 16)
  ci = bucket(max((len(im.ids) for im in real), default=0), 8)
  side = np.zeros((len(images), x_pixels, ci + num_cats + 1), bool)
  ids = np.full((len(images), ci), num_local, np.int32)
  img_cat = np.zeros((len(images), num_cats), bool)
  relevant = np.zeros((len(images), num_cats), bool)
  label_pixels = np.zeros(len(present), np.int64)
  for slot, im in enumerate(images):
    if im is None:
      continue
    n = len(im.ids)
    local = np.searchsorted(present, im.ids)
    side[slot, :, :n] = im.sets
    side[slot, :, ci:ci + num_cats] = im.pix_cat
    side[slot, :, -1] = True
    ids[slot, :n] = local
    img_cat[slot] = im.img_cat
    relevant[slot] = im.img_cat | im.pix_cat.any(axis=0)
    label_pixels[local] += im.sets.sum(axis=0)
  return LabelSide(side, ids, img_cat, relevant, label_pixels, present, num_local)
