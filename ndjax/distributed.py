"""Scaling out: a device mesh inside a process, and several processes via jax.distributed.

Within a process, batches are split over the local devices (mesh axis 'batch'): the forward pass
is data parallel and integer counts are psum-reduced on the devices (`iou.count_batch`).
Across processes (multi-host, or several CPU processes on one machine with gloo collectives),
each process takes every P-th batch; at the two pass boundaries the streaming states are merged
with collectives: threshold top-m buffers and top-k image lists by a top-k of the gathered
candidates, counts by an exact integer sum. Every process then holds the same result.
"""
from __future__ import annotations

import jax
import numpy as np


def initialize(coordinator_address: str, num_processes: int, process_id: int) -> None:
  """Join a multi-process run (CPU: gloo collectives; GPU/TPU: the platform's own)."""
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def local_mesh(max_devices: int = 0):
  """A 1-D mesh over this process's devices, or None for a single device."""
  devices = jax.local_devices()
  if max_devices > 0:
    devices = devices[:max_devices]
  if len(devices) < 2:
    return None
  return jax.sharding.Mesh(np.array(devices), ('batch',))


def process_count() -> int:
  return jax.process_count()


def allgather(tree):
  """Stack host-local numpy arrays from every process along a new axis 0 (identity if alone)."""
  if jax.process_count() == 1:
    return jax.tree.map(lambda x: np.asarray(x)[None], tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(jax.tree.map(np.asarray, tree))


def allsum(tree):
  """Exact sum over processes of integer (or any) host arrays."""
  return jax.tree.map(lambda x: x.sum(axis=0), allgather(tree))


def allgather_bad_images(items: dict[int, str], num_images: int) -> dict[int, str]:
  """Union of every process's skipped images (indices; messages only for the local ones)."""
  if jax.process_count() == 1:
    return dict(items)
  flags = np.zeros(num_images, np.bool_)
  flags[list(items)] = True
  everywhere = allgather(flags).any(axis=0)
  return {int(i): items.get(int(i), 'skipped by another process')
          for i in np.flatnonzero(everywhere)}
