"""Per-unit analyses of dissection result folders: no forward pass, only what the dissection saved.

  concepts       a unit's concept distribution: its best labels over all categories, with IoUs
  concept_units  a concept's best-matching units in every given layer, in the order given
  parts          for each object, the parts lying on it in the probe set and their best units
  filtering      how much of a concept's best units' activation falls OUTSIDE the concept, by depth

Every number is read from counts.npz (`results.ViewDir`), with the denominator the run used, so
an IoU here equals results.json's. Units are numbered from 0 as everywhere in `ndjax.viz`
(--unit); tally.csv and results.json number them from 1. Only `parts` opens the probe set, and
only its label masks (once, `cooccurrence`). Each analysis returns rows (one dict per table
row); `table` turns rows into the CSV lines and column arrays the CLI prints and saves.
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import difflib
import io
import os
from typing import Sequence

import numpy as np

from ndjax import results as results_lib
from ndjax.data.broden import display_name
from ndjax.viz import common

CATEGORY_COLOURS = {'object': 'tab:blue', 'part': 'tab:orange', 'scene': 'tab:green',
                    'material': 'tab:brown', 'texture': 'tab:purple', 'color': 'tab:red'}


# --- reading folders ------------------------------------------------------------------------------
def load_views(paths: Sequence[str]) -> list[results_lib.ViewDir]:
  """Layer folders, or run folders (expanded to their layers in dissection order), in the order
  given: that order is the depth axis of concept_units and filtering."""
  views = [v for p in paths for v in results_lib.find(p)]
  if not views:
    raise common.VizError('no result folders given: pass --results=<outdir>/<run>/<layer>')
  return views


def _scores(view, denominator: str | None):
  """(K, N) IoUs with the run's own denominator unless told otherwise (results.json's numbers)."""
  return view.labels(denominator or view.denominator)


def _units(view) -> int:
  return int(view.counts.inter.shape[0])


def _check_unit(view, unit: int) -> None:
  k = _units(view)
  if not 0 <= unit < k:
    raise common.VizError(f'unit {unit} is out of range for {view.folder} ({k} units: 0..{k - 1})')


def find_label(view, concept: str) -> int:
  """A concept as the user types it -> its label number in this folder's probe set.

  Exact label names first ('street-s'), then case-insensitive names or display names ('street',
  'Soccer ball'). Only labels with a primary category were scored: others are refused.
  """
  names, text = view.label_names, str(concept).strip()
  if text in names:
    hits = [names.index(text)]
  else:
    key = text.lower().replace('_', ' ')
    hits = [i for i, n in enumerate(names) if i > 0 and n != '-' and
            key in (n.lower().replace('_', ' '), display_name(n).lower())]
  scored = [i for i in hits if view.primary[i] >= 0]
  if len(scored) == 1:
    return scored[0]
  if len(scored) > 1:
    raise common.VizError(f'concept {text!r} matches several labels in {view.folder} '
                          f'({", ".join(names[i] for i in scored)}): give the exact name')
  if hits:
    raise common.VizError(f'concept {text!r} has no primary category in the probe set of '
                          f'{view.folder}: it was never scored')
  close = difflib.get_close_matches(text, [n for n in names if n != '-'], n=3)
  hint = f' (did you mean {", ".join(close)}?)' if close else ''
  raise common.VizError(f'unknown concept {text!r} in {view.folder}{hint}')


def _ranked(scores: np.ndarray, top: int, keep=None) -> np.ndarray:
  """Indices of the `top` highest scores, best first, ties to the lower index; `keep` masks."""
  order = np.argsort(-scores, kind='stable')
  if keep is not None:
    order = order[keep[order]]
  return order[:top]


# --- 1. a unit's concept distribution -----------------------------------------------------------
def unit_concepts(view, unit: int, top: int = 5, denominator: str | None = None) -> list[dict]:
  """The unit's `top` labels over ALL categories by IoU (each judged in its primary category, as
  the dissection labels units): what else the unit responds to besides its label. Labels with
  IoU 0 never overlap the unit's mask and are left out."""
  _check_unit(view, unit)
  scored = _scores(view, denominator)
  iou = scored.iou[unit]
  threshold = view.iou_threshold
  cats, names, primary = view.categories, view.label_names, view.primary
  return [{'run': view.run, 'layer': view.folder, 'unit': unit, 'rank': r, 'label': names[c],
           'category': cats[primary[c]], 'iou': float(iou[c]),
           'detector': bool(iou[c] > threshold)}
          for r, c in enumerate(_ranked(iou, top, (primary >= 0) & (iou > 0)))]


def best_unit(view, denominator: str | None = None) -> int:
  """The layer's best detector: the unit whose own label has the highest IoU (ties: lowest)."""
  return int(_ranked(_scores(view, denominator).best_iou, 1)[0])


# --- 2. a concept's best units per layer --------------------------------------------------------
def concept_units(views: Sequence, concept: str, top: int = 5,
                  denominator: str | None = None) -> list[dict]:
  """Per folder (depth = its position in `views`): the `top` units with the highest IoU for
  `concept`, and each unit's own label (is the concept what the unit is labelled, or second?)."""
  rows = []
  for depth, view in enumerate(views):
    c = find_label(view, concept)
    scored = _scores(view, denominator)
    names = view.label_names
    for r, k in enumerate(_ranked(scored.iou[:, c], top)):
      rows.append({'run': view.run, 'layer': view.folder, 'depth': depth, 'rank': r,
                   'unit': int(k), 'concept': names[c], 'iou': float(scored.iou[k, c]),
                   'detector': bool(scored.iou[k, c] > view.iou_threshold),
                   'unit_label': names[scored.best_label[k]],
                   'unit_iou': float(scored.best_iou[k])})
  return rows


# --- 3. parts of objects and their detectors ----------------------------------------------------
@dataclasses.dataclass
class Cooccurrence:
  """Which part labels lie on which object labels in a probe set, pixel by pixel.

  pixels[o, p] = sum over images of |L_o(x) & L_p(x)|: mask pixels carrying object label
  objects[o] and part label parts[p] (L as SETS over the image's mask layers, an image-level label
  covering every pixel: the L_c of dissection_semantics.md). images[o, p]: the images where that
  overlap is non-empty; part_pixels[p] = sum |L_p(x)|.
  """
  objects: np.ndarray        # (O,) label numbers whose primary category is the object category
  parts: np.ndarray          # (P,) label numbers whose primary category is the part category
  pixels: np.ndarray         # (O, P) int64
  images: np.ndarray         # (O, P) int64
  part_pixels: np.ndarray    # (P,) int64
  label_names: list[str]
  num_images: int


def _label_sets(layers: np.ndarray, image_level: np.ndarray, position: np.ndarray):
  """One image's L_c as columns: -> (positions (n,) in the wanted list, bool (X, n)), for the
  labels present with position >= 0 (pixel-level in any layer, or image-level: every pixel)."""
  flat = layers.reshape(len(layers), layers.shape[1] * layers.shape[2])
  img = np.asarray(image_level, np.int64).ravel()
  ids = np.union1d(np.unique(flat), img)
  ids = ids[(ids > 0) & (ids < len(position))]
  ids = ids[position[ids] >= 0]
  sets = np.zeros((flat.shape[1], len(ids)), bool)
  for layer in flat:
    sets |= layer[:, None] == ids[None, :]
  sets[:, np.isin(ids, img)] = True
  return position[ids], sets


def cooccurrence(ds, object_category: str = 'object', part_category: str = 'part',
                 workers: int | None = None) -> Cooccurrence:
  """Object x part pixel co-occurrence over the probe set's label masks (no model involved).

  Why pixels and not images: a Broden part is annotated as a region of the object it belongs to
  (ADE20K's part levels and Pascal-Part are parts of object instances; the generated sets keep
  every part pixel inside its own object's pixels), so the object under a part's pixels is its
  owner. Same-image co-occurrence would pair a house's roof with the cars and trees of the street.

  Per image this is one small product of the image's own object and part columns (5-20 labels,
  as `labels.image_labels` does for the counts); decoding the PNGs dominates, so the images are
  read in threads and the product stays in NumPy (float32 products of 0/1 are exact integers
  below 2^24, far above a mask's pixel count).
  """
  cats = list(ds.categories)
  for cat in (object_category, part_category):
    if cat not in cats:
      raise common.VizError(f'the probe set has no {cat!r} category (it has {", ".join(cats)}): '
                            'parts needs object and part labels')
  primary = np.asarray(ds.primary)
  objects = np.flatnonzero(primary == cats.index(object_category))
  parts = np.flatnonzero(primary == cats.index(part_category))
  o_pos = np.full(len(primary), -1, np.int64)
  o_pos[objects] = np.arange(len(objects))
  p_pos = np.full(len(primary), -1, np.int64)
  p_pos[parts] = np.arange(len(parts))
  pixels = np.zeros((len(objects), len(parts)), np.int64)
  images = np.zeros_like(pixels)
  part_pixels = np.zeros(len(parts), np.int64)
  n = len(ds.records)
  with concurrent.futures.ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
    for layers, image_level in pool.map(ds.load_labels, range(n)):
      pi, p_sets = _label_sets(layers, image_level, p_pos)
      if not len(pi):
        continue
      part_pixels[pi] += p_sets.sum(axis=0)
      oi, o_sets = _label_sets(layers, image_level, o_pos)
      if not len(oi):
        continue
      both = np.rint(o_sets.T.astype(np.float32) @ p_sets.astype(np.float32)).astype(np.int64)
      pixels[np.ix_(oi, pi)] += both
      images[np.ix_(oi, pi)] += both > 0
  return Cooccurrence(objects, parts, pixels, images, part_pixels, list(ds.label_names), n)


def part_detectors(views: Sequence, cooc: Cooccurrence, top: int | None = None,
                   concept: str | None = None, denominator: str | None = None) -> list[dict]:
  """For each object, the parts lying on it (most co-occurring pixels first, `top` per object)
  and the unit with the highest IoU for that part over all `views` (ties: the earlier folder, then
  the lower unit). `concept` keeps one object (or, if it names a part, that part's rows).

  part_share: the part's pixels lying on this object over all its pixels (a part shared by many
  objects, like leg, has a small share on each; annotation noise has a tiny one).
  """
  names = cooc.label_names
  for view in views:
    if view.label_names != names:
      raise common.VizError(f'{view.folder} was dissected on another probe set than the one read '
                            'for co-occurrence (label names differ): give folders of one probe set')
  best = []                                         # per part: (view, unit, iou)
  for p in cooc.parts:
    cands = []
    for view in views:
      iou = _scores(view, denominator).iou[:, p]
      k = int(_ranked(iou, 1)[0])
      cands.append((float(iou[k]), view, k))
    score = max(c[0] for c in cands)
    best.append(next(c for c in cands if c[0] == score))
  keep_o, keep_p = np.ones(len(cooc.objects), bool), np.ones(len(cooc.parts), bool)
  if concept is not None:
    c = find_label(views[0], concept)
    if c in cooc.objects:
      keep_o = cooc.objects == c
    elif c in cooc.parts:
      keep_p = cooc.parts == c
    else:
      raise common.VizError(f'concept {concept!r} is neither an object nor a part label')
  rows = []
  for o in np.flatnonzero(keep_o):
    ps = _ranked(cooc.pixels[o], top or len(cooc.parts), keep_p & (cooc.pixels[o] > 0))
    for p in ps:
      score, view, k = best[p]
      rows.append({'object': names[cooc.objects[o]], 'part': names[cooc.parts[p]],
                   'pixels': int(cooc.pixels[o, p]), 'images': int(cooc.images[o, p]),
                   'part_share': float(cooc.pixels[o, p] / cooc.part_pixels[p]),
                   'run': view.run, 'layer': view.folder, 'unit': k, 'iou': score,
                   'detector': bool(score > view.iou_threshold)})
  return rows


def open_probe(view) -> object:
  """The probe set `view` was dissected on, cut to the images it used, its labels checked."""
  from ndjax import report
  from ndjax.data import broden, open_dataset
  path = report.probe_path(view.results)
  if not path:
    raise common.VizError(f'{view.path}: results.json does not say which probe set was used')
  try:
    ds = open_dataset(path, check_files=False)
  except (broden.BrodenFormatError, OSError) as e:
    raise common.VizError(f'{view.path}: its probe set cannot be opened ({e})') from None
  used = view.results.get('images')
  if isinstance(used, int) and 0 < used < len(ds.records):    # an experiment's --images
    ds = dataclasses.replace(ds, records=list(ds.records[:used]))
  if list(ds.label_names) != view.label_names:
    raise common.VizError(f'{path} is not the probe set {view.folder} was dissected on (its '
                          'labels differ)')
  return ds


# --- 4. the filtering effect ----------------------------------------------------------------------
def filtering_effect(views: Sequence, concept: str, top: int = 5,
                     denominator: str | None = None) -> list[dict]:
  """Per folder (depth = its position in `views`), the `top` units for `concept`: the fraction
  of each unit's activated pixels that fall OUTSIDE the concept.

  Same image set as the IoU: with the paper denominator, the images where the concept's primary
  category is labelled (act_paper); with lite, those where the unit touches that category
  (act_lite). Both come from counts.npz exactly, no forward pass: every pixel of |M_k & L_c|
  (inter) lies on an image carrying c, which is such an image, so
    outside = 1 - inter[k, c] / act[k, primary(c)].
  outside_all uses every probe image (act_pixels) instead: the unit's activation on images
  where the concept's category is not annotated counts as outside there, which is not knowable.
  """
  rows = []
  for depth, view in enumerate(views):
    c = find_label(view, concept)
    den = denominator or view.denominator
    scored = _scores(view, den)
    counts = view.counts
    cat = int(view.primary[c])
    act = {'paper': counts.act_paper, 'lite': counts.act_lite}[den][:, cat]
    for r, k in enumerate(_ranked(scored.iou[:, c], top)):
      inside, active, total = int(counts.inter[k, c]), int(act[k]), int(counts.act_pixels[k])
      rows.append({'run': view.run, 'layer': view.folder, 'depth': depth, 'rank': r,
                   'unit': int(k), 'concept': view.label_names[c], 'iou': float(scored.iou[k, c]),
                   'activated': active, 'inside': inside,
                   'outside': 1 - inside / active if active else float('nan'),
                   'activated_all': total,
                   'outside_all': 1 - inside / total if total else float('nan')})
  return rows


# --- tables ---------------------------------------------------------------------------------------
def table(rows: list[dict], columns: Sequence[str] | None = None
          ) -> tuple[list[str], dict[str, np.ndarray]]:
  """rows -> (CSV lines, header first; {column: array}) for the CLI to print and save."""
  columns = list(columns or (rows[0] if rows else []))
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(columns)
  for row in rows:
    writer.writerow([f'{row[c]:.6g}' if isinstance(row[c], float) else row[c] for c in columns])
  arrays = {c: np.asarray([row[c] for row in rows]) for c in columns}
  return buf.getvalue().splitlines(), arrays


# --- figures --------------------------------------------------------------------------------------
def _plt():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def figure_concepts(per_view: list[tuple[str, list[dict]]], threshold: float = 0.04):
  """One horizontal bar chart per folder: the unit's concepts, coloured by category."""
  plt = _plt()
  n = len(per_view)
  cols = min(n, 3)
  nrows = -(-n // cols)
  height = max(2.0, 0.32 * max((len(r) for _, r in per_view), default=1) + 1.0)
  fig, axes = plt.subplots(nrows, cols, figsize=(4.4 * cols, height * nrows + 0.4),
                           squeeze=False)
  for ax in axes.ravel()[n:]:
    ax.axis('off')
  for ax, (title, rows) in zip(axes.ravel(), per_view):
    names = [display_name(r['label']) for r in rows][::-1]
    values = [r['iou'] for r in rows][::-1]
    colours = [CATEGORY_COLOURS.get(r['category'], 'grey') for r in rows][::-1]
    ax.barh(range(len(rows)), values, color=colours)
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.axvline(threshold, color='grey', ls=':', lw=1)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel('IoU')
    if not rows:
      ax.text(0.5, 0.5, 'no label overlaps this unit', ha='center', transform=ax.transAxes)
  cats = sorted({r['category'] for _, rows in per_view for r in rows})
  handles = [plt.Rectangle((0, 0), 1, 1, color=CATEGORY_COLOURS.get(c, 'grey')) for c in cats]
  if cats:
    fig.legend(handles, cats, loc='lower center', ncol=len(cats), fontsize=8,
               bbox_to_anchor=(0.5, -0.02))
  fig.tight_layout(rect=(0, 0.05 / nrows, 1, 1))
  return fig


def _depth_axis(ax, rows: list[dict]) -> list[str]:
  layers = list(dict.fromkeys((r['depth'], r['layer']) for r in rows))
  ax.set_xticks([d for d, _ in layers], [name for _, name in layers], rotation=30, ha='right',
                fontsize=8)
  ax.grid(alpha=0.3)
  ax.margins(x=0.08, y=0.12)
  return layers


def figure_concept_units(rows: list[dict], concept: str, threshold: float = 0.04):
  """IoU of the concept's best units per layer: each of the top units a dot, the best a line."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len({r['depth'] for r in rows}) + 2), 3.6))
  ax.scatter([r['depth'] for r in rows], [r['iou'] for r in rows], s=18, color='tab:blue',
             alpha=0.6, label='top units')
  best = [r for r in rows if r['rank'] == 0]
  ax.plot([r['depth'] for r in best], [r['iou'] for r in best], '-o', color='tab:blue',
          label='best unit')
  for r in best:
    ax.annotate(f'u{r["unit"]}', (r['depth'], r['iou']), textcoords='offset points',
                xytext=(4, 4), fontsize=7)
  ax.axhline(threshold, color='grey', ls=':', lw=1, label=f'detector (IoU > {threshold:g})')
  _depth_axis(ax, rows)
  ax.set(ylabel='IoU', title=f'best units for {display_name(concept)}')
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def figure_parts(rows: list[dict], threshold: float = 0.04, max_objects: int = 25,
                 max_parts: int = 20):
  """Top: each part's best unit (IoU, labelled layer/unit). Bottom: objects x parts, the share
  of the part's pixels lying on the object (which object a part belongs to). The objects and
  parts with the most co-occurring pixels are drawn; the table keeps all."""
  plt = _plt()
  if not rows:
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.axis('off')
    ax.text(0.5, 0.5, 'no part lies on any object in this probe set', ha='center')
    return fig
  weight_o, weight_p, share, best = {}, {}, {}, {}
  for r in rows:
    weight_o[r['object']] = weight_o.get(r['object'], 0) + r['pixels']
    weight_p[r['part']] = weight_p.get(r['part'], 0) + r['pixels']
    share[r['object'], r['part']] = r['part_share']
    best[r['part']] = r
  objects = sorted(weight_o, key=lambda o: -weight_o[o])[:max_objects]
  parts = sorted(weight_p, key=lambda p: -weight_p[p])[:max_parts]
  grid = np.array([[share.get((o, p), np.nan) for p in parts] for o in objects]).reshape(
      len(objects), len(parts))
  width = max(5.0, 0.55 * len(parts) + 3.0)
  fig, (top, ax) = plt.subplots(2, 1, figsize=(width, 2.2 + 0.26 * len(objects) + 1.2),
                                height_ratios=(1.4, max(1.0, 0.26 * len(objects))),
                                sharex=True, squeeze=True)
  ious = [best[p]['iou'] for p in parts]
  top.bar(range(len(parts)), ious, color='tab:orange')
  for i, p in enumerate(parts):
    top.text(i, ious[i], f'{best[p]["layer"]}\nu{best[p]["unit"]}', ha='center', va='bottom',
             fontsize=6)
  top.axhline(threshold, color='grey', ls=':', lw=1)
  top.set_ylim(0, max(ious + [threshold]) * 1.45)
  top.set(ylabel='best unit IoU', title='parts of objects: best unit per part, and where parts lie')
  image = ax.imshow(grid, aspect='auto', cmap='viridis', vmin=0, vmax=1, interpolation='nearest')
  ax.set_yticks(range(len(objects)), [display_name(o) for o in objects], fontsize=7)
  ax.set_xticks(range(len(parts)), [display_name(p) for p in parts], rotation=45, ha='right',
                fontsize=8)
  ax.set_ylabel('object')
  fig.colorbar(image, ax=[top, ax], shrink=0.5, label="share of the part's pixels on the object")
  return fig


def figure_filtering(rows: list[dict], concept: str):
  """Fraction of the concept's best units' activation outside the concept, vs depth."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len({r['depth'] for r in rows}) + 2), 3.6))
  ax.scatter([r['depth'] for r in rows], [r['outside'] for r in rows], s=18, color='tab:red',
             alpha=0.5, label='top units')
  best = [r for r in rows if r['rank'] == 0]
  ax.plot([r['depth'] for r in best], [r['outside'] for r in best], '-o', color='tab:red',
          label='best unit (images where its category is labelled)')
  ax.plot([r['depth'] for r in best], [r['outside_all'] for r in best], '--', color='tab:red',
          alpha=0.5, label='best unit, all probe images')
  for r in best:
    ax.annotate(f'u{r["unit"]}', (r['depth'], r['outside']), textcoords='offset points',
                xytext=(4, 4), fontsize=7)
  _depth_axis(ax, rows)
  ax.set_ylim(0, 1.02)
  ax.set(ylabel='activated pixels outside the concept',
         title=f'filtering: activation outside {display_name(concept)}')
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


# --- the CLI --------------------------------------------------------------------------------------
def _need_concept(ctx, method: str) -> str:
  if not ctx.options.concept:
    raise common.VizError(f'{method} looks at one concept: give --concept=<label> (e.g. dog)')
  return ctx.options.concept


def main_concepts(ctx: common.Context) -> common.Output:
  """CLI 'concepts': per result folder, --unit's top --top concepts; without --unit, each
  folder's best detector (the unit whose label has the highest IoU)."""
  views = load_views(ctx.results)
  per_view, rows = [], []
  for view in views:
    unit = ctx.unit if ctx.unit is not None else best_unit(view)
    mine = unit_concepts(view, unit, ctx.options.top or 5)
    per_view.append((f'{view.run}/{view.folder} unit {unit}', mine))
    rows += mine
  lines, arrays = table(rows, ['run', 'layer', 'unit', 'rank', 'label', 'category', 'iou',
                               'detector'])
  return common.Output(figure_concepts(per_view, views[0].iou_threshold), arrays, lines, csv=lines)


def main_concept_units(ctx: common.Context) -> common.Output:
  """CLI 'concept_units': --concept's --top units in every folder, folders in the order given."""
  concept = _need_concept(ctx, 'concept_units')
  views = load_views(ctx.results)
  rows = concept_units(views, concept, ctx.options.top or 5)
  lines, arrays = table(rows)
  return common.Output(figure_concept_units(rows, rows[0]['concept'], views[0].iou_threshold),
                       arrays, lines, csv=lines)


def main_parts(ctx: common.Context) -> common.Output:
  """CLI 'parts': co-occurrence from the first folder's probe set, best units over all folders;
  --top parts per object, --concept one object (or part)."""
  views = load_views(ctx.results)
  cooc = cooccurrence(open_probe(views[0]))
  rows = part_detectors(views, cooc, ctx.options.top or 5, ctx.options.concept)
  lines, arrays = table(rows, ['object', 'part', 'pixels', 'images', 'part_share', 'run',
                               'layer', 'unit', 'iou', 'detector'])
  return common.Output(figure_parts(rows, views[0].iou_threshold), arrays, lines, csv=lines)


def main_filtering(ctx: common.Context) -> common.Output:
  """CLI 'filtering': --concept's --top units per folder and their activation outside it."""
  concept = _need_concept(ctx, 'filtering')
  views = load_views(ctx.results)
  rows = filtering_effect(views, concept, ctx.options.top or 5)
  lines, arrays = table(rows)
  return common.Output(figure_filtering(rows, rows[0]['concept']), arrays, lines, csv=lines)
