"""Reading result folders back: one typed reader that the report, compare and experiments share.

A dissection writes one folder per layer and view under its run folder `<outdir>/<run>/`:
`<layer>` (the plain layer at the run's first tau) and `<layer>@<view>` (a rotation, a directions
file, another tau). Each holds results.json, tally.csv, counts.npz, topk.npz and report.html.

  from ndjax import results
  for v in results.find('ndjax_results/vgg16_imagenet'):      # a run folder, or one folder
    print(v.folder, v.view.describe(), v.unique_detectors)
    ious = v.iou_matrix('lite')      # rescored from counts.npz, no dataset needed

Why one reader: every consumer used to parse these files its own way, and the layout now has
views; here the folder order, the view record, and the recomputation of IoUs from counts.npz are
defined once. Only results.json is read eagerly; the other files load when first asked for, so
listing a run stays cheap and an older folder (no counts.npz, no "view" key) still loads, failing
with a one-line `ResultsError` only when the missing part is asked for.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import pathlib
import re
import zipfile

import numpy as np

from ndjax import iou as iou_lib
from ndjax import tally as tally_lib

RESULTS_NAME = 'results.json'
TALLY_NAME = 'tally.csv'
COUNTS_NAME = 'counts.npz'
TOPK_NAME = 'topk.npz'
COUNT_FIELDS = tuple(f.name for f in dataclasses.fields(iou_lib.Counts))
COUNTS_KEYS = COUNT_FIELDS + ('thresholds', 'label_names', 'primary', 'categories')
TOPK_KEYS = ('images', 'values', 'maps', 'map_hw')
# tally.csv's per-category columns, by suffix: how each is typed
TALLY_INT_SUFFIXES = ('-truth', '-activation', '-intersect')
TALLY_FLOAT_SUFFIXES = ('-iou',)


class ResultsError(ValueError):
  """A folder that is not a result folder, or a missing or corrupt file in one; one line."""


def _one_line(text) -> str:
  """Error text from numpy, zipfile or json can span lines; the user gets one."""
  return ' '.join(str(text).split())


@dataclasses.dataclass(frozen=True)
class ViewRecord:
  """How a folder reads its layer: results.json's "view" (name '' = the plain layer)."""
  name: str
  kind: str                  # 'identity' | 'rotation' | 'directions'
  tau: float | None
  meta: dict = dataclasses.field(default_factory=dict)   # seed, alpha, units, file, sha256, ...

  @property
  def plain(self) -> bool:
    return self.name == ''

  @classmethod
  def from_results(cls, doc: dict, folder: str = '') -> 'ViewRecord':
    """The record results.json holds; for folders written before views, one inferred from the
    folder name and the run's first --tau, so old and new folders read alike."""
    view = doc.get('view')
    if isinstance(view, dict):
      meta = {k: v for k, v in view.items() if k not in ('name', 'kind', 'tau')}
      return cls(str(view.get('name', '')), str(view.get('kind', 'identity')),
                 _float_or_none(view.get('tau')), meta)
    name = folder.partition('@')[2]
    kind = ('rotation' if name.startswith('rot_') else
            'directions' if name.startswith('dir_') else 'identity')
    return cls(name, kind, _first_tau(doc.get('flags', {}).get('tau')))

  def describe(self) -> str:
    """One line saying what the view is, for report pages and experiment logs."""
    m, tau = self.meta, '' if self.tau is None else f', thresholded at tau {self.tau:g}'
    if self.kind == 'rotation':
      alpha = m.get('alpha', '?')
      extra = ''.join(f'; {label} {_num(m[key])}' for key, label in
                      (('orthogonality_error', 'orthogonality error'), ('det', 'det'))
                      if key in m)
      return (f'rotation Q^{_num(alpha)} of the layer\'s {m.get("units", "?")} units (Q a random '
              f'rotation, seed {m.get("seed", "?")}{extra}){tau}')
    if self.kind == 'directions':
      shape = m.get('shape') or ['?', '?']
      sha = str(m.get('sha256', ''))[:12]
      return (f'{shape[-1]} directions from {m.get("file", "?")}'
              f'{f" (sha256 {sha})" if sha else ""}{tau}')
    return f'the layer\'s own units{tau}'


def _num(x) -> str:
  return f'{x:.3g}' if isinstance(x, float) else str(x)


def _float_or_none(x) -> float | None:
  try:
    return float(x)
  except (TypeError, ValueError):
    return None


def _first_tau(flag) -> float | None:
  """--tau as results.json's flags hold it: a list of strings now, a float in older runs."""
  if isinstance(flag, (list, tuple)):
    return _float_or_none(flag[0]) if flag else None
  return _float_or_none(flag)


@dataclasses.dataclass(frozen=True)
class Probe:
  """What scoring needs of the probe set (`tally.label_units` reads `.primary`, `.categories`),
  taken from counts.npz so that IoUs are recomputed without the dataset."""
  categories: list[str]
  label_names: list[str]
  primary: np.ndarray        # (N,) int32 primary-category index per label, -1 none


@dataclasses.dataclass
class ViewDir:
  """One result folder (`<layer>` or `<layer>@<view>`): results.json read, the rest lazily."""
  path: pathlib.Path
  folder: str                # the folder's name as written: 'conv5_3@rot_s0_a0.5'
  layer: str
  view: ViewRecord
  results: dict              # results.json as written
  _scored: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  # ---- results.json ---------------------------------------------------------------------------
  @property
  def run(self) -> str:
    return self.path.parent.name

  @property
  def flags(self) -> dict:
    return self.results.get('flags', {})

  @property
  def resolved(self) -> dict:
    return self.results.get('resolved', {})

  @property
  def meta(self) -> dict:
    """results.json without the per-unit records: what the run was (model, weights, versions)."""
    return {k: v for k, v in self.results.items() if k != 'units'}

  @property
  def iou_threshold(self) -> float:
    return float(self.results.get('iou_threshold', 0.04))

  @property
  def denominator(self) -> str:
    return str(self.results.get('denominator', 'paper'))

  @property
  def precision(self) -> str | None:
    return self.results.get('precision')

  @property
  def unique_detectors(self) -> dict[str, int]:
    return {c: int(n) for c, n in self.results['unique_detectors'].items()}

  @property
  def units(self) -> list[dict]:
    """results.json's unit records (unit, threshold, label, category, iou, top_concepts...)."""
    return self.results.get('units', [])

  # ---- tally.csv ------------------------------------------------------------------------------
  @functools.cached_property
  def tally(self) -> list[dict]:
    """tally.csv's rows (best score first) with numbers as int/float, labels as str."""
    path = self.path / TALLY_NAME
    try:
      with open(path, newline='') as f:
        return [_typed_row(row) for row in csv.DictReader(f)]
    except FileNotFoundError:
      raise ResultsError(f'{path} is missing') from None
    except (OSError, ValueError, KeyError, TypeError, csv.Error) as e:
      raise ResultsError(f'{path} is not a readable tally.csv ({_one_line(e)})') from None

  # ---- counts.npz -----------------------------------------------------------------------------
  @property
  def has_counts(self) -> bool:
    return (self.path / COUNTS_NAME).is_file()

  @functools.cached_property
  def _npz(self) -> dict[str, np.ndarray]:
    return _read_counts(self.path / COUNTS_NAME)

  @property
  def counts(self) -> iou_lib.Counts:
    return iou_lib.Counts(**{k: self._npz[k] for k in COUNT_FIELDS})

  @property
  def thresholds(self) -> np.ndarray:
    """(K,) float32 T_k: from counts.npz, or results.json's units where it is absent."""
    if self.has_counts:
      return self._npz['thresholds']
    if not self.units:
      raise ResultsError(f'{self.path} has no {COUNTS_NAME} and no units in {RESULTS_NAME}: '
                         'no thresholds')
    return np.array([u['threshold'] for u in self.units], np.float32)

  @property
  def categories(self) -> list[str]:
    """Category order as the dissection used it (counts.npz, else results.json's)."""
    if self.has_counts:
      return [str(c) for c in self._npz['categories']]
    return list(self.results['unique_detectors'])

  @property
  def label_names(self) -> list[str]:
    return [str(n) for n in self._npz['label_names']]

  @property
  def primary(self) -> np.ndarray:
    return self._npz['primary']

  @property
  def probe(self) -> Probe:
    return Probe(self.categories, self.label_names, self.primary)

  def labels(self, denominator: str = 'paper') -> tally_lib.UnitLabels:
    """Per unit: its best label per category and overall, with IoUs, recomputed from counts.npz
    (each label judged in its primary category, as the dissection does)."""
    if denominator not in self._scored:
      try:
        self._scored[denominator] = tally_lib.label_units(self.counts, self.probe, denominator)
      except ValueError as e:               # an unknown denominator
        raise ResultsError(_one_line(e)) from None
    return self._scored[denominator]

  def iou_matrix(self, denominator: str = 'paper') -> np.ndarray:
    """(K, N) IoU of every unit with every label (0 for labels with no primary category)."""
    return self.labels(denominator).iou

  def unit_records(self, denominator: str = 'paper') -> list[dict]:
    """results.json's unit records, rescored with `denominator` (equal to results.json's own
    when it is the denominator the run used)."""
    return tally_lib.unit_records(self.labels(denominator), self.thresholds, self.probe)

  def summary_line(self, denominator: str = 'paper', threshold: float | None = None) -> str:
    """The CLI's summary line for this folder, rescored from counts.npz."""
    threshold = self.iou_threshold if threshold is None else threshold
    return tally_lib.summary_line(self.folder, self.labels(denominator), self.probe, threshold)

  # ---- topk.npz -------------------------------------------------------------------------------
  @functools.cached_property
  def top(self) -> dict[str, np.ndarray] | None:
    """topk.npz's arrays (images, values, maps, map_hw), or None when the run kept none."""
    path = self.path / TOPK_NAME
    if not path.is_file():
      return None
    return _read_npz(path, TOPK_KEYS)


def _typed_row(row: dict) -> dict:
  out = {}
  for key, value in row.items():
    if key is None or value is None:
      raise ValueError('a row has a different number of fields than the header')
    if key == 'unit':
      out[key] = int(value)
    elif key == 'score' or key.endswith(TALLY_FLOAT_SUFFIXES):
      out[key] = float(value)
    elif key.endswith(TALLY_INT_SUFFIXES):
      out[key] = int(value)
    else:
      out[key] = value
  return out


def _read_npz(path: pathlib.Path, keys) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as z:
      missing = [k for k in keys if k not in z.files]
      if missing:
        raise ResultsError(f'{path} is not a readable {path.name} (no {", ".join(missing)})')
      return {k: z[k] for k in keys}
  except FileNotFoundError:
    raise ResultsError(f'{path} is missing') from None
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    if isinstance(e, ResultsError):
      raise
    raise ResultsError(f'{path} is not a readable {path.name} ({_one_line(e)})') from None


def _read_counts(path: pathlib.Path) -> dict[str, np.ndarray]:
  """counts.npz with its shapes checked against each other, so a rescore cannot misalign."""
  if not path.is_file():
    raise ResultsError(f'{path} is missing (written by an ndjax before counts.npz): IoUs cannot '
                       'be recomputed without the dataset')
  z = _read_npz(path, COUNTS_KEYS)
  k, n = z['inter'].shape if z['inter'].ndim == 2 else (-1, -1)
  c = len(z['categories']) if z['categories'].ndim == 1 else -1
  want = {'inter': (k, n), 'label_pixels': (n,), 'act_paper': (k, c), 'act_lite': (k, c),
          'act_pixels': (k,), 'thresholds': (k,), 'label_names': (n,), 'primary': (n,),
          'categories': (c,)}
  bad = [f'{key} {z[key].shape}' for key, shape in want.items()
         if k < 0 or c < 0 or z[key].shape != shape]
  if bad:
    raise ResultsError(f'{path} is not a readable {COUNTS_NAME} (shapes disagree: '
                       f'{", ".join(bad)})')
  z.update({key: z[key].astype(np.int64) for key in COUNT_FIELDS})
  z['primary'] = z['primary'].astype(np.int32)
  return z


def load(path: str | os.PathLike) -> ViewDir:
  """One result folder (`<outdir>/<run>/<layer>[@<view>]`)."""
  path = pathlib.Path(path)
  file = path / RESULTS_NAME
  if not path.is_dir():
    raise ResultsError(f'{path} is not a directory')
  if not file.is_file():
    raise ResultsError(f'{path} holds no {RESULTS_NAME}: not a dissection result folder '
                       '(<outdir>/<run>/<layer>[@<view>])')
  try:
    doc = json.loads(file.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ResultsError(f'{file} is not a readable dissection results.json '
                       f'({_one_line(e)})') from None
  missing = [key for key in ('layer', 'unique_detectors')
             if not isinstance(doc, dict) or key not in doc]
  if missing:
    raise ResultsError(f'{file} is not a readable dissection results.json '
                       f'(no {", ".join(missing)})')
  folder = str(doc.get('folder') or path.name)
  return ViewDir(path, folder, str(doc['layer']), ViewRecord.from_results(doc, folder), doc)


def find(path: str | os.PathLike) -> list[ViewDir]:
  """A result folder -> [it]; a run folder -> all its layer and view folders, in order.

  Order: layers as the run dissected them (results.json's resolved.layers), then by name; within
  a layer the plain folder first, then its views by name with numbers compared as numbers
  (rot_s0_a0.25 < rot_s0_a0.5 < rot_s0_a1), so an alpha or tau sweep reads in order.
  """
  path = pathlib.Path(path)
  if not path.is_dir():
    raise ResultsError(f'{path} is not a directory')
  if (path / RESULTS_NAME).is_file():
    return [load(path)]
  found = [load(d) for d in sorted(path.iterdir()) if (d / RESULTS_NAME).is_file()]
  if not found:
    raise ResultsError(f'{path} holds no {RESULTS_NAME}, nor do its subfolders: give a run '
                       'folder (<outdir>/<run>) or a layer folder (<outdir>/<run>/<layer>)')
  order = next((v.resolved.get('layers') for v in found if v.resolved.get('layers')), None) or []
  rank = {name: i for i, name in enumerate(order)}
  return sorted(found, key=lambda v: (rank.get(v.layer, len(rank)), v.layer, not v.view.plain,
                                      natural_key(v.view.name), v.folder))


def natural_key(name: str) -> tuple:
  """Sort key reading the numbers in a name as numbers ('a0.5' < 'a1' < 'a10', 'tau1e-05')."""
  pieces = re.split(r'(\d+(?:\.\d+)?(?:e[-+]?\d+)?)', name)
  return tuple((pieces[i], float(pieces[i + 1]) if i + 1 < len(pieces) else -1.0)
               for i in range(0, len(pieces), 2))
