"""Compositional explanations: the logical formula over labels that a unit's mask matches best.

Mu & Andreas (NeurIPS'20; their code jayelm/compexp, a fork of NetDissect-Lite): a unit's label
becomes a formula such as `(water OR river) AND NOT blue-c`, found by beam search. The beam starts
from the unit's best single labels (IoU > 0); each step extends every beam entry F with OR / AND /
AND NOT of every label L, scores each candidate by the dataset-wide IoU of the unit's mask with the
formula's mask, multiplied by `penalty ** (length - 1)` (compexp's complexity penalty; 1 = none),
and keeps the best `beam_size` of the old beam and the candidates, up to `max_length` labels.

Why it is cheap here: a formula's truth at a pixel depends only on the pixel's label set, so the
counts per label set (`labelsets.LabelSets`, one pass-2 count) are an exact sufficient statistic.
For a beam entry F (truth vector F(s) over the S sets) and every label L at once:
  |M ∩ F ∩ L| = Σ_s m(s) F(s) [L ∈ s]       |F ∩ L| = Σ_s n(s) F(s) [L ∈ s]
(m = the unit's pixels per set, n = all pixels per set), two sums over the sparse membership of
labels in sets (`_beam_counts`, jit-compiled, all units of a chunk and all beam entries batched);
then, with |M ∩ F|, |F|, |M ∩ L|, |L| and |M|:
  OR:       |M ∩ (F ∨ L)|  = |M∩F| + |M∩L| - |M∩F∩L|     |F ∨ L|  = |F| + |L| - |F∩L|
  AND:      |M ∩ (F ∧ L)|  = |M∩F∩L|                     |F ∧ L|  = |F∩L|
  AND NOT:  |M ∩ (F ∧ ¬L)| = |M∩F| - |M∩F∩L|             |F ∧ ¬L| = |F| - |F∩L|
  IoU = |M ∩ G| / (|M| + |G| - |M ∩ G|).
All counts are integers (int32 on the device: each is at most the probe set's pixel count, checked
< 2^31), IoUs float64 of exact integers: ties are exact, and the length-1 IoU is exactly the
dissection's IoU under the 'dataset' denominator (`iou.iou`).

Departures from compexp, each deliberate: a candidate never repeats a label of its formula
(`A AND A` is `A`, `A AND NOT A` is empty); two candidates with the same mask on the probe set
(`A OR B`, `B OR A`) take one beam slot, the first in compexp's order (old beam, then beam entry,
label, op OR / AND / AND NOT), so the beam holds `beam_size` distinct masks.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from ndjax.labelsets import LabelSets

OR, AND, AND_NOT = 0, 1, 2
OP_NAMES = ('OR', 'AND', 'AND NOT')


@dataclasses.dataclass(frozen=True)
class Formula:
  """((l0 op1 l1) op2 l2) ...: labels are global label numbers, evaluated left to right."""
  labels: tuple[int, ...]
  ops: tuple[int, ...] = ()

  def __len__(self) -> int:
    return len(self.labels)

  def extend(self, op: int, label: int) -> 'Formula':
    return Formula(self.labels + (int(label),), self.ops + (int(op),))

  def truth(self, z: np.ndarray) -> np.ndarray:
    """(S,) bool over label sets, from the membership z (S, N) bool."""
    t = z[:, self.labels[0]].copy()
    for op, l in zip(self.ops, self.labels[1:]):
      if op == OR:
        t |= z[:, l]
      elif op == AND:
        t &= z[:, l]
      else:
        t &= ~z[:, l]
    return t

  def to_str(self, names: Sequence[str]) -> str:
    text = names[self.labels[0]]
    for i, (op, l) in enumerate(zip(self.ops, self.labels[1:])):
      text = f'({text})' if i else text
      text = f'{text} {OP_NAMES[op]} {names[l]}'
    return text


@dataclasses.dataclass
class Explanation:
  unit: int
  formula: Formula | None     # None: the unit's mask meets no label
  iou: float                  # the formula's IoU (no penalty)
  single: Formula | None      # the best single label
  single_iou: float
  beam: list[tuple[Formula, float]]   # the final beam, best first: (formula, IoU)


class FormulaError(ValueError):
  """Inputs the search cannot use; one line for the user."""


def _membership_pairs(sets: LabelSets) -> tuple[np.ndarray, np.ndarray]:
  """(set, label) index pairs of the sparse membership."""
  s, r = np.nonzero(sets.members >= 0)
  return s.astype(np.int32), sets.members[s, r].astype(np.int32)


@jax.jit
def _beam_counts(m, n, truth, pair_set, pair_label, num_labels_like):
  """For a chunk of units and their beam entries, against every label at once.

  m (k, S) int32 unit pixels per set; n (S,) int32 pixels per set; truth (k, B, S) bool beam
  entries. Returns |M∩F∩L| (k, B, N), |F∩L| (k, B, N), |M∩F| (k, B), |F| (k, B), all int32."""
  num_labels = num_labels_like.shape[0]
  w = jnp.where(truth, m[:, None, :], 0)                           # (k, B, S): m(s) F(s)
  f = jnp.where(truth, n[None, None, :], 0)                        # n(s) F(s)
  by_label = lambda a: jax.ops.segment_sum(jnp.moveaxis(a, -1, 0)[pair_set], pair_label,
                                           num_segments=num_labels)           # (N, k, B)
  both = jnp.moveaxis(by_label(w), 0, -1)
  f_and_l = jnp.moveaxis(by_label(f), 0, -1)
  return both, f_and_l, w.sum(-1), f.sum(-1)


@jax.jit
def _label_counts(m, pair_set, pair_label, num_labels_like):
  """(k, S) counts per set -> (k, N) per label (sum over the sets holding it), int32."""
  return jax.ops.segment_sum(m.T[pair_set], pair_label,
                             num_segments=num_labels_like.shape[0]).T


def _by_label(sets: LabelSets, m: np.ndarray, num_labels: int, chunk: int = 256) -> np.ndarray:
  """Σ over the sets holding each label, for every row of m (k, S): (k, N) int64, exact."""
  pairs = [jnp.asarray(a) for a in _membership_pairs(sets)]
  like = jnp.zeros(num_labels, jnp.int8)
  m = np.atleast_2d(m)
  return np.concatenate([np.asarray(_label_counts(jnp.asarray(m[i:i + chunk], jnp.int32), *pairs,
                                                  like), np.int64)
                         for i in range(0, len(m), chunk)] or [np.zeros((0, num_labels), np.int64)])


def _iou(inter: np.ndarray, unit: np.ndarray, size: np.ndarray) -> np.ndarray:
  union = unit + size - inter
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def _extension_ious(counts, m_and_l, label_px, unit_px) -> np.ndarray:
  """(B, N, 3) IoU of every entry extended by every label with OR / AND / AND NOT, from one
  unit's rows of `_beam_counts` (both, f_and_l (B, N), m_and_f, f_size (B,)), |M ∩ L| (N,), |L|
  (N,) and |M|."""
  both, f_and_l, m_and_f, f_size = counts
  inter = np.stack([m_and_f[:, None] + m_and_l[None, :] - both,        # OR
                    both,                                                # AND
                    m_and_f[:, None] - both], axis=-1)                   # AND NOT
  size = np.stack([f_size[:, None] + label_px[None, :] - f_and_l,
                   f_and_l,
                   f_size[:, None] - f_and_l], axis=-1)
  return _iou(inter, unit_px, size)


def extension_ious(sets: LabelSets, num_labels: int, units: Sequence[int],
                   entries: Sequence[Formula]) -> np.ndarray:
  """(len(units), len(entries), N, 3): the IoU of each unit with each entry extended by each
  label L as (entry OR L, entry AND L, entry AND NOT L) — one beam step's candidates."""
  z = sets.membership(num_labels)
  units = np.asarray(units)
  truth = np.stack([f.truth(z) for f in entries])
  counts = _beam_counts(jnp.asarray(sets.unit_pixels[units], jnp.int32),
                        jnp.asarray(sets.pixels, jnp.int32),
                        jnp.asarray(np.broadcast_to(truth, (len(units),) + truth.shape)),
                        *map(jnp.asarray, _membership_pairs(sets)), jnp.zeros(num_labels, jnp.int8))
  counts = [np.asarray(a, np.int64) for a in counts]
  m_and_l = _by_label(sets, sets.unit_pixels[units], num_labels)
  label_px = _by_label(sets, sets.pixels, num_labels)[0]
  unit_px = sets.unit_pixels[units].sum(1)
  return np.stack([_extension_ious([a[i] for a in counts], m_and_l[i], label_px, unit_px[i])
                   for i in range(len(units))])


def single_label_ious(sets: LabelSets, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
  """(IoU (K, N) float64, |L| (N,)) of every unit with every single label, dataset-wide."""
  inter = _by_label(sets, sets.unit_pixels, num_labels)
  label = _by_label(sets, sets.pixels, num_labels)[0]
  return _iou(inter, sets.unit_pixels.sum(1)[:, None], label[None, :]), label


def explain(sets: LabelSets, num_labels: int, *, beam_size: int = 5, max_length: int = 3,
            penalty: float = 1.0, allowed: np.ndarray | None = None,
            units: Sequence[int] | None = None, unit_chunk: int | None = None,
            progress: bool = False) -> list[Explanation]:
  """The best formula of each unit (all units, or `units`) by beam search (module docstring).

  allowed: (N,) bool, the labels formulas may use (default: every label that occurs; labels
  without a primary category never occur in the sets)."""
  if beam_size < 1 or max_length < 1:
    raise FormulaError(f'beam_size ({beam_size}) and max_length ({max_length}) must be >= 1')
  if not 0.0 < penalty <= 1.0:
    raise FormulaError(f'complexity penalty {penalty} must be in (0, 1] (1 = none)')
  if sets.pixels.sum() >= 2**31:
    raise FormulaError(f'{sets.pixels.sum()} mask pixels exceed the int32 counts of the search '
                       '(2^31): split the probe set')
  z = sets.membership(num_labels)
  units = np.arange(sets.unit_pixels.shape[0]) if units is None else np.asarray(units)
  ious, label_px = single_label_ious(sets, num_labels)
  usable = label_px > 0
  if allowed is not None:
    usable &= np.asarray(allowed, bool)
  ious = np.where(usable[None, :], ious, 0.0)
  unit_px = sets.unit_pixels.sum(1)
  s = sets.num_sets
  chunk = unit_chunk or max(1, min(len(units), int(2**26 // max(1, beam_size * s))))
  pair_set, pair_label = map(jnp.asarray, _membership_pairs(sets))
  n_dev = jnp.asarray(sets.pixels, jnp.int32)
  like = jnp.zeros(num_labels, jnp.int8)
  out = []
  bar = tqdm(total=len(units), desc='formulas', unit='unit', disable=not progress)
  for start in range(0, len(units), chunk):
    us = units[start:start + chunk]
    beams = [_initial_beam(ious[u], beam_size) for u in us]
    m_dev = jnp.asarray(sets.unit_pixels[us], jnp.int32)
    m_and_l = _by_label(sets, sets.unit_pixels[us], num_labels)    # (k, N) |M ∩ L|
    for _ in range(max_length - 1):
      truth = np.zeros((len(us), beam_size, s), bool)
      for i, beam in enumerate(beams):
        for b, (f, _, _) in enumerate(beam):
          truth[i, b] = f.truth(z)
      both, f_and_l, m_and_f, f_size = map(
          lambda a: np.asarray(a, np.int64),
          _beam_counts(m_dev, n_dev, jnp.asarray(truth), pair_set, pair_label, like))
      beams = [_step(beam, both[i], f_and_l[i], m_and_f[i], f_size[i], m_and_l[i], label_px,
                     unit_px[u], usable, z, beam_size, penalty)
               for i, (u, beam) in enumerate(zip(us, beams))]
    for u, beam in zip(us, beams):
      j = int(np.argmax(ious[u]))
      single = Formula((j,)) if ious[u, j] > 0 else None
      if not beam:
        out.append(Explanation(int(u), None, 0.0, None, 0.0, []))
        continue
      scored = [(f, float(iou)) for f, iou, _ in beam]
      out.append(Explanation(int(u), scored[0][0], scored[0][1], single, float(ious[u, j]), scored))
    bar.update(len(us))
  bar.close()
  return out


def _initial_beam(unit_ious: np.ndarray, beam_size: int) -> list:
  """compexp's start: the best `beam_size` single labels with IoU > 0, ties by label number."""
  order = np.argsort(-unit_ious, kind='stable')[:beam_size]
  return [(Formula((int(l),)), float(unit_ious[l]), float(unit_ious[l])) for l in order
          if unit_ious[l] > 0]


def _step(beam, both, f_and_l, m_and_f, f_size, m_and_l, label_px, unit_px, usable, z,
          beam_size, penalty):
  """One beam step of one unit: every extension of every entry, then the best distinct ones.

  beam: [(formula, iou, score)]; count arrays as in `_beam_counts` (this unit's rows)."""
  if not beam:
    return beam
  nb = len(beam)
  iou = _extension_ious((both[:nb], f_and_l[:nb], m_and_f[:nb], f_size[:nb]), m_and_l, label_px,
                        unit_px)                                           # (B, N, 3)
  ok = np.broadcast_to(usable[None, :, None], iou.shape).copy()
  for b, (f, _, _) in enumerate(beam):
    ok[b, list(f.labels), :] = False                 # never repeat a label of the formula
  lengths = np.array([len(f) + 1 for f, _, _ in beam])
  score = np.where(ok, iou * (penalty ** (lengths - 1))[:, None, None], -np.inf)
  # compexp's order: the old beam first, then candidates by (entry, label, op)
  all_scores = np.concatenate([[sc for _, _, sc in beam], score.ravel()])
  order = np.argsort(-all_scores, kind='stable')
  kept, seen = [], set()
  for idx in order:
    if not np.isfinite(all_scores[idx]) or len(kept) == beam_size:
      break
    if idx < nb:
      f, fi, sc = beam[idx]
    else:
      b, l, op = np.unravel_index(idx - nb, score.shape)
      f, fi, sc = beam[b][0].extend(op, l), float(iou[b, l, op]), float(score[b, l, op])
    key = np.packbits(f.truth(z)).tobytes()
    if key in seen:
      continue
    seen.add(key)
    kept.append((f, fi, sc))
  return kept
