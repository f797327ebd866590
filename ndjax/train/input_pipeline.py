"""Training data: the built-in classification task, or a prepared TFDS dataset; batches in a
deterministic order (a function of the seed and the step, so a resumed run sees what an
uninterrupted one would have).

Built-in task (`probe_task`), so the whole study runs offline on this machine: images composed by
the real-photo probe generator (`ndjax.probes.composite`) from its real ingredients, with seeds
that no probe set uses (TASK_SEEDS; the probe sets are built with small seeds, 0 by default), and
the class of an image is the object GROUP (bird, fruit, vehicle, ...) that covers the most pixels
of it, i.e. the group of its largest visible cut-out. Images without a cut-out are skipped
(deterministically: indices are tried in order). Rendering costs ~20 ms an image, so each split is
rendered once into the cache as an .npz (written under a temporary name, then renamed).

A second label set for fine-tuning (`probe_task_material`, the paper's change of task): the
MATERIAL that covers the most pixels (bark, brick, ..., wood; 19 classes), on images of other
seeds; images without a material pixel are skipped.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pathlib
import sys

import numpy as np
from tqdm import tqdm

TASK_VERSION = 'v1'
# Seeds far from the probe sets' (0 by default): no training image is a probe image.
TASK_SEEDS = {'probe_task': {'train': 1_000_003, 'test': 1_000_033},
              'probe_task_material': {'train': 1_000_037, 'test': 1_000_039}}


@dataclasses.dataclass
class Split:
  images: object                 # (N, H, W, 3) uint8 array, or a TFDS data source (see `get`)
  labels: np.ndarray             # (N,) int32
  size: int                      # images are size x size

  def __len__(self) -> int:
    return len(self.labels)

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(self.images, np.ndarray):
      return self.images[indices], self.labels[indices]
    return (np.stack([_square(self.images[int(i)]['image'], self.size) for i in indices]),
            self.labels[indices])


@dataclasses.dataclass
class Data:
  train: Split
  test: Split
  classes: list[str]


class DataError(ValueError):
  """A dataset that cannot be read as asked; the message says what to do."""


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """The examples of training step `step`: epoch e = a permutation drawn from (seed, e), batches
  taken in order, the last partial batch of an epoch dropped. Pure function of its arguments."""
  per_epoch = n // batch_size
  if per_epoch < 1:
    raise DataError(f'batch_size {batch_size} is larger than the {n} training images')
  epoch, position = divmod(step, per_epoch)
  order = np.random.default_rng([seed, epoch]).permutation(n)
  return order[position * batch_size:(position + 1) * batch_size]


def get_data(config, tfds_data_dir: str | None = None, progress: bool = True) -> Data:
  if config.dataset in TASK_SEEDS:
    return task_data(config.image_size, config.train_images, config.test_images, progress,
                     config.dataset)
  if config.dataset.startswith('tfds:'):
    return tfds_data(config.dataset[len('tfds:'):], config.image_size, tfds_data_dir)
  raise DataError(f'unknown dataset {config.dataset!r}: use {", ".join(TASK_SEEDS)} or '
                  'tfds:<name>')


# --- the built-in task ----------------------------------------------------------------------------
def task_classes(catalogue, task: str = 'probe_task') -> list[str]:
  """The task's classes, sorted: the catalogue's object groups, or its materials."""
  if task == 'probe_task_material':
    return sorted({tile.material for tile in catalogue.tiles if tile.material})
  return sorted(set(catalogue.group_of.values()))


def task_example(catalogue, seed: int, index: int, size: int, task: str = 'probe_task'):
  """(image, class name or None) of composite `index` of set `seed` rendered at `size` pixels:
  the label covering the most pixels of the task's map (object groups or materials)."""
  from ndjax.probes import composite
  image, _, _, canvas = composite.render(catalogue, seed, index, size, size)
  labels = canvas.material if task == 'probe_task_material' else canvas.group
  found, counts = np.unique(labels[labels > 0], return_counts=True)
  if not len(found):
    return image, None
  names = {n: name for name, n in catalogue.number.items()}
  return image, names[int(found[np.argmax(counts)])]     # ties: the lower label number


_worker = {}


def _init(catalogue, seed, size, task):
  _worker.update(catalogue=catalogue, seed=seed, size=size, task=task)


def _render(index):
  return task_example(_worker['catalogue'], _worker['seed'], index, _worker['size'],
                      _worker['task'])


def render_split(catalogue, seed: int, n: int, size: int, progress: bool = True,
                 workers: int | None = None,
                 task: str = 'probe_task') -> tuple[np.ndarray, np.ndarray]:
  """The first n composites of set `seed` that hold a label of the task: (images, classes)."""
  classes = task_classes(catalogue, task)
  images, labels = [], []
  workers = min(2, os.cpu_count() or 1) if workers is None else workers
  bar = tqdm(total=n, desc=f'training task (seed {seed}, {size} px)', unit='img', file=sys.stderr,
             disable=not progress)
  start = 0
  with multiprocessing.get_context('spawn').Pool(workers, _init,
                                                 (catalogue, seed, size, task)) as pool:
    while len(images) < n:
      batch = range(start, start + max(64, (n - len(images)) * 5 // 4))
      for image, name in pool.imap(_render, batch, chunksize=8):
        if name is not None and len(images) < n:
          images.append(image)
          labels.append(classes.index(name))
          bar.update()
      start = batch.stop
  bar.close()
  return np.stack(images), np.array(labels, np.int32)


def task_data(size: int, n_train: int, n_test: int, progress: bool = True,
              task: str = 'probe_task') -> Data:
  from ndjax.fileio import cache_root
  from ndjax.probes import composite, ingredients
  catalogue = composite.load_catalogue(ingredients.ensure_ingredients(cache_root(),
                                                                      progress=progress))
  splits = {}
  for name, n in (('train', n_train), ('test', n_test)):
    path = (pathlib.Path(cache_root()) / 'train'
            / f'{task}_{TASK_VERSION}_{name}_n{n}_{size}px.npz')
    if not path.is_file():
      images, labels = render_split(catalogue, TASK_SEEDS[task][name], n, size, progress,
                                    task=task)
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
      with open(tmp, 'wb') as f:
        np.savez(f, images=images, labels=labels)
      os.replace(tmp, path)
    with np.load(path) as z:
      splits[name] = Split(z['images'], z['labels'], size)
  return Data(splits['train'], splits['test'], task_classes(catalogue, task))


# --- TFDS -----------------------------------------------------------------------------------------
def tfds_data(name: str, size: int, data_dir: str | None) -> Data:
  """A prepared TFDS image-classification dataset, read through `tfds.data_source` (random
  access on its array_record files, no TensorFlow); images centre-cropped and resized to size.
  The labels are read once with the images left undecoded (`SkipDecoding`)."""
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise DataError('tfds datasets need tensorflow-datasets: pip install -e .[tfds]') from None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    features = builder.info.features
    if 'image' not in features or 'label' not in features:
      raise DataError(f'TFDS dataset {name!r} has features {", ".join(features)}; training needs '
                      'an image classification dataset with "image" and "label"')
    # validation first: some datasets (places365_small) leave the test split unlabelled
    splits = ('train', 'validation' if 'validation' in builder.info.splits else 'test')
    open_split = lambda split, **kw: tfds.data_source(name, split=split, data_dir=data_dir, **kw)
    sources = [open_split(split) for split in splits]
    label_sources = [open_split(split, decoders={'image': tfds.decode.SkipDecoding()})
                     for split in splits]
  except DataError:
    raise
  except Exception as e:           # tfds raises many types for a dataset that is not there
    raise DataError(f'cannot open TFDS dataset {name!r} under {data_dir}: {e}; prepare it first '
                    '(tfds build) and pass --tfds_data_dir') from None
  classes = list(features['label'].names)
  labels = [np.array([int(r['label']) for r in source], np.int32) for source in label_sources]
  for split, found in zip(splits, labels):
    if not len(found) or found.min() < 0:
      raise DataError(f'TFDS dataset {name!r}: its {split} split has '
                      f'{"no examples" if not len(found) else "unlabelled examples (label -1)"}; '
                      'training needs labelled train and validation (or test) splits')
  return Data(Split(sources[0], labels[0], size), Split(sources[1], labels[1], size), classes)


def _square(image: np.ndarray, size: int) -> np.ndarray:
  """Centre crop to a square, resize to size x size (bilinear), uint8 RGB."""
  from PIL import Image
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=2)
  h, w = image.shape[:2]
  s = min(h, w)
  crop = image[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s, :3]
  return np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))
