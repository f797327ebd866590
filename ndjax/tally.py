"""Scores -> per-unit labels, detectors, the summary line, tally.csv and results.json.

Host-side numpy over (units x labels) arrays: no per-pixel work happens here.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json

import numpy as np

from ndjax import iou as iou_lib
from ndjax.data.broden import BrodenDataset, display_name


@dataclasses.dataclass
class UnitLabels:
  iou: np.ndarray              # (K, N) IoU of every unit with every label (0 for unusable labels)
  act: np.ndarray              # (K, N) activated pixels in each label's denominator
  best_per_cat: np.ndarray     # (K, C) global label number of the unit's best label per category
  best_iou_per_cat: np.ndarray # (K, C)
  best_cat: np.ndarray         # (K,) category index of the overall best label
  best_label: np.ndarray       # (K,)
  best_iou: np.ndarray         # (K,)


def label_units(counts: iou_lib.Counts, ds: BrodenDataset, denominator: str) -> UnitLabels:
  scores, act = iou_lib.iou(counts, ds.primary, denominator)
  k, num_cats = scores.shape[0], len(ds.categories)
  best_per_cat = np.zeros((k, num_cats), np.int64)
  best_iou_per_cat = np.zeros((k, num_cats))
  for c in range(num_cats):
    members = np.flatnonzero(ds.primary == c)       # each label judged in its primary category
    if len(members):
      j = np.argmax(scores[:, members], axis=1)     # ties: the lowest label number
      best_per_cat[:, c] = members[j]
      best_iou_per_cat[:, c] = scores[np.arange(k), members[j]]
  best_cat = np.argmax(best_iou_per_cat, axis=1)    # ties: the earlier category
  rows = np.arange(k)
  return UnitLabels(scores, act, best_per_cat, best_iou_per_cat, best_cat,
                    best_per_cat[rows, best_cat], best_iou_per_cat[rows, best_cat])


def unique_detectors(labels: UnitLabels, ds: BrodenDataset, threshold: float) -> dict[str, int]:
  """Interpretability: unique concepts among detector units (IoU > threshold), per category."""
  det = labels.best_iou > threshold
  out = {}
  for c, cat in enumerate(ds.categories):
    out[cat] = len(set(labels.best_label[det & (labels.best_cat == c)].tolist()))
  return out


def summary_line(layer: str, labels: UnitLabels, ds: BrodenDataset, threshold: float) -> str:
  det = int(np.sum(labels.best_iou > threshold))
  uniq = unique_detectors(labels, ds, threshold)
  order = [c for c in ('object', 'part', 'scene', 'material', 'texture', 'color') if c in uniq]
  order += [c for c in ds.categories if c not in order]
  per_cat = ', '.join(f'{c} {uniq[c]}' for c in order)
  return (f'{layer}: {det}/{len(labels.best_iou)} units are detectors (IoU > {threshold:g}) of '
          f'{sum(uniq.values())} unique concepts — {per_cat}')


def tally_rows(labels: UnitLabels, counts: iou_lib.Counts, ds: BrodenDataset) -> list[dict]:
  """NetDissect's tally.csv rows, sorted by score descending (ties by unit)."""
  header = ['unit', 'category', 'label', 'score']
  for cat in ds.categories:
    header += [f'{cat}-label', f'{cat}-truth', f'{cat}-activation', f'{cat}-intersect', f'{cat}-iou']
  rows = []
  for u in np.lexsort((np.arange(len(labels.best_iou)), -labels.best_iou)):
    row = {'unit': int(u) + 1, 'category': ds.categories[labels.best_cat[u]],
           'label': ds.label_names[labels.best_label[u]], 'score': float(labels.best_iou[u])}
    for c, cat in enumerate(ds.categories):
      lab = labels.best_per_cat[u, c]
      row.update({f'{cat}-label': ds.label_names[lab],
                  f'{cat}-truth': int(counts.label_pixels[lab]),
                  f'{cat}-activation': int(labels.act[u, lab]),
                  f'{cat}-intersect': int(counts.inter[u, lab]),
                  f'{cat}-iou': float(labels.iou[u, lab])})
    rows.append(row)
  return header, rows


def tally_csv(labels: UnitLabels, counts: iou_lib.Counts, ds: BrodenDataset) -> str:
  header, rows = tally_rows(labels, counts, ds)
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=header, lineterminator='\n')
  writer.writeheader()
  writer.writerows(rows)
  return buf.getvalue()


def top_concepts(labels: UnitLabels, ds: BrodenDataset, n: int = 5) -> list[dict]:
  """Per unit, per category: its n best labels (judged in their primary category) with IoU."""
  k = labels.iou.shape[0]
  out = [{} for _ in range(k)]
  for c, cat in enumerate(ds.categories):
    members = np.flatnonzero(ds.primary == c)
    if not len(members):
      continue
    scores = labels.iou[:, members]
    order = np.argsort(-scores, axis=1, kind='stable')[:, :n]
    for u in range(k):
      out[u][cat] = [[ds.label_names[members[j]], float(scores[u, j])] for j in order[u]]
  return out


def unit_records(labels: UnitLabels, thresholds: np.ndarray, ds: BrodenDataset) -> list[dict]:
  units = []
  tops = top_concepts(labels, ds)
  for u in range(len(labels.best_iou)):
    units.append({
        'unit': u + 1,
        'threshold': float(thresholds[u]),
        'label': ds.label_names[labels.best_label[u]],
        'display_label': display_name(ds.label_names[labels.best_label[u]]),
        'category': ds.categories[labels.best_cat[u]],
        'iou': float(labels.best_iou[u]),
        'per_category': {cat: {'label': ds.label_names[labels.best_per_cat[u, c]],
                               'iou': float(labels.best_iou_per_cat[u, c])}
                         for c, cat in enumerate(ds.categories)},
        'top_concepts': tops[u],
    })
  return units


def results_json(meta: dict, layer_meta: dict, labels: UnitLabels, thresholds: np.ndarray,
                 ds: BrodenDataset, threshold: float) -> str:
  doc = dict(meta)
  doc.update(layer_meta)
  doc['detectors'] = int(np.sum(labels.best_iou > threshold))
  doc['unique_detectors'] = unique_detectors(labels, ds, threshold)
  doc['units'] = unit_records(labels, thresholds, ds)
  return json.dumps(doc, indent=1)
