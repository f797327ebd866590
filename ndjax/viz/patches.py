"""Top patches (Zeiler & Fergus 2014): a unit's strongest probe-set images, cropped to what it sees.

No forward pass: the dissection's own top-k pass kept, per unit, its k best images (by per-image
maximum activation) and their activation maps (`topk.npz`). The strongest position (i, j) of each
map names the unit copy that fired most, and the model's geometry (recorded in results.json, or
rebuilt from the architecture for older folders) gives that copy's receptive field: the patch is
exactly that window of the probe image. Parts of the window that fall in the padding, off the
image, are filled grey, so every patch of a layer has the receptive field's size and the unit's
view stays centred.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from ndjax.viz import common

FILL = 128        # grey for the off-image part of a window


@dataclasses.dataclass(frozen=True)
class Patch:
  image: int                               # probe-set image index
  rank: int                                # 0 = the unit's strongest image
  value: float                             # the unit's maximum activation on that image
  position: tuple[int, int]                # (i, j) of that maximum in the unit's map
  window: tuple[int, int, int, int]        # (top, left, bottom, right) in image pixels, unclipped


@functools.lru_cache(maxsize=16)
def _model_geometry(arch: str, layer: str) -> tuple[float, float, float]:
  from ndjax import models
  rf = models.build(arch).receptive_field(layer)
  return rf.origin, rf.spacing, rf.size


def receptive_field(results: dict):
  """The layer's receptive-field grid (a `models.layers.ReceptiveField`) from results.json."""
  from ndjax.models.layers import ReceptiveField
  rf = results.get('receptive_field')
  if rf:
    return ReceptiveField(float(rf['origin']), float(rf['spacing']), float(rf['size']))
  arch = (results.get('weights_manifest') or {}).get('arch') or results.get('model')
  if not arch:
    raise common.VizError('results.json names no model, so the receptive field is unknown; '
                          're-dissect with this ndjax version')
  try:
    return ReceptiveField(*_model_geometry(arch, results['layer']))
  except KeyError as e:
    raise common.VizError(f'cannot rebuild the geometry of {arch} {results.get("layer")}: '
                          f'{e.args[0]}') from None


def strongest(act_map: np.ndarray) -> tuple[int, int]:
  """(i, j) of a map's maximum; ties go to the first in row-major order (numpy's argmax)."""
  i, j = np.unravel_index(int(np.nanargmax(act_map)), act_map.shape)
  return int(i), int(j)


def top_patches(top: dict, unit: int, rf, k: int = 9) -> list[Patch]:
  """The unit's k strongest images (fewer if the dissection kept fewer) and their windows."""
  out = []
  for rank in range(min(k, top['images'].shape[1])):
    image = int(top['images'][unit, rank])
    h, w = (int(v) for v in top['map_hw'][unit, rank])
    if image < 0 or not h or not w:
      continue
    i, j = strongest(top['maps'][unit, rank, :h, :w])
    t, l, b, r = rf.window(i, j)
    window = (math.floor(t), math.floor(l), math.ceil(b), math.ceil(r))
    out.append(Patch(image, rank, float(top['values'][unit, rank]), (i, j), window))
  return out


def crop(image: np.ndarray, window: tuple[int, int, int, int], fill: int = FILL) -> np.ndarray:
  """The window of an (H, W, C) image, exactly (bottom - top) x (right - left); what lies off the
  image is `fill`."""
  t, l, b, r = window
  h, w = image.shape[:2]
  out = np.full((b - t, r - l) + image.shape[2:], fill, image.dtype)
  ys, xs = slice(max(t, 0), min(b, h)), slice(max(l, 0), min(r, w))
  if ys.start < ys.stop and xs.start < xs.stop:
    out[ys.start - t:ys.stop - t, xs.start - l:xs.stop - l] = image[ys, xs]
  return out


def unit_patches(view, unit: int, dataset, k: int = 9) -> tuple[list[np.ndarray], list[Patch]]:
  """(crops, patches) of one unit of a result folder (`results.load`), read from `dataset`."""
  top = view.top
  if top is None:
    raise common.VizError(f'{view.path} has no topk.npz (dissected with --topk=0): re-dissect '
                          'with --topk=9 or more')
  units = top['images'].shape[0]
  if not 0 <= unit < units:
    raise common.VizError(f'unit {unit} is out of range for {view.folder} ({units} units)')
  found = top_patches(top, unit, receptive_field(view.results), k)
  return [crop(dataset.load_image(p.image), p.window) for p in found], found


def open_probe(view):
  """The probe set a result folder was dissected on (reopened from results.json, cut to the
  images it used, its labels checked: `analyses.open_probe`)."""
  from ndjax.viz import analyses
  return analyses.open_probe(view)


def figure(rows: list[tuple[str, list[np.ndarray]]], k: int, title: str):
  return common.grid_figure([crops for _, crops in rows], [name for name, _ in rows], title=title,
                            cell=1.3)


def main(ctx: common.Context) -> common.Output:
  """CLI 'patches': per result folder, --unit's top patches, or (no --unit) those of its eight
  best detectors."""
  from ndjax import results as results_lib
  k = ctx.options.top or 9
  rows, arrays, lines = [], {}, []
  for folder in ctx.results:
    view = results_lib.load(folder)
    ds = open_probe(view)
    records = {u['unit'] - 1: u for u in view.units}
    units = ([ctx.unit] if ctx.unit is not None else
             [u['unit'] - 1 for u in sorted(view.units, key=lambda u: -u['iou'])[:8]])
    for unit in units:
      crops, found = unit_patches(view, unit, ds, k)
      rec = records.get(unit, {})
      name = f'{view.folder} u{unit}: {rec.get("label", "?")} {rec.get("iou", float("nan")):.2f}'
      rows.append((name, crops))
      key = f'{view.folder}_u{unit}'
      arrays[key + '_images'] = np.array([p.image for p in found])
      arrays[key + '_windows'] = np.array([p.window for p in found])
      arrays[key + '_patches'] = np.stack(crops) if crops else np.zeros((0, 1, 1, 3), np.uint8)
      lines.append(f'{name}: images {[p.image for p in found]}, windows of '
                   f'{found[0].window[2] - found[0].window[0] if found else 0} px')
  title = f'top {k} patches (Zeiler & Fergus): receptive-field windows of the strongest images'
  return common.Output(figure(rows, k, title), arrays, lines)
