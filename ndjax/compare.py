r"""Interpretability across layers and across runs: unique detectors per category, from result folders.

  python -m ndjax.compare RESULT_DIR... [--out=./ndjax_compare]

Each RESULT_DIR is a run folder (`<outdir>/<run>`, its layer subfolders taken in the order they were
dissected) or one layer folder (`<outdir>/<run>/<layer>`). Only results.json is read (its
`unique_detectors`); nothing is recomputed. Writes to --out, each figure as PNG and SVG:
- `layers_<run>`: per run, one stacked bar per layer (the paper's Fig. 13, across layers);
- `runs_<layer>`: per layer name found in two or more runs, one bar per run (Fig. 14: training
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

PROG = 'ndjax.compare'

FLAGS = flags.FLAGS
flags.DEFINE_string('out', './ndjax_compare', 'Directory for the figures and compare.json.')


class CompareError(ValueError):
  """Input that cannot be compared; the message is one line for the user."""


@dataclasses.dataclass
class LayerResult:
  run: str                          # run label (the run folder's name, made unique)
  layer: str
  path: pathlib.Path                # the layer folder
  unique_detectors: dict[str, int]  # category -> unique detector concepts, as results.json says
  units: int

  @property
  def total(self) -> int:
    return sum(self.unique_detectors.values())


def _read_results(layer_dir: pathlib.Path) -> dict:
  path = layer_dir / 'results.json'
  try:
    doc = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise CompareError(f'{path} is not a readable dissection results.json ({e})') from None
  missing = [key for key in ('layer', 'unique_detectors')
             if not isinstance(doc, dict) or key not in doc]
  if missing:
    raise CompareError(f'{path} is not a readable dissection results.json '
                       f'(no {", ".join(missing)})')
  return doc


def find_layer_dirs(path: str | os.PathLike) -> list[pathlib.Path]:
  """A layer folder -> [it]; a run folder -> its layer subfolders in dissection order."""
  path = pathlib.Path(path)
  if not path.is_dir():
    raise CompareError(f'{path} is not a directory')
  if (path / 'results.json').is_file():
    return [path]
  subdirs = [d for d in sorted(path.iterdir()) if (d / 'results.json').is_file()]
  if not subdirs:
    raise CompareError(f'{path} holds no results.json, nor do its subfolders: give a run folder '
                       '(<outdir>/<run>) or a layer folder (<outdir>/<run>/<layer>)')
  order = _read_results(subdirs[0]).get('resolved', {}).get('layers') or []
  rank = {name: i for i, name in enumerate(order)}
  return sorted(subdirs, key=lambda d: (rank.get(d.name, len(rank)), d.name))


def load(paths) -> list[LayerResult]:
  """Every layer of the given folders, in the order given; a run's label is its folder name,
  extended by its parent folder where two runs share a name."""
  layer_dirs = []
  for p in paths:
    for d in find_layer_dirs(p):
      if d.resolve() not in {x.resolve() for x in layer_dirs}:
        layer_dirs.append(d)
  run_dirs = list(dict.fromkeys(d.resolve().parent for d in layer_dirs))
  names = collections.Counter(r.name for r in run_dirs)
  label = {r: (r.name if names[r.name] == 1 else f'{r.parent.name}/{r.name}') for r in run_dirs}
  out = []
  for d in layer_dirs:
    doc = _read_results(d)
    out.append(LayerResult(label[d.resolve().parent], doc['layer'], d,
                           {c: int(n) for c, n in doc['unique_detectors'].items()},
                           len(doc.get('units', []))))
  return out


def category_order(results: list[LayerResult]) -> list[str]:
  """The layer report's order (the summary line's), over every category any input has."""
  return report.category_order(list(dict.fromkeys(c for r in results for c in r.unique_detectors)))


def figures(results: list[LayerResult]) -> dict[str, tuple[str, list[tuple[str, LayerResult]]]]:
  """{file stem: (title, [(bar label, layer result)])} for every figure the inputs call for."""
  runs = collections.defaultdict(list)
  for r in results:
    runs[r.run].append(r)
  out = {}
  for run, layers in runs.items():
    out[f'layers_{_slug(run)}'] = (f'{run}: unique detectors across layers',
                                   [(r.layer, r) for r in layers])
  by_layer = collections.defaultdict(list)
  for r in results:
    by_layer[r.layer].append(r)
  for layer, members in by_layer.items():
    if len({r.run for r in members}) >= 2:
      out[f'runs_{_slug(layer)}'] = (f'{layer}: unique detectors across runs',
                                     [(r.run, r) for r in members])
  if len(runs) >= 2:
    out['runs'] = ('unique detectors across runs (deepest given layer of each)',
                   [(f'{run}\n{layers[-1].layer}', layers[-1]) for run, layers in runs.items()])
  return out


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
  ax.set_xticks(x, [label for label, _ in bars], fontsize=9)
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
          {'label': label, 'run': r.run, 'layer': r.layer, 'path': str(r.path.resolve()),
           'unique_detectors': {c: r.unique_detectors.get(c, 0) for c in categories},
           'total': r.total} for label, r in bars]}
  path = out / 'compare.json'
  fileio.atomic_write(path, json.dumps(numbers, indent=1).encode())
  return written + [path]


def summary_lines(results: list[LayerResult]) -> list[str]:
  categories = category_order(results)
  return [f'{r.run}/{r.layer}: {r.total} unique concepts among {r.units} units — ' +
          ', '.join(f'{c} {r.unique_detectors.get(c, 0)}' for c in categories) for r in results]


def main(argv: list[str]) -> None:
  # keep library INFO chatter (backend probing, font cache) off the user's terminal
  logging.getLogger().setLevel(logging.WARNING)
  for name in ('absl', 'jax', 'matplotlib'):
    logging.getLogger(name).setLevel(logging.WARNING)
  if len(argv) < 2:
    cli.fail('give one or more result folders: run folders (<outdir>/<run>) or layer folders',
             PROG)
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
