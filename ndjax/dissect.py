"""The dissection pipeline: probe data -> activations -> thresholds -> upsample + count.

Two passes over the probe set, each image forwarded once:
  1. forward all requested layers, feed every activation to the layer's streaming exact
     threshold, keep the activations (ActivationCache);
  2. decode label masks, upsample + threshold + count on the device against the labels present
     in the batch, accumulate dataset-wide integer counts.
Scoring, tally and report live in `tally.py`; this module is the only copy of the pipeline,
used by the CLI, the experiments and the benchmarks alike.
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from ndjax import activations, distributed, iou, loader, thresholds, upsample
from ndjax import topk as topk_lib
from ndjax import resume as resume_lib
from ndjax.cache import ActivationCache
from ndjax.data.broden import BrodenDataset


@dataclasses.dataclass
class DissectConfig:
  layers: Sequence[str]
  tau: float = 0.005
  upsample: str = 'rf'
  batch_size: int = 8
  cache_gb: float = 4.0
  cache_dir: str | None = tempfile.gettempdir()   # None: recompute what does not fit in memory
  skip_bad_images: bool = False
  progress: bool = True
  chunk: int = 4                                  # images per on-device counting step
  max_buffer_gb: float = 8.0                      # cap on the exact-threshold top-m buffers
  topk: int = 10                                  # top images kept per unit for the report
  profile: bool = False                           # block after each stage to time it (slower)
  devices: int = 0                                # local devices to shard batches over; 0 = all
  checkpoint_dir: str | None = None               # where streaming state is checkpointed
  checkpoint_every: int = 0                       # batches between checkpoints; 0 = never
  resume: bool = False                            # continue from the newest checkpoint
  identity: dict | None = None                    # what makes two runs the same (for resume)


class DissectError(ValueError):
  """A dissection that cannot run as configured; the message is one line for the user."""


@dataclasses.dataclass
class LayerResult:
  layer: str
  description: str
  thresholds: np.ndarray      # (K,) float32
  counts: iou.Counts
  top: topk_lib.TopImages | None = None


@dataclasses.dataclass
class DissectOutput:
  layers: dict[str, LayerResult]
  bad_images: dict[int, str]
  images_used: int
  timings: dict[str, float]
  resumed_from: dict | None = None       # {'phase', 'done'} of the checkpoint a resumed run used


class StageTimer:
  """Wall time per pipeline stage. JAX dispatch is asynchronous, so with `profile` each stage
  blocks on its result before the clock stops; without it only the pass totals are meaningful."""

  def __init__(self, profile: bool):
    self.profile = profile
    self.totals: dict[str, float] = {}

  def stage(self, name: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    if self.profile:
      jax.block_until_ready(out)
      self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0
    return out

  def wait(self, name: str, iterator):
    """Time spent waiting on the input pipeline (decode)."""
    while True:
      t0 = time.perf_counter()
      try:
        item = next(iterator)
      except StopIteration:
        return
      self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0
      yield item


def _valid_mask(batch: loader.Batch, bad: loader.BadImages) -> np.ndarray:
  return np.array([i >= 0 and int(i) not in bad.items for i in batch.ids])


def dissect(model, ds: BrodenDataset, cfg: DissectConfig) -> DissectOutput:
  layers = tuple(cfg.layers)
  mesh = distributed.local_mesh(cfg.devices)
  n_dev = 1 if mesh is None else mesh.size
  # every device gets the same number of images, and counts them in whole chunks
  per_device = -(-cfg.batch_size // n_dev)
  cfg = dataclasses.replace(cfg, batch_size=per_device * n_dev, chunk=math.gcd(cfg.chunk, per_device))
  forward = activations.make_forward(model, layers, mesh)
  all_batches = loader.plan_batches(ds, cfg.batch_size)
  # several processes: each takes every P-th batch; states are merged at the pass boundaries
  batches = all_batches[jax.process_index()::jax.process_count()]
  bad = loader.BadImages(cfg.skip_bad_images)
  timings = dict(forward_and_threshold=0.0, count=0.0)
  clock = StageTimer(cfg.profile)

  # per size group: tap shapes -> values per unit (threshold buffers) and upsampling matrices
  shapes = {key: activations.tap_shapes(model, layers, key[:2])
            for key in {b.size_key for b in all_batches}}
  max_n = {l: sum(int(np.sum(b.valid)) * shapes[b.size_key][l][0] * shapes[b.size_key][l][1]
                  for b in all_batches) for l in layers}
  units = {l: shapes[all_batches[0].size_key][l][2] for l in layers}
  need = {l: thresholds.buffer_size(max_n[l], cfg.tau) * units[l] * 4 / 2**30 for l in layers}
  if sum(need.values()) > cfg.max_buffer_gb:
    worst = max(need, key=need.get)
    raise DissectError(
        f'exact thresholds need {sum(need.values()):.1f} GB of top-m buffers ({worst}: '
        f'{max_n[worst]:,} values per unit x {units[worst]} units at tau={cfg.tau}), over the '
        f'{cfg.max_buffer_gb:g} GB cap; dissect that layer on fewer images or alone')
  streams = {l: thresholds.StreamingThreshold(units[l], max_n[l], cfg.tau) for l in layers}
  top = {l: topk_lib.TopImages(units[l], cfg.topk) for l in layers} if cfg.topk > 0 else {}
  mats = {}
  for key, per_layer in shapes.items():
    for l, (h, w, _) in per_layer.items():
      rf = model.rf_geometry(l) if cfg.upsample == 'rf' else None
      wy, wx = upsample.matrices(cfg.upsample, (h, w), key[:2], key[2:], rf)
      mats[key, l] = (jnp.asarray(wy), jnp.asarray(wx))

  store = None
  if jax.process_count() > 1 and (cfg.checkpoint_every > 0 or cfg.resume):
    # Orbax's savers coordinate all processes on one shared path, while this state is
    # host-local per process: multi-process runs are not checkpointed (single-process ones are).
    if cfg.resume:
      raise DissectError('--resume works for single-process runs only; rerun without it')
    cfg = dataclasses.replace(cfg, checkpoint_every=0)
  elif cfg.checkpoint_dir and (cfg.checkpoint_every > 0 or cfg.resume):
    identity = dict(cfg.identity or {}, layers=list(layers), tau=cfg.tau, upsample=cfg.upsample,
                    batch_size=cfg.batch_size, images=len(ds.records),
                    processes=jax.process_count(), topk=cfg.topk)
    store = resume_lib.StateStore(cfg.checkpoint_dir, jax.process_index(), identity)
  saved = store.load_latest() if store is not None and cfg.resume else None
  keys = {l: f'layer_{i}' for i, l in enumerate(layers)}      # layer names may hold dots

  def restore_bad(state):
    for i in np.asarray(state['bad']).tolist():
      if i >= 0:
        bad.items.setdefault(int(i), 'skipped before the resume')

  def bad_array():
    return np.array(sorted(bad.items) or [-1], np.int64)

  def checkpoint(phase, done, extra):
    if store is not None and cfg.checkpoint_every > 0:
      store.save(dict(extra, phase=np.array(phase), done=np.array(done), bad=bad_array()))

  def pass1_state():
    return {keys[l]: dict(buffer=streams[l].buffer, seen=np.array(streams[l].seen),
                          **({'top_values': top[l].values, 'top_images': top[l].images}
                             if top else {})) for l in layers}

  cache = ActivationCache(cfg.cache_gb, cfg.cache_dir)
  try:
    # ---- pass 1: forward + exact thresholds --------------------------------------------------
    t0 = time.perf_counter()
    start1 = 0
    phase = 1 if saved is None else int(saved['phase'])
    if saved is not None:
      restore_bad(saved)
      if phase == 1:
        start1 = int(saved['done'])
        for l in layers:
          streams[l].buffer = jnp.asarray(saved[keys[l]]['buffer'])
          streams[l].seen = int(saved[keys[l]]['seen'])
          if top:
            top[l].values = jnp.asarray(saved[keys[l]]['top_values'])
            top[l].images = jnp.asarray(saved[keys[l]]['top_images'])
    todo1 = batches[start1:] if phase == 1 else []
    for pos, batch in enumerate(tqdm(
        clock.wait('decode_images', loader.prefetch(todo1, ds.load_image, bad)),
        total=len(todo1), desc='pass 1/2 forward + thresholds', unit='batch',
        disable=not cfg.progress), start=start1 + 1):
      valid = _valid_mask(batch, bad)
      acts = clock.stage('forward', forward, loader.stack_images(batch))
      for l in layers:
        clock.stage('threshold', streams[l].update, acts[l], valid)
        if top:
          clock.stage('topk', top[l].update, acts[l], batch.ids, valid)
        clock.stage('cache', cache.put, batch.index, l, np.asarray(acts[l]))
      if cfg.checkpoint_every > 0 and pos % cfg.checkpoint_every == 0 and pos < len(batches):
        checkpoint(1, pos, pass1_state())
    bad_everywhere = distributed.allgather_bad_images(bad.items, len(ds.records))
    bad.items.update({i: msg for i, msg in bad_everywhere.items() if i not in bad.items})
    if phase == 1:
      for l in layers:
        streams[l].merge_processes()
      thr = {l: streams[l].result() for l in layers}
      for l, t in top.items():
        t.finish_ranking(tuple(max(shapes[key][l][d] for key in shapes) for d in (0, 1)))
    else:
      thr = {l: np.asarray(saved[keys[l]]['thresholds']) for l in layers}
    timings['forward_and_threshold'] = time.perf_counter() - t0

    # ---- pass 2: upsample + threshold + count ---------------------------------------------------
    t0 = time.perf_counter()
    num_cats = len(ds.categories)
    counts = {l: iou.Counts.zeros(units[l], ds.num_labels, num_cats) for l in layers}
    start2 = 0
    if phase == 2:
      start2 = int(saved['done'])
      for l in layers:
        counts[l] = iou.Counts(**{f: np.asarray(saved[keys[l]][f])
                                  for f in counts[l].as_dict()})
        if top:
          top[l].values = np.asarray(saved[keys[l]]['top_values'])
          top[l].images = np.asarray(saved[keys[l]]['top_images'])
          top[l].maps = np.array(saved[keys[l]]['top_maps'])
          top[l].map_hw = np.array(saved[keys[l]]['top_map_hw'])

    def pass2_state():
      return {keys[l]: dict(thresholds=thr[l], **counts[l].as_dict(),
                            **({'top_values': top[l].values, 'top_images': top[l].images,
                                'top_maps': top[l].maps, 'top_map_hw': top[l].map_hw}
                               if top else {})) for l in layers}

    if phase == 1:
      checkpoint(2, 0, pass2_state())
    thr_dev = {l: jnp.asarray(thr[l]) for l in layers}
    max_layers, max_image = ds.max_layers(), ds.max_image_labels()
    todo2 = batches[start2:]
    for pos, batch in enumerate(tqdm(
        clock.wait('decode_labels', loader.prefetch(todo2, ds.load_labels, bad)),
        total=len(todo2), desc='pass 2/2 upsample + count', unit='batch',
        disable=not cfg.progress), start=start2 + 1):
      valid = _valid_mask(batch, bad)
      labels = clock.stage('stack_labels', loader.stack_labels, batch, ds, max_layers, max_image)
      if cache.has_batch(batch.index, layers):
        acts = {l: cache.pop(batch.index, l) for l in layers}
      else:     # not cached (over budget, no spill dir): recompute this batch's forward pass
        images = [None if i < 0 or int(i) in bad.items else ds.load_image(int(i)) for i in batch.ids]
        acts = clock.stage('forward_again', forward,
                           loader.stack_images(dataclasses.replace(batch, data=images)))
      for l in layers:
        wy, wx = mats[batch.size_key, l]
        out = clock.stage('upsample_count', iou.count_batch, acts[l], thr_dev[l], wy, wx,
                          labels.layers, labels.image_labels, labels.label_cat, valid,
                          num_local=len(labels.label_cat), num_cats=num_cats, chunk=cfg.chunk,
                          mesh=mesh)
        clock.stage('accumulate', counts[l].add, out, labels.global_ids)
        if top:
          clock.stage('topk_maps', top[l].gather, np.asarray(acts[l]), batch.ids)
      if cfg.checkpoint_every > 0 and pos % cfg.checkpoint_every == 0 and pos < len(batches):
        checkpoint(2, pos, pass2_state())
    for l in layers:
      summed = distributed.allsum(counts[l].as_dict())
      counts[l] = iou.Counts(**summed)
      if top:
        top[l].merge_processes()
    bad_everywhere = distributed.allgather_bad_images(bad.items, len(ds.records))
    bad.items.update({i: msg for i, msg in bad_everywhere.items() if i not in bad.items})
    timings['count'] = time.perf_counter() - t0
  finally:
    cache.close()

  if store is not None:
    store.clear()
  timings.update(clock.totals)
  used = sum(int(np.sum(_valid_mask(b, bad))) for b in all_batches)
  results = {l: LayerResult(l, model.describe(l), thr[l], counts[l], top.get(l)) for l in layers}
  resumed = None if saved is None else {'phase': int(saved['phase']), 'done': int(saved['done'])}
  return DissectOutput(results, dict(bad.items), used, timings, resumed)
