"""Exact per-unit thresholds T_k = numpy.quantile(all values of unit k, 1 - tau), streaming.

numpy's default ('linear') quantile reads only two order statistics: positions floor(v) and
floor(v)+1 of the ascending sort, v = (n-1)*q (q = 1 - tau). Both lie within the top
m = floor(tau*(n-1)) + 2 values, so a running top-m buffer per unit (merged batch by batch with
`lax.top_k` on the device) holds everything the threshold needs and never all activations.
The final interpolation mirrors numpy's own float arithmetic so the result is bit-identical.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def buffer_size(n: int, tau: float) -> int:
  """Values per unit that determine the (1 - tau) quantile of n values."""
  prev = math.floor((n - 1) * np.float64(1.0 - tau))     # numpy's virtual index, floored
  return max(1, min(n, n - prev))   # ascending positions prev .. n-1, i.e. the top n - prev


def init_buffer(units: int, m: int) -> jax.Array:
  return jnp.full((units, m), -jnp.inf, jnp.float32)


@functools.partial(jax.jit, donate_argnums=0)
def update_buffer(buffer: jax.Array, acts: jax.Array) -> jax.Array:
  """Merge a batch of activations (B, h, w, K) into the per-unit top-m buffer (K, m).

  A padding image in a batch must be passed as -inf so it can never enter the buffer.
  """
  k, m = buffer.shape
  values = acts.reshape(-1, k).T                           # (K, B*h*w)
  if values.shape[1] > m:                                  # shrink the batch first: cheaper merge
    values = jax.lax.top_k(values, m)[0]
  return jax.lax.top_k(jnp.concatenate([buffer, values], axis=1), m)[0]


def quantile_from_top(top_desc: np.ndarray, n: int, tau: float) -> np.ndarray:
  """numpy.quantile(values, 1 - tau) per row from each row's top-m values sorted descending.

  Reproduces numpy's `_quantile` + `_lerp` for method='linear' with a Python-float q, in the
  input's dtype (float32 -> float32 arithmetic, as numpy does under NEP 50).
  """
  virtual = (n - 1) * np.float64(1.0 - tau)       # numpy: _QuantileMethods['linear']
  prev = math.floor(virtual)
  nxt = prev + 1
  if virtual >= n - 1:                              # numpy clamps both to the last value
    prev = nxt = n - 1
  gamma = float(virtual - prev)
  top_desc = np.asarray(top_desc)
  a = top_desc[:, n - 1 - prev]              # ascending position p = descending position n-1-p
  b = top_desc[:, n - 1 - nxt]
  diff = b - a
  result = a + diff * gamma
  if gamma >= 0.5:
    result = b - diff * (1 - gamma)
  return result


class StreamingThreshold:
  """Per-unit exact quantiles over everything `update` sees, for one or several taus.

  `max_n` (values per unit if every image is used) sizes the buffer; the quantile is taken over
  the values actually seen, which can be fewer when bad images are skipped (a buffer sized for
  more values always holds the fewer values' top order statistics). Several taus share one
  buffer, sized for the largest: the top m' values are a prefix of the top m >= m'.
  """

  def __init__(self, units: int, max_n: int, tau: float | Sequence[float]):
    taus = (tau,) if np.isscalar(tau) else tuple(tau)
    for t in taus:
      if not 0.0 < t < 1.0:
        raise ValueError(f'tau must be in (0, 1), got {t}')
    self.units, self.max_n, self.taus = units, max_n, taus
    self.tau = taus[0]
    self.m = max(buffer_size(max_n, t) for t in taus)
    self.buffer = init_buffer(units, self.m)
    self.seen = 0

  def update(self, acts: jax.Array, valid: np.ndarray | None = None) -> None:
    """acts: (B, h, w, K); images whose `valid` flag is False (batch padding) are ignored."""
    b, h, w = acts.shape[:3]
    if valid is not None and not np.all(valid):
      acts = jnp.where(jnp.asarray(valid)[:, None, None, None], acts, -jnp.inf)
    self.buffer = update_buffer(self.buffer, acts)
    self.seen += int(b if valid is None else np.sum(valid)) * h * w

  def merge_processes(self) -> None:
    """Combine the buffers of all processes (each saw a disjoint share of the images)."""
    from ndjax import distributed
    if distributed.process_count() == 1:
      return
    gathered = distributed.allgather({'buffer': np.asarray(self.buffer),
                                      'seen': np.array(self.seen, np.int64)})
    everything = np.concatenate(list(gathered['buffer']), axis=1)        # (K, P*m)
    self.buffer = jax.lax.top_k(jnp.asarray(everything), self.m)[0]
    self.seen = int(gathered['seen'].sum())

  def result(self, tau: float | None = None) -> np.ndarray:
    """(units,) thresholds at `tau` (one of the taus it was built for; default the first)."""
    tau = self.tau if tau is None else tau
    if tau not in self.taus:
      raise ValueError(f'this buffer was sized for taus {self.taus}, not {tau}')
    if not 0 < self.seen <= self.max_n:
      raise RuntimeError(f'threshold saw {self.seen} values per unit, expected 1..{self.max_n}')
    return quantile_from_top(np.asarray(self.buffer), self.seen, tau)
