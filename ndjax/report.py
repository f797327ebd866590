r"""The dissection report: one self-contained HTML page per layer or view, drawn from its outputs.

  python -m ndjax.report <outdir>/<run>/<layer>[@<view>] [more such folders] [--k=10]

`write_report(layer_dir)` reads what the dissection wrote into the folder (results.json,
topk.npz, through `ndjax.results`) and the probe images, and never recomputes the dissection. A
view's page (`<layer>@<view>`) is titled by its folder name and says what the view is. It writes
`<layer_dir>/report.html`, which opens from disk with no network: every image is inlined as
base64, CSS and JS are inline. The page holds
- the summary line (the same text the CLI prints, from `tally.summary_line`);
- a bar graph of detector units per concept, grouped by category (the paper's Fig. 9 style);
- a grid of every unit, sortable by unit, label, category and IoU and filterable by category, each
  with a strip of its top-k probe images and the unit's mask on each (exactly the pixels the
  dissection counted: `topk.unit_mask`'s upsample-then-threshold, batched);
- a page per unit (an inline section, opened as `report.html#unit-N`) with its top-5 concepts and
  their IoUs per category.
Each probe image appears once in the file (a CSS class per image), however many units share it.
"""
from __future__ import annotations

import base64
import collections
import html
import io
import itertools
import logging
import pathlib
import re
import sys
import types

import jax.numpy as jnp
import numpy as np
from absl import app, flags
from PIL import Image

from ndjax import fileio, tally, upsample
from ndjax import results as results_lib
from ndjax.data import broden, open_dataset

REPORT_NAME = 'report.html'
THUMB_PX = 96          # longest side of an inlined probe-image thumbnail
STRIP_PX = 72          # displayed height of one image in a unit's strip
PATCH_PX = 72          # displayed side of one top patch
PATCHES = 9            # top patches per unit page (Zeiler & Fergus's nine)
VEIL_ALPHA = 190       # opacity of the dark veil outside the unit's mask (0-255)
OUTLINE_RGB = (255, 214, 0)   # the mask's edge, drawn inside it: a small region stays visible
# palette indices of a mask PNG: the unit fires on INSIDE and EDGE pixels, not on VEIL
INSIDE, VEIL, EDGE = 0, 1, 2
MASK_CHUNK = 1024      # maps upsampled per device call: bounds the (n, sh, sw) float buffer
# the summary line's category order (tally.summary_line); other categories follow in csv order
SUMMARY_ORDER = ('object', 'part', 'scene', 'material', 'texture', 'color')
CATEGORY_COLORS = {'object': '#4e79a7', 'part': '#f28e2b', 'scene': '#59a14f',
                   'material': '#b07aa1', 'texture': '#c9a227', 'color': '#e15759'}
OTHER_COLOR = '#7f7f7f'


def category_order(categories) -> list[str]:
  order = [c for c in SUMMARY_ORDER if c in categories]
  return order + [c for c in categories if c not in order]


def category_color(category: str) -> str:
  return CATEGORY_COLORS.get(category, OTHER_COLOR)


def load_results(layer_dir: str | pathlib.Path) -> dict:
  """results.json of a layer or view folder, read (and checked) by the shared `ndjax.results`."""
  return results_lib.load(layer_dir).results


def folder_name(results: dict) -> str:
  """The folder the page is about ('conv5', 'conv5@rot_s0_a0.5'): the CLI's summary lines and the
  compare figures name a view by it, so the page does too."""
  return results.get('folder') or results['layer']


def summary(results: dict, folder: str | None = None) -> str:
  """The CLI's summary line for this folder, rebuilt from results.json by `tally.summary_line`."""
  categories = list(results['unique_detectors'])    # category.csv order, as the dissection wrote it
  units = results['units']
  label_ids = {name: i for i, name in enumerate(sorted({u['label'] for u in units}))}
  labels = types.SimpleNamespace(
      best_iou=np.array([u['iou'] for u in units], np.float64),
      best_label=np.array([label_ids[u['label']] for u in units], np.int64),
      best_cat=np.array([categories.index(u['category']) for u in units], np.int64))
  ds = types.SimpleNamespace(categories=categories)
  return tally.summary_line(folder or folder_name(results), labels, ds, results['iou_threshold'])


def concept_counts(results: dict) -> dict[str, list[tuple[str, int]]]:
  """Detector units per concept, per category (summary order): [(label, units)], most units first."""
  per_cat = collections.defaultdict(collections.Counter)
  for u in results['units']:
    if u['iou'] > results['iou_threshold']:
      per_cat[u['category']][u['label']] += 1
  return {cat: sorted(per_cat[cat].items(), key=lambda item: (-item[1], item[0]))
          for cat in category_order(results['unique_detectors']) if per_cat[cat]}


def _tick_step(top: int) -> int:
  """The smallest step of the 1-2-5 series giving at most 5 ticks up to `top`."""
  for magnitude in itertools.count():
    for factor in (1, 2, 5):
      if top / (factor * 10**magnitude) <= 5:
        return factor * 10**magnitude


def bar_graph_svg(counts: dict[str, list[tuple[str, int]]]) -> str:
  """Inline SVG: one bar per concept (height = detector units), grouped and coloured by category."""
  if not counts:
    return '<p class="note">No unit is a detector at this IoU threshold.</p>'
  bar_w, bar_gap, group_gap = 14, 4, 22
  longest = max(len(broden.display_name(label)) for items in counts.values() for label, _ in items)
  left, top, plot_h, legend_h = 40, 16, 150, 22
  label_h = 14 + round(5.6 * longest * 0.87)      # ~5.6 px per 10 px character, sin(60 deg)
  top_count = max(n for items in counts.values() for _, n in items)
  step = _tick_step(top_count)
  y_max = -(-top_count // step) * step
  scale = plot_h / y_max
  base = top + plot_h
  parts, x = [], left + 8
  for cat, items in counts.items():
    color = category_color(cat)
    group_x = x
    for label, n in items:
      shown = html.escape(broden.display_name(label))
      bar_h = n * scale
      parts.append(
          f'<rect class="bar" x="{x}" y="{base - bar_h:.2f}" width="{bar_w}" height="{bar_h:.2f}" '
          f'fill="{color}" data-category="{html.escape(cat)}" data-label="{html.escape(label)}" '
          f'data-count="{n}"><title>{shown} ({html.escape(cat)}): {n} units</title></rect>'
          f'<text class="count" x="{x + bar_w / 2}" y="{base - bar_h - 3:.2f}">{n}</text>'
          f'<text class="concept" transform="translate({x + bar_w / 2 + 4},{base + 6}) rotate(-60)">'
          f'{shown}</text>')
      x += bar_w + bar_gap
    # a category with few concepts still gets room for its name under the bars
    x = max(x, group_x + 7 * len(f'{cat} ({len(items)})') + bar_gap)
    parts.append(f'<text class="group" x="{(group_x + x - bar_gap) / 2:.1f}" '
                 f'y="{base + label_h + 14}" fill="{color}">{html.escape(cat)} '
                 f'({len(items)})</text>')
    x += group_gap
  width = x
  axis = [f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{base}"/>',
          f'<line class="axis" x1="{left}" y1="{base}" x2="{width}" y2="{base}"/>',
          f'<text class="ylabel" transform="translate(11,{top + plot_h / 2}) rotate(-90)">'
          'detector units</text>']
  for tick in range(0, y_max + 1, step):
    y = base - tick * scale
    axis.append(f'<line class="grid" x1="{left}" y1="{y:.2f}" x2="{width}" y2="{y:.2f}"/>'
                f'<text class="tick" x="{left - 4}" y="{y + 3:.2f}">{tick}</text>')
  height = base + label_h + legend_h
  return (f'<svg id="bargraph" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
          f'role="img" aria-label="detector units per concept">{"".join(axis + parts)}</svg>')


def unit_masks(results: dict, top: dict, ds: broden.BrodenDataset, k: int) -> dict:
  """{(unit index, rank): bool (sh, sw) mask} for the top-k images of every unit.

  The same operation as `topk.unit_mask` (the dissection's `upsample.threshold_masks`), run for
  all maps of one (map size, image size, mask size) at once instead of one call per map: the n
  maps go in as n units of one image, each with its own unit's T_k.
  """
  mode = results['upsample']['mode']
  rf = tuple(results['upsample']['rf_geometry']) if mode == 'rf' else None
  thresholds = np.array([u['threshold'] for u in results['units']], np.float32)
  groups = collections.defaultdict(list)
  images, map_hw = top['images'], top['map_hw']
  for u, r in zip(*np.nonzero(images[:, :k] >= 0)):
    h, w = (int(v) for v in map_hw[u, r])
    if h and w:
      rec = ds.records[int(images[u, r])]
      groups[h, w, rec.ih, rec.iw, rec.sh, rec.sw].append((int(u), int(r)))
  masks = {}
  for (h, w, ih, iw, sh, sw), members in groups.items():
    wy, wx = (jnp.asarray(m) for m in upsample.matrices(mode, (h, w), (ih, iw), (sh, sw), rf))
    for start in range(0, len(members), MASK_CHUNK):
      chunk = members[start:start + MASK_CHUNK]
      units, ranks = (np.array(v) for v in zip(*chunk))
      maps = np.moveaxis(top['maps'][units, ranks, :h, :w], 0, -1)[None]     # (1, h, w, n)
      drawn = upsample.threshold_masks(jnp.asarray(maps), jnp.asarray(thresholds[units]), wy, wx)
      for key, mask in zip(chunk, np.asarray(drawn[0])):
        masks[key] = mask
  return masks


def mask_png(mask: np.ndarray) -> bytes:
  """A palette PNG at mask resolution: transparent where the unit fires (its edge pixels in an
  opaque outline colour), a dark veil elsewhere."""
  padded = np.pad(mask, 1, mode='edge')
  interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
  index = np.where(mask, np.where(interior, INSIDE, EDGE), VEIL).astype(np.uint8)
  img = Image.fromarray(index, 'P')
  palette = {INSIDE: (0, 0, 0), VEIL: (0, 0, 0), EDGE: OUTLINE_RGB}
  img.putpalette([v for i in range(3) for v in palette[i]])
  alpha = {INSIDE: 0, VEIL: VEIL_ALPHA, EDGE: 255}
  buf = io.BytesIO()
  img.save(buf, 'PNG', transparency=bytes(alpha[i] for i in range(3)), bits=2, optimize=False)
  return buf.getvalue()


def thumbnail_jpeg(image: np.ndarray) -> bytes:
  img = Image.fromarray(image)
  img.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.BILINEAR)
  buf = io.BytesIO()
  img.save(buf, 'JPEG', quality=82)
  return buf.getvalue()


def _data_uri(kind: str, payload: bytes) -> str:
  return f'data:{kind};base64,{base64.b64encode(payload).decode("ascii")}'


def probe_path(results: dict) -> str | None:
  """Where the probe set of a result folder lies: the CLI records its path; an experiment records
  which built-in set it used ('built-in composite [<size>px]', 'built-in synthetic') or a path."""
  path = results.get('resolved', {}).get('dataset')
  if path:
    return path
  where = str((results.get('probe') or {}).get('dataset') or '')
  from ndjax.fileio import cache_root
  if where.startswith('built-in composite'):
    from ndjax.probes import composite
    size = re.search(r'(\d+)px', where)
    return str(composite.probe_set_path(cache_root(), composite.DEFAULT_IMAGES, 0,
                                        int(size.group(1)) if size else composite.IMAGE_SIZE))
  if where == 'built-in synthetic':
    from ndjax.probes import synthetic
    return str(synthetic.probe_set_path(cache_root()))
  return where or None


def _open_probe(results: dict):
  """-> (dataset or None, note for the page when images cannot be shown)."""
  path = probe_path(results)
  try:
    return open_dataset(path, check_files=False), ''
  except (broden.BrodenFormatError, TypeError) as e:
    return None, f'Probe images unavailable ({e}): strips are not drawn.'


def _strips(results: dict, top: dict, ds: broden.BrodenDataset, k: int, also=()):
  """-> ({unit index: strip HTML}, CSS rules inlining each probe image used once, note, the
  images that could not be read). `also`: more images to inline (the top patches')."""
  masks = unit_masks(results, top, ds, k)
  used = sorted({int(top['images'][u, r]) for u, r in masks} | set(also))
  css, unreadable = [], {}
  for i in used:
    rec = ds.records[i]
    try:
      uri = _data_uri('image/jpeg', thumbnail_jpeg(ds.load_image(i)))
    except broden.BrodenFormatError as e:      # moved or damaged since the dissection
      unreadable[i] = str(e)
      continue
    # the box takes the image's shape at whatever height the strip (grid or unit page) sets
    css.append(f'.i{i}{{background-image:url({uri});aspect-ratio:{rec.iw}/{rec.ih}}}')
  strips = collections.defaultdict(list)
  for (u, r), mask in sorted(masks.items()):
    i = int(top['images'][u, r])
    if i in unreadable:
      continue
    title = html.escape(f'#{r + 1}: image {i} ({ds.records[i].image}), max activation '
                        f'{float(top["values"][u, r]):.4g}')
    strips[u].append(f'<span class="t i{i}" title="{title}"><img class="mask" alt="" '
                     f'data-image="{i}" data-rank="{r}" '
                     f'src="{_data_uri("image/png", mask_png(mask))}"></span>')
  note = ''
  if unreadable:
    first = next(iter(unreadable.values()))
    note = (f'{len(unreadable)} probe image(s) could not be read and are left out of the strips '
            f'({first}).')
  return {u: ''.join(items) for u, items in strips.items()}, css, note, set(unreadable)


def _patch_rows(results: dict, top: dict, ds: broden.BrodenDataset, count: int) -> dict:
  """{unit index: its top `count` patches (`ndjax.viz.patches.Patch`)}; {} when the layer's
  receptive field is unknown. Drawn by CSS from the inlined thumbnails: no bytes are added."""
  from ndjax.viz import common as viz_common
  from ndjax.viz import patches
  try:
    rf = patches.receptive_field(results)
  except viz_common.VizError:
    return {}
  return {u: patches.top_patches(top, u, rf, count) for u in range(top['images'].shape[0])}


def _patches_html(found, ds, unreadable) -> str:
  """A row of patches: each a PATCH_PX square showing the window of its image's thumbnail (grey
  where the window leaves the image)."""
  cells = []
  for p in found:
    if p.image in unreadable:
      continue
    rec = ds.records[p.image]
    t, l, b, r = p.window
    scale = PATCH_PX / (b - t)
    title = html.escape(f'#{p.rank + 1}: image {p.image}, max activation {p.value:.4g} at unit '
                        f'position {p.position}; window rows {t}..{b}, columns {l}..{r}')
    cells.append(f'<span class="p i{p.image}" title="{title}" style="background-size:'
                 f'{rec.iw * scale:.1f}px {rec.ih * scale:.1f}px;background-position:'
                 f'{-l * scale:.1f}px {-t * scale:.1f}px"></span>')
  return ''.join(cells)


def _viz_html(viz: dict, unit: int) -> str:
  """The --viz gradient views of one unit: its image patch and the guided-backprop projection of
  its strongest activation, side by side, per top image."""
  rows = np.nonzero(viz['units'] == unit)[0]
  cells = []
  for i in rows:
    patch = _data_uri('image/jpeg', _jpeg(viz['patches'][i]))
    guided = _data_uri('image/png', _png(viz['guided'][i]))
    title = html.escape(f'#{int(viz["ranks"][i]) + 1}: image {int(viz["images"][i])}')
    cells.append(f'<span class="gv" title="{title}"><img alt="patch" src="{patch}">'
                 f'<img alt="guided backpropagation" src="{guided}"></span>')
  return ''.join(cells)


def _jpeg(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, 'JPEG', quality=85)
  return buf.getvalue()


def _png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, 'PNG')
  return buf.getvalue()


SIGNIFICANCE_CSV, FORMULAS_CSV = 'significance.csv', 'formulas.csv'


def companions(layer_dir) -> dict[int, str]:
  """Per unit (1-based), the HTML lines that the experiments' companion CSVs add to its page:
  significance.csv (ndjax.experiments.significance) and formulas.csv (.compositional)."""
  import csv
  out: dict[int, list[str]] = {}
  path = pathlib.Path(layer_dir) / SIGNIFICANCE_CSV
  if path.is_file():
    with open(path, newline='') as f:
      for row in csv.DictReader(f):
        verdict = 'significant' if row['bh_reject'] == '1' else 'not significant'
        out.setdefault(int(row['unit']), []).append(
            f'p = {float(row["p_value"]):.4g} against {html.escape(row["null"])} '
            f'(null 95th / 99th percentile {float(row["null_q95"]):.4f} / '
            f'{float(row["null_q99"]):.4f}; Benjamini-Hochberg at {row["fdr"]}: {verdict})')
  path = pathlib.Path(layer_dir) / FORMULAS_CSV
  if path.is_file():
    with open(path, newline='') as f:
      for row in csv.DictReader(f):
        if row['formula']:
          out.setdefault(int(row['unit']), []).append(
              f'Formula: <b>{html.escape(row["formula"])}</b>, IoU '
              f'{float(row["formula_iou"]):.4f} (best single label '
              f'{html.escape(row["single_label"])}: {float(row["single_iou"]):.4f}; '
              f'dataset-wide IoU, beam search)')
  return {u: '<br>'.join(lines) for u, lines in out.items()}


def _unit_page(unit: dict, categories: list[str], threshold: float, patches_html: str = '',
               viz_html: str = '', extra: str = '') -> str:
  n = unit['unit']
  rows = []
  for cat in categories:
    cells = []
    for label, iou in unit['top_concepts'].get(cat, []):
      strong = ' class="det"' if iou > threshold else ''
      cells.append(f'<td{strong}>{html.escape(broden.display_name(label))} '
                   f'<span class="iou">{iou:.3f}</span></td>')
    cells += ['<td></td>'] * (5 - len(cells))
    rows.append(f'<tr><th style="color:{category_color(cat)}">{html.escape(cat)}</th>'
                f'{"".join(cells)}</tr>')
  return (f'<section class="unit-page" id="unit-{n}" aria-label="unit {n}">'
          f'<a class="close" href="#" title="back to the grid">&times;</a>'
          f'<h2>Unit {n}: {html.escape(unit["display_label"])} '
          f'<span class="cat" style="background:{category_color(unit["category"])}">'
          f'{html.escape(unit["category"])}</span> IoU {unit["iou"]:.4f}</h2>'
          + (f'<p class="extra">{extra}</p>' if extra else '') +
          f'<p>Threshold T<sub>{n}</sub> = {unit["threshold"]:.6g}. Top-5 concepts per category '
          f'(IoU; bold: above the detector threshold {threshold:g}):</p>'
          f'<table class="concepts"><thead><tr><th>category</th><th>1st</th><th>2nd</th>'
          f'<th>3rd</th><th>4th</th><th>5th</th></tr></thead><tbody>{"".join(rows)}</tbody>'
          f'</table><div class="big-strip"></div>'
          + (f'<h3>Top patches</h3><p class="meta">The receptive-field window of the unit\'s '
             f'strongest activation in each top image (Zeiler &amp; Fergus); grey: padding, off '
             f'the image.</p><div class="patches">{patches_html}</div>' if patches_html else '')
          + (f'<h3>Guided backpropagation</h3><p class="meta">Per top image: the patch, and the '
             f'unit\'s strongest activation projected to pixels by guided backpropagation '
             f'(Springenberg et al.), cropped to the same window.</p>'
             f'<div class="patches">{viz_html}</div>' if viz_html else '')
          + '</section>')


STYLE = """
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:16px 24px;color:#222}
h1{font-size:20px;margin:0 0 4px} h2{font-size:17px;margin:0 0 8px}
.summary{font-weight:600;font-size:15px;margin:6px 0} .meta,.note{color:#555;font-size:12px}
.figure{overflow-x:auto;border:1px solid #ddd;padding:6px;margin:10px 0}
#bargraph text{font-size:10px;fill:#333} #bargraph .count{text-anchor:middle;font-size:9px}
#bargraph .concept{text-anchor:end} #bargraph .tick{text-anchor:end}
#bargraph .group{text-anchor:middle;font-size:12px;font-weight:600} #bargraph .ylabel{text-anchor:middle}
#bargraph .axis{stroke:#333} #bargraph .grid{stroke:#e4e4e4}
.controls{margin:10px 0;display:flex;gap:16px;align-items:center}
table#units{border-collapse:collapse} #units th,#units td{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}
#units thead th{position:sticky;top:0;background:#f5f5f5;z-index:1}
#units th[data-key]{cursor:pointer;user-select:none;white-space:nowrap}
#units th[aria-sort=ascending]::after{content:' \\25B2'} #units th[aria-sort=descending]::after{content:' \\25BC'}
#units td.num{text-align:right;font-variant-numeric:tabular-nums}
.cat{color:#fff;border-radius:3px;padding:0 5px;font-size:12px}
.strip{white-space:nowrap}
.t{display:inline-block;height:%(strip)dpx;margin-right:2px;background-size:100%% 100%%;vertical-align:middle}
.t img.mask{width:100%%;height:100%%;display:block}
.unit-page{display:none}
.unit-page:target{display:block;position:fixed;inset:4%% 6%%;overflow:auto;background:#fff;z-index:5;
  padding:16px 20px;border:1px solid #999;box-shadow:0 4px 30px rgba(0,0,0,.35)}
.unit-page .close{float:right;font-size:26px;text-decoration:none;color:#333}
table.concepts{border-collapse:collapse;margin:6px 0 12px} .concepts th,.concepts td{border:1px solid #ddd;padding:3px 8px;text-align:left}
.concepts td.det{font-weight:700} .iou{color:#666;font-variant-numeric:tabular-nums}
.big-strip .t{height:%(big)dpx;margin:0 4px 4px 0}
.unit-page h3{font-size:15px;margin:12px 0 2px}
span.p{display:inline-block;width:%(patch)dpx;height:%(patch)dpx;aspect-ratio:auto;margin:0 3px 3px 0;
  background-color:#808080;background-repeat:no-repeat;vertical-align:middle}
.gv{display:inline-block;margin:0 10px 6px 0;white-space:nowrap} .gv img{width:%(patch)dpx;height:%(patch)dpx;margin-right:1px}
"""

SCRIPT = """
(function(){
  var tbody = document.querySelector('#units tbody');
  var rows = Array.prototype.slice.call(tbody.rows);
  var heads = document.querySelectorAll('#units th[data-key]');
  var numeric = {unit: true, iou: true};
  var firstDir = {unit: 1, label: 1, category: 1, iou: -1};  // a score reads best-first
  function value(row, key){ return numeric[key] ? parseFloat(row.dataset[key]) : row.dataset[key]; }
  function sortBy(key, dir){
    rows.sort(function(a, b){
      var x = value(a, key), y = value(b, key);
      var c = numeric[key] ? x - y : x.localeCompare(y);
      return c * dir || value(a, 'unit') - value(b, 'unit');  // ties: by unit
    });
    var frag = document.createDocumentFragment();
    rows.forEach(function(r){ frag.appendChild(r); });
    tbody.appendChild(frag);
    heads.forEach(function(h){
      if (h.dataset.key === key) h.setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
      else h.removeAttribute('aria-sort');
    });
  }
  heads.forEach(function(h){
    h.addEventListener('click', function(){
      var now = h.getAttribute('aria-sort');
      var dir = now ? (now === 'ascending' ? -1 : 1) : firstDir[h.dataset.key];
      sortBy(h.dataset.key, dir);
    });
  });
  var category = document.getElementById('category');
  var detectorsOnly = document.getElementById('detectors-only');
  var shown = document.getElementById('shown');
  function filter(){
    var n = 0;
    rows.forEach(function(r){
      var hide = (category.value && r.dataset.category !== category.value) ||
                 (detectorsOnly.checked && r.dataset.detector !== '1');
      r.hidden = !!hide;
      if (!hide) n++;
    });
    shown.textContent = n;
  }
  category.addEventListener('change', filter);
  detectorsOnly.addEventListener('change', filter);
  filter();
  function openUnit(){
    var m = /^#unit-(\\d+)$/.exec(location.hash);
    if (!m) return;
    var page = document.getElementById('unit-' + m[1]);
    var strip = document.querySelector('#row-' + m[1] + ' .strip');
    var big = page && page.querySelector('.big-strip');
    if (big && strip && !big.childNodes.length) big.innerHTML = strip.innerHTML;
  }
  window.addEventListener('hashchange', openUnit);
  document.addEventListener('keydown', function(e){
    if (e.key === 'Escape' && /^#unit-/.test(location.hash)) location.hash = '';
  });
  openUnit();
})();
"""


def render(results: dict, top: dict | None, ds: broden.BrodenDataset | None, k: int,
           note: str = '', folder: str | None = None, viz: dict | None = None,
           extra: dict[int, str] | None = None) -> str:
  """The report page as one string (ASCII: non-ASCII text goes in as character references).

  `folder` names the page (default: results.json's "folder"); a view's page says what the view is
  (rotation seed and alpha, directions file, tau), since views of one layer look alike otherwise.
  """
  folder = folder or folder_name(results)
  view = results_lib.ViewRecord.from_results(results, folder)
  threshold = results['iou_threshold']
  units = results['units']
  categories = category_order(results['unique_detectors'])
  strips, image_css, patch_rows, unreadable = ({}, [], {}, set())
  if top is not None and ds is not None and k > 0:
    patch_rows = _patch_rows(results, top, ds, PATCHES)
    also = {p.image for found in patch_rows.values() for p in found}
    strips, image_css, note, unreadable = _strips(results, top, ds, k, also)
  elif top is None:
    note = note or 'No topk.npz in this folder (dissected with --topk=0): strips are not drawn.'
  resolved = results.get('resolved', {})
  run = pathlib.Path(resolved.get('run_dir', '') or '.').name
  tau = results.get('flags', {}).get('tau') if view.tau is None else f'{view.tau:g}'
  precision = f'; precision {results["precision"]}' if results.get('precision') else ''
  meta = (f'{results.get("activation", "")}; weights {resolved.get("weights")}; probe '
          f'{resolved.get("dataset")} ({results.get("images_used")}/{results.get("images")} images '
          f'used); tau {tau}; upsample {results["upsample"]["mode"]}; '
          f'denominator {results.get("denominator")}; detector: IoU > {threshold:g}; '
          f'top {k} images per unit{precision}')
  view_line = ('' if view.plain else f'<p class="view" id="view">View {html.escape(view.name)}: '
               f'{html.escape(view.describe())}</p>')
  rows = []
  for u in units:
    n, cat = u['unit'], u['category']
    rows.append(
        f'<tr id="row-{n}" data-unit="{n}" data-label="{html.escape(u["display_label"])}" '
        f'data-category="{html.escape(cat)}" data-iou="{u["iou"]!r}" '
        f'data-detector="{int(u["iou"] > threshold)}">'
        f'<td class="num"><a href="#unit-{n}">{n}</a></td>'
        f'<td>{html.escape(u["display_label"])}</td>'
        f'<td><span class="cat" style="background:{category_color(cat)}">'
        f'{html.escape(cat)}</span></td>'
        f'<td class="num">{u["iou"]:.4f}</td><td class="strip">{strips.get(n - 1, "")}</td></tr>')
  # the grid starts in tally.csv's order: best IoU first, ties by unit
  order = sorted(range(len(units)), key=lambda i: (-units[i]['iou'], units[i]['unit']))
  options = ''.join(f'<option value="{html.escape(c)}">{html.escape(c)}</option>'
                    for c in categories)
  title = f'{run} / {folder}'
  page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Network Dissection: {html.escape(title)}</title>
<style>{STYLE % {'strip': STRIP_PX, 'big': 2 * STRIP_PX, 'patch': PATCH_PX}}</style>
<style>{''.join(image_css)}</style>
</head><body>
<h1>Network Dissection: {html.escape(title)}</h1>
<p class="summary" id="summary">{html.escape(summary(results, folder))}</p>
{view_line}
<p class="meta">{html.escape(meta)}</p>
{f'<p class="note">{html.escape(note)}</p>' if note else ''}
<h2>Detector units per concept</h2>
<div class="figure">{bar_graph_svg(concept_counts(results))}</div>
<h2>Units</h2>
<div class="controls">
<label>category <select id="category"><option value="">all</option>{options}</select></label>
<label><input type="checkbox" id="detectors-only"> detectors only</label>
<span>showing <span id="shown">{len(units)}</span> of {len(units)} units; click a header to sort,
a unit number for its page</span></div>
<table id="units"><thead><tr><th data-key="unit">unit</th><th data-key="label">label</th>
<th data-key="category">category</th><th data-key="iou" aria-sort="descending">IoU</th>
<th>top {k} images (mask: the unit's thresholded, upsampled activation)</th></tr></thead>
<tbody>{''.join(rows[i] for i in order)}</tbody></table>
{''.join(_unit_page(u, categories, threshold,
                    _patches_html(patch_rows.get(u['unit'] - 1, []), ds, unreadable),
                    _viz_html(viz, u['unit'] - 1) if viz is not None else '',
                    (extra or {}).get(u['unit'], '')) for u in units)}
<script>{SCRIPT}</script>
</body></html>
"""
  return page.encode('ascii', 'xmlcharrefreplace').decode('ascii')


def write_report(layer_dir, k: int = 10, dataset=None) -> pathlib.Path:
  """Write `<layer_dir>/report.html` (atomically) from the layer's outputs; return its path.

  dataset: the probe set the run used, when the caller holds it (an in-memory set has no path in
  results.json to reopen); else it is reopened from results.json.
  """
  found = results_lib.load(layer_dir)
  results, top = found.results, found.top
  ds, note = (None, '')
  if top is not None and k > 0:
    ds, note = (dataset, '') if dataset is not None else _open_probe(results)
  k = min(k, top['images'].shape[1]) if top is not None else k
  path = found.path / REPORT_NAME
  from ndjax.viz import unitviews
  fileio.atomic_write(str(path), render(results, top, ds, k, note, found.folder,
                                        unitviews.read(found.path), companions(found.path)))
  return path


def main(argv):
  # keep library INFO chatter (backend probing, font cache) off the user's terminal
  logging.getLogger().setLevel(logging.WARNING)
  for name in ('absl', 'jax', 'matplotlib'):
    logging.getLogger(name).setLevel(logging.WARNING)
  if len(argv) < 2:
    raise app.UsageError('give one or more layer or view folders (<outdir>/<run>/<layer>[@<view>])')
  for layer_dir in argv[1:]:
    try:
      print(write_report(layer_dir, flags.FLAGS.k))
    except results_lib.ResultsError as e:        # its message names the file
      print(f'ndjax.report: error: {e}', file=sys.stderr)
      sys.exit(2)
    except KeyError as e:
      print(f'ndjax.report: error: {layer_dir}: results.json has no {e}', file=sys.stderr)
      sys.exit(2)


if __name__ == '__main__':
  # defined here, not at import: the dissection CLI imports this module and keeps its own flags
  flags.DEFINE_integer('k', 10, 'Top images per unit to draw (at most the --topk the layer was '
                       'dissected with).', lower_bound=0)
  app.run(main)
