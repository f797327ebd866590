"""Checkpoints of the streaming state, so a killed dissection continues where it stopped.

The state is small next to the work it stands for: per layer the threshold top-m buffers and the
top-k image lists (pass 1), then the thresholds, integer counts and top-k maps (pass 2), plus the
position in the batch list. It is saved with Orbax every N batches under
`<dir>/process_<i>/state_<seq>` (Orbax finalises each save atomically), with a `run.json` that
identifies the run, so that `--resume` never mixes states of different runs. Activations are not
saved: batches the resumed run did not keep in its cache are forwarded again in pass 2, which
gives bit-identical counts because each batch is recomputed with the same shape.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil

import numpy as np


class ResumeError(ValueError):
  """A checkpoint that cannot be used; one line for the user."""


def _quiet():
  from ndjax.ported_weights.checkpoint import _orbax_quiet
  return _orbax_quiet()


class StateStore:

  def __init__(self, root: str, process_index: int, identity: dict):
    self.dir = os.path.join(os.path.abspath(root), f'process_{process_index}')  # Orbax: absolute
    self.identity = identity
    self.seq = 0

  def _states(self) -> list[tuple[int, str]]:
    if not os.path.isdir(self.dir):
      return []
    found = []
    for name in os.listdir(self.dir):
      m = re.fullmatch(r'state_(\d+)', name)
      if m and os.path.isdir(os.path.join(self.dir, name)):
        found.append((int(m.group(1)), os.path.join(self.dir, name)))
    return sorted(found)

  def save(self, tree: dict) -> None:
    import orbax.checkpoint as ocp
    os.makedirs(self.dir, exist_ok=True)
    with open(os.path.join(self.dir, '.run.json.tmp'), 'w') as f:
      json.dump(self.identity, f, sort_keys=True)
    os.replace(os.path.join(self.dir, '.run.json.tmp'), os.path.join(self.dir, 'run.json'))
    self.seq += 1
    path = os.path.join(self.dir, f'state_{self.seq}')
    with _quiet():
      ocp.v1.save(path, jax_free(tree))
    for seq, old in self._states():          # keep only the newest complete state
      if seq < self.seq:
        shutil.rmtree(old, ignore_errors=True)

  def load_latest(self) -> dict | None:
    import orbax.checkpoint as ocp
    states = self._states()
    if not states:
      return None
    try:
      with open(os.path.join(self.dir, 'run.json')) as f:
        saved = json.load(f)
    except (OSError, ValueError):
      raise ResumeError(f'checkpoint {self.dir} has no readable run.json; delete it to start '
                        'afresh') from None
    if saved != json.loads(json.dumps(self.identity, sort_keys=True)):
      diff = sorted(k for k in set(saved) | set(self.identity)
                    if saved.get(k) != json.loads(json.dumps(self.identity)).get(k))
      raise ResumeError(f'checkpoint {self.dir} belongs to a different run (differs in: '
                        f'{", ".join(diff)}); delete it or run without --resume')
    self.seq, path = states[-1]
    with _quiet():
      tree = ocp.v1.load(path)
    logging.info('resuming from %s', path)
    return tree

  def clear(self) -> None:
    """Remove this process's states after a finished run (and the root once it is empty)."""
    shutil.rmtree(self.dir, ignore_errors=True)
    try:
      os.rmdir(os.path.dirname(self.dir))
    except OSError:
      pass


def jax_free(tree):
  """Host numpy copies of every leaf (Orbax then writes plain arrays, no device layouts)."""
  if isinstance(tree, dict):
    return {k: jax_free(v) for k, v in tree.items()}
  return np.asarray(tree)
