"""Is a detector significant? Nulls for a unit's best IoU, p-values and Benjamini-Hochberg.

The statistic is the one the dissection reports: a unit's best IoU over all labels, each label
judged in its primary category (`tally.label_units(...).best_iou`). A null sample is the same
statistic of something that carries no more information about the labels than chance:
- directions: D random unit-norm directions of the same layer (a `directions` view: the same
  forward pass, each direction thresholded at its own top quantile like a unit). For a layer whose
  units are exchangeable with random directions (e.g. i.i.d. Gaussian filters) a unit's p-value is
  exactly uniform; a unit aligned with a concept beats the directions, which spread it over many.
- permutation: the label masks of each category moved to other images (a permutation of the
  images per category, within images of one mask size), N times; the unit's own masks stay. This
  breaks the link between what the unit sees and where the labels are, and keeps each label's
  pixels, each image's unit masks and the layout of every mask. All N copies are counted in ONE
  dissection (`PermutedLabels`: copy p's labels are renumbered c + p·L, its categories C + p·|C|,
  so each copy keeps its own relevant images for the 'paper' denominator), each image forwarded
  once.
p = (1 + #{null >= observed}) / (D + 1): never 0 (floor 1/(D+1)), uniform (discretely) for an
exchangeable unit, and valid with ties.
"""
from __future__ import annotations

import dataclasses
import threading

import numpy as np

from ndjax import iou as iou_lib
from ndjax.data.broden import BrodenDataset


def random_directions(units: int, draws: int, seed: int) -> np.ndarray:
  """(units, draws) float32, each column uniform on the unit sphere (normalised Gaussians)."""
  g = np.random.default_rng(seed).standard_normal((units, draws))
  return (g / np.linalg.norm(g, axis=0, keepdims=True)).astype(np.float32)


def p_values(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
  """(K,) p-values of `observed` (K,) against `null`: (D,) shared by every unit, or (K, D)."""
  observed = np.asarray(observed, np.float64)
  null = np.asarray(null, np.float64)
  null = np.broadcast_to(null, (len(observed), null.shape[-1]))
  return (1.0 + np.sum(null >= observed[:, None], axis=1)) / (null.shape[1] + 1.0)


def benjamini_hochberg(p: np.ndarray, q: float = 0.05) -> np.ndarray:
  """(K,) bool: the hypotheses rejected at false discovery rate q (step-up: the largest rank r with
  p_(r) <= q r / m, and every p-value up to it)."""
  p = np.asarray(p, np.float64)
  m = len(p)
  if m == 0:
    return np.zeros(0, bool)
  order = np.argsort(p, kind='stable')
  below = p[order] <= q * np.arange(1, m + 1) / m
  reject = np.zeros(m, bool)
  if below.any():
    reject[order[:np.flatnonzero(below)[-1] + 1]] = True
  return reject


def image_permutations(ds: BrodenDataset, draws: int, seed: int) -> np.ndarray:
  """(draws, num_cats, images) int: copy p moves category C's labels of image perm[p, C, i] onto
  image i; images are only exchanged with images of the same mask size."""
  rng = np.random.default_rng(seed)
  n = len(ds.records)
  groups: dict[tuple[int, int], list[int]] = {}
  for i, r in enumerate(ds.records):
    groups.setdefault((r.sh, r.sw), []).append(i)
  perms = np.broadcast_to(np.arange(n), (draws, len(ds.categories), n)).copy()
  for p in range(draws):
    for c in range(len(ds.categories)):
      for members in groups.values():
        members = np.asarray(members)
        perms[p, c, members] = members[rng.permutation(len(members))]
  return perms


@dataclasses.dataclass
class PermutedLabels(BrodenDataset):
  """The probe set with P = 1 + draws label copies: copy 0 is the set as it is, copy p >= 1 has
  category C's labels of image perms[p-1, C, i] on image i. Label c of copy p is number c + p·L
  (L = base.num_labels), its category C + p·|C|. Images are the base set's."""
  base: BrodenDataset | None = None
  perms: np.ndarray | None = None        # (draws, num_cats, images)
  _cache: dict = dataclasses.field(default_factory=dict, repr=False)
  _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

  @classmethod
  def of(cls, base: BrodenDataset, perms: np.ndarray) -> 'PermutedLabels':
    copies = 1 + len(perms)
    cats = [c if p == 0 else f'{c}#{p}' for p in range(copies) for c in base.categories]
    names = [n if p == 0 else f'{n}#{p}' for p in range(copies) for n in base.label_names]
    nc = len(base.categories)
    primary = np.concatenate([np.where(base.primary >= 0, base.primary + p * nc, -1)
                              for p in range(copies)]).astype(np.int32)
    return cls(root=base.root, categories=cats, label_names=names, primary=primary,
               records=base.records, base=base, perms=np.asarray(perms))

  @property
  def copies(self) -> int:
    return 1 + len(self.perms)

  def load_image(self, i: int) -> np.ndarray:
    return self.base.load_image(i)

  def _labels(self, j: int) -> tuple[np.ndarray, np.ndarray]:
    """The base set's labels of image j, decoded once (every copy reads them)."""
    with self._lock:
      hit = self._cache.get(j)
    if hit is None:
      hit = self.base.load_labels(j)
      with self._lock:
        self._cache[j] = hit
    return hit

  def load_labels(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    big_l, prim = self.base.num_labels, self.base.primary
    layers, image_level = [], []
    for p in range(self.copies):
      for c in range(len(self.base.categories)):
        j = i if p == 0 else int(self.perms[p - 1, c, i])
        lay, img = self._labels(j)
        keep = (lay > 0) & (prim[lay] == c)
        for k in np.flatnonzero(keep.reshape(len(lay), -1).any(axis=1)):
          layers.append(np.where(keep[k], lay[k] + p * big_l, 0))
        img = img[(img > 0) & (prim[img] == c)]
        image_level.extend((img + p * big_l).tolist())
    sh, sw = self.records[i].sh, self.records[i].sw
    stack = np.stack(layers) if layers else np.zeros((0, sh, sw), np.int32)
    return stack.astype(np.int32), np.asarray(image_level, np.int32)


def copy_counts(counts: iou_lib.Counts, num_labels: int, num_cats: int, p: int) -> iou_lib.Counts:
  """Copy p's counts in the base set's label and category numbers."""
  ls, cs = slice(p * num_labels, (p + 1) * num_labels), slice(p * num_cats, (p + 1) * num_cats)
  return iou_lib.Counts(counts.inter[:, ls].copy(), counts.label_pixels[ls].copy(),
                        counts.act_paper[:, cs].copy(), counts.act_lite[:, cs].copy(),
                        counts.act_pixels.copy())
