"""In-memory Broden-format probe sets: arrays in, a `BrodenDataset` out, no files.

  ds = memory.from_arrays(
      images=[img0, img1],                                   # uint8 (H, W, 3), native size
      label_layers=[{'object': [obj0], 'part': [p0a, p0b]},  # per image: {category: layers} ...
                    [obj1]],                                 # ... or a plain list of layers
      image_labels=[{'scene': [12]}, [13]],                  # per image: {category: ints} or ints
      categories=['object', 'part', 'scene'],
      labels=['car', 'wheel', ...],                          # label k+1 = labels[k] (or {k: name})
      label_categories={1: 'object', 2: 'part', ...})        # or None: computed from coverage
  out = ndjax.api.dissect(model, ds, ['conv5'])

Why: a researcher who builds a probe set in a notebook (a new concept, a planted test) should not
have to write a directory to dissect on it. The object is a `BrodenDataset`: the pipeline, the
tally and `counts.npz` use it exactly as a directory's, and it checks its input as the directory
reader does (one-line `BrodenFormatError`s), so a bad array fails before any forward pass rather
than as a silently wrong count. Label layers hold global label numbers (0 = none), as decoded
Broden masks do; image-level label 0 is dropped, as in index.csv.

`root` is None: nothing here has files. What needs them cannot reopen this object from a path:
the report's image strips (`report._open_probe` reopens the probe set named in results.json) are
left out with a note; write the set with `ndjax.probes.broden_writer` to get them.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence

import numpy as np

from ndjax.data import broden
from ndjax.data.broden import BrodenDataset, BrodenFormatError, ImageRecord


@dataclasses.dataclass
class MemoryBroden(BrodenDataset):
  """A BrodenDataset whose images and label layers are arrays held in memory; `root` is None.

  The arrays are private read-only copies: a caller editing its own arrays mid-run cannot change
  what the two passes of a dissection see. Thread-safe (the loader decodes in threads): loading
  only reads them.
  """
  image_arrays: list[np.ndarray] = dataclasses.field(kw_only=True, repr=False)  # uint8 (ih, iw, 3)
  layer_arrays: list[np.ndarray] = dataclasses.field(kw_only=True, repr=False)  # int32 (L, sh, sw)

  def load_image(self, i: int) -> np.ndarray:
    """uint8 RGB (ih, iw, 3), the array given (read-only)."""
    return self.image_arrays[i]

  def load_labels(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (layers int32 (L, sh, sw) of global label numbers, image-level labels int32 (I,))."""
    return self.layer_arrays[i], np.asarray(self.records[i].image_labels, np.int32)

  def load_mask(self, rel: str, rec: ImageRecord) -> np.ndarray:
    """One label layer by its name in `rec.mask_files` (the names are made up: no files)."""
    i, j = self._mask_index[rel]
    return self.layer_arrays[i][j]

  @functools.cached_property
  def _mask_index(self) -> dict[str, tuple[int, int]]:
    return {rel: (i, j) for i, rec in enumerate(self.records)
            for j, rel in enumerate(rec.mask_files)}


def from_arrays(images: Sequence[np.ndarray], label_layers: Sequence, image_labels: Sequence | None,
                categories: Sequence[str], labels: Sequence[str] | Mapping[int, str], *,
                label_categories: Sequence[str] | Mapping[int, str] | None = None,
                mask_sizes: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
                names: Sequence[str] | None = None,
                splits: Sequence[str] | None = None) -> MemoryBroden:
  """A Broden-format probe set from arrays. Raises BrodenFormatError with a one-line message.

  images: per image a uint8 (H, W, 3) array (or one (N, H, W, 3) array); sizes may differ.
  label_layers: per image its pixel-level label layers, int (sh, sw) arrays of global label
    numbers (0 = none): a list (or an (L, sh, sw) array, or one (sh, sw) array), or a dict
    {category: list of layers} (the index.csv cells). All layers of an image share one size.
  image_labels: per image its image-level label numbers, a list or {category: list}; None: none.
  categories: category names in category.csv order (it breaks coverage ties: later wins).
  labels: label names: a list (label k+1 = labels[k]) or {number: name} (numbers >= 1).
  label_categories: each label's category, a list aligned with a list `labels` or {number:
    category}. None: each label's primary category is the category with the largest coverage in
    these arrays (ties to the later category), broden.primary_categories' rule; this needs the
    dict forms of label_layers / image_labels, which say which category each layer is in.
  mask_sizes: (sh, sw) of images without label layers, one for all or one per image; default
    (H // 2, W // 2), what the probes writer records. Layers given must agree with it.
  names, splits: per image, the record's `image` (shown in reports and errors; default
    'image<i>') and `split` (default 'train'; the pipeline uses every image).
  """
  label_names = _label_names(labels)
  cats = _categories(categories)
  n = _num_images(images)
  _check_length('label_layers', label_layers, n)
  if image_labels is not None:
    _check_length('image_labels', image_labels, n)
  names = _image_names(names, n)
  splits = ['train'] * n if splits is None else [str(s) for s in _check_length('splits', splits, n)]
  sizes = _mask_sizes(mask_sizes, n)
  known = np.array([name != '-' for name in label_names])

  per_image = [_one_image(i, images[i], label_layers[i],
                          None if image_labels is None else image_labels[i], cats, known, sizes[i],
                          names[i], splits[i]) for i in range(n)]
  image_arrays, records, tagged = (list(v) for v in zip(*per_image))
  primary = (_given_primary(label_categories, labels, label_names, cats) if label_categories
             is not None else _computed_primary(tagged, cats, len(label_names), names))
  return MemoryBroden(None, cats, label_names, primary, records, image_arrays=image_arrays,
                      layer_arrays=[stack for stack, _, _ in tagged])


def _one_image(i: int, image, layers, ints, cats: list[str], known: np.ndarray, size, name: str,
               split: str):
  """-> (read-only image, its ImageRecord, (layer stack, category of each layer, [(category,
  image-level label)])): everything one index.csv row would say, checked."""
  where = f'image {i} ({name})'
  image = _image(image, where)
  layers = _tagged(layers, cats, where, 'label_layers')
  stack, mask_files, tags = _layers(layers, image.shape[:2], size, known, where, name)
  image_level = _image_level(_tagged(ints, cats, where, 'image_labels'), known, where)
  rec = ImageRecord(name, split, *image.shape[:2], *stack.shape[1:], tuple(mask_files),
                    tuple(num for _, num in image_level))
  return image, rec, (stack, tags, image_level)


# ---- argument checks: each raises BrodenFormatError naming the argument and the problem ----------
def _fail(message: str):
  raise BrodenFormatError(f'from_arrays: {message}')


def _check_length(what: str, seq, n: int):
  if isinstance(seq, (str, bytes, Mapping)) or not hasattr(seq, '__len__'):
    _fail(f'{what} must be a sequence with one entry per image, got {type(seq).__name__}')
  if len(seq) != n:
    _fail(f'{what} has {len(seq)} entries but there are {n} images')
  return seq


def _num_images(images) -> int:
  if isinstance(images, (str, bytes, Mapping)) or not hasattr(images, '__len__'):
    _fail(f'images must be a list of uint8 (H, W, 3) arrays, got {type(images).__name__}')
  if len(images) == 0:
    _fail('images is empty: a probe set needs at least one image')
  return len(images)


def _categories(categories) -> list[str]:
  if isinstance(categories, (str, bytes)) or not hasattr(categories, '__iter__'):
    _fail(f'categories must be a list of names, got {type(categories).__name__}')
  cats = list(categories)
  if not cats:
    _fail('categories is empty')
  for c in cats:
    if not isinstance(c, str) or not c:
      _fail(f'category names must be non-empty strings, got {c!r}')
  if len(set(cats)) != len(cats):
    _fail(f'categories lists a name twice: {", ".join(cats)}')
  return cats


def _label_names(labels) -> list[str]:
  """-> label_names indexed by number, '-' in the gaps and at 0, as the directory reader makes."""
  if isinstance(labels, Mapping):
    items = list(labels.items())
  elif isinstance(labels, (str, bytes)) or not hasattr(labels, '__iter__'):
    _fail(f'labels must be a list of names or {{number: name}}, got {type(labels).__name__}')
  else:
    items = list(enumerate(labels, 1))
  if not items:
    _fail('labels is empty')
  for num, name in items:
    if not _is_int(num) or not 0 < num <= broden.MAX_LABEL:
      _fail(f'label number {num!r} must be an integer in 1..{broden.MAX_LABEL} (0 means none)')
    if not isinstance(name, str) or name in ('', '-'):
      _fail(f'label {num} has name {name!r}; names must be non-empty strings other than "-"')
  names = ['-'] * (max(int(num) for num, _ in items) + 1)
  for num, name in items:
    names[int(num)] = name
  return names


def _image_names(names, n: int) -> list[str]:
  if names is None:
    return [f'image{i}' for i in range(n)]
  names = [str(s) for s in _check_length('names', names, n)]
  if len(set(names)) != n:
    _fail('names lists an image name twice')
  return names


def _mask_sizes(mask_sizes, n: int) -> list[tuple[int, int] | None]:
  if mask_sizes is None:
    return [None] * n
  sizes = np.asarray(mask_sizes)
  if sizes.shape == (2,):
    sizes = np.broadcast_to(sizes, (n, 2))
  if sizes.shape != (n, 2) or not np.issubdtype(sizes.dtype, np.integer) or (sizes <= 0).any():
    _fail(f'mask_sizes must be one positive (sh, sw) or one per image ({n}), got shape '
          f'{sizes.shape} {sizes.dtype}')
  return [tuple(int(v) for v in s) for s in sizes]


def _image(image, where: str) -> np.ndarray:
  arr = np.asarray(image)
  if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or 0 in arr.shape:
    _fail(f'{where} is {arr.dtype} {arr.shape}; images must be uint8 (H, W, 3) RGB')
  return _frozen(arr, np.uint8)


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_list(value) -> bool:
  return not isinstance(value, (str, bytes)) and hasattr(value, '__len__')


def _tagged(entry, cats: list[str], where: str, what: str) -> list[tuple[str | None, object]]:
  """One image's entry -> [(category or None, item)] in category.csv order, as the reader lists
  a row's cells (the order does not change counts, only which layer is which)."""
  if entry is None:
    return []
  if isinstance(entry, np.ndarray) and entry.ndim == 2 and what == 'label_layers':
    entry = [entry]                             # one (sh, sw) layer
  if _is_int(entry) and what == 'image_labels':
    entry = [entry]                             # one label
  if isinstance(entry, Mapping):
    unknown = [c for c in entry if c not in cats]
    if unknown:
      _fail(f'{where} {what} has category {unknown[0]!r}, which is not in categories')
    out = []
    for c in cats:
      items = entry.get(c, [])
      if what == 'label_layers' and isinstance(items, np.ndarray) and items.ndim == 2:
        items = [items]
      if what == 'image_labels' and _is_int(items):
        items = [items]
      if not _is_list(items):
        _fail(f'{where} {what}[{c!r}] must be a list, got {type(items).__name__}')
      out.extend((c, item) for item in items)
    return out
  if not _is_list(entry):
    kind = 'integer label numbers' if what == 'image_labels' else '(sh, sw) integer arrays'
    _fail(f'{where} {what} must be a list of {kind} or {{category: list}}, got '
          f'{type(entry).__name__}')
  return [(None, item) for item in entry]


def _unknown_labels(values: np.ndarray, known: np.ndarray) -> np.ndarray:
  """Label numbers that are neither 0 nor in the label list (the directory reader's check, plus
  negatives, which a decoded mask cannot hold but an array can: they would index from the end)."""
  inside = (values >= 0) & (values < len(known))
  bad = ~inside | ~known[np.clip(values, 0, len(known) - 1)]
  return values[bad & (values != 0)]


def _layers(layers, image_hw, size, known, where: str, name: str):
  """-> (int32 (L, sh, sw) read-only stack, made-up mask file names, category of each layer)."""
  default = size or (image_hw[0] // 2, image_hw[1] // 2)
  arrays, files, tags = [], [], []
  for j, (cat, layer) in enumerate(layers):
    arr = np.asarray(layer)
    here = f'{where} layer {j}' + (f' ({cat})' if cat else '')
    if not np.issubdtype(arr.dtype, np.integer) or arr.ndim != 2:
      _fail(f'{here} is {arr.dtype} {arr.shape}; label layers must be integer (sh, sw) arrays')
    expected = arrays[0].shape if arrays else size
    if expected is not None and arr.shape != tuple(expected):
      source = 'its layer 0' if arrays else 'mask_sizes'
      _fail(f'{here} is {arr.shape[1]}x{arr.shape[0]} but {source} says '
            f'{expected[1]}x{expected[0]}: all layers of an image share one size')
    if 0 in arr.shape:
      _fail(f'{here} is empty ({arr.shape})')
    unknown = _unknown_labels(np.unique(arr), known)
    if len(unknown):
      _fail(f'{here} holds label {int(unknown[0])}, which is not in labels')
    arrays.append(arr)
    files.append(f'{name}#{j}' + (f'_{cat}' if cat else ''))
    tags.append(cat)
  sh, sw = arrays[0].shape if arrays else default
  stack = np.stack(arrays) if arrays else np.zeros((0, sh, sw), np.int32)
  return _frozen(stack, np.int32), files, tags


def _image_level(ints, known, where: str) -> list[tuple[str | None, int]]:
  """[(category or None, label)] with 0s dropped (a label too rare to keep, as in index.csv)."""
  out = []
  for cat, num in ints:
    if not _is_int(num):
      _fail(f'{where} image label {num!r} is not an integer label number')
    if num != 0 and len(_unknown_labels(np.array([int(num)]), known)):
      _fail(f'{where} image-level label {int(num)} is not in labels')
    if num != 0:
      out.append((cat, int(num)))
  return out


def _frozen(arr: np.ndarray, dtype) -> np.ndarray:
  out = np.array(arr, dtype=dtype, copy=True)
  out.setflags(write=False)
  return out


# ---- primary categories ------------------------------------------------------------------------
def _given_primary(label_categories, labels, label_names: list[str], cats: list[str]) -> np.ndarray:
  if isinstance(label_categories, Mapping):
    given = dict(label_categories)
  elif isinstance(labels, Mapping):
    _fail('label_categories must be {number: category} when labels is {number: name}')
  else:
    given = dict(enumerate(_check_length('label_categories', label_categories,
                                         len(label_names) - 1), 1))
  primary = np.full(len(label_names), -1, np.int32)
  for num, name in enumerate(label_names):
    if name == '-':
      continue
    if num not in given:
      _fail(f'label_categories lacks label {num} ({name})')
    if given[num] not in cats:
      _fail(f'label {num} ({name}) has category {given[num]!r}, which is not in categories')
    primary[num] = cats.index(given[num])
  extra = sorted(set(given) - {num for num, name in enumerate(label_names) if name != '-'})
  if extra:
    _fail(f'label_categories names label {extra[0]!r}, which is not in labels')
  return primary


def _coverage(tagged, num_labels: int, num_cats: int, cats: list[str], names: list[str]):
  """-> (coverage float64 (N, C), images int64 (N, C)), as the probes writer computes them for
  c_<category>.csv: per image and category, the fraction of the mask a label's pixels cover, or 1
  for an image-level label of that category (its pixels there are not added again); `images`
  counts the images holding the label in that category."""
  coverage = np.zeros((num_labels, num_cats))
  images = np.zeros((num_labels, num_cats), np.int64)
  for i, (stack, tags, image_level) in enumerate(tagged):
    if None in tags or any(cat is None for cat, _ in image_level):
      _fail(f'image {i} ({names[i]}) gives labels without categories: pass label_categories, or '
            'label_layers and image_labels as {category: list} to compute primary categories')
    pixels = stack.shape[1] * stack.shape[2]
    for c, cat in enumerate(cats):
      whole = {num for t, num in image_level if t == cat}
      mine = stack[np.array([t == cat for t in tags], bool)]
      nums, counts = np.unique(mine[mine > 0], return_counts=True)
      for num, count in zip(nums.tolist(), counts.tolist()):
        if num not in whole:
          coverage[num, c] += count / pixels
      for num in whole:
        coverage[num, c] += 1.0
      images[sorted(set(nums.tolist()) | whole), c] += 1
  return coverage, images


def _computed_primary(tagged, cats: list[str], num_labels: int, names: list[str]) -> np.ndarray:
  coverage, images = _coverage(tagged, num_labels, len(cats), cats, names)
  return broden.primary_from_coverage(coverage, images > 0)
