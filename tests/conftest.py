"""Shared test helpers: a hand-rolled Broden writer (independent of ndjax's own writer)."""
from __future__ import annotations

import csv
import pathlib

import numpy as np
import pytest
from PIL import Image


def write_mask(path: pathlib.Path, labels: np.ndarray) -> None:
  labels = np.asarray(labels, np.int64)
  rgb = np.zeros(labels.shape + (3,), np.uint8)
  rgb[..., 0] = labels % 256
  rgb[..., 1] = labels // 256
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(rgb).save(path)


def write_csv(path: pathlib.Path, header: list[str], rows: list[list]) -> None:
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def make_broden(root: pathlib.Path, categories: list[str], labels: dict[int, tuple[str, str]],
                images: list[dict], index_columns: list[str] | None = None) -> pathlib.Path:
  """Write a Broden directory by hand.

  labels: number -> (name, category); c_<cat>.csv gets each label of its category with a coverage
  computed from the images. images: dicts with 'image' (uint8 HxWx3), 'masks' {cat: [int arrays]},
  'image_labels' {cat: [ints]}.
  """
  root.mkdir(parents=True, exist_ok=True)
  cover = {n: 0.0 for n in labels}
  freq = {n: 0 for n in labels}
  rows = []
  for i, item in enumerate(images):
    img = item['image']
    name = f'src/img{i:04d}.jpg' if item.get('jpg', False) else f'src/img{i:04d}.png'
    (root / 'images' / 'src').mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / 'images' / name)
    sh = sw = None
    cells = {c: [] for c in categories}
    seen = set()
    for cat, layers in item.get('masks', {}).items():
      for j, lab in enumerate(layers):
        sh, sw = lab.shape
        mname = f'src/img{i:04d}_{cat}_{j}.png'
        write_mask(root / 'images' / mname, lab)
        cells[cat].append(mname)
        for n in np.unique(lab):
          if n > 0:
            cover[int(n)] += float(np.mean(lab == n))
            seen.add(int(n))
    for cat, nums in item.get('image_labels', {}).items():
      for n in nums:
        cells[cat].append(str(n))
        if n > 0:
          cover[n] += 1.0
          seen.add(n)
    for n in seen:
      freq[n] += 1
    if sh is None:
      sh, sw = item.get('mask_size', (img.shape[0] // 2, img.shape[1] // 2))
    rows.append([name, 'train', img.shape[0], img.shape[1], sh, sw] +
                [';'.join(cells[c]) for c in (index_columns or categories)])
  write_csv(root / 'index.csv', ['image', 'split', 'ih', 'iw', 'sh', 'sw'] + (index_columns or categories), rows)
  write_csv(root / 'label.csv', ['number', 'name', 'category', 'frequency', 'coverage', 'syns'],
            [[n, nm, f'{c}({freq[n]})', freq[n], f'{cover[n]:.4f}', ''] for n, (nm, c) in sorted(labels.items())])
  cat_rows = []
  for cat in categories:
    members = sorted(n for n, (_, c) in labels.items() if c == cat)
    write_csv(root / f'c_{cat}.csv', ['code', 'number', 'name', 'frequency', 'coverage'],
              [[k + 1, n, labels[n][0], freq[n], f'{cover[n]:.6f}'] for k, n in enumerate(members)])
    cat_rows.append([cat, min(members, default=0), max(members, default=0), len(members),
                     sum(freq[n] for n in members)])
  write_csv(root / 'category.csv', ['name', 'first', 'last', 'count', 'frequency'], cat_rows)
  return root


@pytest.fixture
def broden_factory(tmp_path):
  def factory(*args, name='broden', **kwargs):
    return make_broden(tmp_path / name, *args, **kwargs)
  return factory
