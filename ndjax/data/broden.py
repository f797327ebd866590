"""Reader for Broden-format probe sets (the format: index.csv, label.csv, category.csv, c_<cat>.csv, images/).

Everything here is I/O and bookkeeping at the edge of the pipeline: it turns a directory into
per-image uint8 images, int32 label layers (global label numbers) and image-level label lists.
Cheap structural checks (every csv parses, every referenced file exists, every image-level label
is known) happen in `open_broden`, before any forward pass; decoding errors surface per image.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import os
import pathlib

import numpy as np
from PIL import Image

INDEX_FIXED_COLUMNS = ('image', 'split', 'ih', 'iw', 'sh', 'sw')
MAX_LABEL = 256 * 256 - 1        # largest label number a mask's R + 256*G can carry


class BrodenFormatError(ValueError):
  """A probe directory that is not valid Broden format; the message is one line for the user."""


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  image: str                       # path relative to images/
  split: str
  ih: int
  iw: int
  sh: int
  sw: int
  mask_files: tuple[str, ...]      # pixel-level label layers (relative to images/), all categories
  image_labels: tuple[int, ...]    # image-level global label numbers (scene, texture), 0s dropped

  @property
  def size_key(self) -> tuple[int, int, int, int]:
    return (self.ih, self.iw, self.sh, self.sw)


@dataclasses.dataclass
class BrodenDataset:
  root: pathlib.Path
  categories: list[str]            # category.csv order
  label_names: list[str]           # index = global label number; [0] = '-'
  primary: np.ndarray              # int32 (n_labels,): category index of each label; -1 for 0/unused
  records: list[ImageRecord]

  @functools.cached_property
  def known(self) -> np.ndarray:
    """bool (n_labels,): numbers listed in label.csv."""
    return np.array([n != '-' for n in self.label_names])

  @property
  def num_labels(self) -> int:
    return len(self.label_names)

  def max_layers(self) -> int:
    return max((len(r.mask_files) for r in self.records), default=0)

  def max_image_labels(self) -> int:
    return max((len(r.image_labels) for r in self.records), default=0)

  def load_image(self, i: int) -> np.ndarray:
    """uint8 RGB (ih, iw, 3) at native size; never resized."""
    rec = self.records[i]
    path = self.root / 'images' / rec.image
    return self.decode_image(path, path, rec)

  def load_mask(self, rel: str, rec: ImageRecord) -> np.ndarray:
    path = self.root / 'images' / rel
    return self.decode_mask(path, path, rec)

  # Decoding is shared by every storage of the format (files here, records in tfds_broden.py):
  # `source` is a path or a file-like object, `where` names it in errors.
  def decode_image(self, source, where, rec: ImageRecord) -> np.ndarray:
    try:
      with Image.open(source) as im:
        arr = np.asarray(im.convert('RGB'))
    except (OSError, SyntaxError, ValueError) as e:
      raise BrodenFormatError(f'cannot decode image {where}: {e}') from None
    if arr.shape[:2] != (rec.ih, rec.iw):
      raise BrodenFormatError(
          f'image {where} is {arr.shape[1]}x{arr.shape[0]} but index.csv says {rec.iw}x{rec.ih}')
    return arr

  def decode_mask(self, source, where, rec: ImageRecord) -> np.ndarray:
    """One label layer as int32 global label numbers: R + 256*G (wide ints: no uint8 overflow)."""
    try:
      with Image.open(source) as im:
        _check_mask_mode(im, where)
        rgb = np.asarray(im.convert('RGB')).astype(np.int32)
    except BrodenFormatError:
      raise
    except (OSError, SyntaxError, ValueError) as e:
      raise BrodenFormatError(f'cannot decode mask {where}: {e}') from None
    if rgb.shape[:2] != (rec.sh, rec.sw):
      raise BrodenFormatError(
          f'mask {where} is {rgb.shape[1]}x{rgb.shape[0]} but index.csv says {rec.sw}x{rec.sh}')
    labels = rgb[..., 0] + 256 * rgb[..., 1]
    values = np.unique(labels)
    unknown = values[(values >= self.num_labels) |
                     ~self.known[np.minimum(values, self.num_labels - 1)]]
    unknown = unknown[unknown > 0]
    if len(unknown):
      raise BrodenFormatError(f'mask {where} holds label {int(unknown[0])}, which is not in '
                              'label.csv')
    return labels

  def load_labels(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (layers int32 (L, sh, sw) of global label numbers, image-level labels int32 (I,))."""
    rec = self.records[i]
    layers = [self.load_mask(rel, rec) for rel in rec.mask_files]
    stack = (np.stack(layers) if layers else np.zeros((0, rec.sh, rec.sw), np.int32))
    return stack, np.asarray(rec.image_labels, np.int32)


# Mask modes whose RGB conversion keeps R and G: RGB, RGBA (alpha dropped), P (palette -> RGB).
MASK_MODES = ('RGB', 'RGBA', 'P')


def _check_mask_mode(im: Image.Image, where) -> None:
  """Refuse masks whose pixels are not 8-bit R, G, B: their conversion invents other labels.

  Why: PIL converts anything to RGB without complaint. A grayscale (L) value v becomes
  (v, v, v), i.e. label 257*v; 16-bit, 1-bit and integer/float modes are rescaled or clipped; a
  16-bit-per-channel RGB PNG opens as mode RGB but keeps only each channel's high byte. Any of
  these would silently count the wrong labels, so it is a format error instead.
  """
  if im.mode not in MASK_MODES:
    what = f'mode {im.mode}'
  elif any(str(tile[3]).endswith(';16B') for tile in im.tile):    # raw mode of the PNG decoder
    what = f'16-bit-per-channel {im.mode}'
  else:
    return
  raise BrodenFormatError(f'mask {where} is a {what} image: Broden masks must be 8-bit RGB, RGBA '
                          'or palette images holding label = R + 256*G')


def _read_csv(path: pathlib.Path, required: tuple[str, ...]) -> list[dict[str, str]]:
  if not path.is_file():
    raise BrodenFormatError(f'{path} is missing: not a Broden-format directory '
                            '(expected index.csv, label.csv, category.csv, c_<category>.csv, images/)')
  try:
    with open(path, newline='') as f:
      reader = csv.DictReader(f)
      header = reader.fieldnames or []
      missing = [c for c in required if c not in header]
      if missing:
        raise BrodenFormatError(f'{path}: header lacks column(s) {", ".join(missing)}')
      return list(reader)
  except (UnicodeDecodeError, csv.Error) as e:
    raise BrodenFormatError(f'{path} is not a readable csv: {e}') from None


def _int(value: str, where: str) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise BrodenFormatError(f'{where}: expected an integer, got {value!r}') from None


def _float(value: str, where: str) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    raise BrodenFormatError(f'{where}: expected a number, got {value!r}') from None


def primary_from_coverage(coverage: np.ndarray, member: np.ndarray) -> np.ndarray:
  """int32 (N,) primary category of each label from its coverage (N, C) in the categories that
  list it (member, bool (N, C)); -1 for a label listed in none.

  The rule: the category with the largest coverage; ties go to the category that comes later in
  category.csv (NetDissect-Lite's rule). The one copy of it, for files and in-memory sets alike.
  """
  cov = np.where(member, coverage, -np.inf)
  # argmax takes the FIRST maximum: search the reversed category axis to prefer the later one
  last = cov.shape[1] - 1 - np.argmax(cov[:, ::-1], axis=1)
  return np.where(member.any(axis=1), last, -1).astype(np.int32)


def primary_categories(root: pathlib.Path, categories: list[str], num_labels: int) -> np.ndarray:
  """Primary category of each label from the c_<cat>.csv files (`primary_from_coverage`).

  The image counts in label.csv's `category` field are NOT coverage and are not used.
  """
  coverage = np.zeros((num_labels, len(categories)))
  member = np.zeros((num_labels, len(categories)), bool)
  for ci, cat in enumerate(categories):
    path = root / f'c_{cat}.csv'
    for r, row in enumerate(_read_csv(path, ('code', 'number', 'name', 'frequency', 'coverage'))):
      num = _int(row['number'], f'{path} row {r + 2} number')
      if not 0 < num < num_labels:
        raise BrodenFormatError(f'{path} row {r + 2}: label {num} is not in label.csv')
      coverage[num, ci] = _float(row['coverage'], f'{path} row {r + 2} coverage')
      member[num, ci] = True
  return primary_from_coverage(coverage, member)


def open_broden(root: str | os.PathLike, check_files: bool = True) -> BrodenDataset:
  """Parse and check a Broden directory. Raises BrodenFormatError with a one-line message."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise BrodenFormatError(f'dataset directory {root} does not exist')
  cat_rows = _read_csv(root / 'category.csv', ('name',))
  categories = [r['name'] for r in cat_rows]
  if not categories:
    raise BrodenFormatError(f'{root / "category.csv"} lists no categories')

  label_rows = _read_csv(root / 'label.csv', ('number', 'name'))
  numbers = [_int(r['number'], f'{root / "label.csv"} row {i + 2} number')
             for i, r in enumerate(label_rows)]
  if any(n <= 0 for n in numbers):
    raise BrodenFormatError(f'{root / "label.csv"}: label numbers must start at 1 (0 means none)')
  num_labels = max(numbers, default=0) + 1
  names = ['-'] * num_labels          # row 0 is absent in label.csv: fill the gap(s)
  for n, r in zip(numbers, label_rows):
    names[n] = r['name']

  primary = primary_categories(root, categories, num_labels)

  index_path = root / 'index.csv'
  rows = _read_csv(index_path, INDEX_FIXED_COLUMNS)
  records = []
  images_dir = root / 'images'
  for i, row in enumerate(rows):
    where = f'{index_path} row {i + 2}'
    sizes = [_int(row[c], f'{where} {c}') for c in ('ih', 'iw', 'sh', 'sw')]
    if min(sizes) <= 0:
      raise BrodenFormatError(f'{where}: image and mask sizes must be positive')
    masks, image_labels = [], []
    for cat in categories:
      cell = row.get(cat) or ''
      for item in filter(None, (s.strip() for s in cell.split(';'))):
        if item.lstrip('-').isdigit():
          num = int(item)
          if num == 0:                  # labels dropped for rarity appear as 0: "none"
            continue
          if not 0 < num < num_labels or names[num] == '-':
            raise BrodenFormatError(f'{where} ({cat}): label {num} is not in label.csv')
          image_labels.append(num)
        else:
          masks.append(item)
    rec = ImageRecord(row['image'], row['split'], *sizes, tuple(masks), tuple(image_labels))
    if check_files:
      for rel in (rec.image, *rec.mask_files):
        if not (images_dir / rel).is_file():
          raise BrodenFormatError(f'{where}: file images/{rel} does not exist')
    records.append(rec)
  if not records:
    raise BrodenFormatError(f'{index_path} lists no images')
  return BrodenDataset(root, categories, names, primary, records)


def display_name(name: str) -> str:
  """Report form of a label: strip the -c/-s category suffix, '_' -> ' '."""
  for suffix in ('-c', '-s'):
    if name.endswith(suffix):
      name = name[: -len(suffix)]
  return name.replace('_', ' ')
