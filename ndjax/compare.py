r"""Interpretability across layers and across runs: unique detectors per category, from result folders.

  python -m ndjax.compare RESULT_DIR... [--out=./ndjax_compare]

Each RESULT_DIR is a run folder (`<outdir>/<run>`: its layer and view folders, layers in the order
they were dissected, each layer's plain folder before its views) or one layer or view folder
(`<outdir>/<run>/<layer>[@<view>]`). Folders are read by `ndjax.results`; only results.json's
`unique_detectors` is used, nothing is recomputed. A bar is named by its folder (`conv5_3`,
`conv5_3@rot_s0_a0.5`), so views of one layer stand side by side. Writes to --out, each figure as
PNG and SVG:
- `layers_<run>`: per run, one stacked bar per folder (the paper's Fig. 13, across layers);
- `views_<run>_<layer>`: per layer with two or more views in a run, one bar per view (Sec 3.2:
  a rotation alpha sweep, a tau sweep, user directions against the layer's own units);
- `runs_<folder>`: per folder name found in two or more runs, one bar per run (Fig. 14: training
  conditions, seeds, random vs trained);
- `runs`: with two or more runs, each run's deepest given layer side by side (Fig. 9: across
  architectures, whose last layers have different names);
- `compare.json`: the numbers each figure plots.
Prints one line per layer and the files written. Bad input prints one line and exits with status 2.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import io
import json
import logging
import os
import pathlib
import re

from absl import app, flags

from ndjax import cli, fileio, report
from ndjax import results as results_lib

PROG = 'ndjax.compare'

FLAGS = flags.FLAGS
flags.DEFINE_string('out', './ndjax_compare', 'Directory for the figures and compare.json.')


class CompareError(ValueError):
  """Input that cannot be compared; the message is one line for the user."""


@dataclasses.dataclass
class LayerResult:
  run: str                          # run label (the run folder's name, made unique)
  layer: str
  path: pathlib.Path                # the layer or view folder
  unique_detectors: dict[str, int]  # category -> unique detector concepts, as results.json says
  units: int
  folder: str = ''                  # 'conv5_3' or 'conv5_3@rot_s0_a0.5': what a bar is named
  view: str = ''                    # the view's name; '' = the plain layer

  def __post_init__(self):
    self.folder = self.folder or self.layer

  @property
  def total(self) -> int:
    return sum(self.unique_detectors.values())


def _find(path) -> list[results_lib.ViewDir]:
  """`results.find`, its one-line errors as CompareErrors (the CLI's bad-input path)."""
  try:
    return results_lib.find(path)
  except results_lib.ResultsError as e:
    raise CompareError(str(e)) from None


def find_layer_dirs(path: str | os.PathLike) -> list[pathlib.Path]:
  """A layer or view folder -> [it]; a run folder -> its folders in `results.find`'s order."""
  return [found.path for found in _find(path)]


def load(paths) -> list[LayerResult]:
  """Every folder of the given paths, in the order given; a run's label is its folder name,
  extended by its parent folder where two runs share a name."""
  found, seen = [], set()
  for p in paths:
    for f in _find(p):
      if f.path.resolve() not in seen:
        seen.add(f.path.resolve())
        found.append(f)
  run_dirs = list(dict.fromkeys(f.path.resolve().parent for f in found))
  names = collections.Counter(r.name for r in run_dirs)
  label = {r: (r.name if names[r.name] == 1 else f'{r.parent.name}/{r.name}') for r in run_dirs}
  return [LayerResult(label[f.path.resolve().parent], f.layer, f.path, f.unique_detectors,
                      len(f.units), f.folder, f.view.name) for f in found]


def category_order(results: list[LayerResult]) -> list[str]:
  """The layer report's order (the summary line's), over every category any input has."""
  return report.category_order(list(dict.fromkeys(c for r in results for c in r.unique_detectors)))


def figures(results: list[LayerResult]) -> dict[str, tuple[str, list[tuple[str, LayerResult]]]]:
  """{file stem: (title, [(bar label, layer result)])} for every figure the inputs call for."""
  runs = _group(results, lambda r: r.run)
  out = {}
  for run, layers in runs.items():
    out[f'layers_{_slug(run)}'] = (f'{run}: unique detectors across layers',
                                   [(r.folder, r) for r in layers])
    for layer, views in _group(layers, lambda r: r.layer).items():
      if len(views) >= 2:
        out[f'views_{_slug(run)}_{_slug(layer)}'] = (
            f'{run} {layer}: unique detectors across views', [(r.folder, r) for r in views])
  for folder, members in _group(results, lambda r: r.folder).items():
    if len({r.run for r in members}) >= 2:
      out[f'runs_{_slug(folder)}'] = (f'{folder}: unique detectors across runs',
                                      [(r.run, r) for r in members])
  if len(runs) >= 2:
    deepest = {run: _deepest(layers) for run, layers in runs.items()}
    out['runs'] = ('unique detectors across runs (deepest given layer of each)',
                   [(f'{run}\n{r.folder}', r) for run, r in deepest.items()])
  return out


def _group(results: list[LayerResult], key) -> dict[str, list[LayerResult]]:
  out = collections.defaultdict(list)
  for r in results:
    out[key(r)].append(r)
  return out


def _deepest(layers: list[LayerResult]) -> LayerResult:
  """The run's last given layer, read plainly where it was: a run compared with another architecture
  should be its layer's own units, not whichever view happens to sort last."""
  last = [r for r in layers if r.layer == layers[-1].layer]
  return next((r for r in last if not r.view), last[0])


def _slug(name: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_') or 'unnamed'


def plot(title: str, bars: list[tuple[str, LayerResult]], categories: list[str]):
  """Stacked bars of unique detectors per category; each bar segment's SVG id is
  `bar-<bar index>-<category>-<count>`, so the plotted numbers can be read back from the file."""
  from matplotlib.figure import Figure
  fig = Figure(figsize=(max(4.5, 1.0 * len(bars) + 3.0), 4.4), layout='constrained')
  ax = fig.add_subplot()
  x = list(range(len(bars)))
  bottoms = [0] * len(bars)
  for cat in categories:
    heights = [r.unique_detectors.get(cat, 0) for _, r in bars]
    rects = ax.bar(x, heights, bottom=bottoms, width=0.6, label=cat,
                   color=report.category_color(cat))
    for i, (rect, n) in enumerate(zip(rects, heights)):
      rect.set_gid(f'bar-{i}-{_slug(cat)}-{n}')
    bottoms = [b + h for b, h in zip(bottoms, heights)]
  for i, total in enumerate(bottoms):
    ax.annotate(str(total), (i, total), xytext=(0, 3), textcoords='offset points', ha='center',
                va='bottom', fontsize=9)
  labels = [label for label, _ in bars]
  # folder names of views ('conv5_3@rot_s0_a0.5') are wider than a bar: slant them
  slant = max(len(line) for label in labels for line in label.split('\n')) > 12
  ax.set_xticks(x, labels, fontsize=9, rotation=25 if slant else 0,
                ha='right' if slant else 'center', rotation_mode='anchor')
  ax.set_ylabel('unique detectors (concepts)')
  ax.set_ylim(0, max(max(bottoms) * 1.12, 1))
  ax.set_title(title, fontsize=11)
  ax.spines[['top', 'right']].set_visible(False)
  handles, labels = ax.get_legend_handles_labels()
  ax.legend(handles[::-1], labels[::-1], loc='upper left', bbox_to_anchor=(1.01, 1.0),
            frameon=False, fontsize=9)    # top-down like the stack
  return fig


def compare(paths, out: str | os.PathLike) -> list[pathlib.Path]:
  """Write every figure (PNG + SVG) and compare.json to `out`; return the paths written."""
  import matplotlib
  results = load(paths)
  categories = category_order(results)
  out = pathlib.Path(out)
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise CompareError(f'cannot create output directory {out}: {e.strerror or e}') from None
  written, numbers = [], {}
  # text stays text in the SVG, and ids are stable between runs of the same inputs
  with matplotlib.rc_context({'svg.fonttype': 'none', 'svg.hashsalt': 'ndjax.compare'}):
    for stem, (title, bars) in figures(results).items():
      fig = plot(title, bars, categories)
      for fmt in ('png', 'svg'):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=130, metadata={'Date': None} if fmt == 'svg' else None)
        path = out / f'{stem}.{fmt}'
        fileio.atomic_write(path, buf.getvalue())
        written.append(path)
      numbers[stem] = {'title': title, 'bars': [
          {'label': label, 'run': r.run, 'layer': r.layer, 'folder': r.folder, 'view': r.view,
           'path': str(r.path.resolve()),
           'unique_detectors': {c: r.unique_detectors.get(c, 0) for c in categories},
           'total': r.total} for label, r in bars]}
  path = out / 'compare.json'
  fileio.atomic_write(path, json.dumps(numbers, indent=1).encode())
  return written + [path]


def summary_lines(results: list[LayerResult]) -> list[str]:
  categories = category_order(results)
  return [f'{r.run}/{r.folder}: {r.total} unique concepts among {r.units} units — ' +
          ', '.join(f'{c} {r.unique_detectors.get(c, 0)}' for c in categories) for r in results]


def main(argv: list[str]) -> None:
  # keep library INFO chatter (backend probing, font cache) off the user's terminal
  logging.getLogger().setLevel(logging.WARNING)
  for name in ('absl', 'jax', 'matplotlib'):
    logging.getLogger(name).setLevel(logging.WARNING)
  if len(argv) < 2:
    cli.fail('give one or more result folders: run folders (<outdir>/<run>) or layer or view '
             'folders (<outdir>/<run>/<layer>[@<view>])', PROG)
  try:
    for line in summary_lines(load(argv[1:])):
      print(line)
    for path in compare(argv[1:], FLAGS.out):
      print(f'wrote {path}')
  except CompareError as e:
    cli.fail(str(e), PROG)


if __name__ == '__main__':
  app.run(main, flags_parser=functools.partial(cli.parse_flags, allow_positional=True,
                                                     prog=PROG))
