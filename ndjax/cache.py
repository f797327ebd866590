"""Lossless store of layer activations between the threshold pass and the counting pass.

Each image is forwarded once per dissection: batches are kept in memory up to `budget_gb`, then
spilled to .npy files in a private temporary directory (float32, bit-exact), or, with no spill
directory, dropped and recomputed in the second pass.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np


class ActivationCache:

  def __init__(self, budget_gb: float, spill_dir: str | None):
    self.budget = int(budget_gb * 2**30)
    self.used = 0
    self.memory: dict[tuple[int, str], np.ndarray] = {}
    self.disk: dict[tuple[int, str], str] = {}
    self._tmp = None
    self._spill_root = spill_dir
    self.spilled_bytes = 0

  def put(self, batch_index: int, layer: str, acts: np.ndarray) -> None:
    key = (batch_index, layer)
    if self.used + acts.nbytes <= self.budget:
      self.memory[key] = acts
      self.used += acts.nbytes
    elif self._spill_root is not None:
      if self._tmp is None:
        os.makedirs(self._spill_root, exist_ok=True)
        self._tmp = tempfile.mkdtemp(prefix='ndjax_acts_', dir=self._spill_root)
      path = os.path.join(self._tmp, f'{batch_index}_{len(self.disk)}.npy')
      np.save(path, acts)
      self.disk[key] = path
      self.spilled_bytes += acts.nbytes
    # else: not kept; the caller recomputes it

  def has_batch(self, batch_index: int, layers) -> bool:
    return all((batch_index, l) in self.memory or (batch_index, l) in self.disk for l in layers)

  def get(self, batch_index: int, layer: str) -> np.ndarray:
    """A cached batch, kept for a later `pop` (the histogram selection reads it twice)."""
    key = (batch_index, layer)
    if key in self.memory:
      return self.memory[key]
    return np.load(self.disk[key])

  def pop(self, batch_index: int, layer: str) -> np.ndarray:
    key = (batch_index, layer)
    if key in self.memory:
      acts = self.memory.pop(key)
      self.used -= acts.nbytes
      return acts
    return np.load(self.disk.pop(key))

  def close(self) -> None:
    self.memory.clear()
    self.disk.clear()
    if self._tmp is not None:
      shutil.rmtree(self._tmp, ignore_errors=True)
      self._tmp = None
