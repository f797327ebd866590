"""Label sets: the exact sufficient statistic of every formula over labels.

A formula over labels (`A OR B`, `(A OR B) AND NOT C`, ...) is true or false at a pixel according
to the SET of labels the pixel carries (its pixel-level labels in every mask layer plus its
image's image-level labels), and nothing else. So for any formula F and unit k, over the probe set
  |M_k ∩ F| = Σ_s unit_pixels[k, s] · F(s)        |F| = Σ_s pixels[s] · F(s)
where s runs over the distinct label sets that occur, `pixels[s]` counts the pixels that carry
exactly s and `unit_pixels[k, s]` those of them inside unit k's mask. Pass 2 counts these integers
with the same masks and the same kernel as the label counts (`iou.count_batch`), against a one-hot
of each image's sets instead of its labels; afterwards every formula of every unit is a small
matmul over the S sets and no pixel is read again (`formulas.py`). On the default probe set
S = 3,990 (282 labels, 3,000 images, 37.6 M mask pixels); an image holds ~19 sets.

Sets are numbered in order of first sight while counting (a registry shared by the loader's
threads) and renumbered canonically (sorted by their label numbers) when the pass ends, so the
result does not depend on thread timing.
"""
from __future__ import annotations

import dataclasses
import io
import threading

import numpy as np

from ndjax import labels as labels_lib

FILE = 'sets.npz'


def image_sets(im: labels_lib.ImageLabels) -> tuple[list[tuple[int, ...]], np.ndarray]:
  """The distinct label sets of one image and each mask pixel's set: (keys, local (X,) int).

  keys[j] is the sorted tuple of global label numbers of set j (() for unlabelled pixels)."""
  x = im.sets.shape[0]
  if im.sets.shape[1] == 0:
    return [()], np.zeros(x, np.int64)
  packed = np.packbits(im.sets, axis=1)                          # (X, ceil(n / 8)) bytes
  rows = np.ascontiguousarray(packed).view(np.dtype((np.void, packed.shape[1]))).ravel()
  uniq, local = np.unique(rows, return_inverse=True)
  members = np.unpackbits(uniq.view(np.uint8).reshape(len(uniq), -1), axis=1)[:, :len(im.ids)]
  keys = [tuple(int(i) for i in im.ids[np.flatnonzero(m)]) for m in members.astype(bool)]
  return keys, local.reshape(x)


class Registry:
  """Global numbers of the label sets seen so far; safe to call from the loader's threads."""

  def __init__(self):
    self._ids: dict[tuple[int, ...], int] = {}
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self._ids)

  def ids(self, keys: list[tuple[int, ...]]) -> np.ndarray:
    with self._lock:
      return np.array([self._ids.setdefault(k, len(self._ids)) for k in keys], np.int64)

  def keys(self) -> list[tuple[int, ...]]:
    with self._lock:
      return sorted(self._ids, key=self._ids.get)

  # a checkpoint holds the keys in numbering order, as one flat array and offsets (the flat
  # array starts with a -1 placeholder: Orbax does not save empty arrays)
  def state(self) -> dict:
    keys = self.keys()
    return dict(indptr=np.cumsum([1] + [len(k) for k in keys]).astype(np.int64),
                labels=np.array([-1] + [l for k in keys for l in k], np.int64))

  def restore(self, tree: dict) -> None:
    indptr, flat = np.asarray(tree['indptr']), np.asarray(tree['labels'])
    with self._lock:
      self._ids = {tuple(int(l) for l in flat[a:b]): i
                   for i, (a, b) in enumerate(zip(indptr[:-1], indptr[1:]))}


def image_side(im: labels_lib.ImageLabels | None, registry: Registry,
               num_cats: int) -> labels_lib.ImageLabels | None:
  """One image's sets as the count's label side: column j = the pixels of set j (one-hot), so
  `iou.count_batch` returns unit_pixels per set in its `inter` and pixels per set in
  `label_pixels`. The category columns are left empty (nothing is scored by category here)."""
  if im is None:
    return None
  keys, local = image_sets(im)
  onehot = np.zeros((len(local), len(keys)), bool)
  onehot[np.arange(len(local)), local] = True
  return labels_lib.ImageLabels(registry.ids(keys), onehot,
                                np.zeros((len(local), num_cats), bool), np.zeros(num_cats, bool))


def stack(images: list, registry: Registry, x_pixels: int, num_cats: int) -> labels_lib.LabelSide:
  """A batch's set side (`labels.stack` over `image_side`)."""
  return labels_lib.stack([image_side(im, registry, num_cats) for im in images], x_pixels,
                          num_cats)


class SetCounts:
  """Dataset-wide unit_pixels (K, S) and pixels (S,), growing as new sets appear."""

  def __init__(self, units: int):
    self.unit_pixels = np.zeros((units, 256), np.int64)
    self.pixels = np.zeros(256, np.int64)

  def _grow(self, size: int) -> None:
    cap = self.pixels.shape[0]
    if size > cap:
      cap = max(size, 2 * cap)
      self.unit_pixels = np.pad(self.unit_pixels, ((0, 0), (0, cap - self.pixels.shape[0])))
      self.pixels = np.pad(self.pixels, (0, cap - self.pixels.shape[0]))

  def add(self, batch: dict, side: labels_lib.LabelSide) -> None:
    """Scatter a batch's counts (`iou.count_batch` on a `stack` side) into the global arrays."""
    n = len(side.global_ids)
    if n == 0:
      return
    self._grow(int(side.global_ids.max()) + 1)
    self.unit_pixels[:, side.global_ids] += np.asarray(batch['inter'])[:, :n]
    self.pixels[side.global_ids] += side.label_pixels

  def state(self) -> dict:
    return dict(unit_pixels=self.unit_pixels, pixels=self.pixels)

  def restore(self, tree: dict) -> None:
    self.unit_pixels = np.array(tree['unit_pixels'], np.int64)
    self.pixels = np.array(tree['pixels'], np.int64)


@dataclasses.dataclass
class LabelSets:
  """The statistic of one layer/view: `members` (S, R) label numbers of each set, padded with -1
  (canonical order: sets sorted by their label tuples), `unit_pixels` (K, S), `pixels` (S,)."""
  members: np.ndarray
  unit_pixels: np.ndarray
  pixels: np.ndarray

  @classmethod
  def build(cls, registry: Registry, counts: SetCounts) -> 'LabelSets':
    keys = registry.keys()
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    width = max([len(k) for k in keys] + [1])
    members = np.full((len(keys), width), -1, np.int64)
    for row, i in enumerate(order):
      members[row, :len(keys[i])] = keys[i]
    s = len(keys)
    counts._grow(s)
    return cls(members, counts.unit_pixels[:, :s][:, order].copy(), counts.pixels[:s][order].copy())

  @property
  def num_sets(self) -> int:
    return len(self.pixels)

  def membership(self, num_labels: int) -> np.ndarray:
    """(S, num_labels) bool: does set s contain label c."""
    z = np.zeros((self.num_sets, num_labels + 1), bool)
    rows = np.repeat(np.arange(self.num_sets), self.members.shape[1])
    cols = self.members.ravel()
    z[rows, np.where(cols >= 0, cols, num_labels)] = True
    return z[:, :num_labels]

  def to_bytes(self) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, members=self.members, unit_pixels=self.unit_pixels,
                        pixels=self.pixels)
    return buf.getvalue()

  @classmethod
  def load(cls, path) -> 'LabelSets':
    with np.load(path, allow_pickle=False) as z:
      return cls(z['members'], z['unit_pixels'], z['pixels'])
