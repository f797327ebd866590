"""Ablate a concept's detector units and measure what the classifier loses (issue 15, beyond the
paper): "zeroing the soccer-ball detectors lowers P(soccer ball) on soccer-ball photos more than
zeroing as many random units", as a measured claim with an interval.

For each ImageNet class that one of the composite probe set's cut-out photos shows (`CLASS_MAP`,
made by hand), the images whose main object (the largest region of the fine object layer) is
such a cut-out are run through the classifier with units of `layer` zeroed through the models'
intervention hook (`forward(..., edits={layer: fn})`): all detectors of the cut-out's concept
(units whose best dissection label is that concept with IoU > the threshold), and --draws random
sets of as many units (with --single also the best detector alone against random single units).
Reported per class: accuracy and mean P(class) before and after, their change, and 95% intervals
from a bootstrap over the SOURCE PHOTOS (each class rests on one to four stamp photos; resampling
images would treat twenty renderings of one soccer-ball photo as twenty soccer balls) and, for
the random sets, over the draws as well.

Which photo a composite's cut-out came from is not in the probe set's files: it is recovered by
re-rendering image i of the built-in composite set (`composite.render` is a pure function of
(seed, i) and the catalogue), after checking that the re-rendered object mask equals the stored
one label for label.

Most classes rest on ONE stamp photo: their per-class intervals then cover the random draws only
(conditional on that photo) and the concept set alone gets none; the pooled claim over classes
resamples classes, their photos and the draws (`pooled_ci`).

python -m ndjax.experiments.ablation                          # MobileNetV2 ImageNet, features
python -m ndjax.experiments.ablation --dissection=runs/mobilenet_v2_imagenet/features --draws=20
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from ndjax.experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string('ablate', 'mobilenet_v2:imagenet:features',
                    'The classifier and the layer whose units are ablated, as model:weights:layer '
                    '(an ImageNet-1k head: the class map names ImageNet classes).')
flags.DEFINE_string('dissection', None,
                    'A finished dissection result folder of that model and layer over this probe '
                    'set, giving the unit labels. Default: dissect (or reuse) <outdir>/runs/.')
flags.DEFINE_float('tau', 0.005,
                   'Top quantile of the dissection run when --dissection is not given.')
flags.DEFINE_float('concept_iou', None,
                   'A unit detects a concept when that concept is its best label with IoU > this. '
                   'Default: the dissection\'s own threshold.')
flags.DEFINE_integer('draws', 10, 'Random unit sets per class, each as large as its concept set.')
flags.DEFINE_enum('random_from', 'non_concept', ['non_concept', 'non_detector', 'all'],
                  'Pool of the random units: every unit but this concept\'s detectors (default), '
                  'units that detect no concept at all, or every unit.')
flags.DEFINE_integer('boot', 2000, 'Bootstrap resamples.')
flags.DEFINE_integer('draw_seed', 0, 'Seed of the random unit draws and the bootstrap.')
flags.DEFINE_float('min_share', 0.0, 'An image counts for a class only when its main object '
                   'covers more than this fraction of the image.')
flags.DEFINE_integer('min_images', 5, 'Classes with fewer images are reported (base rate) but '
                     'not ablated.')
flags.DEFINE_list('classes', [], 'Only these ImageNet classes of the map (default: all).')
flags.DEFINE_bool('single', False, 'Also ablate each class\'s best detector alone (highest IoU), '
                  'against --draws random single units.')

LEVEL = 0.95


# --- the class map, made once by hand ------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ClassMap:
  """One ImageNet class and the probe set's cut-out photos that show it.

  imagenet: the class's name in ndjax/viz/imagenet_classes.txt (torchvision order); label: the
  probe set's object label of those cut-outs (composite_catalogue.STAMPS), whose detectors are
  ablated; stamps: the stamp photos (paths under Tux Paint's stamps/, keys of STAMPS) that are
  that ImageNet class. A probe label can hold photos of other classes (label `pepper` is two
  bell peppers and a chili): only the listed stamps count.
  """
  imagenet: str
  label: str
  stamps: tuple[str, ...]


# Read off composite_catalogue.STAMPS with each stamp photo looked at; kept only where the photo
# plainly is the ImageNet class. Left out on purpose: kettle (ImageNet has no kettle class),
# football and australian_rules_football (no American-football class; rugby ball is another
# ball), chilepepper (not a bell pepper), home_compost_bin (not a trash can), drumkit (a kit, not
# a drum), sportscar2 (a convertible sports car: two ImageNet classes fit), clownfish.png (not an
# anemone fish), elephant (African or Indian cannot be told), the penguins (not king penguins),
# cattle (ox), the mailboxes (post boxes), beetle/sedan, and labels with no ImageNet class (pear,
# lime, tomato, flowers, ...).
CLASS_MAP: tuple[ClassMap, ...] = (
    ClassMap('soccer ball', 'soccer_ball', ('sports/soccer.png',)),
    ClassMap('tennis ball', 'tennis_ball', ('sports/tennis_ball.png',)),
    ClassMap('basketball', 'basketball', ('sports/basketball.png',)),
    ClassMap('lemon', 'lemon', ('food/fruit/lemon.png',)),
    ClassMap('orange', 'orange', ('food/fruit/orange.png', 'food/fruit/orange_seville.png',
                                  'food/fruit/mandarine.png', 'food/fruit/sliced_orange.png')),
    ClassMap('Granny Smith', 'apple', ('food/fruit/apple_granny_smith.png',
                                       'food/fruit/apple_green.png')),
    ClassMap('strawberry', 'strawberry', ('food/fruit/Strawberry2.png',
                                          'food/fruit/strawberry.png')),
    ClassMap('pineapple', 'pineapple', ('food/fruit/pineapple.png',)),
    ClassMap('banana', 'banana', ('food/fruit/banana.png',)),
    ClassMap('pomegranate', 'pomegranate', ('food/fruit/pomegranate.png',)),
    ClassMap('custard apple', 'cherimoya', ('food/fruit/cherimoya.png',)),
    ClassMap('broccoli', 'broccoli', ('food/vegetables/broccoli.png',)),
    ClassMap('bell pepper', 'pepper', ('food/vegetables/pepper.png',
                                       'food/vegetables/yellowpepper.png')),
    ClassMap('corn', 'corn', ('food/vegetables/corn.png',)),
    ClassMap('mushroom', 'mushroom', ('food/vegetables/mushroom.png',)),
    ClassMap('bolete', 'mushroom', ('plants/mushrooms/cep.png', 'plants/mushrooms/cep-1.png',
                                    'plants/mushrooms/cep-2.png')),
    ClassMap('binoculars', 'binoculars', ('hobbies/binoculars.png',)),
    ClassMap('reflex camera', 'camera', ('hobbies/camera_35mm.png',)),
    ClassMap('pitcher', 'pitcher', ('household/dishes/pitcher_small.png',)),
    ClassMap('teapot', 'teapot', ('household/dishes/teapot.png',)),
    ClassMap('ashcan', 'trash_can', ('household/garbagecan.png', 'household/wheelie_bin.png')),
    ClassMap('toilet seat', 'toilet', ('household/toilet.png',)),
    ClassMap('hammer', 'hammer', ('household/tools/hammer.png',)),
    ClassMap('shovel', 'shovel', ('household/tools/spade.png',)),
    ClassMap('paintbrush', 'paintbrush', ('household/tools/paintbrush_large.png',)),
    ClassMap('syringe', 'syringe', ('medical/syringe.png',)),
    ClassMap('stethoscope', 'stethoscope', ('medical/stethoscope.png',)),
    ClassMap('Band Aid', 'bandage', ('medical/bandage_adhesive.png',)),
    ClassMap('candle', 'candle', ('seasonal/candle.png',)),
    ClassMap('teddy', 'teddy_bear', ('animals/mammals/bears/toys/edward_bear.png',)),
    ClassMap('balloon', 'balloon', ('vehicles/flight/balloon360.png',)),
    ClassMap('parachute', 'parachute', ('military/paratrooper.png',)),
    ClassMap('airliner', 'airplane', ('vehicles/flight/planes/747.png',)),
    ClassMap('warplane', 'airplane', ('military/vehicles/f22_raptor.png',)),
    ClassMap('racer', 'car', ('vehicles/race/indycar.png',)),
    ClassMap('pickup', 'truck', ('vehicles/auto/truck.png',)),
    ClassMap('garbage truck', 'truck', ('vehicles/garbagetruck.png',)),
    ClassMap('fire engine', 'fire_engine', ('vehicles/emergency/firetruck.png',)),
    ClassMap('tricycle', 'tricycle', ('vehicles/cycle/pink_tricycle.png',)),
    ClassMap('drum', 'drum', ('hobbies/music/percussion/drum_tomtom_floor.png',)),
    ClassMap('acoustic guitar', 'guitar', ('hobbies/music/string/guitar_classical.png',)),
    ClassMap('electric guitar', 'guitar', ('hobbies/music/string/guitar2.png',
                                           'hobbies/music/string/guitar_electric.png',
                                           'hobbies/music/string/guitar_electric_bass.png')),
    ClassMap('cello', 'cello', ('hobbies/music/string/cello.png',)),
    ClassMap('violin', 'violin', ('hobbies/music/string/violin.png',)),
    ClassMap('bassoon', 'bassoon', ('hobbies/music/wind/bassoon.png',)),
    ClassMap('cornet', 'trumpet', ('hobbies/music/brass/trumpet.png',)),
    ClassMap('racket', 'racket', ('sports/tennis_racket.png',)),
    ClassMap('hen', 'chicken', ('animals/birds/hen.png',)),
    ClassMap('cock', 'chicken', ('animals/birds/rooster.png',)),
    ClassMap('drake', 'duck', ('animals/birds/drake.png', 'animals/birds/duck.png')),
    ClassMap('goose', 'goose', ('animals/birds/gander.png',)),
    ClassMap('ostrich', 'ostrich', ('animals/birds/ostrich.png',)),
    ClassMap('vulture', 'vulture', ('animals/birds/vulture.png',)),
    ClassMap('peacock', 'peacock', ('animals/birds/peacock.png',)),
    ClassMap('flamingo', 'flamingo', ('animals/birds/pink_flamingo.png',)),
    ClassMap('pelican', 'pelican', ('animals/birds/pelican.png',)),
    ClassMap('toucan', 'toucan', ('animals/birds/tucan.png',)),
    ClassMap('lionfish', 'lionfish', ('animals/fish/lionfish.png',)),
    ClassMap('slug', 'slug', ('animals/insects/Brown_slug.png',)),
    ClassMap('fly', 'fly', ('animals/insects/fly.png', 'animals/insects/hoverfly.png')),
    ClassMap('grasshopper', 'grasshopper', ('animals/insects/grasshopper.png',)),
    ClassMap('mantis', 'mantis', ('animals/insects/mantis.png',)),
    ClassMap('koala', 'koala', ('animals/marsupials/koala.png',)),
    ClassMap('wombat', 'wombat', ('animals/marsupials/wombat.png',)),
    ClassMap('chimpanzee', 'chimpanzee', ('animals/mammals/apes/chimp.png',)),
    ClassMap('gorilla', 'gorilla', ('animals/mammals/apes/gorilla.png',)),
    ClassMap('sea lion', 'sea_lion', ('animals/mammals/aquatic/sea_lion.png',)),
    ClassMap('otter', 'otter', ('animals/mammals/aquatic/otter.png',)),
    ClassMap('badger', 'badger', ('animals/mammals/badger.png',)),
    ClassMap('brown bear', 'bear', ('animals/mammals/bears/bear.png',
                                    'animals/mammals/bears/european-bear.png')),
    ClassMap('bison', 'bison', ('animals/mammals/bovines/bison.png',)),
    ClassMap('ram', 'sheep', ('animals/mammals/bovines/ram.png',)),
    ClassMap('lion', 'lion', ('animals/mammals/cats/lion.png', 'animals/mammals/cats/lion-2.png')),
    ClassMap('tiger', 'tiger', ('animals/mammals/cats/tiger.png',
                                'animals/mammals/cats/tiger_sumatran.png')),
    ClassMap('red fox', 'fox', ('animals/mammals/dogs/fox.png',)),
    ClassMap('dingo', 'dog', ('animals/mammals/dogs/dingo.png',)),
    ClassMap('zebra', 'zebra', ('animals/mammals/equines/zebra.png',)),
    ClassMap('hippopotamus', 'hippopotamus', ('animals/mammals/hippopotamus.png',)),
    ClassMap('wild boar', 'boar', ('animals/mammals/wildboar.png',)),
    ClassMap('beaver', 'beaver', ('animals/mammals/rodents/beaver.png',)),
)


def check_class_map(class_map, class_names, stamps: dict[str, str]) -> dict[str, int]:
  """{ImageNet class name: index} after checking the map: every class is an ImageNet class named
  once, every stamp is a catalogue stamp carrying the map's probe label, no stamp is in two
  classes. Raises ExperimentError naming the first fault."""
  index = {name: i for i, name in enumerate(class_names)}
  owner: dict[str, str] = {}
  out = {}
  for entry in class_map:
    if entry.imagenet not in index:
      raise common.ExperimentError(f'class map: {entry.imagenet!r} is not an ImageNet class name')
    if entry.imagenet in out:
      raise common.ExperimentError(f'class map: {entry.imagenet!r} is mapped twice')
    if not entry.stamps:
      raise common.ExperimentError(f'class map: {entry.imagenet!r} lists no stamp photo')
    for stamp in entry.stamps:
      if stamp not in stamps:
        raise common.ExperimentError(f'class map: {stamp!r} is not a stamp of the catalogue')
      if stamps[stamp] != entry.label:
        raise common.ExperimentError(f'class map: {stamp!r} carries the label {stamps[stamp]!r}, '
                                     f'not {entry.label!r}')
      if stamp in owner:
        raise common.ExperimentError(f'class map: {stamp!r} is in both {owner[stamp]!r} and '
                                     f'{entry.imagenet!r}')
      owner[stamp] = entry.imagenet
    out[entry.imagenet] = index[entry.imagenet]
  return out


# --- which images count for a class, and their source photos -------------------------------------
def main_object(layer: np.ndarray) -> tuple[int, float]:
  """(label number, share of the pixels) of the largest labelled region of one object layer;
  (0, 0.0) when nothing is labelled. Ties: the lower label number. The largest region is what a
  single-label classifier is most likely to name, so it decides which class an image tests."""
  values, counts = np.unique(layer[layer > 0], return_counts=True)
  if not len(values):
    return 0, 0.0
  j = int(np.argmax(counts))
  return int(values[j]), float(counts[j] / layer.size)


def object_layers(root) -> list[str | None]:
  """Per index.csv row, the first (fine) object layer's file, or None: the composite writer puts
  the fine labels first and the coarser group labels second (`composite.render`)."""
  with open(root / 'index.csv', newline='') as f:
    return [(row.get('object') or '').split(';')[0] or None for row in csv.DictReader(f)]


def composite_seed(root, n_records: int) -> int:
  """The seed of a built-in composite set from its folder name (composite_v1_n<N>_s<seed>[..]),
  which re-rendering needs; an ExperimentError for any other probe set."""
  from ndjax.probes import composite
  m = re.fullmatch(rf'{composite.VERSION}_n(\d+)_s(\d+)(_\d+px)?', root.name)
  if not m:
    raise common.ExperimentError(
        f'{root} is not the built-in composite probe set: the source photo of each cut-out is '
        'recovered by re-rendering that set, so run on it (no --dataset)')
  if int(m.group(1)) < n_records:
    raise common.ExperimentError(f'{root} holds {n_records} records but names {m.group(1)}')
  return int(m.group(2))


@dataclasses.dataclass(frozen=True)
class Selected:
  """One image that tests a class: its record index, class and the stamp photo it rests on."""
  index: int
  imagenet: str
  stamp: str
  share: float


def source_stamps(placements, stamp_paths, stamp_labels, label: str) -> set[str]:
  """The distinct stamp photos carrying `label` among an image's placed cut-outs."""
  return {stamp_paths[p['stamp']] for p in placements if stamp_labels[p['stamp']] == label}


def select_images(ds, class_map, min_share: float, progress: bool = False, catalogue=None,
                  stamps_root=None) -> tuple[list[Selected], dict]:
  """The images whose main object is a mapped cut-out, with its source photo, and counts of the
  images left out and why. Each candidate is re-rendered from (seed, index); its stored fine
  object layer must equal the re-rendered one label for label, else the set is not what the
  renderer makes and no source photo can be trusted (ExperimentError).

  catalogue, stamps_root: the composite catalogue and the folder its stamp paths are relative to
  (default: the fetched ingredients, as the built-in set uses)."""
  from tqdm import tqdm

  from ndjax.probes import composite
  root = ds.root
  seed = composite_seed(root, len(ds.records))
  files = object_layers(root)
  if len(files) < len(ds.records):
    raise common.ExperimentError(f'{root}/index.csv has {len(files)} rows for '
                                 f'{len(ds.records)} records')
  files = files[:len(ds.records)]                 # --images keeps the first records
  labels = {m.label for m in class_map}
  stamp_class = {s: m.imagenet for m in class_map for s in m.stamps}
  candidates = []
  for i, (rec, rel) in enumerate(zip(ds.records, files)):
    if rel is None:
      continue
    number, share = main_object(ds.load_mask(rel, rec))
    if number and ds.label_names[number] in labels and share > min_share:
      candidates.append((i, ds.label_names[number], share, rel))
  if catalogue is None:
    from ndjax.fileio import cache_root
    from ndjax.probes import ingredients
    try:
      found = ingredients.ensure_ingredients(cache_root(), progress=progress)
      catalogue, stamps_root = composite.load_catalogue(found), found.stamps
    except (ingredients.IngredientError, OSError) as e:
      raise common.ExperimentError(f'cannot load the composite catalogue: {e}') from None
  stamp_paths = [_relative(s.path, stamps_root) for s in catalogue.stamps]
  stamp_labels = [s.label for s in catalogue.stamps]
  photo_labels = {name for photo in catalogue.photos for name in photo.classes if name}
  vocabulary = np.array(('-',) + catalogue.vocabulary)
  names = np.array(ds.label_names)
  skipped = dict(photo_background=0, several_photos=0, stamp_not_mapped=0)
  out = []
  for i, label, share, rel in tqdm(candidates, desc='source photos', disable=not progress):
    rec = ds.records[i]
    image_size, mask_size = rec.ih, rec.sh
    _, masks, kind, canvas = composite.render(catalogue, seed, i, image_size, mask_size)
    stored = names[ds.load_mask(rel, rec)]
    rendered = vocabulary[masks['object'][0]] if 'object' in masks else None
    if rendered is not None:          # labels the writer dropped as rare are unlabelled on disk
      rendered = np.where(np.isin(rendered, names), rendered, '-')
    if rendered is None or not np.array_equal(stored, rendered):
      raise common.ExperimentError(
          f'{root}: image {i} ({rec.image}) differs from what the composite renderer makes of '
          f'(seed {seed}, {i}): its source photos cannot be recovered')
    if kind == 'photo' and label in photo_labels:
      skipped['photo_background'] += 1     # the background photo may hold the same label
      continue
    found = source_stamps(canvas.placements, stamp_paths, stamp_labels, label)
    if len(found) != 1:
      skipped['several_photos'] += 1
      continue
    stamp, = found
    if stamp not in stamp_class:
      skipped['stamp_not_mapped'] += 1
      continue
    out.append(Selected(i, stamp_class[stamp], stamp, share))
  return out, {'candidates': len(candidates), **skipped}


def _relative(path: str, root) -> str:
  """A stamp's path as composite_catalogue.STAMPS keys it (relative to stamps/); the quokka,
  which lives elsewhere, keeps its full path."""
  try:
    return pathlib.Path(path).relative_to(root).as_posix()
  except ValueError:
    return path


# --- the units -----------------------------------------------------------------------------------
def concept_units(best_label: np.ndarray, best_iou: np.ndarray, label_names, label: str,
                  threshold: float) -> np.ndarray:
  """0-based units whose best label is `label` with IoU > threshold, sorted."""
  names = np.asarray(label_names)[best_label]
  return np.flatnonzero((names == label) & (best_iou > threshold))


def random_pool(concept: np.ndarray, best_iou: np.ndarray, threshold: float, mode: str
                ) -> np.ndarray:
  """The units random sets are drawn from. 'non_concept': every unit but the concept's
  detectors, so a random set never holds part of the concept set and the comparison asks whether
  THESE units matter more than as many others; 'non_detector': units labelled with no concept
  (a weaker null: such units may matter less for any class); 'all': every unit."""
  k = len(best_iou)
  if mode == 'all':
    return np.arange(k)
  if mode == 'non_concept':
    return np.setdiff1d(np.arange(k), concept)
  if mode == 'non_detector':
    return np.flatnonzero(best_iou <= threshold)
  raise common.ExperimentError(f'unknown random pool {mode!r}; valid: non_concept, non_detector, '
                               'all')


def random_sets(rng: np.random.Generator, pool: np.ndarray, size: int, draws: int) -> np.ndarray:
  """(draws, size) units, each row drawn without replacement from pool, sorted."""
  if size > len(pool):
    raise common.ExperimentError(f'cannot draw {size} random units from a pool of {len(pool)}')
  return np.stack([np.sort(rng.choice(pool, size, replace=False)) for _ in range(draws)]
                  ) if draws else np.zeros((0, size), np.int64)


def keep_mask(units, channels: int) -> np.ndarray:
  """bool (channels,): False at the ablated units."""
  keep = np.ones(channels, bool)
  keep[np.asarray(units, np.int64)] = False
  return keep


# --- the ablated forward pass --------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=(0, 1))
def _ablated(net, path: str, state, x, keep, classes):
  """(P(classes[b]), top-1 class) per row with the units keep[b] == False zeroed at `path`.
  The edit is `edits.zero_units` with the unit set as an array (one compiled program serves
  every set): jnp.where(keep, a, 0), the same arithmetic as edits.set_units(units, 0)."""

  def edit(a):
    return jnp.where(keep[:, None, None, :], a, jnp.zeros((), a.dtype))

  logits = net.apply(state, x, logits=True, edits={path: edit})['logits']
  probs = jax.nn.softmax(logits, axis=-1)
  return jnp.take_along_axis(probs, classes[:, None], axis=1)[:, 0], jnp.argmax(logits, axis=-1)


def evaluate(net, layer: str, images: np.ndarray, classes: np.ndarray, keeps: np.ndarray,
             batch_size: int = 16, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(P(class) (n, M), correct (n, M)) of n uint8 images under M unit masks (M, K).

  Rows (image, mask) go through in fixed-size batches (the last one padded) so the forward pass
  compiles once."""
  from tqdm import tqdm
  path = net.module.resolve(layer)
  n, m = len(images), len(keeps)
  rows = [(i, j) for i in range(n) for j in range(m)]
  x_all = net.preprocess(jnp.asarray(images))
  p = np.zeros((n, m), np.float64)
  top = np.zeros((n, m), np.int64)
  for start in tqdm(range(0, len(rows), batch_size), desc='ablated passes', disable=not progress,
                    unit='batch'):
    chunk = rows[start:start + batch_size]
    pad = chunk + [chunk[0]] * (batch_size - len(chunk))
    ii = np.array([i for i, _ in pad])
    jj = np.array([j for _, j in pad])
    pb, tb = _ablated(net, path, net.state, x_all[ii], jnp.asarray(keeps[jj]),
                      jnp.asarray(classes[ii], jnp.int32))
    pb, tb = np.asarray(pb), np.asarray(tb)
    for r, (i, j) in enumerate(chunk):
      p[i, j], top[i, j] = pb[r], tb[r]
  return p, top == classes[:, None]


# --- statistics ----------------------------------------------------------------------------------
def group_means(values: np.ndarray, groups) -> tuple[np.ndarray, list]:
  """(G, ...) mean of `values` (n, ...) over each group's images, groups in first-seen order:
  every source photo weighs the same, however many composites it appears in."""
  order = list(dict.fromkeys(groups))
  groups = np.asarray(groups)
  return np.stack([values[groups == g].mean(axis=0) for g in order]), order


def bootstrap_ci(values: np.ndarray, groups, n_boot: int, seed: int, level: float = LEVEL
                 ) -> tuple[float, float, float, str]:
  """(estimate, low, high, what was resampled) of the mean of `values` (n,) or (n, D) over
  groups (source photos) and, for (n, D), the D random draws.

  The estimate is the mean over groups of each group's mean (over its images and the draws).
  A resample draws the groups with replacement and, independently, the draws: images are never
  resampled on their own, since images of one photo are not independent evidence. With one group
  the photo part is degenerate and only the draws are resampled (the interval is then conditional
  on that photo); with one group and one draw there is no interval (NaN)."""
  values = np.asarray(values, np.float64)
  if values.ndim == 1:
    values = values[:, None]
  means, _ = group_means(values, groups)                  # (G, D)
  g, d = means.shape
  estimate = float(means.mean())
  over = [what for what, size in (('photos', g), ('draws', d)) if size > 1]
  if not over:
    return estimate, float('nan'), float('nan'), 'none (1 photo)'
  rng = np.random.default_rng(seed)
  rows = rng.integers(g, size=(n_boot, g))
  cols = rng.integers(d, size=(n_boot, d))
  stats = means[rows[:, :, None], cols[:, None, :]].mean(axis=(1, 2))
  tail = 100 * (1 - level) / 2
  low, high = np.percentile(stats, [tail, 100 - tail])
  note = '+'.join(over) + (' (1 photo)' if g == 1 else '')
  return estimate, float(low), float(high), note


def pooled_ci(per_class: list[np.ndarray], n_boot: int, seed: int, level: float = LEVEL
              ) -> tuple[float, float, float]:
  """(estimate, low, high) of the mean over classes of each class's mean, from (G_c, D) group-by-
  draw matrices: a two-stage bootstrap that draws classes with replacement, then each drawn
  class's photos and draws with replacement. Classes resting on one photo then still vary
  between resamples, through the other classes' photos."""
  rng = np.random.default_rng(seed)
  c = len(per_class)
  estimate = float(np.mean([m.mean() for m in per_class]))
  picks = rng.integers(c, size=(n_boot, c))
  stats = np.zeros(n_boot)
  for j, m in enumerate(per_class):
    uses = picks == j                                       # (n_boot, c) slots holding class j
    count = int(uses.sum())
    if not count:
      continue
    g, d = m.shape
    rows = rng.integers(g, size=(count, g))
    cols = rng.integers(d, size=(count, d))
    reps = m[rows[:, :, None], cols[:, None, :]].mean(axis=(1, 2))
    per_boot = np.zeros(n_boot)
    np.add.at(per_boot, np.nonzero(uses)[0], reps)
    stats += per_boot
  stats /= c
  tail = 100 * (1 - level) / 2
  low, high = np.percentile(stats, [tail, 100 - tail])
  return estimate, float(low), float(high)


# --- the experiment ------------------------------------------------------------------------------
def load_dissection(exp: common.Experiment, net: common.Network):
  """The unit labels: --dissection's folder (checked to be this model, layer and probe set), or
  the experiment's own dissection (reused when finished)."""
  from ndjax import results, views
  if FLAGS.dissection:
    vd = results.load(FLAGS.dissection)
    found = (vd.results.get('model'), vd.results.get('weights'), vd.layer)
    if found != (net.model, net.weights, net.layer):
      raise common.ExperimentError(
          f'--dissection={FLAGS.dissection} is {":".join(map(str, found))}, not '
          f'{net.model}:{net.weights}:{net.layer}')
    if vd.results.get('probe') not in (None, exp.probe_identity):
      raise common.ExperimentError(
          f'--dissection={FLAGS.dissection} was made over {vd.results.get("probe")}, not over '
          f'{exp.probe_identity}')
    exp.reused.append(f'{net.label}: {vd.path}')
    exp.runs = vd.path.parent            # what README.md names as the reused runs' folder
    timings = vd.results.get('timings_s', {})
    exp.reused_seconds += sum(timings.get(k, 0.0) for k in ('forward_and_threshold',
                                                            'threshold_refine', 'count'))
    return vd
  spec = views.ViewSpec(taus=(FLAGS.tau,))
  return exp.dissect(net, [net.layer], spec)[(net.layer, '')]


def effect_row(info: dict, base: dict, name: str, p: tuple, acc: tuple, after: bool = True
               ) -> dict:
  """One results.csv row: the class, the ablation, base rates, (after,) changes with intervals.
  p, acc: bootstrap_ci's (estimate, low, high, resampled) of the change in P(class) / top-1."""
  out = dict(**info, ablation=name, **base)
  if after:
    out.update(after_acc=round(base['base_acc'] + acc[0], 6),
               after_p=round(base['base_p'] + p[0], 6))
  out.update(delta_acc=round(acc[0], 6), delta_acc_lo=round(acc[1], 6),
             delta_acc_hi=round(acc[2], 6), delta_p=round(p[0], 6), delta_p_lo=round(p[1], 6),
             delta_p_hi=round(p[2], 6), ci_over=p[3])
  return out


def _pct(x: float) -> str:
  return 'n/a' if np.isnan(x) else f'{100 * x:+.1f}'


def _interval(lo: float, hi: float) -> str:
  return '' if np.isnan(lo) else f' [{100 * lo:+.1f}, {100 * hi:+.1f}]'


def main(argv):
  del argv
  net_spec = common.Network.parse(FLAGS.ablate)
  for name in ('draws', 'boot', 'min_images'):
    if FLAGS[name].value < (1 if name == 'boot' else 0):
      raise common.ExperimentError(f'--{name}={FLAGS[name].value} is out of range')
  if not 0 <= FLAGS.min_share < 1:
    raise common.ExperimentError(f'--min_share={FLAGS.min_share} must lie in [0, 1)')
  from ndjax import api
  from ndjax.probes import composite_catalogue
  from ndjax.viz import common as viz
  class_index = check_class_map(CLASS_MAP, viz.imagenet_classes(), composite_catalogue.STAMPS)
  unknown = [c for c in FLAGS.classes if c not in class_index]
  if unknown:
    raise common.ExperimentError(f'--classes: {unknown[0]!r} is not in the class map (e.g. '
                                 f'{", ".join(list(class_index)[:4])})')
  class_map = [m for m in CLASS_MAP if not FLAGS.classes or m.imagenet in FLAGS.classes]
  exp = common.Experiment('ablation')
  model = api.load_model(net_spec.model, net_spec.weights, net_spec.seed)
  net = viz.Net.of(model)
  if not net.has_head() or net.num_classes != 1000:
    raise common.ExperimentError(f'{net_spec.label}: the class map needs an ImageNet-1k '
                                 'classifier head')
  try:
    channels = net.channels(net_spec.layer)
  except KeyError as e:
    raise common.ExperimentError(e.args[0]) from None
  vd = load_dissection(exp, net_spec)
  labels = vd.labels()
  threshold = vd.iou_threshold if FLAGS.concept_iou is None else FLAGS.concept_iou
  if len(labels.best_iou) != channels:
    raise common.ExperimentError(f'the dissection has {len(labels.best_iou)} units, '
                                 f'{net_spec.layer} has {channels}')
  ds = exp.ds
  selected, skipped = select_images(ds, class_map, FLAGS.min_share, FLAGS.progress)
  if not selected:
    raise common.ExperimentError('no probe image has a mapped cut-out as its main object')
  images = np.stack([ds.load_image(s.index) for s in selected])
  targets = np.array([class_index[s.imagenet] for s in selected])

  # the base rate first: every selected image, nothing ablated
  base_p, base_ok = evaluate(net, net_spec.layer, images, targets, np.ones((1, channels), bool),
                             FLAGS.batch_size, FLAGS.progress)
  base_p, base_ok = base_p[:, 0], base_ok[:, 0].astype(float)

  rows, per_class, per_image = [], [], []
  diffs: dict[str, list] = {}                  # family -> per class (G, draws) concept - random
  for m in class_map:
    mine = np.array([s.imagenet == m.imagenet for s in selected])
    if not mine.any():
      continue
    photos = [s.stamp for s in selected if s.imagenet == m.imagenet]
    index = class_index[m.imagenet]
    units = concept_units(labels.best_label, labels.best_iou, vd.label_names, m.label, threshold)
    info = {'class': m.imagenet, 'imagenet_index': index, 'probe_label': m.label,
            'n_images': int(mine.sum()), 'n_photos': len(set(photos)), 'n_units': len(units)}
    base = dict(base_acc=round(float(group_means(base_ok[mine], photos)[0].mean()), 6),
                base_p=round(float(group_means(base_p[mine], photos)[0].mean()), 6))
    record = dict(**info, **base, units=units.tolist(), photos=dict(collections.Counter(photos)))
    per_class.append(record)
    if info['n_images'] < FLAGS.min_images or not len(units):
      why = (f'none: {info["n_images"]} images < {FLAGS.min_images}' if len(units)
             else 'none: no detectors')
      rows.append(dict(**info, ablation=why, **base))
      continue
    # the ablations: the concept's detectors (and with --single its best one alone), each with
    # --draws random sets of as many units, all evaluated in one batch of unit masks
    families = {'concept detectors': units}
    if FLAGS.single:
      families['best detector alone'] = units[[int(np.argmax(labels.best_iou[units]))]]
    rng = np.random.default_rng([FLAGS.draw_seed, index])
    pool = random_pool(units, labels.best_iou, threshold, FLAGS.random_from)
    draws = {name: random_sets(rng, pool, len(u), FLAGS.draws) for name, u in families.items()}
    sets = [u for name in families for u in [families[name], *draws[name]]]
    p, ok = evaluate(net, net_spec.layer, images[mine], targets[mine],
                     np.stack([keep_mask(u, channels) for u in sets]), FLAGS.batch_size,
                     FLAGS.progress)
    dp = p - base_p[mine][:, None]
    dacc = ok.astype(float) - base_ok[mine][:, None]
    stat = functools.partial(bootstrap_ci, groups=photos, n_boot=FLAGS.boot,
                             seed=FLAGS.draw_seed * 100003 + index)
    record['families'] = {}
    for f, name in enumerate(families):
      first = f * (1 + FLAGS.draws)
      cols = slice(first, first + 1)
      rand = slice(first + 1, first + 1 + FLAGS.draws)
      fam = [effect_row(info, base, name, stat(dp[:, cols]), stat(dacc[:, cols]))]
      fam += [effect_row(info, base, f'{name}: random {k + 1}', stat(dp[:, [first + 1 + k]]),
                         stat(dacc[:, [first + 1 + k]])) for k in range(FLAGS.draws)]
      if FLAGS.draws:
        diff_p, diff_acc = dp[:, cols] - dp[:, rand], dacc[:, cols] - dacc[:, rand]
        fam += [effect_row(info, base, f'{name}: random (all {FLAGS.draws} draws)',
                           stat(dp[:, rand]), stat(dacc[:, rand])),
                effect_row(info, base, f'{name} - random', stat(diff_p), stat(diff_acc),
                           after=False)]
        diffs.setdefault(name, []).append((group_means(diff_p, photos)[0],
                                           group_means(diff_acc, photos)[0]))
      rows += fam
      record['families'][name] = dict(
          units=families[name].tolist(), random_units=draws[name].tolist(),
          concept=fam[0], random=fam[-2] if FLAGS.draws else None,
          difference=fam[-1] if FLAGS.draws else None,
          draws=[dict(delta_p=r['delta_p'], delta_acc=r['delta_acc'])
                 for r in fam[1:1 + FLAGS.draws]],
          beats_every_draw=bool(FLAGS.draws) and bool(
              fam[0]['delta_p'] < min(r['delta_p'] for r in fam[1:1 + FLAGS.draws])))
    for r, s in enumerate(s for s in selected if s.imagenet == m.imagenet):
      per_image.append(dict(image=ds.records[s.index].image, imagenet=m.imagenet, stamp=s.stamp,
                            share=round(s.share, 4), base_p=round(float(base_p[mine][r]), 6),
                            ablated_p=[round(float(v), 6) for v in p[r]]))

  # the base rate over every selected image, and the mean over classes
  overall = dict(images=len(selected), classes=len(per_class),
                 top1=float(base_ok.mean()), mean_p=float(base_p.mean()),
                 class_mean_top1=float(np.mean([r['base_acc'] for r in per_class])),
                 class_mean_p=float(np.mean([r['base_p'] for r in per_class])))
  pooled = {}
  for name, per in diffs.items():
    est, lo, hi = pooled_ci([d for d, _ in per], FLAGS.boot, FLAGS.draw_seed)
    est_a, lo_a, hi_a = pooled_ci([a for _, a in per], FLAGS.boot, FLAGS.draw_seed)
    fams = [r['families'][name] for r in per_class if 'families' in r]
    pooled[name] = dict(classes=len(per), delta_p_diff=est, delta_p_diff_ci=[lo, hi],
                        delta_acc_diff=est_a, delta_acc_diff_ci=[lo_a, hi_a],
                        beats_every_draw=sum(f['beats_every_draw'] for f in fams),
                        diff_ci_below_zero=sum(f['difference']['delta_p_hi'] < 0 for f in fams))
  summary = dict(model=net_spec.label, layer=net_spec.layer, dissection=str(vd.path),
                 iou_threshold=threshold, random_from=FLAGS.random_from, draws=FLAGS.draws,
                 boot=FLAGS.boot, level=LEVEL, base_rate=overall, pooled=pooled,
                 selection=dict(rule='main object = the largest region of the fine object layer; '
                                'it must be a cut-out of a mapped stamp photo',
                                min_share=FLAGS.min_share, selected=len(selected), **skipped),
                 class_map=[dataclasses.asdict(m) for m in class_map], classes=per_class,
                 images=per_image)
  figures = {'ablation_delta_p': plot_deltas(per_class, 'concept detectors'),
             'base_rate': plot_base(per_class)}
  if FLAGS.single:
    figures['ablation_single_unit'] = plot_deltas(per_class, 'best detector alone')
  readme = headline(overall, per_class, pooled, net_spec, threshold)
  exp.write(rows, summary, figures, readme)
  print(readme.replace('**', ''))


def headline(overall: dict, per_class: list[dict], pooled: dict, net_spec, threshold) -> str:
  """README's text: the base rate, then per class the concept and random effects, then pooled."""
  lines = [
      '## Base rate', '',
      f'{net_spec.label}, top-1 over the {overall["images"]} probe composites whose main object '
      f'is a cut-out of a mapped stamp photo ({overall["classes"]} ImageNet classes): '
      f'**{100 * overall["top1"]:.1f}%** (mean P(class) {overall["mean_p"]:.3f}); the mean over '
      f'classes (each class the mean over its source photos) is '
      f'{100 * overall["class_mean_top1"]:.1f}% (mean P(class) {overall["class_mean_p"]:.3f}). '
      'Per class: base_rate.png.', '',
      '## Ablation', '',
      f'Concept detectors: units of {net_spec.layer} whose best label is the class\'s probe label '
      f'with IoU > {threshold:g}; random: as many units drawn from the pool --random_from='
      f'{FLAGS.random_from}, {FLAGS.draws} draws. Changes of mean P(class) in percentage points '
      '(top-1 accuracy: results.csv), 95% bootstrap intervals over the source photos (and the '
      'draws); a class resting on one photo gets an interval over the draws alone, conditional on '
      'that photo, and none for the concept set alone.']
  cell = lambda x: (_pct(x['delta_p']) + _interval(x['delta_p_lo'], x['delta_p_hi'])
                    if x else '')
  for name in ('concept detectors', 'best detector alone'):
    done = [r for r in per_class if name in r.get('families', {})]
    if not done:
      continue
    lines += ['', f'### {name}', '',
              '| class | images | photos | units | base acc | base P | dP ablated | '
              'dP random (mean) | ablated - random |', '|---|---|---|---|---|---|---|---|---|']
    for r in done:
      f = r['families'][name]
      lines.append(f'| {r["class"]} | {r["n_images"]} | {r["n_photos"]} | {len(f["units"])} | '
                   f'{100 * r["base_acc"]:.0f}% | {r["base_p"]:.2f} | {cell(f["concept"])} | '
                   f'{cell(f["random"])} | {cell(f["difference"])} |')
  skipped = [f'{r["class"]} ({r["n_images"]} img, {r["n_units"]} units)' for r in per_class
             if 'families' not in r]
  if skipped:
    lines += ['', f'Not ablated (fewer than --min_images={FLAGS.min_images} images, or no '
              f'detector): {", ".join(skipped)}.']
  for name, pool in pooled.items():
    lo, hi = pool['delta_p_diff_ci']
    lo_a, hi_a = pool['delta_acc_diff_ci']
    lines += ['', f'## {name} against random', '',
              f'Mean over the {pool["classes"]} ablated classes of (dP {name} - dP random): '
              f'**{100 * pool["delta_p_diff"]:+.1f} points** [{100 * lo:+.1f}, {100 * hi:+.1f}] '
              f'(top-1: {100 * pool["delta_acc_diff"]:+.1f} [{100 * lo_a:+.1f}, '
              f'{100 * hi_a:+.1f}]), a two-stage bootstrap over classes, their photos and the '
              f'draws. The ablated set lowers P(class) more than every one of the {FLAGS.draws} '
              f'random sets in {pool["beats_every_draw"]} of {pool["classes"]} classes; the '
              f'class\'s own ablated - random interval lies below zero in '
              f'{pool["diff_ci_below_zero"]}.']
  return '\n'.join(lines)


def plot_deltas(per_class: list[dict], name: str):
  """Per ablated class: the change of P(class) (left) and top-1 (right) under each random draw
  (grey dots), their mean with its interval (dark square) and the ablated set's (red; hollow, no
  bar, where one source photo leaves no interval)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  done = sorted((r for r in per_class if name in r.get('families', {})),
                key=lambda r: r['families'][name]['concept']['delta_p'], reverse=True)
  fig, axes = plt.subplots(1, 2, figsize=(12, 0.3 * len(done) + 1.8), sharey=True,
                           layout='constrained')
  for ax, key, title in ((axes[0], 'p', f'{name}: change in mean P(class)'),
                         (axes[1], 'acc', f'{name}: change in top-1 accuracy')):
    for i, r in enumerate(done):
      f = r['families'][name]
      first = i == 0
      singles = [d[f'delta_{key}'] for d in f['draws']]
      ax.plot(singles, np.full(len(singles), i - 0.32), '|', color='0.5', ms=4,
              label='random draws' if first else None)
      if f['random']:
        ax.errorbar(f['random'][f'delta_{key}'], i - 0.08, xerr=_err(f['random'], key), fmt='s',
                    color='0.25', ms=3.5, capsize=2, lw=1,
                    label='random (mean, 95% CI)' if first else None)
      c = f['concept']
      lone = np.isnan(c[f'delta_{key}_lo'])
      ax.errorbar(c[f'delta_{key}'], i + 0.2, xerr=None if lone else _err(c, key), fmt='o',
                  color='tab:red', mfc='white' if lone else 'tab:red', ms=5, capsize=2, lw=1.2,
                  label=f'{name} (95% CI over photos; hollow: 1 photo)' if first else None)
    ax.axvline(0, color='k', lw=0.6)
    ax.set(title=title, xlabel='after - before')
    ax.grid(axis='x', alpha=0.3)
  axes[0].set_yticks(np.arange(len(done)),
                     [f'{r["class"]} ({len(r["families"][name]["units"])} u, {r["n_images"]} img, '
                      f'{r["n_photos"]} ph)' for r in done], fontsize=8)
  axes[0].set_ylim(len(done) - 0.5, -0.5)
  fig.legend(*axes[0].get_legend_handles_labels(), loc='outside lower center', ncols=3,
             fontsize=8)
  return fig


def _err(row: dict, key: str) -> np.ndarray:
  est = row[f'delta_{key}']
  return np.array([[est - row[f'delta_{key}_lo']], [row[f'delta_{key}_hi'] - est]]).clip(0)


def plot_base(per_class: list[dict]):
  """The base rate per class: top-1 accuracy and mean P(class) with nothing ablated."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  done = sorted(per_class, key=lambda r: r['base_p'], reverse=True)
  fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(done) + 2), 3.6), layout='constrained')
  x = np.arange(len(done))
  ax.bar(x - 0.2, [r['base_acc'] for r in done], 0.4, label='top-1 accuracy')
  ax.bar(x + 0.2, [r['base_p'] for r in done], 0.4, label='mean P(class)')
  ax.set_xticks(x, [f'{r["class"]} ({r["n_images"]})' for r in done], rotation=75, fontsize=7)
  ax.set(ylim=(0, 1), ylabel='base rate (per source photo, averaged)')
  ax.legend(fontsize=8)
  return fig


if __name__ == '__main__':
  common.run(main)
