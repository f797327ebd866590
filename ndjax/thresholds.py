"""Exact per-unit thresholds T_k = numpy.quantile(all values of unit k, 1 - tau), streaming.

numpy's default ('linear') quantile reads only two order statistics: positions floor(v) and
floor(v)+1 of the ascending sort, v = (n-1)*q (q = 1 - tau). Both lie within the top
m = floor(tau*(n-1)) + 2 values. Two exact ways to find them, both bit-identical to numpy:

- `StreamingThreshold` (one pass): a running top-m set per unit. A batch is first cut against
  each unit's FLOOR, the smallest value of its current top m: a value <= the floor can never
  change the top-m multiset, so after the first few batches almost everything is dropped by one
  vectorised comparison. Survivors wait in a pending block and are folded in with
  `np.partition` (linear time) once they amount to a fraction of m. Cost: linear in the values
  seen, memory ~1.5 m per unit. (A per-batch `lax.top_k` merge, the old way, is a full sort of
  m + batch values per batch on XLA:CPU: quadratic in the probe set.)
- `HistogramThreshold` (two passes, fixed memory): where m per unit does not fit in memory (early
  layers of a full Broden). Floats are mapped to order-preserving 32-bit keys; pass A counts each
  unit's keys by their high 16 bits, which locates the bin holding each needed order statistic;
  pass B counts the low 16 bits of the keys inside that bin, which pins the exact value.
  65,536 bins per unit per pass, whatever the probe set.

The final interpolation mirrors numpy's own float arithmetic so the result is bit-identical.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

BINS = 1 << 16
UNITS_PER_COUNT = 8          # histogram rows filled per bincount: 8 x 65,536 x 8 B = 4 MB


def buffer_size(n: int, tau: float) -> int:
  """Values per unit that determine the (1 - tau) quantile of n values."""
  prev = math.floor((n - 1) * np.float64(1.0 - tau))     # numpy's virtual index, floored
  return max(1, min(n, n - prev))   # ascending positions prev .. n-1, i.e. the top n - prev


def order_positions(n: int, tau: float) -> tuple[int, int, float]:
  """(prev, next, gamma): numpy's ascending positions and weight for quantile(values, 1 - tau)."""
  virtual = (n - 1) * np.float64(1.0 - tau)       # numpy: _QuantileMethods['linear']
  prev = math.floor(virtual)
  nxt = prev + 1
  if virtual >= n - 1:                              # numpy clamps both to the last value
    prev = nxt = n - 1
  return prev, nxt, float(virtual - prev)


def lerp(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
  """numpy's `_lerp` in the inputs' dtype (float32 -> float32 arithmetic, as numpy does)."""
  diff = b - a
  result = a + diff * gamma
  if gamma >= 0.5:
    result = b - diff * (1 - gamma)
  return result


def quantile_from_top(top_desc: np.ndarray, n: int, tau: float) -> np.ndarray:
  """numpy.quantile(values, 1 - tau) per row from each row's top-m values sorted descending."""
  prev, nxt, gamma = order_positions(n, tau)
  top_desc = np.asarray(top_desc)
  # ascending position p = descending position n-1-p
  return lerp(top_desc[:, n - 1 - prev], top_desc[:, n - 1 - nxt], gamma)


def _check_taus(taus: Sequence[float]) -> None:
  for t in taus:
    if not 0.0 < t < 1.0:
      raise ValueError(f'tau must be in (0, 1), got {t}')


def _unit_columns(acts, valid) -> np.ndarray:
  """(B, h, w, K) activations of the valid images -> (n, K) host float32 values."""
  acts = np.asarray(acts, np.float32)
  if valid is not None and not np.all(valid):
    acts = acts[np.asarray(valid, bool)]
  return acts.reshape(-1, acts.shape[-1])


def above_floor(values: np.ndarray, floor: np.ndarray) -> np.ndarray | None:
  """Each unit's values strictly above its floor, as a (K, c) block padded with -inf
  (c = the most any unit keeps); None when no unit keeps anything.

  values: (n, K); floor: (K,)."""
  keep = values > floor
  counts = keep.sum(axis=0)
  c = int(counts.max()) if counts.size else 0
  if c == 0:
    return None
  if c == values.shape[0]:                 # nothing dropped anywhere worth compacting for
    return np.where(keep, values, -np.inf).T.astype(np.float32, order='C')
  cols, rows = np.nonzero(keep.T)          # row-major over (K, n): grouped by unit
  picked = values[rows, cols]
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  slot = np.arange(picked.size) - np.repeat(starts, counts)
  block = np.full((values.shape[1], c), -np.inf, np.float32)
  block[cols, slot] = picked
  return block


class StreamingThreshold:
  """Per-unit exact quantiles over everything `update` sees, for one or several taus.

  `max_n` (values per unit if every image is used) sizes the top-m set; the quantile is taken
  over the values actually seen, which can be fewer when bad images are skipped (the top m of
  more values always holds the fewer values' top order statistics). Several taus share one
  set, sized for the largest: the top m' values are a prefix of the top m >= m'.
  """

  def __init__(self, units: int, max_n: int, tau: float | Sequence[float]):
    taus = (tau,) if np.isscalar(tau) else tuple(tau)
    _check_taus(taus)
    self.units, self.max_n, self.taus = units, max_n, taus
    self.tau = taus[0]
    self.m = max(buffer_size(max_n, t) for t in taus)
    self._top = np.full((units, self.m), -np.inf, np.float32)     # unordered top m per unit
    self._floor = np.full(units, -np.inf, np.float32)
    self._pending: list[np.ndarray] = []
    self._pending_width = 0
    self.seen = 0

  needs_refine = False

  @staticmethod
  def bytes_needed(units: int, max_n: int, taus: Sequence[float]) -> int:
    """Peak host memory: the top-m set plus pending survivors of up to m/2 per unit."""
    m = max(buffer_size(max_n, t) for t in taus)
    return int(units * m * 4 * 1.5)

  def update(self, acts, valid: np.ndarray | None = None) -> None:
    """acts: (B, h, w, K); images whose `valid` flag is False (batch padding) are ignored."""
    values = _unit_columns(acts, valid)
    self.seen += values.shape[0]
    block = above_floor(values, self._floor)
    if block is None:
      return
    self._pending.append(block)
    self._pending_width += block.shape[1]
    if self._pending_width >= max(self.m // 2, 1):
      self._fold()

  def _fold(self) -> None:
    """Fold the pending survivors into the top-m set, one unit at a time (small temporaries)."""
    if not self._pending:
      return
    m = self.m
    for k in range(self.units):
      pool = np.concatenate([self._top[k]] + [p[k] for p in self._pending])
      top = np.partition(pool, pool.size - m)[pool.size - m:]
      self._top[k] = top
      self._floor[k] = top.min()
    self._pending, self._pending_width = [], 0

  @property
  def buffer(self) -> np.ndarray:
    """(K, m) each unit's top m values sorted descending (-inf where fewer were seen)."""
    self._fold()
    return -np.sort(-self._top, axis=1)

  @buffer.setter
  def buffer(self, top: np.ndarray) -> None:
    top = np.array(top, np.float32)
    if top.shape != (self.units, self.m):
      raise ValueError(f'a top-m buffer of shape {top.shape}, expected {(self.units, self.m)}')
    self._top, self._pending, self._pending_width = top, [], 0
    self._floor = top.min(axis=1)

  def merge_processes(self) -> None:
    """Combine the sets of all processes (each saw a disjoint share of the images)."""
    from ndjax import distributed
    if distributed.process_count() == 1:
      return
    gathered = distributed.allgather({'buffer': self.buffer,
                                      'seen': np.array(self.seen, np.int64)})
    everything = np.concatenate(list(gathered['buffer']), axis=1)        # (K, P*m)
    self.buffer = np.partition(everything, everything.shape[1] - self.m,
                               axis=1)[:, everything.shape[1] - self.m:]
    self.seen = int(gathered['seen'].sum())

  def result(self, tau: float | None = None) -> np.ndarray:
    """(units,) thresholds at `tau` (one of the taus it was built for; default the first)."""
    tau = self.tau if tau is None else tau
    if tau not in self.taus:
      raise ValueError(f'this buffer was sized for taus {self.taus}, not {tau}')
    if not 0 < self.seen <= self.max_n:
      raise RuntimeError(f'threshold saw {self.seen} values per unit, expected 1..{self.max_n}')
    return quantile_from_top(self.buffer, self.seen, tau)


# ---- two-pass selection with fixed memory -------------------------------------------------------
def float_keys(values: np.ndarray) -> np.ndarray:
  """Order-preserving uint32 keys of float32 values: a < b  <=>  key(a) < key(b) (NaN excluded;
  -0.0 sorts just below +0.0, which compare equal anyway)."""
  u = np.ascontiguousarray(values, np.float32).view(np.uint32)
  return np.where(u >> 31 == 1, ~u, u | np.uint32(0x80000000))


def key_floats(keys: np.ndarray) -> np.ndarray:
  """Inverse of `float_keys`."""
  keys = np.asarray(keys, np.uint32)
  u = np.where(keys >> 31 == 1, keys & np.uint32(0x7FFFFFFF), ~keys)
  return u.view(np.float32)


def _rank_in(hist: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per row of a (K, BINS) histogram, the bin holding each row's ascending position, and the
  position's rank inside that bin."""
  cum = np.cumsum(hist, axis=1)
  b = np.sum(cum <= positions[:, None], axis=1)              # first bin whose cumsum passes p
  before = np.where(b > 0, cum[np.arange(len(hist)), np.maximum(b - 1, 0)], 0)
  return b.astype(np.int64), positions - before


class HistogramThreshold:
  """The same thresholds as `StreamingThreshold` in two passes over the values and fixed memory
  (a 65,536-bin count per unit, plus one per order statistic in pass B).

  Pass A: `update` every batch; then `start_refine()`; pass B: `refine` every batch again (the
  same values, any order); then `result`.
  """

  def __init__(self, units: int, max_n: int, tau: float | Sequence[float]):
    taus = (tau,) if np.isscalar(tau) else tuple(tau)
    _check_taus(taus)
    self.units, self.max_n, self.taus = units, max_n, taus
    self.tau = taus[0]
    self.hist = np.zeros((units, BINS), np.int64)
    self.seen = 0
    self.refined_seen = 0
    self.targets: dict | None = None      # ascending position -> (bin per unit, rank in bin)
    self.fine: dict[int, np.ndarray] = {}

  @staticmethod
  def bytes_needed(units: int, max_n: int, taus: Sequence[float]) -> int:
    del max_n
    return units * BINS * 8 * (1 + 2 * len(taus))

  needs_refine = True

  def _offsets(self) -> np.ndarray:
    return (np.arange(self.units, dtype=np.int64) * BINS)[None, :]

  def update(self, acts, valid: np.ndarray | None = None) -> None:
    """Pass A: count each unit's values by the high 16 bits of their keys."""
    values = _unit_columns(acts, valid)
    self.seen += values.shape[0]
    hi = float_keys(np.ascontiguousarray(values.T)) >> 16       # (K, n), unit-major
    # a few units at a time, so the counts being written stay in cache
    for s in range(0, self.units, UNITS_PER_COUNT):
      part = hi[s:s + UNITS_PER_COUNT]
      idx = part.astype(np.intp) + (np.arange(len(part), dtype=np.intp) * BINS)[:, None]
      self.hist[s:s + len(part)] += np.bincount(idx.ravel(), minlength=len(part) * BINS).reshape(
          len(part), BINS)

  def merge_processes(self) -> None:
    from ndjax import distributed
    if distributed.process_count() == 1:
      return
    total = distributed.allsum({'hist': self.hist, 'seen': np.array(self.seen, np.int64)})
    self.hist, self.seen = np.asarray(total['hist']), int(total['seen'])

  def start_refine(self) -> None:
    """Locate, per unit, the coarse bin of every order statistic the taus need."""
    if not 0 < self.seen <= self.max_n:
      raise RuntimeError(f'threshold saw {self.seen} values per unit, expected 1..{self.max_n}')
    positions = sorted({p for t in self.taus for p in order_positions(self.seen, t)[:2]})
    self.targets = {}
    for p in positions:
      self.targets[p] = _rank_in(self.hist, np.full(self.units, p, np.int64))
      self.fine[p] = np.zeros((self.units, BINS), np.int64)

  def refine(self, acts, valid: np.ndarray | None = None) -> None:
    """Pass B: inside each target bin, count the values by the low 16 bits of their keys."""
    values = _unit_columns(acts, valid)
    self.refined_seen += values.shape[0]
    keys = float_keys(values)                                    # (n, K)
    hi = keys >> 16
    for p, (b, _) in self.targets.items():
      rows, units = np.nonzero(hi == b[None, :].astype(np.uint32))   # only the bin's values
      lo = (keys[rows, units] & np.uint32(0xFFFF)).astype(np.intp) + units * BINS
      self.fine[p] += np.bincount(lo, minlength=self.units * BINS).reshape(self.units, BINS)

  def merge_refine_processes(self) -> None:
    from ndjax import distributed
    if distributed.process_count() == 1:
      return
    total = distributed.allsum({f'p{p}': f for p, f in self.fine.items()})
    self.fine = {p: np.asarray(total[f'p{p}']) for p in self.fine}

  def result(self, tau: float | None = None) -> np.ndarray:
    tau = self.tau if tau is None else tau
    if tau not in self.taus:
      raise ValueError(f'this histogram was set up for taus {self.taus}, not {tau}')
    if self.targets is None or self.refined_seen != self.seen:
      raise RuntimeError(f'pass B saw {self.refined_seen} values per unit, pass A {self.seen}')
    prev, nxt, gamma = order_positions(self.seen, tau)

    def value(p: int) -> np.ndarray:
      b, rank = self.targets[p]
      lo, _ = _rank_in(self.fine[p], rank)
      return key_floats((b.astype(np.uint32) << 16) | lo.astype(np.uint32))

    return lerp(value(prev), value(nxt), gamma)
