"""The dissection pipeline: probe data -> activations -> views -> thresholds -> upsample + count.

Two passes over the probe set, each image forwarded once:
  1. forward all requested layers, read each through its views (`views.py`), feed every view's
     activations to its streaming exact threshold and top-k list, keep the raw activations
     (ActivationCache);
  2. decode label masks, read the cached activations through the views again, upsample +
     threshold + count on the device against the labels present in the batch, accumulate
     dataset-wide integer counts per view.
What the passes accumulate is a `Basis` per (layer, basis of views): its state is a plain pytree,
which is what a checkpoint saves and a resume restores, whole. Scoring, tally and report live in
`tally.py`; `api.py` is the entry point every caller uses; this module is the only copy of the
pipeline.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from ndjax import activations, distributed, iou, loader, thresholds, upsample
from ndjax import labels as labels_lib
from ndjax import labelsets
from ndjax import resume as resume_lib
from ndjax import tiles as tiles_lib
from ndjax import topk as topk_lib
from ndjax import views as views_lib
from ndjax.cache import ActivationCache


@dataclasses.dataclass
class DissectConfig:
  layers: Sequence[str]
  tau: float | None = None                        # shorthand for views=ViewSpec(taus=(tau,))
  views: views_lib.ViewSpec | None = None         # default: the plain layers at tau (0.005)
  upsample: str = 'rf'
  batch_size: int = 8
  cache_gb: float = 4.0
  cache_dir: str | None = tempfile.gettempdir()   # None: recompute what does not fit in memory
  skip_bad_images: bool = False
  progress: bool = True
  chunk: int = 4                                  # images per on-device counting step
  count_kernel: str = 'auto'                      # 'dense', 'tiles' (hot tiles only), 'auto'
  max_buffer_gb: float = 8.0                      # cap on the exact-threshold selection memory
  selection: str = 'auto'                         # 'top', 'histogram', or 'auto' (top while it fits)
  compute_dtype: str = 'float32'                  # the forward's dtype; 'bfloat16' for accelerators
  topk: int = 10                                  # top images kept per unit for the report
  profile: bool = False                           # block after each stage to time it (slower)
  devices: int = 0                                # local devices to shard batches over; 0 = all
  checkpoint_dir: str | None = None               # where streaming state is checkpointed
  checkpoint_every: int = 0                       # batches between checkpoints; 0 = never
  resume: bool = False                            # continue from the newest checkpoint
  identity: dict | None = None                    # what makes two runs the same (for resume)
  label_sets: bool = False                        # also count units per label set (formulas.py),
                                                  # for the plain (unrotated) views

  def __post_init__(self):
    if self.views is None:
      self.views = views_lib.ViewSpec(taus=(0.005 if self.tau is None else float(self.tau),))
    elif self.tau is not None and self.tau != self.views.taus[0]:
      raise ValueError(f'tau={self.tau} disagrees with views.taus={self.views.taus}: give one')
    self.tau = self.views.taus[0]


class DissectError(ValueError):
  """A dissection that cannot run as configured; the message is one line for the user."""


@dataclasses.dataclass
class ViewResult:
  layer: str
  view: views_lib.View
  description: str
  thresholds: np.ndarray      # (D,) float32, one per unit of the view
  counts: iou.Counts
  top: topk_lib.TopImages | None = None
  sets: labelsets.LabelSets | None = None    # with DissectConfig.label_sets

  @property
  def folder(self) -> str:
    return self.view.folder(self.layer)


@dataclasses.dataclass
class DissectOutput:
  results: list[ViewResult]   # by layer, then view
  bad_images: dict[int, str]
  images_used: int
  timings: dict[str, float]
  resumed_from: dict | None = None       # {'phase', 'done'} of the checkpoint a resumed run used
  bad_in_thresholds: list[int] = dataclasses.field(default_factory=list)
  compute_dtype: str = 'float32'
  selection: dict = dataclasses.field(default_factory=dict)   # layer -> 'top' | 'histogram'

  @property
  def layers(self) -> dict[str, ViewResult]:
    """The plain view of each layer (no basis change, first tau), where the run computed it."""
    return {r.layer: r for r in self.results if r.view.name == ''}


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


COUNT_KERNELS = ('auto', 'dense', 'tiles')
SELECTIONS = {'top': thresholds.StreamingThreshold, 'histogram': thresholds.HistogramThreshold}


class Basis:
  """One basis of one layer: the views that read the layer through the same matrix (they differ
  only in tau). Pass 1 fills one threshold buffer (sized for the largest tau) and one top-k list;
  pass 2 one set of counts per view."""

  def __init__(self, layer: str, views: list[views_lib.View], units: int, max_n: int, topk: int,
               selection: str = 'top'):
    self.layer, self.views = layer, views
    m = views[0].matrix
    self.matrix = None if m is None else jnp.asarray(m)
    select = SELECTIONS[selection]
    self.stream = select(units, max_n, [v.tau for v in views])
    self.top = topk_lib.TopImages(units, topk) if topk > 0 else None
    self.thresholds: np.ndarray | None = None      # (V, units) once pass 1 is done
    self.counts: list[iou.Counts] | None = None
    self.set_counts: list[labelsets.SetCounts] | None = None   # with label sets

  def pass1(self, acts, ids, valid, clock: StageTimer) -> None:
    v = clock.stage('view', views_lib.transform, acts, self.matrix)
    clock.stage('threshold', self.stream.update, v, valid)
    if self.top is not None:
      clock.stage('topk', self.top.update, v, ids, valid)

  def end_pass1(self) -> None:
    self.stream.merge_processes()
    if self.stream.needs_refine:
      self.stream.start_refine()

  def refine(self, acts, valid, clock: StageTimer) -> None:
    """The histogram selection's second look at the same activations."""
    v = clock.stage('view', views_lib.transform, acts, self.matrix)
    clock.stage('threshold_refine', self.stream.refine, v, valid)

  def finish_pass1(self, max_hw: tuple[int, int], num_labels: int, num_cats: int,
                   label_sets: bool = False) -> None:
    if self.stream.needs_refine:
      self.stream.merge_refine_processes()
    self.thresholds = np.stack([self.stream.result(v.tau) for v in self.views])
    if self.top is not None:
      self.top.finish_ranking(max_hw)
    self.start_counts(num_labels, num_cats, label_sets)

  def start_counts(self, num_labels: int, num_cats: int, label_sets: bool = False) -> None:
    self._thr_dev = [jnp.asarray(t) for t in self.thresholds]
    if self.counts is None:
      self.counts = [iou.Counts.zeros(self.stream.units, num_labels, num_cats) for _ in self.views]
    if label_sets and self.matrix is None and self.set_counts is None:   # plain views only
      self.set_counts = [labelsets.SetCounts(self.stream.units) for _ in self.views]

  def pass2(self, acts, wy, wx, tiles, side: labels_lib.LabelSide, ids, valid, *, chunk: int,
            mesh, clock: StageTimer, set_side: labels_lib.LabelSide | None = None) -> None:
    v = clock.stage('view', views_lib.transform, acts, self.matrix)
    for i, (thr, t_host, counts) in enumerate(zip(self._thr_dev, self.thresholds, self.counts)):
      units = None
      if tiles is None or mesh is not None:
        units = clock.stage('active_units', iou.active_units, v, t_host)
      count = lambda s: iou.count_batch(v, thr, wy, wx, s, valid, chunk=chunk, mesh=mesh,
                                        units=units, tiles=tiles)
      clock.stage('accumulate', counts.add, clock.stage('upsample_count', count, side), side)
      if set_side is not None and self.set_counts is not None:   # masks against label sets
        clock.stage('accumulate', self.set_counts[i].add,
                    clock.stage('upsample_count_sets', count, set_side), set_side)
    if self.top is not None:
      clock.stage('topk_maps', self.top.gather, np.asarray(v), ids)

  def finish_pass2(self) -> None:
    self.counts = [iou.Counts(**distributed.allsum(c.as_dict())) for c in self.counts]
    if self.top is not None:
      self.top.merge_processes()

  # ---- the state a checkpoint holds ----------------------------------------------------------
  def state(self, phase: int) -> dict:
    tree = {}
    if phase == 1 and self.stream.needs_refine:
      tree.update(hist=self.stream.hist, seen=np.array(self.stream.seen))
    elif phase == 1:
      tree.update(buffer=self.stream.buffer, seen=np.array(self.stream.seen))
    else:
      tree['thresholds'] = self.thresholds
      tree['counts'] = {f'v{i}': c.as_dict() for i, c in enumerate(self.counts)}
      if self.set_counts is not None:
        tree['sets'] = {f'v{i}': c.state() for i, c in enumerate(self.set_counts)}
    if self.top is not None:
      tree.update(top_values=self.top.values, top_images=self.top.images)
      if phase == 2:
        tree.update(top_maps=self.top.maps, top_map_hw=self.top.map_hw)
    return tree

  def restore(self, tree: dict, phase: int) -> None:
    if phase == 1:
      if self.stream.needs_refine:
        self.stream.hist = np.array(tree['hist'], np.int64)
      else:
        self.stream.buffer = np.asarray(tree['buffer'])
      self.stream.seen = int(tree['seen'])
    else:
      self.thresholds = np.asarray(tree['thresholds'])
      self.counts = [iou.Counts(**{f: np.asarray(a) for f, a in tree['counts'][f'v{i}'].items()})
                     for i in range(len(self.views))]
      if 'sets' in tree:
        self.set_counts = [labelsets.SetCounts(self.stream.units) for _ in self.views]
        for i, c in enumerate(self.set_counts):
          c.restore(tree['sets'][f'v{i}'])
    if self.top is not None:
      if phase == 1:
        self.top.values = jnp.asarray(tree['top_values'])
        self.top.images = jnp.asarray(tree['top_images'])
      else:
        self.top.values = np.asarray(tree['top_values'])
        self.top.images = np.asarray(tree['top_images'])
        self.top.maps = np.array(tree['top_maps'])
        self.top.map_hw = np.array(tree['top_map_hw'])


@dataclasses.dataclass
class Plan:
  """Everything fixed before the first batch: batches, tap shapes, views, upsampling matrices."""
  layers: tuple[str, ...]
  batches: list[loader.Batch]           # this process's share
  all_batches: list[loader.Batch]
  shapes: dict                          # size key -> {layer: (h, w, K)}
  views: dict[str, list[views_lib.View]]
  mats: dict                            # (size key, layer) -> (wy, wx) as device `two_taps`
  tiles: dict                           # (size key, layer) -> `tiles.Tiles`, or None: dense count
  max_n: dict[str, int]
  selection: dict[str, str]             # layer -> 'top' (one pass) or 'histogram' (two passes)


def _valid_mask(batch: loader.Batch, bad: loader.BadImages) -> np.ndarray:
  return np.array([i >= 0 and int(i) not in bad.items for i in batch.ids])


def make_plan(model, ds, cfg: DissectConfig) -> Plan:
  layers = tuple(cfg.layers)
  all_batches = loader.plan_batches(ds, cfg.batch_size)
  # several processes: each takes every P-th batch; states are merged at the pass boundaries
  batches = all_batches[jax.process_index()::jax.process_count()]
  shapes = {key: activations.tap_shapes(model, layers, key[:2])
            for key in {b.size_key for b in all_batches}}
  max_n = {l: sum(int(np.sum(b.valid)) * shapes[b.size_key][l][0] * shapes[b.size_key][l][1]
                  for b in all_batches) for l in layers}
  units = {l: shapes[all_batches[0].size_key][l][2] for l in layers}
  try:
    views = {l: views_lib.build(cfg.views, units[l]) for l in layers}
  except views_lib.ViewError as e:
    raise DissectError(str(e)) from None
  selection = choose_selection(layers, views, units, max_n, cfg)
  if cfg.count_kernel not in COUNT_KERNELS:
    raise DissectError(f'count_kernel={cfg.count_kernel!r}: use {", ".join(COUNT_KERNELS)}')
  mats, tiles = {}, {}
  for key, per_layer in shapes.items():
    for l, (h, w, _) in per_layer.items():
      rf = model.rf_geometry(l) if cfg.upsample == 'rf' else None
      mode = 'center' if rf is None else cfg.upsample     # a tap without declared geometry
      taps = [upsample.two_taps(m) for m in upsample.matrices(mode, (h, w), key[:2], key[2:], rf)]
      mats[key, l] = tuple(tuple(jnp.asarray(a) for a in t) for t in taps)
      geometry = tiles_lib.tiles(*taps)
      use = (cfg.count_kernel == 'tiles' or
             cfg.count_kernel == 'auto' and geometry.area >= tiles_lib.MIN_AREA)
      tiles[key, l] = geometry if use else None
  return Plan(layers, batches, all_batches, shapes, views, mats, tiles, max_n, selection)


def choose_selection(layers, views, units, max_n, cfg: DissectConfig) -> dict[str, str]:
  """Per layer, the exact selection that fits: one-pass top-m sets while all of them fit in
  `max_buffer_gb`; beyond that the layers that gain most switch to the two-pass histogram
  selection (fixed memory, one more look at their activations). `cfg.selection` can force one."""
  if cfg.selection not in ('auto', *SELECTIONS):
    raise DissectError(f'selection={cfg.selection!r}: use auto, top or histogram')

  def need(l, kind):
    return sum(SELECTIONS[kind].bytes_needed(
        units[l] if g[0].matrix is None else g[0].matrix.shape[1], max_n[l], [v.tau for v in g])
               for g in views_lib.taus_by_basis(views[l]).values()) / 2**30

  gb = {(l, kind): need(l, kind) for l in layers for kind in SELECTIONS}
  if cfg.selection != 'auto':
    selection = {l: cfg.selection for l in layers}
  else:
    selection = {l: 'top' for l in layers}
    total = lambda: sum(gb[l, selection[l]] for l in layers)
    for l in sorted(layers, key=lambda l: gb[l, 'top'] - gb[l, 'histogram'], reverse=True):
      if total() <= cfg.max_buffer_gb or gb[l, 'histogram'] >= gb[l, 'top']:
        break
      selection[l] = 'histogram'
  total = sum(gb[l, selection[l]] for l in layers)
  if total > cfg.max_buffer_gb:
    worst = max(layers, key=lambda l: gb[l, selection[l]])
    raise DissectError(
        f'exact thresholds need {total:.1f} GB ({worst}: {max_n[worst]:,} values per unit x '
        f'{units[worst]} units, {len(views[worst])} views, {selection[worst]} selection), over '
        f'the {cfg.max_buffer_gb:g} GB cap; dissect fewer layers or views at a time')
  return selection


def _check_finite(layer: str, acts: np.ndarray, batch: loader.Batch, valid: np.ndarray, ds) -> None:
  """Stop at the first NaN/inf of a real image: it would silently shift T_k or empty masks."""
  if np.isfinite(acts).all():
    return
  bad = ~np.isfinite(acts) & valid[:, None, None, None]
  if not bad.any():
    return                      # only batch padding (blank images) misbehaves
  slot, y, x, unit = (int(v) for v in np.argwhere(bad)[0])
  i = int(batch.ids[slot])
  raise DissectError(
      f'non-finite activation {acts[slot, y, x, unit]} in layer {layer}, unit {unit + 1}, image '
      f'{ds.records[i].image} (index {i}), at ({y}, {x}); check the weights (NaN/inf parameters '
      'or an overflowing layer)')


class _Checkpoints:
  """Orbax checkpoints of the whole state every N batches (single-process runs only)."""

  def __init__(self, cfg: DissectConfig, ds, plan: Plan):
    self.every = cfg.checkpoint_every
    self.store = None
    if jax.process_count() > 1 and (cfg.checkpoint_every > 0 or cfg.resume):
      # Orbax's savers coordinate all processes on one shared path, while this state is
      # host-local per process: multi-process runs are not checkpointed.
      if cfg.resume:
        raise DissectError('--resume works for single-process runs only; rerun without it')
      self.every = 0
    elif cfg.checkpoint_dir and (cfg.checkpoint_every > 0 or cfg.resume):
      views = {l: [v.describe() for v in vs] for l, vs in plan.views.items()}
      identity = dict(cfg.identity or {}, layers=list(plan.layers), views=views,
                      upsample=cfg.upsample, batch_size=cfg.batch_size, images=len(ds.records),
                      processes=jax.process_count(), topk=cfg.topk,
                      compute_dtype=cfg.compute_dtype, selection=dict(plan.selection),
                      label_sets=cfg.label_sets)
      self.store = resume_lib.StateStore(cfg.checkpoint_dir, jax.process_index(), identity)
    self.saved = self.store.load_latest() if self.store is not None and cfg.resume else None

  def due(self, pos: int, total: int) -> bool:
    return self.every > 0 and pos % self.every == 0 and pos < total

  def save(self, state: dict) -> None:
    if self.store is not None and self.every > 0:
      self.store.save(state)

  def clear(self) -> None:
    if self.store is not None:
      self.store.clear()


def dissect(model, ds, cfg: DissectConfig) -> DissectOutput:
  """Dissect `cfg.layers` of `model` over the probe set `ds` through `cfg.views`.

  Use `ndjax.api.dissect` from other code: it also resolves names, weights and datasets.
  """
  mesh = distributed.local_mesh(cfg.devices)
  n_dev = 1 if mesh is None else mesh.size
  # every device gets the same number of images, and counts them in whole chunks
  per_device = -(-cfg.batch_size // n_dev)
  cfg = dataclasses.replace(cfg, batch_size=per_device * n_dev, chunk=math.gcd(cfg.chunk, per_device))
  if cfg.label_sets and jax.process_count() > 1:
    raise DissectError('label sets are numbered per process: count them in a single-process run')
  plan = make_plan(model, ds, cfg)
  run = _Run(model, ds, cfg, plan, mesh)
  try:
    run.restore()
    run.pass1()
    run.refine()
    run.start_pass2()
    run.pass2()
  finally:
    run.cache.close()
  run.ckpt.clear()
  return run.output()


class _Run:
  """One dissection's moving parts: the passes share the forward function, the activation
  cache, the bad-image list, the bases and the checkpoints."""

  def __init__(self, model, ds, cfg: DissectConfig, plan: Plan, mesh):
    self.model, self.ds, self.cfg, self.plan, self.mesh = model, ds, cfg, plan, mesh
    self.layers = plan.layers
    self.forward = activations.make_forward(model, self.layers, mesh, cfg.compute_dtype)
    self.bad = loader.BadImages(cfg.skip_bad_images)
    self.timings = dict(forward_and_threshold=0.0, count=0.0)
    self.clock = StageTimer(cfg.profile)
    self.num_cats, self.num_labels = len(ds.categories), ds.num_labels
    self.bases: list[Basis] = []
    for l in self.layers:
      units = plan.shapes[plan.all_batches[0].size_key][l][2]
      for group in views_lib.taus_by_basis(plan.views[l]).values():
        d = units if group[0].matrix is None else group[0].matrix.shape[1]
        self.bases.append(Basis(l, group, d, plan.max_n[l], cfg.topk, plan.selection[l]))
    self.max_hw = {l: tuple(max(plan.shapes[k][l][d] for k in plan.shapes) for d in (0, 1))
                   for l in self.layers}
    self.ckpt = _Checkpoints(cfg, ds, plan)
    self.phase, self.done = 1, 0
    self.after_pass1: set[int] = set()       # bad images known when the thresholds were taken
    self.registry = labelsets.Registry() if cfg.label_sets else None
    self.cache = ActivationCache(cfg.cache_gb, cache_policy(model, plan, cfg))

  def restore(self) -> None:
    saved = self.ckpt.saved
    if saved is None:
      return
    self.phase, self.done = int(saved['phase']), int(saved['done'])
    if self.registry is not None and 'label_sets' in saved:
      self.registry.restore(saved['label_sets'])
    for i in np.asarray(saved['bad']).tolist():
      if i >= 0:
        self.bad.items.setdefault(int(i), 'skipped before the resume')
    self.after_pass1 = {i for i in np.asarray(saved['bad_pass1']).tolist() if i >= 0}
    for j, b in enumerate(self.bases):
      b.restore(saved['bases'][f'b{j}'], self.phase)

  def state(self, ph: int, pos: int) -> dict:
    def ids(items) -> np.ndarray:
      return np.array(sorted(items) or [-1], np.int64)
    tree = dict(phase=np.array(ph), done=np.array(pos), bad=ids(self.bad.items),
                bad_pass1=ids(self.after_pass1 if ph == 2 else self.bad.items),
                bases={f'b{j}': b.state(ph) for j, b in enumerate(self.bases)})
    if self.registry is not None and ph == 2:
      tree['label_sets'] = self.registry.state()
    return tree

  def batches(self, todo, decode, wait: str, desc: str, start: int, finish=None):
    """(position, batch) over `todo` with decoding (and `finish`, see `loader.prefetch`)
    prefetched (time waiting on it: `wait`), a progress bar, and positions counted from
    `start` + 1."""
    stream = self.clock.wait(wait, loader.prefetch(todo, decode, self.bad, finish=finish))
    bar = tqdm(stream, total=len(todo), desc=desc, unit='batch', disable=not self.cfg.progress)
    return enumerate(bar, start=start + 1)

  def activations(self, batch: loader.Batch, *, keep: bool, forward=None, layers=None) -> dict:
    """A batch's activations from the cache (popped unless `keep`) or recomputed."""
    layers = layers or self.layers
    if self.cache.has_batch(batch.index, layers):
      take = self.cache.get if keep else self.cache.pop
      return {l: take(batch.index, l) for l in layers}
    # not cached (over budget, no spill dir): recompute this batch's forward pass
    images = [None if i < 0 or int(i) in self.bad.items else self.ds.load_image(int(i))
              for i in batch.ids]
    return self.clock.stage('forward_again', forward or self.forward,
                            loader.stack_images(dataclasses.replace(batch, data=images)))

  # ---- pass 1: forward + views + exact thresholds ----------------------------------------------
  def pass1(self) -> None:
    t0 = time.perf_counter()
    todo = self.plan.batches[self.done:] if self.phase == 1 else []
    for pos, batch in self.batches(todo, self.ds.load_image, 'decode_images',
                                   'pass 1/2 forward + thresholds',
                                   self.done if self.phase == 1 else 0):
      valid = _valid_mask(batch, self.bad)
      acts = self.clock.stage('forward', self.forward, loader.stack_images(batch))
      for l in self.layers:
        host = self.clock.stage('cache', np.asarray, acts[l])
        _check_finite(l, host, batch, valid, self.ds)
        self.cache.put(batch.index, l, host)
      for b in self.bases:
        b.pass1(acts[b.layer], batch.ids, valid, self.clock)
      if self.ckpt.due(pos, len(self.plan.batches)):
        self.ckpt.save(self.state(1, pos))
    _merge_bad_images(self.bad, self.ds)
    if self.phase == 1:
      self.after_pass1 = set(self.bad.items)
      if len(self.after_pass1) >= len(self.ds.records):
        raise DissectError(f'none of the {len(self.ds.records)} probe images could be decoded '
                           '(see the warnings above); nothing to dissect')
      for b in self.bases:
        b.end_pass1()
    self.timings['forward_and_threshold'] = time.perf_counter() - t0

  def refine(self) -> None:
    """The histogram selection's second pass, over the layers that need it (cached activations,
    or a forward pass that stops at the deepest of them)."""
    bases = [b for b in self.bases if b.stream.needs_refine]
    if self.phase != 1 or not bases:
      return
    t0 = time.perf_counter()
    layers = tuple(l for l in self.layers if any(b.layer == l for b in bases))
    forward = activations.make_forward(self.model, layers, self.mesh, self.cfg.compute_dtype)
    for _, batch in self.batches(self.plan.batches, self.ds.load_image, 'decode_images',
                                 'pass 1b/2 exact thresholds (histogram)', 0):
      valid = _valid_mask(batch, self.bad)
      acts = self.activations(batch, keep=True, forward=forward, layers=layers)
      for b in bases:
        b.refine(acts[b.layer], valid, self.clock)
    self.timings['threshold_refine'] = time.perf_counter() - t0

  def start_pass2(self) -> None:
    if self.phase == 1:
      for b in self.bases:
        b.finish_pass1(self.max_hw[b.layer], self.num_labels, self.num_cats, self.cfg.label_sets)
      self.ckpt.save(self.state(2, 0))
    else:
      for b in self.bases:
        b.start_counts(self.num_labels, self.num_cats, self.cfg.label_sets)

  # ---- pass 2: views + upsample + threshold + count ----------------------------------------
  def pass2(self) -> None:
    t0 = time.perf_counter()
    start = self.done if self.phase == 2 else 0
    primary, cats = self.ds.primary, self.num_cats
    decode = lambda i: labels_lib.image_labels(*self.ds.load_labels(i), primary, cats)
    stack = lambda b: labels_lib.stack(b.data, b.size_key[2] * b.size_key[3], cats)
    if self.registry is not None:       # the label side and the label-set side of each batch
      by_label = stack
      stack = lambda b: (by_label(b), labelsets.stack(b.data, self.registry,
                                                      b.size_key[2] * b.size_key[3], cats))
    for pos, batch in self.batches(self.plan.batches[start:], decode, 'decode_labels',
                                   'pass 2/2 upsample + count', start, finish=stack):
      valid, side, set_side = _valid_mask(batch, self.bad), batch.data, None
      if self.registry is not None:
        side, set_side = side
      acts = self.activations(batch, keep=False)
      for b in self.bases:
        key = batch.size_key, b.layer
        b.pass2(acts[b.layer], *self.plan.mats[key], self.plan.tiles[key], side, batch.ids, valid,
                chunk=self.cfg.chunk, mesh=self.mesh, clock=self.clock, set_side=set_side)
      if self.ckpt.due(pos, len(self.plan.batches)):
        self.ckpt.save(self.state(2, pos))
    for b in self.bases:
      b.finish_pass2()
    _merge_bad_images(self.bad, self.ds)
    self.timings['count'] = time.perf_counter() - t0

  def output(self) -> DissectOutput:
    self.timings.update(self.clock.totals)
    used = sum(int(np.sum(_valid_mask(b, self.bad))) for b in self.plan.all_batches)
    results = []
    for l in self.layers:
      for b in (b for b in self.bases if b.layer == l):
        for i, view in enumerate(b.views):
          sets = (None if b.set_counts is None else
                  labelsets.LabelSets.build(self.registry, b.set_counts[i]))
          results.append(ViewResult(l, view, self.model.describe(l), b.thresholds[i], b.counts[i],
                                    b.top, sets))
    order = {id(v): n for l in self.layers for n, v in enumerate(self.plan.views[l])}
    results.sort(key=lambda r: (self.layers.index(r.layer), order[id(r.view)]))
    saved = self.ckpt.saved
    resumed = None if saved is None else {'phase': int(saved['phase']), 'done': int(saved['done'])}
    # images whose masks failed in pass 2: their activations already entered T_k
    late = sorted(set(self.bad.items) - self.after_pass1)
    return DissectOutput(results, dict(self.bad.items), used, self.timings, resumed, late,
                         self.cfg.compute_dtype, dict(self.plan.selection))


def cache_policy(model, plan: Plan, cfg: DissectConfig) -> str | None:
  """Where activations over the memory budget go: `cfg.cache_dir`, or nowhere (recomputed in
  pass 2) when that disk lacks the room; says so in one line rather than fail mid-run."""
  if cfg.cache_dir is None:
    return None
  total = sum(int(np.prod(plan.shapes[b.size_key][l])) * len(b.ids) * 4
              for b in plan.batches for l in plan.layers)
  spill = total - cfg.cache_gb * 2**30
  if spill <= 0:
    return cfg.cache_dir
  probe = cfg.cache_dir
  while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
    probe = os.path.dirname(probe)
  free = shutil.disk_usage(probe).free
  if spill > 0.9 * free:
    print(f'activation cache: {spill / 2**30:.1f} GB over --cache_gb would spill to {cfg.cache_dir}'
          f', which has {free / 2**30:.1f} GB free: recomputing the forward pass in pass 2 instead',
          file=sys.stderr)
    return None
  return cfg.cache_dir


def _merge_bad_images(bad: loader.BadImages, ds) -> None:
  everywhere = distributed.allgather_bad_images(bad.items, len(ds.records))
  bad.items.update({i: msg for i, msg in everywhere.items() if i not in bad.items})
