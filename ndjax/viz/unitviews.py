"""The report's gradient view of every unit: guided backpropagation on its top probe images.

`python -m ndjax.main --viz=N` runs this after a layer is dissected: for each unit's N strongest
images (the dissection's own top-k ranking), the unit's strongest activation is projected back to
pixels with guided backpropagation (`backprop.project`, keep='max': Zeiler & Fergus's choice), and
the projection and the image are cropped to that activation's receptive field: the same window as
the unit's top patch. Stored per layer as `viz.npz` (small uint8 crops); the report embeds them,
so the report itself never runs the network.
"""
from __future__ import annotations

import collections
import io

import numpy as np
from PIL import Image

from ndjax import fileio
from ndjax.viz import common, patches

VIZ_NAME = 'viz.npz'
VIZ_PX = 64              # side of a stored crop
RULE, KEEP = 'guided', 'max'


def _resize(crop: np.ndarray, size: int) -> np.ndarray:
  return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR))


def display(projection: np.ndarray, window, size: int = VIZ_PX) -> np.ndarray:
  """A projection onto RGB pixels (H, W, 3) cropped to the window and shown at size x size as
  Zeiler & Fergus do: 0 is mid grey and the 99.5th percentile of |value| spans the rest of the
  range (per view). The signed values are resized (antialiased) BEFORE that scaling: shrinking a
  scaled image would average its fine +/- texture back to grey."""
  import jax
  crop = patches.crop(np.asarray(projection, np.float32), window, fill=0.0)
  small = np.asarray(jax.image.resize(crop, (size, size, crop.shape[2]), 'linear', antialias=True))
  return common.to_uint8(255 * common.normalise(small, percentile=99.5, signed=True))


def unit_views(net: common.Net, dataset, top: dict, layer: str, rf, per_unit: int,
               batch_size: int = 8, size: int = VIZ_PX, progress: bool = False,
               units=None) -> dict:
  """{'units', 'ranks', 'images', 'windows', 'patches', 'guided'} for each unit's `per_unit`
  strongest images (fewer when the dissection kept fewer); `units`: only these (default all)."""
  from ndjax.viz import backprop
  todo = []                       # (unit, Patch)
  for unit in (range(top['images'].shape[0]) if units is None else units):
    todo += [(int(unit), p) for p in patches.top_patches(top, int(unit), rf, per_unit)]
  by_shape = collections.defaultdict(list)
  images = {}
  for unit, p in todo:
    if p.image not in images:
      images[p.image] = dataset.load_image(p.image)
    by_shape[images[p.image].shape].append((unit, p))
  out = {id(p): None for _, p in todo}
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=len(todo), desc=f'viz {layer}', unit='view', leave=False)
  for members in by_shape.values():
    for start in range(0, len(members), batch_size):
      chunk = members[start:start + batch_size]
      pixels = np.stack([images[p.image] for _, p in chunk])
      units = np.array([u for u, _ in chunk], np.int32)
      proj = backprop.project_units(net, net.state, net.preprocess(pixels), layer, units, RULE, KEEP)
      proj = backprop.to_pixels(net, pixels, proj)     # model-input space -> RGB pixels
      for (unit, p), g in zip(chunk, proj):
        out[id(p)] = (_resize(patches.crop(images[p.image], p.window), size),
                      display(g, p.window, size))
      if bar is not None:
        bar.update(len(chunk))
  if bar is not None:
    bar.close()
  crops = [out[id(p)] for _, p in todo]
  empty = np.zeros((0, size, size, 3), np.uint8)
  return {'units': np.array([u for u, _ in todo], np.int32),
          'ranks': np.array([p.rank for _, p in todo], np.int32),
          'images': np.array([p.image for _, p in todo], np.int32),
          'windows': np.array([p.window for _, p in todo], np.int32).reshape(-1, 4),
          'patches': np.stack([c[0] for c in crops]) if crops else empty,
          'guided': np.stack([c[1] for c in crops]) if crops else empty,
          'rule': np.array(RULE), 'keep': np.array(KEEP)}


def write(folder: str, arrays: dict) -> str:
  """Atomic `<folder>/viz.npz`."""
  import os
  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays)
  path = os.path.join(folder, VIZ_NAME)
  fileio.atomic_write(path, buf.getvalue())
  return path


def read(folder) -> dict | None:
  import os
  path = os.path.join(str(folder), VIZ_NAME)
  if not os.path.isfile(path):
    return None
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def add_to_folder(folder, per_unit: int = 3, progress: bool = True) -> dict:
  """Compute the views of an existing result folder with the network it names (results.json's
  model, weights, seed), write viz.npz and redraw its report."""
  from ndjax import api, report
  from ndjax import results as results_lib
  view = results_lib.load(folder)
  if not view.view.plain:
    raise common.VizError(f'{folder}: views are drawn for plain layers only, not {view.folder}')
  if view.top is None:
    raise common.VizError(f'{folder} has no topk.npz (dissected with --topk=0)')
  meta = view.results
  model = api.load_model(meta.get('model', ''), meta.get('weights'), int(meta.get('seed', 0)))
  arrays = unit_views(common.Net.of(model), patches.open_probe(view), view.top, view.layer,
                      patches.receptive_field(meta), min(per_unit, view.top['images'].shape[1]),
                      progress=progress)
  write(str(view.path), arrays)
  report.write_report(view.path)
  return arrays


def main(ctx: common.Context) -> common.Output:
  """CLI 'views': add the report's guided-backprop views to result folders after the fact (what
  `ndjax.main --viz=N` does during a dissection); --top views per unit (default 3 here)."""
  from ndjax import results as results_lib
  rows, titles, lines = [], [], []
  per_unit = ctx.options.top or 3
  for folder in ctx.results:
    arrays = add_to_folder(folder, per_unit)
    view = results_lib.load(folder)
    best = sorted(view.units, key=lambda u: -u['iou'])[:6]
    for rec in best:
      pick = np.nonzero(arrays['units'] == rec['unit'] - 1)[0]
      rows.append([im for i in pick for im in (arrays['patches'][i], arrays['guided'][i])])
      titles.append(f'{view.folder} u{rec["unit"] - 1}: {rec["label"]} {rec["iou"]:.2f}')
    lines.append(f'{folder}: {len(arrays["units"])} views written to viz.npz; report redrawn')
  return common.Output(common.grid_figure(rows, titles, title='patch | guided backpropagation',
                                          cell=1.2), {}, lines)
