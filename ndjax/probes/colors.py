"""Eleven basic colour terms on a 32x32x32 RGB grid, derived from the XKCD colour survey.

Broden names every pixel with one of 11 basic colour terms from van de Weijer et al.'s colour-naming
model, looked up on a 32^3 grid (index = value // 8). That table is not distributed by any package
registry, so this module derives an honest replacement from public survey data: the XKCD survey's
named colours that matplotlib ships (`matplotlib._color_data.XKCD_COLORS`).

Derivation (deterministic, vectorised, well under a second):
  1. every XKCD name whose head word (its last word) is a basic term or an unambiguous synonym
     ('gray' -> grey, 'violet' -> purple, 'navy' -> blue, ...) becomes a labelled sample; names
     that mix terms ('blue/green') or whose head is ambiguous ('teal', 'olive') are skipped;
  2. each grid cell (at the centre of its 8-value RGB bin) is converted to CIELAB and given the
     distance-weighted vote of its K nearest labelled samples;
  3. a lightness/chroma rule overrides nearly achromatic cells (white / grey / black), because the
     survey has very few pure neutrals and their names are noisy ('pale grey' is #fdfdfe).

The table is swappable: `set_colour_table()` installs any (32, 32, 32) table of term indices, e.g. the
original van de Weijer table if a user has it.
"""
from __future__ import annotations

import functools

import numpy as np

COLOUR_TERMS = ('black', 'blue', 'brown', 'grey', 'green', 'orange', 'pink', 'purple', 'red',
                'white', 'yellow')
GRID = 32            # cells per RGB axis
BIN = 256 // GRID    # RGB values per cell

# Head words that name a basic term without doubt. Ambiguous heads (teal, olive, magenta, beige,
# maroon, gold, ...) are left out: a wrong survey label pulls a whole neighbourhood of cells.
_SYNONYMS = {
    'gray': 'grey', 'charcoal': 'grey', 'silver': 'grey',
    'violet': 'purple', 'lavender': 'purple', 'lilac': 'purple', 'plum': 'purple',
    'eggplant': 'purple',
    'navy': 'blue', 'azure': 'blue', 'cobalt': 'blue', 'sapphire': 'blue',
    'crimson': 'red', 'scarlet': 'red', 'cherry': 'red', 'blood': 'red',
    'chocolate': 'brown', 'umber': 'brown', 'sienna': 'brown', 'tan': 'brown', 'coffee': 'brown',
    'rose': 'pink', 'bubblegum': 'pink',
    'lime': 'green', 'mint': 'green', 'sage': 'green', 'grass': 'green', 'forest': 'green',
    'lemon': 'yellow', 'canary': 'yellow', 'butter': 'yellow',
    'tangerine': 'orange', 'pumpkin': 'orange',
}
_NEIGHBOURS = 7     # K of the K-nearest-samples vote

# Achromatic rule, in CIELAB (L* in 0..100, chroma C* = |(a*, b*)|).
_NEUTRAL_CHROMA = 9.0    # below this chroma a cell is a neutral: white, grey or black by lightness
_WHITE_L = 88.0          # neutrals at least this light are white ...
_BLACK_L = 22.0          # ... and darker than this black; between them grey
_DARK_L = 12.0           # very dark cells read as black unless strongly coloured (deep navy stays blue)
_DARK_CHROMA = 25.0
_PALE_L = 94.0           # very light, barely tinted cells (cream, off-white) read as white
_PALE_CHROMA = 16.0


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
  """sRGB in [0, 255] (any leading shape, last axis 3) -> CIELAB under D65, float64."""
  c = np.asarray(rgb, np.float64) / 255.0
  linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
  to_xyz = np.array([[0.4124564, 0.3575761, 0.1804375],
                     [0.2126729, 0.7151522, 0.0721750],
                     [0.0193339, 0.1191920, 0.9503041]])
  xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
  eps, kappa = 216 / 24389, 24389 / 27
  f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
  return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                   200 * (f[..., 1] - f[..., 2])], axis=-1)


def survey_samples() -> tuple[np.ndarray, np.ndarray]:
  """(rgb uint8 (n, 3), term index (n,)) for the XKCD colours whose name fixes a basic term."""
  from matplotlib import _color_data   # matplotlib is a project dependency; import lazily
  rgbs, terms = [], []
  for key, hex_code in sorted(_color_data.XKCD_COLORS.items()):
    name = key.split(':', 1)[1]
    if '/' in name or ' with ' in name:
      continue
    head = name.split()[-1]
    head = _SYNONYMS.get(head, head)
    if head not in COLOUR_TERMS:
      continue
    h = hex_code.lstrip('#')
    rgbs.append([int(h[i:i + 2], 16) for i in (0, 2, 4)])
    terms.append(COLOUR_TERMS.index(head))
  return np.array(rgbs, np.uint8), np.array(terms, np.int64)


def _derive_table() -> np.ndarray:
  sample_rgb, sample_terms = survey_samples()
  sample_lab = srgb_to_lab(sample_rgb)
  centres = np.arange(GRID) * BIN + (BIN - 1) / 2.0          # mean RGB value of each bin
  r, g, b = np.meshgrid(centres, centres, centres, indexing='ij')
  cell_lab = srgb_to_lab(np.stack([r, g, b], -1).reshape(-1, 3))

  n_terms = len(COLOUR_TERMS)
  votes = np.zeros((cell_lab.shape[0], n_terms))
  for start in range(0, cell_lab.shape[0], 4096):           # chunks keep the distance matrix small
    chunk = cell_lab[start:start + 4096]
    d2 = ((chunk[:, None, :] - sample_lab[None, :, :]) ** 2).sum(-1)
    nearest = np.argpartition(d2, _NEIGHBOURS, axis=1)[:, :_NEIGHBOURS]
    weights = 1.0 / (np.sqrt(np.take_along_axis(d2, nearest, 1)) + 1.0)
    rows = np.repeat(np.arange(chunk.shape[0]), _NEIGHBOURS)
    np.add.at(votes[start:start + 4096], (rows, sample_terms[nearest].ravel()), weights.ravel())
  table = np.argmax(votes, axis=1)   # argmax takes the first term on a tie: deterministic

  lightness = cell_lab[:, 0]
  chroma = np.hypot(cell_lab[:, 1], cell_lab[:, 2])
  neutral = chroma < _NEUTRAL_CHROMA
  index = COLOUR_TERMS.index
  table = np.where(neutral, np.where(lightness >= _WHITE_L, index('white'),
                                     np.where(lightness < _BLACK_L, index('black'), index('grey'))),
                   table)
  table = np.where((lightness < _DARK_L) & (chroma < _DARK_CHROMA), index('black'), table)
  table = np.where((lightness >= _PALE_L) & (chroma < _PALE_CHROMA), index('white'), table)
  return table.reshape(GRID, GRID, GRID).astype(np.uint8)


_installed_table: np.ndarray | None = None


@functools.lru_cache(maxsize=1)
def derived_colour_table() -> np.ndarray:
  """The XKCD-derived table, computed once per process (read-only)."""
  table = _derive_table()
  table.setflags(write=False)
  return table


def colour_table() -> np.ndarray:
  """uint8 (32, 32, 32): term index (into COLOUR_TERMS) of RGB cell (r // 8, g // 8, b // 8)."""
  return derived_colour_table() if _installed_table is None else _installed_table


def set_colour_table(table: np.ndarray | None) -> None:
  """Install another (32, 32, 32) term-index table (None restores the derived one)."""
  global _installed_table
  if table is None:
    _installed_table = None
    return
  table = np.asarray(table)
  if table.shape != (GRID, GRID, GRID) or table.min() < 0 or table.max() >= len(COLOUR_TERMS):
    raise ValueError(f'colour table must be ({GRID},{GRID},{GRID}) term indices in '
                     f'[0, {len(COLOUR_TERMS)}), got shape {table.shape}')
  _installed_table = np.array(table, np.uint8)
  _installed_table.setflags(write=False)


def name_colours(rgb_image: np.ndarray) -> np.ndarray:
  """uint8 RGB image (H, W, 3) -> int64 term indices (H, W) into COLOUR_TERMS."""
  image = np.asarray(rgb_image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}')
  cells = image // BIN
  return colour_table()[cells[..., 0], cells[..., 1], cells[..., 2]].astype(np.int64)
