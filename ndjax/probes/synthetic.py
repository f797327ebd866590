"""The embedded default probe set: a procedurally drawn, deterministic Broden-format directory.

Real Broden is a ~1 GB download; this module draws a small stand-in with the same structure so the
pipeline runs out of the box. Like real Broden, images come in four kinds that label different
subsets of categories, so many index.csv cells are empty:
  dtd           a full-image texture pattern          texture (image-level), color
  opensurfaces  2-4 regions drawn with material looks material, color
  pascal        1-3 objects on a plain background      object, part, color
  ade20k        a composed outdoor or indoor scene     scene, object, part, material, color
Colour is named per pixel with `colors.name_colours` on the final rendered image, sampled at mask
resolution at the same points as every other mask. Objects are drawn far to near; a later shape
overwrites the object, part and material labels of whatever it covers, so occlusion is respected
and every part pixel lies inside its own object's pixels.

Image i is drawn from `np.random.default_rng([seed, i])` alone, so the output is byte-identical for
a seed whatever the number of worker processes.
"""
from __future__ import annotations

import multiprocessing
import os
import pathlib
import shutil
import sys

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ndjax.probes import colors
from ndjax.probes.broden_writer import BrodenWriter

VERSION = 'synthetic_v1'     # bump when the drawing changes: it names the cache directory
KINDS = ('dtd', 'opensurfaces', 'pascal', 'ade20k')
KIND_PROBABILITIES = (0.2, 0.2, 0.25, 0.35)

TEXTURES = ('striped', 'banded', 'chequered', 'dotted', 'polka-dotted', 'grid', 'zigzagged',
            'crosshatched', 'honeycombed', 'lined', 'spiralled', 'swirly', 'marbled', 'bubbly',
            'woven', 'meshed', 'wrinkled', 'blotchy')
MATERIALS = ('wood', 'brick', 'stone', 'metal', 'glass', 'fabric', 'water', 'sand', 'asphalt',
             'tile', 'grass', 'carpet')
# object -> its parts. 'window', 'fabric', 'grass' and 'sand' span two categories, as in Broden.
PARTS = {
    'house': ('roof', 'chimney', 'door', 'window'), 'car': ('door', 'window', 'wheel', 'headlight'),
    'tree': ('trunk', 'crown'), 'boat': ('hull', 'mast', 'sail'),
    'person': ('head', 'hair', 'torso', 'arm', 'leg'), 'table': ('top', 'leg'),
    'chair': ('back', 'seat', 'leg'), 'lamp': ('shade', 'base'), 'cup': ('handle',),
    'bicycle': ('wheel', 'saddle'), 'flower': ('petal', 'stem'), 'bottle': ('cap',),
    'sofa': ('back', 'cushion', 'arm'), 'cabinet': ('door', 'handle'), 'monitor': ('screen',),
    'book': (), 'sun': (), 'cloud': (), 'mountain': (), 'road': (), 'sky': (), 'fence': (),
    'window': (), 'fabric': (), 'grass': (), 'sand': (), 'sea': (), 'wall': (), 'floor': (),
}
OBJECTS = tuple(PARTS)
PART_NAMES = tuple(dict.fromkeys(part for parts in PARTS.values() for part in parts))
# scene -> (ground object, [(object, min count, max count, height range as image fractions, where)])
# where: 'ground' anywhere on the ground band, 'near'/'far' its front/back, 'wall' on the wall,
# 'on' standing on a table drawn before.
SCENE_RECIPES = {
    'street-s': ('road', [('house', 1, 3, .35, .6, 'far'), ('tree', 0, 2, .3, .55, 'far'),
                          ('fence', 0, 1, .1, .16, 'far'), ('car', 1, 3, .14, .24, 'ground'),
                          ('bicycle', 0, 1, .14, .2, 'ground'), ('person', 0, 2, .25, .4, 'ground')]),
    'forest-s': ('grass', [('tree', 4, 8, .35, .8, 'ground'), ('flower', 0, 3, .07, .14, 'ground'),
                           ('person', 0, 1, .25, .4, 'ground')]),
    'beach-s': ('sand', [('boat', 0, 2, .12, .25, 'far'), ('person', 1, 3, .25, .4, 'near'),
                         ('fabric', 0, 1, .05, .1, 'near')]),
    'park-s': ('grass', [('tree', 1, 3, .3, .6, 'far'), ('fence', 0, 1, .1, .16, 'far'),
                         ('flower', 1, 4, .07, .14, 'ground'), ('bicycle', 0, 1, .14, .2, 'ground'),
                         ('person', 0, 2, .25, .4, 'ground')]),
    'harbor-s': ('sea', [('house', 1, 3, .2, .35, 'far'), ('boat', 2, 4, .15, .35, 'ground'),
                         ('person', 0, 1, .2, .3, 'far')]),
    'mountain-s': ('grass', [('tree', 1, 4, .25, .5, 'ground'), ('house', 0, 1, .15, .3, 'far'),
                             ('person', 0, 1, .25, .4, 'near')]),
    'kitchen-s': ('floor', [('window', 0, 1, .2, .35, 'wall'), ('cabinet', 1, 2, .35, .55, 'far'),
                            ('table', 1, 1, .2, .3, 'near'), ('chair', 0, 2, .3, .4, 'near'),
                            ('cup', 0, 2, .06, .09, 'on'), ('bottle', 1, 2, .1, .16, 'on')]),
    'living_room-s': ('floor', [('window', 1, 1, .2, .35, 'wall'), ('fabric', 0, 2, .3, .5, 'wall'),
                                ('sofa', 1, 1, .3, .4, 'far'), ('lamp', 0, 1, .35, .5, 'far'),
                                ('table', 0, 1, .15, .22, 'near'), ('person', 0, 1, .4, .6, 'near'),
                                ('book', 0, 2, .06, .1, 'on'), ('cup', 0, 1, .06, .09, 'on')]),
    'office-s': ('floor', [('window', 0, 1, .2, .35, 'wall'), ('cabinet', 0, 1, .35, .5, 'far'),
                           ('table', 1, 1, .25, .3, 'near'), ('chair', 0, 1, .3, .4, 'near'),
                           ('person', 0, 1, .4, .6, 'far'), ('monitor', 1, 1, .12, .18, 'on'),
                           ('book', 0, 2, .06, .1, 'on'), ('lamp', 0, 1, .12, .18, 'on'),
                           ('cup', 0, 1, .06, .09, 'on')]),
}
SCENES = tuple(SCENE_RECIPES)
PASCAL_THINGS = ('car', 'person', 'boat', 'bicycle', 'chair', 'table', 'bottle', 'cup', 'sofa',
                 'monitor', 'lamp', 'flower', 'book', 'tree', 'house', 'fabric')
ASPECT = dict(house=1.2, car=2.2, tree=.7, boat=1.1, person=.42, table=1.6, chair=.6, lamp=.45,
              cup=.9, bicycle=1.6, flower=.5, bottle=.35, book=.7, fence=3.0, sofa=2.0, cabinet=.8,
              monitor=1.2, window=.8, fabric=.5, mountain=2.0, cloud=2.0, sun=1.0)
COLOUR_LABELS = tuple(f'{term}-c' for term in colors.COLOUR_TERMS)
VOCABULARY = tuple(dict.fromkeys(COLOUR_LABELS + OBJECTS + PART_NAMES + MATERIALS + SCENES + TEXTURES))
LABEL = {name: number for number, name in enumerate(VOCABULARY, 1)}   # writer numbering, 1-based
_COLOUR_LABEL_OF_TERM = np.array([LABEL[name] for name in COLOUR_LABELS], np.int32)

_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """(yy, xx) float32 (size, size) pixel-centre coordinates in [0, 1)."""
  if size not in _GRIDS:
    axis = (np.arange(size, dtype=np.float32) + .5) / size
    _GRIDS[size] = np.meshgrid(axis, axis, indexing='ij')
  return _GRIDS[size]


def _noise(r, size: int, rows: int, cols: int | None = None) -> np.ndarray:
  """Smooth value noise in [0, 1]: a rows x cols random lattice resized bicubically."""
  lattice = r.random((rows, cols or rows)).astype(np.float32)
  smooth = np.asarray(Image.fromarray(lattice, 'F').resize((size, size), Image.BICUBIC))
  return np.clip(smooth, 0, 1)


def _mix(t, a, b) -> np.ndarray:
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return a + (b - a) * np.asarray(t, np.float32)[..., None]


def _jitter(r, rgb, amount=25) -> np.ndarray:
  return np.clip(np.asarray(rgb) + r.integers(-amount, amount + 1, 3), 0, 255).astype(np.float32)


def _pick(r, items):
  return items[int(r.integers(len(items)))]


def _frac(x):
  return x - np.floor(x)


def surface_look(name: str, r, size: int) -> np.ndarray:
  """float32 (size, size, 3) in 0..255: the whole canvas drawn as a material, sky or foliage."""
  yy, xx = _grid(size)
  if name == 'sky':
    return _mix(yy, _jitter(r, (70, 130, 215), 20), _jitter(r, (185, 215, 240), 15))
  if name == 'foliage':
    return _mix(_noise(r, size, 30), _jitter(r, (30, 90, 30), 15), _jitter(r, (90, 160, 60), 20))
  if name == 'wood':
    base = _jitter(r, (150, 95, 50))
    grain = _frac(r.uniform(8, 18) * (yy + .25 * _noise(r, size, 3, 5)) + .3 * xx) ** 2
    return _mix(grain, base, base * .6)
  if name in ('brick', 'tile'):
    brick = name == 'brick'
    height = size / (r.integers(9, 15) if brick else r.integers(4, 9))
    row_pos = yy * size / height
    row = np.floor(row_pos).astype(np.int32)
    col_pos = xx * size / (height * (2.2 if brick else 1)) + (.5 * (row % 2) if brick else 0)
    col, fy, fx = np.floor(col_pos).astype(np.int32), _frac(row_pos), _frac(col_pos)
    shade = r.random((size + 2, size + 2)).astype(np.float32)[row, col + 1]
    base = _jitter(r, (170, 70, 50)) if brick else r.integers(60, 256, 3).astype(np.float32)
    look = base * (.8 + .35 * shade)[..., None]
    mortar = (fy < .12) | (fx < (.05 if brick else .08))
    look[mortar] = (195, 190, 180) if brick else (225, 225, 220)
    return look
  if name == 'stone':
    base = _jitter(r, (135, 128, 118), 20)
    look = _mix(_noise(r, size, 9), base * .7, base * 1.2)
    look[np.abs(_noise(r, size, 6) - .5) < .02] *= .45                   # cracks
    return look
  if name == 'metal':
    base = _jitter(r, (165, 170, 178), 15)
    brushed = _noise(r, size, 90, 3)
    return base * (.7 + .35 * brushed + .3 * np.exp(-((xx + yy - 1) * 4) ** 2))[..., None]
  if name == 'glass':
    look = _mix(yy, _jitter(r, (175, 215, 235), 15), _jitter(r, (110, 150, 180), 15))
    look[_frac((xx + yy) * 2.5) < .12] = (240, 248, 255)                 # reflections
    return look
  if name in ('fabric', 'carpet'):
    base = r.integers(30, 235, 3).astype(np.float32)
    if name == 'fabric':
      weave = ((np.floor(xx * size / 2) + np.floor(yy * size / 2)) % 2) * .12
      folds = .15 * np.sin(2 * np.pi * xx * r.uniform(3, 8))
      return base * (.85 + weave + folds)[..., None]
    return base * (.75 + .3 * r.random((size, size)) + .2 * _noise(r, size, 10))[..., None]
  if name == 'water':
    ripple = np.sin(2 * np.pi * (yy * r.uniform(10, 20) + .6 * _noise(r, size, 4, 8)))
    look = _jitter(r, (40, 100, 170), 20) * (.85 + .15 * ripple)[..., None]
    look[ripple > .97] = (225, 235, 245)
    return look
  if name == 'sand':
    return _jitter(r, (215, 190, 140), 15) * (.82 + .15 * r.random((size, size))
                                            + .12 * _noise(r, size, 6))[..., None]
  if name == 'asphalt':
    return _jitter(r, (72, 72, 75), 10) * (.8 + .45 * r.random((size, size)) ** 3)[..., None]
  if name == 'grass':
    blades = _noise(r, size, 5, 90) * .6 + .4 * r.random((size, size))
    return _mix(blades, _jitter(r, (45, 110, 35), 15), _jitter(r, (110, 175, 70), 15))
  raise ValueError(f'unknown surface {name!r}')


def _hex_edges(yy, xx, width, thickness):
  """Edges of a hexagonal tiling with cell width `width` (image fractions)."""
  height = width * np.sqrt(3)
  def nearest(ox, oy):
    dx = (_frac(xx / width - ox + .5) - .5) * width
    dy = (_frac(yy / height - oy + .5) - .5) * height
    return np.hypot(dx, dy), np.abs(dx)
  (da, xa), (db, xb) = nearest(0, 0), nearest(.5, .5)
  return (np.abs(da - db) < thickness) | (np.where(da < db, xa, xb) > width / 2 - thickness / 2)


def texture_image(name: str, r, size: int) -> np.ndarray:
  """float32 (size, size, 3): a full-image procedural pattern named after a DTD class."""
  yy, xx = _grid(size)
  angle = r.uniform(0, np.pi)
  u, v = xx * np.cos(angle) + yy * np.sin(angle), -xx * np.sin(angle) + yy * np.cos(angle)
  f = r.uniform(6, 13)
  if name == 'striped':
    t = _frac(u * f) < r.uniform(.35, .6)
  elif name == 'banded':
    palette = r.integers(0, 256, (3, 3)).astype(np.float32)
    return palette[(np.floor(u * r.uniform(2, 4)) % 3).astype(np.int32)]
  elif name == 'chequered':
    t = (np.floor(u * f / 1.5) + np.floor(v * f / 1.5)) % 2
  elif name in ('dotted', 'polka-dotted'):
    scale = f * (2.2 if name == 'dotted' else 1)
    t = np.hypot(_frac(u * scale) - .5, _frac(v * scale) - .5) < (.14 if name == 'dotted' else .28)
  elif name == 'grid':
    t = (_frac(u * f) < .1) | (_frac(v * f) < .1)
  elif name == 'zigzagged':
    t = _frac(u * f / 2 + 1.5 * np.abs(_frac(v * f / 2) - .5)) < .5
  elif name == 'crosshatched':
    t = (_frac((xx + yy) * f * 2) < .18) | (_frac((xx - yy) * f * 2) < .18)
  elif name == 'honeycombed':
    t = _hex_edges(yy, xx, 1 / f, .012)
  elif name == 'lined':
    t = _frac(u * f * 1.5) < .08
  elif name == 'spiralled':
    cy, cx = r.uniform(.3, .7, 2)
    theta = np.arctan2(yy - cy, xx - cx) / (2 * np.pi)
    t = _frac(theta * r.integers(1, 4) + np.hypot(yy - cy, xx - cx) * f) < .5
  elif name == 'swirly':
    t = .5 + .5 * np.sin(2 * np.pi * (u * f / 3 + 2 * _noise(r, size, 4)))
  elif name == 'marbled':
    t = (.5 + .5 * np.sin(2 * np.pi * (u * 3 + 4 * _noise(r, size, 5)))) ** 4
  elif name == 'bubbly':
    pil = Image.new('L', (size, size))
    draw = ImageDraw.Draw(pil)
    for cx, cy, radius in zip(*r.uniform(0, size, (2, 40)), r.uniform(size / 40, size / 8, 40)):
      draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=1,
                   width=max(1, int(radius / 5)))
    t = np.asarray(pil, np.float32)
  elif name == 'woven':
    across = (np.floor(u * f) + np.floor(v * f)) % 2
    t = np.where(across == 1, np.sin(np.pi * _frac(v * f * 3)), np.sin(np.pi * _frac(u * f * 3)))
  elif name == 'meshed':
    t = np.abs(_frac(u * f) - .5) + np.abs(_frac(v * f) - .5) > .4
  elif name == 'wrinkled':
    t = np.abs(np.sin(2 * np.pi * (3 * _noise(r, size, 5) + _noise(r, size, 11)))) ** 3
  elif name == 'blotchy':
    t = np.clip((_noise(r, size, 7) - .5) * 6 + .5, 0, 1)
  else:
    raise ValueError(f'unknown texture {name!r}')
  return _mix(t, r.integers(0, 256, 3), r.integers(0, 256, 3))


class _Canvas:
  """An image being drawn plus its full-resolution object, two part layers and material maps."""

  def __init__(self, size: int, r):
    self.size, self.r = size, r
    self.image = np.zeros((size, size, 3), np.float32)
    self.object = np.zeros((size, size), np.int32)
    self.part = np.zeros((2, size, size), np.int32)
    self.material = np.zeros((size, size), np.int32)
    self._looks: dict = {}      # one look per material per image: repeated surfaces match
    self.begin(None, (0, 0, size, size))

  def begin(self, name: str | None, box) -> None:
    """Starts object `name` (None: unlabelled) in box (x, y, width, height), in pixels."""
    self.owner, self.box = (LABEL[name] if name else 0), box

  def look(self, look) -> np.ndarray:
    key = look if isinstance(look, str) else tuple(int(c) for c in look)
    if key not in self._looks:
      if isinstance(key, str):
        self._looks[key] = surface_look(key, self.r, self.size)
      else:                      # a plain colour, lit from above
        self._looks[key] = np.asarray(key, np.float32) * (1.1 - .2 * _grid(self.size)[0])[..., None]
    return self._looks[key]

  def paint(self, kind: str, coords, look, part: str | None = None, layer: int = 1,
            width: float = .05) -> None:
    """Draws one shape of the current object. coords: box fractions x0, y0, x1, y1, ...

    kind: rect | ellipse | ring | poly | line (ring and line use `width`, a fraction of box width).
    A part shape labels its layer and hides deeper layers below it; a plain shape hides all parts.
    """
    x, y, w, h = self.box
    points = [(x + fx * w, y + fy * h) for fx, fy in zip(coords[::2], coords[1::2])]
    pixels = max(1, int(round(width * w)))
    pil = Image.new('L', (self.size, self.size))
    draw = ImageDraw.Draw(pil)
    filled = dict(rect=draw.rectangle, ellipse=draw.ellipse, poly=draw.polygon)
    if kind in filled:
      filled[kind](points, fill=1)
    elif kind == 'ring':
      draw.ellipse(points, outline=1, width=pixels)
    else:
      draw.line(points, fill=1, width=pixels)
    mask = np.asarray(pil, bool)
    self.image[mask] = self.look(look)[mask]
    self.object[mask] = self.owner
    self.material[mask] = LABEL[look] if isinstance(look, str) and look in MATERIALS else 0
    if part:
      self.part[layer - 1][mask] = LABEL[part]
      self.part[layer:, mask] = 0
    else:
      self.part[:, mask] = 0


def _draw_object(c: _Canvas, name: str, box) -> None:
  """Draws object `name` filling box (x, y, width, height) in pixels, parts included."""
  r = c.r
  c.begin(name, box)
  paint = c.paint
  if name == 'house':
    paint('rect', (0, .35, 1, 1), _pick(r, ('brick', 'stone', (235, 225, 200), (205, 190, 120))))
    paint('rect', (.68, .05, .8, .3), 'brick', 'chimney')
    paint('poly', (-.06, .38, .5, 0, 1.06, .38), _pick(r, ('tile', (150, 40, 30), (90, 60, 50))), 'roof')
    paint('rect', (.42, .62, .58, 1), 'wood', 'door')
    for x0 in (.12, .68):
      paint('rect', (x0, .5, x0 + .2, .72), 'glass', 'window')
  elif name == 'car':
    body = _pick(r, ((200, 30, 30), (30, 60, 170), (230, 230, 230), (30, 30, 30), 'metal'))
    paint('rect', (0, .4, 1, .85), body)
    paint('poly', (.2, .42, .3, .05, .72, .05, .86, .42), body)
    paint('rect', (.3, .08, .58, .8), body, 'door')
    paint('poly', (.33, .4, .36, .12, .55, .12, .55, .4), 'glass', 'window', layer=2)
    paint('poly', (.61, .4, .61, .12, .7, .12, .8, .4), 'glass', 'window')
    paint('ellipse', (.93, .45, 1, .56), (250, 240, 150), 'headlight')
    for x0 in (.08, .68):
      paint('ellipse', (x0, .62, x0 + .24, 1), (35, 35, 35), 'wheel')
  elif name == 'tree':
    paint('rect', (.42, .55, .58, 1), 'wood', 'trunk')
    if r.random() < .5:
      paint('ellipse', (0, 0, 1, .7), 'foliage', 'crown')
    else:
      paint('poly', (.5, 0, 1, .75, 0, .75), 'foliage', 'crown')
  elif name == 'boat':
    paint('line', (.5, 0, .5, .62), (90, 65, 40), 'mast', width=.03)
    paint('poly', (.53, .04, .53, .55, .92, .55), (245, 245, 240), 'sail')
    paint('poly', (.47, .1, .47, .55, .15, .55), (245, 240, 225), 'sail')
    paint('poly', (0, .6, 1, .6, .85, 1, .15, 1), _pick(r, ('wood', (180, 30, 30), (240, 240, 240))), 'hull')
  elif name == 'person':
    skin = _pick(r, ((240, 200, 170), (200, 150, 110), (120, 80, 55)))
    trousers = _pick(r, ((40, 50, 110), (50, 45, 40), (120, 110, 90)))
    for x0 in (.28, .53):
      paint('rect', (x0, .6, x0 + .19, 1), trousers, 'leg')
    paint('rect', (.25, .25, .75, .62), 'fabric', 'torso')
    for x0 in (.08, .76):
      paint('rect', (x0, .27, x0 + .16, .6), skin, 'arm')
    paint('ellipse', (.32, 0, .68, .26), skin, 'head')
    paint('ellipse', (.32, -.01, .68, .1), _pick(r, ((30, 20, 10), (110, 70, 30), (220, 190, 110))),
          'hair', layer=2)
  elif name in ('table', 'chair'):
    look = _pick(r, ('wood', 'metal') if name == 'table' else ('wood', 'fabric', 'metal'))
    legs = (.05, .85) if name == 'table' else (.15, .8)
    top = .62 if name == 'chair' else .15
    for x0 in legs:
      paint('rect', (x0, top, x0 + .08, 1), look, 'leg')
    if name == 'table':
      paint('rect', (0, 0, 1, .15), look, 'top')
    else:
      paint('rect', (.15, 0, .3, .55), look, 'back')
      paint('rect', (.15, .5, .9, .62), look, 'seat')
  elif name == 'lamp':
    paint('rect', (.47, .3, .53, .92), 'metal')
    paint('ellipse', (.25, .88, .75, 1), 'metal', 'base')
    paint('poly', (.15, .38, .32, 0, .68, 0, .85, .38), _pick(r, ((245, 235, 200), (200, 60, 50), (60, 120, 60))), 'shade')
  elif name == 'cup':
    colour = _pick(r, ((245, 245, 245), (200, 40, 40), (40, 90, 180), (240, 200, 40)))
    paint('ring', (.55, .2, .98, .7), colour, 'handle', width=.1)
    paint('rect', (0, 0, .72, 1), colour)
  elif name == 'bicycle':
    frame = _pick(r, ((200, 30, 30), (30, 30, 30), (30, 120, 200), (240, 200, 0)))
    for x0 in (0, .58):
      paint('ring', (x0, .45, x0 + .42, 1), (30, 30, 30), 'wheel', width=.04)
    paint('line', (.21, .72, .45, .45, .79, .72, .72, .35, .45, .45, .21, .72), frame, width=.04)
    paint('rect', (.33, .33, .55, .4), (40, 30, 25), 'saddle')
  elif name == 'flower':
    paint('line', (.5, .35, .5, 1), (50, 140, 40), 'stem', width=.08)
    petal = _pick(r, ((230, 30, 60), (250, 220, 40), (240, 240, 245), (170, 60, 200), (250, 140, 180)))
    for angle in np.linspace(0, 2 * np.pi, 6, endpoint=False):
      px, py = .5 + .28 * np.cos(angle), .25 + .15 * np.sin(angle)
      paint('ellipse', (px - .2, py - .1, px + .2, py + .1), petal, 'petal')
    paint('ellipse', (.4, .19, .6, .31), (240, 180, 20))
  elif name == 'bottle':
    glass = _pick(r, ('glass', (40, 110, 50), (110, 60, 20)))
    paint('rect', (.15, .35, .85, 1), glass)
    paint('rect', (.38, .08, .62, .38), glass)
    paint('rect', (.35, 0, .65, .1), _pick(r, ((200, 30, 30), (220, 200, 40), (30, 30, 30))), 'cap')
  elif name == 'book':
    paint('rect', (0, 0, 1, 1), r.integers(20, 230, 3))
    paint('rect', (0, 0, .12, 1), (240, 235, 220))
  elif name == 'sofa':
    look = _pick(r, ('fabric', (120, 30, 30), (60, 60, 70)))
    paint('rect', (0, 0, 1, .5), look, 'back')
    paint('rect', (0, .55, 1, .88), look)
    for x0 in (.1, .5):
      paint('rect', (x0, .42, x0 + .4, .62), look, 'cushion')
    for x0 in (0, .88):
      paint('rect', (x0, .3, x0 + .12, .85), look, 'arm')
    paint('rect', (.05, .88, .95, 1), (50, 35, 25))
  elif name == 'cabinet':
    paint('rect', (0, 0, 1, 1), 'wood')
    for x0 in (.05, .52):
      paint('rect', (x0, .05, x0 + .43, .95), _pick(r, ('wood', (240, 240, 235), (120, 160, 190))), 'door')
      paint('rect', (x0 + .3, .45, x0 + .36, .6), 'metal', 'handle', layer=2)
  elif name == 'monitor':
    paint('rect', (.3, .92, .7, 1), (40, 40, 45))
    paint('rect', (.45, .78, .55, .95), (40, 40, 45))
    paint('rect', (0, 0, 1, .8), (25, 25, 30))
    paint('rect', (.05, .05, .95, .73), _pick(r, ((60, 120, 220), (230, 230, 235), (30, 150, 120))), 'screen')
  elif name == 'window':
    paint('rect', (0, 0, 1, 1), (240, 240, 235))
    for x0, y0 in ((.08, .08), (.54, .08), (.08, .54), (.54, .54)):
      paint('rect', (x0, y0, x0 + .38, y0 + .38), 'glass')
  elif name == 'fabric':
    paint('rect', (0, 0, 1, 1), 'fabric')
  elif name == 'fence':
    look = _pick(r, ('wood', (240, 240, 240), 'metal'))
    paint('rect', (0, .2, 1, .35), look)
    paint('rect', (0, .65, 1, .8), look)
    for x0 in np.arange(.02, 1, .1):
      paint('rect', (x0, 0, x0 + .05, 1), look)
  elif name == 'sun':
    paint('ellipse', (0, 0, 1, 1), _pick(r, ((255, 230, 60), (255, 190, 40), (255, 250, 200))))
  elif name == 'cloud':
    for x0, y0, x1 in ((0, .35, .45), (.25, 0, .75), (.55, .3, 1)):
      paint('ellipse', (x0, y0, x1, 1), (250, 250, 252))
  elif name == 'mountain':
    paint('poly', (0, 1, .5, 0, 1, 1), _pick(r, ('stone', (110, 100, 95), (120, 95, 70))))
    paint('poly', (.4, .2, .5, 0, .6, .2), (245, 245, 250))
  else:                          # stuff: sky, road, sea, grass, sand, wall, floor fill their box
    looks = dict(sky='sky', road='asphalt', sea='water', grass='grass', sand='sand',
                 wall=('brick', 'stone', (230, 220, 200), (200, 215, 230), (245, 240, 230)),
                 floor=('wood', 'tile', 'carpet'))
    look = looks[name] if isinstance(looks[name], str) else _pick(r, looks[name])
    paint('rect', (0, 0, 1, 1), look)


def _place(c: _Canvas, name: str, height: float, cx: float, base: float) -> tuple:
  """Draws `name` of the given pixel height standing on (cx, base); returns its box."""
  width = height * ASPECT[name] * c.r.uniform(.85, 1.15)
  box = (cx - width / 2, base - height, width, height)
  _draw_object(c, name, box)
  return box


def _draw_scene(c: _Canvas, scene: str) -> None:
  r, size = c.r, c.size
  ground, recipe = SCENE_RECIPES[scene]
  indoor = ground == 'floor'
  horizon = size * (r.uniform(.5, .68) if indoor else r.uniform(.35, .55))
  _draw_object(c, 'wall' if indoor else 'sky', (0, 0, size, horizon + 1))
  if not indoor:
    if r.random() < .4:
      _place(c, 'sun', size * r.uniform(.08, .15), r.uniform(0, size), r.uniform(.1, .3) * horizon)
    for _ in range(r.integers(0, 4)):
      _place(c, 'cloud', size * r.uniform(.08, .15), r.uniform(0, size), r.uniform(.2, .7) * horizon)
    for _ in range(r.integers(2, 4) if scene == 'mountain-s' else int(r.random() < .2)):
      _place(c, 'mountain', size * r.uniform(.2, .4), r.uniform(0, size), horizon + 2)
  _draw_object(c, ground, (0, horizon, size, size - horizon))
  near = horizon
  if scene == 'beach-s':        # a band of sea at the horizon, the beach in front of it
    near = horizon + (size - horizon) * r.uniform(.25, .4)
    _draw_object(c, 'sea', (0, horizon, size, near - horizon))

  placed = []                    # (drawing order: wall, then far to near, then on tables, ...)
  for name, low, high, h0, h1, where in recipe:
    for _ in range(r.integers(low, high + 1)):
      height = size * r.uniform(h0, h1)
      if where == 'wall':
        base = r.uniform(.3, .5) * size + height / 2
        placed.append((-1.0, name, height, r.uniform(.1, .9) * size, base))
        continue
      if where == 'on':
        placed.append((np.inf, name, height, None, None))
        continue
      lo, hi = dict(far=(0, .15), near=(.5, 1), ground=(0, 1))[where]
      depth = r.uniform(lo, hi)
      if name == 'boat' and scene == 'beach-s':
        base = horizon + (near - horizon) * r.uniform(.3, 1)
      else:
        base = near + (size - near) * depth + (2 if depth == 0 else 0)
      placed.append((base, name, height * (.6 + .4 * depth), r.uniform(.05, .95) * size, base))
  tables = []
  for order, name, height, cx, base in sorted(placed, key=lambda item: item[0]):
    if order == np.inf:          # stands on a table drawn before (skipped if there is none)
      if not tables:
        continue
      x, y, w, _ = _pick(r, tables)
      cx, base = x + w * r.uniform(.15, .85), y + 1
    box = _place(c, name, height, cx, base)
    if name == 'table':
      tables.append(box)


def _draw_pascal(c: _Canvas) -> None:
  r, size = c.r, c.size
  c.image[:] = _mix(_noise(r, size, 3), r.integers(0, 256, 3), r.integers(0, 256, 3))
  things = [(r.uniform(.6, 1.05) * size, _pick(r, PASCAL_THINGS)) for _ in range(r.integers(1, 4))]
  for base, name in sorted(things):
    height = size * r.uniform(.35, .8) / max(1, ASPECT[name] / 1.2)
    _place(c, name, height, r.uniform(.15, .85) * size, base)


def _draw_materials(c: _Canvas) -> None:
  r, size = c.r, c.size
  yy, xx = _grid(size)
  count = int(r.integers(2, 5))
  names = [MATERIALS[i] for i in r.choice(len(MATERIALS), count, replace=False)]
  seeds = r.random((count, 2)).astype(np.float32)
  warp = .15 * (_noise(r, size, 4) - .5)            # wavy, not straight, region borders
  distance = np.stack([np.hypot(yy - sy + warp, xx - sx - warp) for sy, sx in seeds])
  region = np.argmin(distance, axis=0)
  for i, name in enumerate(names):
    mask = region == i
    c.image[mask] = c.look(name)[mask]
    c.material[mask] = LABEL[name]


def render_image(seed: int, index: int, image_size: int = 224, mask_size: int = 112):
  """Image `index` of probe set `seed` -> (uint8 image, {category: [masks or labels]}, source).

  Masks are int32 (mask_size, mask_size) maps of 1-based positions in VOCABULARY.
  """
  r = np.random.default_rng([seed, index])
  kind = KINDS[int(r.choice(len(KINDS), p=KIND_PROBABILITIES))]
  c = _Canvas(image_size, r)
  masks: dict[str, list] = {}
  if kind == 'dtd':
    texture = _pick(r, TEXTURES)
    c.image[:] = texture_image(texture, r, image_size)
    masks['texture'] = [LABEL[texture]]
  elif kind == 'opensurfaces':
    _draw_materials(c)
  elif kind == 'pascal':
    _draw_pascal(c)
  else:
    scene = _pick(r, SCENES)
    _draw_scene(c, scene)
    masks['scene'] = [LABEL[scene]]
  image = np.clip(c.image + r.normal(0, 3, c.image.shape), 0, 255).astype(np.uint8)

  at = sample_points(image_size, mask_size)
  small = lambda full: full[at][:, at]
  masks['color'] = [_COLOUR_LABEL_OF_TERM[colors.name_colours(small(image))]]
  if kind in ('pascal', 'ade20k'):
    masks['object'] = [small(c.object)]
    masks['part'] = [small(layer) for layer in c.part if layer.any()]
  if kind in ('opensurfaces', 'ade20k'):
    masks['material'] = [small(c.material)]
  return image, masks, kind


def sample_points(image_size: int, mask_size: int) -> np.ndarray:
  """Image rows (and columns) that the mask cells sample: the pixel nearest each cell centre."""
  return ((np.arange(mask_size) + .5) * image_size / mask_size).astype(np.int64)


def _render_job(job):
  return render_image(*job)


def generate(out_dir, n_images: int = 1000, seed: int = 0, image_size: int = 224,
             mask_size: int = 112, progress: bool = True, workers: int | None = None,
             overwrite: bool = False) -> pathlib.Path:
  """Writes the probe set to out_dir atomically (nothing appears there unless it completes)."""
  if n_images < 1 or mask_size < 1 or image_size < mask_size:
    raise ValueError('need n_images >= 1 and 1 <= mask_size <= image_size')
  jobs = [(seed, index, image_size, mask_size) for index in range(n_images)]
  workers = min(2, os.cpu_count() or 1) if workers is None else workers
  with BrodenWriter(out_dir, VOCABULARY, min_images=2, mask_size=(mask_size, mask_size),
                    overwrite=overwrite) as writer, \
       tqdm(total=n_images, desc='synthetic probe set', file=sys.stderr, disable=not progress,
            unit='img') as bar:
    def write(rendered):
      image, masks, source = rendered
      writer.add(image, masks, source=source)
      bar.update()
    if workers > 1 and n_images >= 32:
      # spawn, not fork: the caller may hold JAX's threads, which a fork can deadlock.
      with multiprocessing.get_context('spawn').Pool(workers) as pool:
        for rendered in pool.imap(_render_job, jobs, chunksize=4):
          write(rendered)
    else:
      for job in jobs:
        write(render_image(*job))
  return pathlib.Path(out_dir)


def probe_set_path(cache_root, n_images: int = 1000, seed: int = 0) -> pathlib.Path:
  return pathlib.Path(cache_root) / 'probe' / f'{VERSION}_n{n_images}_s{seed}'


def _remove_stale_partials(path: pathlib.Path) -> None:
  """Deletes staging directories left by killed builds (their writer process is gone)."""
  for partial in path.parent.glob(f'.{path.name}.partial-*'):
    try:
      os.kill(int(partial.name.rsplit('.partial-', 1)[1].split('-')[0]), 0)
    except ProcessLookupError:
      shutil.rmtree(partial, ignore_errors=True)
    except (ValueError, PermissionError, OSError):
      continue


def ensure_probe_set(cache_root, n_images: int = 1000, seed: int = 0,
                     progress: bool = True) -> pathlib.Path:
  """<cache_root>/probe/synthetic_v1_n<N>_s<seed>, generated first if it is not there yet."""
  path = probe_set_path(cache_root, n_images, seed)
  if (path / 'index.csv').is_file():
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  _remove_stale_partials(path)
  try:
    generate(path, n_images, seed, progress=progress, overwrite=path.exists())
  except FileExistsError:        # a concurrent build finished first: use its result
    if not (path / 'index.csv').is_file():
      raise
  return path
