"""Streaming writer for a Broden-format probe directory (see the Broden format notes).

    with BrodenWriter(out_dir, labels=['red-c', 'house', 'roof', 'street-s', ...]) as writer:
      writer.add(image, {'color': [color_mask], 'object': [object_mask],
                         'part': [part_layer_1, part_layer_2], 'scene': [4]}, source='ade')
    # on leaving the block: csv files written, directory renamed into place

Label numbers in the masks given to `add` are 1-based positions in `labels` (0 = unlabelled). Labels
seen in fewer than `min_images` images are dropped like in real Broden: their pixels become 0 and an
image-level occurrence is written as the integer 0. The surviving labels are renumbered densely
1..K in vocabulary order (so label.csv has no holes); masks already on disk are rewritten only when
a number they hold actually changes.

Everything is built in a hidden sibling directory and renamed onto `out_dir` only when complete, so
`out_dir` never exists half-written: a reader sees either nothing or a finished set.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
import shutil
import uuid
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from ndjax.data.broden import MAX_LABEL   # largest number R + 256*G can carry

CATEGORIES = ('color', 'object', 'part', 'material', 'scene', 'texture')
INDEX_HEADER = ('image', 'split', 'ih', 'iw', 'sh', 'sw')


def encode_mask(labels: np.ndarray) -> np.ndarray:
  """Integer label map (h, w) -> RGB uint8 with label = R + 256*G, B = 0."""
  wide = np.asarray(labels).astype(np.int64)   # never do this arithmetic in uint8
  if wide.min(initial=0) < 0 or wide.max(initial=0) > MAX_LABEL:
    raise ValueError(f'mask labels must lie in [0, {MAX_LABEL}]')
  rgb = np.zeros(wide.shape + (3,), np.uint8)
  rgb[..., 0] = wide % 256
  rgb[..., 1] = wide // 256
  return rgb


def decode_mask(rgb: np.ndarray) -> np.ndarray:
  """RGB mask (h, w, 3) -> int64 label map R + 256*G (computed in a wide type)."""
  rgb = np.asarray(rgb)
  return rgb[..., 0].astype(np.int64) + 256 * rgb[..., 1].astype(np.int64)


@dataclasses.dataclass(frozen=True)
class BrodenSummary:
  """What `close()` wrote."""
  path: pathlib.Path
  n_images: int
  label_numbers: dict[str, int]               # kept label name -> final global number
  labels_per_category: dict[str, int]         # category -> number of labels it holds
  dropped: tuple[str, ...]                    # vocabulary labels dropped (fewer than min_images)


@dataclasses.dataclass
class _MaskFile:
  relative_path: str       # relative to images/
  labels: np.ndarray       # provisional label numbers present (sorted, nonzero)


class BrodenWriter:
  """Streams images and masks into a Broden directory; `close()` writes the csv files atomically."""

  def __init__(self, out_dir: str | os.PathLike, labels: Sequence[str], *,
               categories: Sequence[str] = CATEGORIES, min_images: int = 1,
               mask_size: tuple[int, int] | None = None, image_format: str = 'jpg',
               jpeg_quality: int = 95, synonyms: Mapping[str, Sequence[str]] | None = None,
               overwrite: bool = False):
    self.out_dir = pathlib.Path(out_dir)
    self.labels = tuple(labels)
    if len(set(self.labels)) != len(self.labels):
      raise ValueError('label names must be unique (a label spanning categories is ONE label)')
    if len(self.labels) > MAX_LABEL:
      raise ValueError(f'at most {MAX_LABEL} labels fit in R + 256*G')
    self.categories = tuple(categories)
    if min_images < 1:
      raise ValueError('min_images must be >= 1')
    if image_format not in ('jpg', 'png'):
      raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if self.out_dir.exists() and not overwrite:
      raise FileExistsError(f'{self.out_dir} exists (pass overwrite=True to replace it)')
    self.min_images = min_images
    self.mask_size = tuple(mask_size) if mask_size is not None else None
    self.image_format = image_format
    self.jpeg_quality = jpeg_quality
    self.synonyms = dict(synonyms or {})
    self.overwrite = overwrite

    self.out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A hidden sibling on the same filesystem, so the final rename is atomic.
    self._staging = self.out_dir.parent / f'.{self.out_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    (self._staging / 'images').mkdir(parents=True)
    self._closed = False

    n_labels, n_categories = len(self.labels) + 1, len(self.categories)
    # Running statistics, indexed by provisional number (row 0 = unlabelled, never reported).
    self._category_images = np.zeros((n_labels, n_categories), np.int64)
    self._category_coverage = np.zeros((n_labels, n_categories), np.float64)
    self._label_images = np.zeros(n_labels, np.int64)
    self._rows: list[dict] = []        # index.csv rows, with cells as lists of str | int
    self._mask_files: list[_MaskFile] = []
    self._names: set[str] = set()

  # ----------------------------------------------------------------------------------------------
  def add(self, image: np.ndarray, masks: Mapping[str, Iterable[np.ndarray | int]], *,
          source: str = 'synthetic', name: str | None = None, split: str | None = None) -> int:
    """Adds one image. masks: category -> list of int (sh, sw) label maps and/or int image labels.

    Returns the image's row number in index.csv (0-based).
    """
    if self._closed:
      raise RuntimeError('writer is closed')
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
      raise ValueError(f'image must be uint8 (H, W, 3), got {image.dtype} {image.shape}')
    unknown = set(masks) - set(self.categories)
    if unknown:
      raise ValueError(f'unknown categories {sorted(unknown)}; expected a subset of {self.categories}')
    row_number = len(self._rows)
    name = name if name is not None else f'{row_number:08d}'
    if '/' in source or '/' in name or (source, name) in self._names:
      raise ValueError(f'bad or duplicate image name {source}/{name}')
    self._names.add((source, name))
    split = split if split is not None else ('train' if row_number % 10 < 7 else 'val')
    ih, iw = image.shape[:2]
    sh, sw = self.mask_size if self.mask_size is not None else (ih // 2, iw // 2)

    (self._staging / 'images' / source).mkdir(exist_ok=True)
    image_path = f'{source}/{name}.{self.image_format}'
    pil = Image.fromarray(image, 'RGB')
    if self.image_format == 'jpg':
      pil.save(self._staging / 'images' / image_path, quality=self.jpeg_quality)
    else:
      pil.save(self._staging / 'images' / image_path)

    cells: dict[str, list] = {}
    labels_in_category: dict[str, set[int]] = {}
    seen_in_image = set()
    for category, items in masks.items():
      c = self.categories.index(category)
      items = list(items)
      arrays = [item for item in items if not _is_int(item)]
      pixel_counts: dict[int, int] = {}
      image_level = set()
      cell: list = []
      for item in items:
        if _is_int(item):
          label = int(item)
          self._check_label(label)
          cell.append(label)
          if label:
            image_level.add(label)
          continue
        labels_map = np.asarray(item)
        if labels_map.shape != (sh, sw) or not np.issubdtype(labels_map.dtype, np.integer):
          raise ValueError(f'{category} mask must be an integer ({sh}, {sw}) array, '
                           f'got {labels_map.dtype} {labels_map.shape}')
        present, counts = np.unique(labels_map, return_counts=True)
        for label, count in zip(present.tolist(), counts.tolist()):
          self._check_label(label)
          if label:
            pixel_counts[label] = pixel_counts.get(label, 0) + count
        layer = sum(1 for entry in cell if isinstance(entry, str)) + 1
        suffix = (f'{category}_{layer}' if category == 'part' or len(arrays) > 1 else category)
        mask_path = f'{source}/{name}_{suffix}.png'
        Image.fromarray(encode_mask(labels_map), 'RGB').save(self._staging / 'images' / mask_path)
        self._mask_files.append(_MaskFile(mask_path, present[present != 0].astype(np.int64)))
        cell.append(mask_path)
      cells[category] = cell
      # An image-level label covers the whole image once, whatever pixels also carry it.
      for label, count in pixel_counts.items():
        if label not in image_level:
          self._category_coverage[label, c] += count / (sh * sw)
      for label in image_level:
        self._category_coverage[label, c] += 1.0
      labels_in_category[category] = set(pixel_counts) | image_level
      for label in labels_in_category[category]:
        self._category_images[label, c] += 1
        seen_in_image.add(label)
    for label in seen_in_image:
      self._label_images[label] += 1
    self._rows.append(dict(image=image_path, split=split, ih=ih, iw=iw, sh=sh, sw=sw, cells=cells,
                           labels=labels_in_category))
    return row_number

  def _check_label(self, label: int) -> None:
    if not 0 <= label <= len(self.labels):
      raise ValueError(f'label {label} outside the vocabulary 0..{len(self.labels)}')

  # ----------------------------------------------------------------------------------------------
  def close(self) -> BrodenSummary:
    """Drops rare labels, writes the csv files, renames the directory into place."""
    if self._closed:
      raise RuntimeError('writer is closed')
    try:
      summary = self._finish()
    except BaseException:
      self.abort()
      raise
    self._closed = True
    return summary

  def abort(self) -> None:
    """Discards everything written so far; the target path is left untouched."""
    self._closed = True
    shutil.rmtree(self._staging, ignore_errors=True)

  def __enter__(self) -> 'BrodenWriter':
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if self._closed:
      return
    if exc_type is None:
      self.close()
    else:
      self.abort()

  def _finish(self) -> BrodenSummary:
    n_vocab = len(self.labels)
    kept = np.zeros(n_vocab + 1, bool)
    kept[1:] = self._label_images[1:] >= self.min_images
    final = np.zeros(n_vocab + 1, np.int64)          # provisional -> final number (0 = dropped)
    final[kept] = np.arange(1, kept.sum() + 1)

    # Rewrite only the masks whose numbers change (dropped, or shifted by a dropped label).
    identity = np.arange(n_vocab + 1)
    for mask_file in self._mask_files:
      if np.array_equal(final[mask_file.labels], identity[mask_file.labels]):
        continue
      path = self._staging / 'images' / mask_file.relative_path
      with Image.open(path) as png:
        labels_map = decode_mask(np.asarray(png.convert('RGB')))
      Image.fromarray(encode_mask(final[labels_map]), 'RGB').save(path)

    staging = self._staging
    self._write_index(staging / 'index.csv', final)
    label_numbers = self._write_labels(staging, kept, final)
    labels_per_category = self._write_categories(staging, kept, final)
    self._publish()
    dropped = tuple(name for i, name in enumerate(self.labels, 1) if not kept[i])
    return BrodenSummary(self.out_dir, len(self._rows), label_numbers, labels_per_category, dropped)

  def _write_index(self, path: pathlib.Path, final: np.ndarray) -> None:
    with open(path, 'w', newline='') as f:
      writer = csv.writer(f, lineterminator='\n')
      writer.writerow(INDEX_HEADER + self.categories)
      for row in self._rows:
        cells = []
        for category in self.categories:
          entries = row['cells'].get(category, [])
          cells.append(';'.join(entry if isinstance(entry, str) else str(int(final[entry]))
                                for entry in entries))
        writer.writerow([row['image'], row['split'], row['ih'], row['iw'], row['sh'], row['sw']]
                        + cells)

  def _write_labels(self, staging: pathlib.Path, kept: np.ndarray,
                    final: np.ndarray) -> dict[str, int]:
    label_numbers = {}
    with open(staging / 'label.csv', 'w', newline='') as f:
      writer = csv.writer(f, lineterminator='\n')
      writer.writerow(['number', 'name', 'category', 'frequency', 'coverage', 'syns'])
      for provisional in np.flatnonzero(kept):
        name = self.labels[provisional - 1]
        label_numbers[name] = int(final[provisional])
        category_field = ';'.join(
            f'{category}({self._category_images[provisional, c]})'
            for c, category in enumerate(self.categories) if self._category_images[provisional, c])
        writer.writerow([final[provisional], name, category_field, self._label_images[provisional],
                         _number(self._category_coverage[provisional].sum()),
                         ';'.join(self.synonyms.get(name, ()))])
    return label_numbers

  def _write_categories(self, staging: pathlib.Path, kept: np.ndarray,
                        final: np.ndarray) -> dict[str, int]:
    # Images that hold at least one kept label of the category.
    category_images = np.array([
        sum(1 for row in self._rows if any(kept[label] for label in row['labels'].get(category, ())))
        for category in self.categories], np.int64)

    labels_per_category = {}
    with open(staging / 'category.csv', 'w', newline='') as f:
      writer = csv.writer(f, lineterminator='\n')
      writer.writerow(['name', 'first', 'last', 'count', 'frequency'])
      for c, category in enumerate(self.categories):
        members = [p for p in np.flatnonzero(kept) if self._category_images[p, c]]
        numbers = [int(final[p]) for p in members]
        labels_per_category[category] = len(members)
        writer.writerow([category, min(numbers, default=0), max(numbers, default=0), len(members),
                         category_images[c]])
        with open(staging / f'c_{category}.csv', 'w', newline='') as cf:
          cwriter = csv.writer(cf, lineterminator='\n')
          cwriter.writerow(['code', 'number', 'name', 'frequency', 'coverage'])
          for code, provisional in enumerate(members, 1):
            cwriter.writerow([code, final[provisional], self.labels[provisional - 1],
                              self._category_images[provisional, c],
                              _number(self._category_coverage[provisional, c])])
    return labels_per_category

  def _publish(self) -> None:
    """Renames the finished staging directory onto out_dir (replacing it only if overwrite)."""
    try:
      os.rename(self._staging, self.out_dir)
      return
    except OSError:
      if not self.out_dir.exists():
        raise
      if not self.overwrite:
        raise FileExistsError(f'{self.out_dir} appeared while writing; not replacing it')
    # Move the old set aside first: the target is briefly absent but never half-written.
    retired = self.out_dir.parent / f'.{self.out_dir.name}.old-{uuid.uuid4().hex[:8]}'
    os.rename(self.out_dir, retired)
    os.rename(self._staging, self.out_dir)
    shutil.rmtree(retired, ignore_errors=True)


def _is_int(item) -> bool:
  return isinstance(item, (int, np.integer)) and not isinstance(item, bool)


def _number(value: float) -> str:
  return format(float(value), '.10g')
