"""Batches of decoded probe data, grouped by size, decoded in parallel threads and prefetched.

Images are used at their native size, so a batch holds images of one (ih, iw, sh, sw) group; the
last batch of a group is padded with blank images flagged invalid, so every batch of a group has
the same shape and compiles once. Order is deterministic: groups by first appearance in index.csv,
images in index order within a group.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import threading
from typing import Callable, Iterator

import numpy as np

from ndjax.data.broden import BrodenDataset, BrodenFormatError


@dataclasses.dataclass
class Batch:
  index: int                      # batch number within the whole run
  size_key: tuple[int, int, int, int]
  ids: np.ndarray                 # dataset indices, -1 for padding
  valid: np.ndarray               # bool (B,)
  data: object = None             # images (B, ih, iw, 3) uint8, or labels (see label_batch)


def plan_batches(ds: BrodenDataset, batch_size: int) -> list[Batch]:
  groups: dict[tuple, list[int]] = {}
  for i, rec in enumerate(ds.records):
    groups.setdefault(rec.size_key, []).append(i)
  batches = []
  for key, ids in groups.items():
    for start in range(0, len(ids), batch_size):
      chunk = ids[start:start + batch_size]
      padded = np.full(batch_size, -1, np.int64)
      padded[: len(chunk)] = chunk
      batches.append(Batch(len(batches), key, padded, padded >= 0))
  return batches


class BadImages:
  """Collects undecodable files under --skip_bad_images; otherwise the first one stops the run."""

  def __init__(self, skip: bool):
    self.skip = skip
    self.items: dict[int, str] = {}
    self._lock = threading.Lock()

  def handle(self, i: int, err: BrodenFormatError) -> None:
    if not self.skip:
      raise err
    with self._lock:
      if i not in self.items:
        logging.warning('skipping bad image %d: %s', i, err)
        self.items[i] = str(err)


def _decode_batch(batch: Batch, decode: Callable[[int], object], bad: BadImages,
                  finish: Callable[[Batch], object] | None = None) -> Batch:
  out = []
  for slot, i in enumerate(batch.ids):
    if i < 0 or i in bad.items:
      out.append(None)
      continue
    try:
      out.append(decode(int(i)))
    except BrodenFormatError as e:
      bad.handle(int(i), e)
      out.append(None)
  valid = np.array([o is not None for o in out])
  batch = dataclasses.replace(batch, valid=valid, data=out)
  return batch if finish is None else dataclasses.replace(batch, data=finish(batch))


def prefetch(batches: list[Batch], decode: Callable[[int], object], bad: BadImages,
             workers: int = 4, depth: int = 3,
             finish: Callable[[Batch], object] | None = None) -> Iterator[Batch]:
  """Decode batches in a thread pool, `depth` batches ahead of the consumer, in order; `finish`
  (decoded batch -> its data, e.g. stacked) runs in the pool too. A slot whose image is padding
  or could not be decoded holds None (and valid False)."""
  results: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def produce():
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      pending = []
      try:
        for b in batches:
          if stop.is_set():
            return
          pending.append(pool.submit(_decode_batch, b, decode, bad, finish))
          while len(pending) >= depth:
            results.put(pending.pop(0).result())
        for f in pending:
          results.put(f.result())
      except BaseException as e:     # hand the error to the consumer thread
        results.put(e)
        return
    results.put(None)

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while True:
      item = results.get()
      if item is None:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


def stack_images(batch: Batch) -> np.ndarray:
  ih, iw = batch.size_key[:2]
  images = np.zeros((len(batch.ids), ih, iw, 3), np.uint8)
  for slot, im in enumerate(batch.data):
    if im is not None:
      images[slot] = im
  return images
