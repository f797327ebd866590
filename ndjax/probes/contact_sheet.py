"""A contact sheet for any Broden-format directory: what the probe set is, at a glance.

One PNG: a block per category (category.csv order) of example images, each with that category's
masks overlaid in a colour per label and captioned with its largest labels (image-level labels such
as scene and texture are captioned only). Examples are spread evenly over the images that carry the
category, so the sheet is deterministic.

  python -m ndjax.probes.contact_sheet DIR [OUT.png]
"""
from __future__ import annotations

import colorsys
import csv
import os
import pathlib
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ndjax import fileio
from ndjax.data.broden import display_name
from ndjax.probes.broden_writer import decode_mask

CELL = 168                   # image side on the sheet, in pixels
CAPTION = 30                 # caption height under each image
COLUMNS = 8
ROWS = {'object': 3, 'part': 2}        # rows per category (others: 1)
OVERLAY_ALPHA = 0.5
# Overlay colours for Broden's colour terms: the colour itself, so the sheet reads at a glance.
TERM_RGB = {'black': (0, 0, 0), 'blue': (30, 80, 230), 'brown': (130, 80, 30),
            'grey': (128, 128, 128), 'green': (40, 170, 40), 'orange': (255, 140, 0),
            'pink': (255, 130, 190), 'purple': (140, 50, 170), 'red': (220, 20, 20),
            'white': (255, 255, 255), 'yellow': (255, 230, 0)}


def sheet_path(set_dir: str | os.PathLike) -> pathlib.Path:
  """Where a set's contact sheet goes: next to it, `<set>_contact_sheet.png`."""
  set_dir = pathlib.Path(set_dir)
  return set_dir.parent / f'{set_dir.name}_contact_sheet.png'


def _label_rgb(number: int, name: str) -> tuple[int, int, int]:
  if name.endswith('-c') and name[:-2] in TERM_RGB:
    return TERM_RGB[name[:-2]]
  hue = (number * 0.6180339887) % 1.0          # golden-ratio steps: neighbours differ
  return tuple(int(255 * v) for v in colorsys.hsv_to_rgb(hue, 0.85, 0.95))


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:                           # Pillow without FreeType sizes
    return ImageFont.load_default()


def _outline(where: np.ndarray) -> np.ndarray:
  """Pixels of a region with a 4-neighbour outside it (or on the image border)."""
  padded = np.pad(where, 1)
  inner = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
  return where & ~inner


def _read_rows(root: pathlib.Path) -> tuple[list[str], list[dict], dict[int, str]]:
  with open(root / 'category.csv', newline='') as f:
    categories = [row['name'] for row in csv.DictReader(f)]
  with open(root / 'index.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  with open(root / 'label.csv', newline='') as f:
    names = {int(row['number']): row['name'] for row in csv.DictReader(f)}
  return categories, rows, names


def _cell(root: pathlib.Path, row: dict, category: str, names: dict[int, str], font) -> Image.Image:
  with Image.open(root / 'images' / row['image']) as im:
    image = np.asarray(im.convert('RGB').resize((CELL, CELL), Image.BILINEAR), np.float32)
  items = [item for item in (row.get(category) or '').split(';') if item]
  image_labels = [int(item) for item in items if item.isdigit() and int(item)]
  ranked_layers: list[list[int]] = []
  for layer, item in enumerate(item for item in items if not item.isdigit()):
    with Image.open(root / 'images' / item) as png:
      labels = decode_mask(np.asarray(png.convert('RGB')))
    labels = np.asarray(Image.fromarray(labels.astype(np.int32)).resize((CELL, CELL), Image.NEAREST))
    present, counts = np.unique(labels[labels > 0], return_counts=True)
    ranked_layers.append([int(n) for n in present[np.argsort(-counts, kind='stable')]])
    # Object layers after the first hold coarser group labels of the same pixels: caption them,
    # but paint only the first so the specific labels stay visible.
    if category == 'object' and layer > 0:
      continue
    for number in present:
      where = labels == number
      rgb = np.asarray(_label_rgb(int(number), names.get(int(number), '')), np.float32)
      image[where] = image[where] * (1 - OVERLAY_ALPHA) + rgb * OVERLAY_ALPHA
      image[_outline(where)] = rgb                 # small regions (parts) stay visible
  cell = Image.new('RGB', (CELL, CELL + CAPTION), 'white')
  cell.paste(Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)), (0, 0))
  draw = ImageDraw.Draw(cell)
  ranked = list(dict.fromkeys(image_labels + [n for layer in ranked_layers for n in layer]))
  x, y = 2, CELL + 2
  for number in ranked[:4]:
    text = display_name(names.get(number, str(number)))
    width = draw.textlength(text, font=font) + 12
    if x + width > CELL and x > 2:
      if y > CELL + 2:
        break
      x, y = 2, y + CAPTION // 2
    draw.rectangle((x, y + 3, x + 7, y + 10), fill=_label_rgb(number, names.get(number, '')),
                   outline='black')
    draw.text((x + 10, y), text, fill='black', font=font)
    x += width + 4
  return cell


def write_contact_sheet(set_dir: str | os.PathLike, out_path: str | os.PathLike | None = None
                        ) -> pathlib.Path:
  """Draws the sheet for set_dir and writes it atomically (default: `sheet_path(set_dir)`)."""
  root = pathlib.Path(set_dir)
  out_path = pathlib.Path(out_path) if out_path is not None else sheet_path(root)
  categories, rows, names = _read_rows(root)
  font, title_font = _font(11), _font(16)
  blocks = []
  for category in categories:
    carrying = [row for row in rows if row.get(category)]
    if not carrying:
      continue
    wanted = COLUMNS * ROWS.get(category, 1)
    picks = np.unique(np.linspace(0, len(carrying) - 1, min(wanted, len(carrying))).round()
                      .astype(int))
    cells = [_cell(root, carrying[i], category, names, font) for i in picks]
    n_rows = (len(cells) + COLUMNS - 1) // COLUMNS
    block = Image.new('RGB', (COLUMNS * (CELL + 4), 24 + n_rows * (CELL + CAPTION + 4)), 'white')
    ImageDraw.Draw(block).text((4, 3), f'{category}  ({len(carrying)} images)', fill='black',
                               font=title_font)
    for i, cell in enumerate(cells):
      block.paste(cell, ((i % COLUMNS) * (CELL + 4), 24 + (i // COLUMNS) * (CELL + CAPTION + 4)))
    blocks.append(block)
  sheet = Image.new('RGB', (COLUMNS * (CELL + 4), sum(b.height for b in blocks) + 4 * len(blocks)),
                    (225, 225, 225))
  y = 0
  for block in blocks:
    sheet.paste(block, (0, y))
    y += block.height + 4
  out_path.parent.mkdir(parents=True, exist_ok=True)
  with fileio.atomic_open(out_path) as partial:
    sheet.save(partial, format='PNG')
  return out_path


if __name__ == '__main__':
  if len(sys.argv) not in (2, 3):
    print('usage: python -m ndjax.probes.contact_sheet DIR [OUT.png]', file=sys.stderr)
    sys.exit(2)
  print(write_contact_sheet(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None))
