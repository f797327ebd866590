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
import tempfile
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from ndjax import activations, distributed, iou, loader, thresholds, upsample
from ndjax import resume as resume_lib
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
  max_buffer_gb: float = 8.0                      # cap on the exact-threshold top-m buffers
  topk: int = 10                                  # top images kept per unit for the report
  profile: bool = False                           # block after each stage to time it (slower)
  devices: int = 0                                # local devices to shard batches over; 0 = all
  checkpoint_dir: str | None = None               # where streaming state is checkpointed
  checkpoint_every: int = 0                       # batches between checkpoints; 0 = never
  resume: bool = False                            # continue from the newest checkpoint
  identity: dict | None = None                    # what makes two runs the same (for resume)

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


class Basis:
  """One basis of one layer: the views that read the layer through the same matrix (they differ
  only in tau). Pass 1 fills one threshold buffer (sized for the largest tau) and one top-k list;
  pass 2 one set of counts per view."""

  def __init__(self, layer: str, views: list[views_lib.View], units: int, max_n: int, topk: int):
    self.layer, self.views = layer, views
    m = views[0].matrix
    self.matrix = None if m is None else jnp.asarray(m)
    self.stream = thresholds.StreamingThreshold(units, max_n, [v.tau for v in views])
    self.top = topk_lib.TopImages(units, topk) if topk > 0 else None
    self.thresholds: np.ndarray | None = None      # (V, units) once pass 1 is done
    self.counts: list[iou.Counts] | None = None

  def pass1(self, acts, ids, valid, clock: StageTimer) -> None:
    v = clock.stage('view', views_lib.transform, acts, self.matrix)
    clock.stage('threshold', self.stream.update, v, valid)
    if self.top is not None:
      clock.stage('topk', self.top.update, v, ids, valid)

  def finish_pass1(self, max_hw: tuple[int, int], num_labels: int, num_cats: int) -> None:
    self.stream.merge_processes()
    self.thresholds = np.stack([self.stream.result(v.tau) for v in self.views])
    if self.top is not None:
      self.top.finish_ranking(max_hw)
    self.start_counts(num_labels, num_cats)

  def start_counts(self, num_labels: int, num_cats: int) -> None:
    self._thr_dev = [jnp.asarray(t) for t in self.thresholds]
    if self.counts is None:
      self.counts = [iou.Counts.zeros(self.stream.units, num_labels, num_cats) for _ in self.views]

  def pass2(self, acts, wy, wx, labels: loader.LabelBatch, ids, valid, *, num_cats: int,
            chunk: int, mesh, clock: StageTimer) -> None:
    v = clock.stage('view', views_lib.transform, acts, self.matrix)
    for thr, counts in zip(self._thr_dev, self.counts):
      out = clock.stage('upsample_count', iou.count_batch, v, thr, wy, wx, labels.layers,
                        labels.image_labels, labels.label_cat, valid,
                        num_local=len(labels.label_cat), num_cats=num_cats, chunk=chunk, mesh=mesh)
      clock.stage('accumulate', counts.add, out, labels.global_ids)
    if self.top is not None:
      clock.stage('topk_maps', self.top.gather, np.asarray(v), ids)

  def finish_pass2(self) -> None:
    self.counts = [iou.Counts(**distributed.allsum(c.as_dict())) for c in self.counts]
    if self.top is not None:
      self.top.merge_processes()

  # ---- the state a checkpoint holds ----------------------------------------------------------
  def state(self, phase: int) -> dict:
    tree = {}
    if phase == 1:
      tree.update(buffer=self.stream.buffer, seen=np.array(self.stream.seen))
    else:
      tree['thresholds'] = self.thresholds
      tree['counts'] = {f'v{i}': c.as_dict() for i, c in enumerate(self.counts)}
    if self.top is not None:
      tree.update(top_values=self.top.values, top_images=self.top.images)
      if phase == 2:
        tree.update(top_maps=self.top.maps, top_map_hw=self.top.map_hw)
    return tree

  def restore(self, tree: dict, phase: int) -> None:
    if phase == 1:
      self.stream.buffer = jnp.asarray(tree['buffer'])
      self.stream.seen = int(tree['seen'])
    else:
      self.thresholds = np.asarray(tree['thresholds'])
      self.counts = [iou.Counts(**{f: np.asarray(a) for f, a in tree['counts'][f'v{i}'].items()})
                     for i in range(len(self.views))]
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
  mats: dict                            # (size key, layer) -> (wy, wx) on the device
  max_n: dict[str, int]


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
  need, width = {}, {}
  for l in layers:
    for group in views_lib.taus_by_basis(views[l]).values():
      d = units[l] if group[0].matrix is None else group[0].matrix.shape[1]
      m = max(thresholds.buffer_size(max_n[l], v.tau) for v in group)
      need[l] = need.get(l, 0.0) + m * d * 4 / 2**30
      width[l] = width.get(l, 0) + d
  if sum(need.values()) > cfg.max_buffer_gb:
    worst = max(need, key=need.get)
    raise DissectError(
        f'exact thresholds need {sum(need.values()):.1f} GB of top-m buffers ({worst}: '
        f'{max_n[worst]:,} values per unit x {width[worst]} units over its views, taus '
        f'{cfg.views.taus}), over the {cfg.max_buffer_gb:g} GB cap; dissect that layer on fewer '
        'images, with fewer views, or alone')
  mats = {}
  for key, per_layer in shapes.items():
    for l, (h, w, _) in per_layer.items():
      rf = model.rf_geometry(l) if cfg.upsample == 'rf' else None
      wy, wx = upsample.matrices(cfg.upsample, (h, w), key[:2], key[2:], rf)
      mats[key, l] = (jnp.asarray(wy), jnp.asarray(wx))
  return Plan(layers, batches, all_batches, shapes, views, mats, max_n)


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
                      processes=jax.process_count(), topk=cfg.topk)
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
  plan = make_plan(model, ds, cfg)
  layers, batches = plan.layers, plan.batches
  forward = activations.make_forward(model, layers, mesh)
  bad = loader.BadImages(cfg.skip_bad_images)
  timings = dict(forward_and_threshold=0.0, count=0.0)
  clock = StageTimer(cfg.profile)
  num_cats, num_labels = len(ds.categories), ds.num_labels

  bases: list[Basis] = []
  for l in layers:
    units = plan.shapes[plan.all_batches[0].size_key][l][2]
    for group in views_lib.taus_by_basis(plan.views[l]).values():
      d = units if group[0].matrix is None else group[0].matrix.shape[1]
      bases.append(Basis(l, group, d, plan.max_n[l], cfg.topk))
  max_hw = {l: tuple(max(plan.shapes[k][l][d] for k in plan.shapes) for d in (0, 1)) for l in layers}

  ckpt = _Checkpoints(cfg, ds, plan)
  saved = ckpt.saved
  phase, done = (1, 0) if saved is None else (int(saved['phase']), int(saved['done']))
  after_pass1: set[int] = set()          # bad images known when the thresholds were taken
  if saved is not None:
    for i in np.asarray(saved['bad']).tolist():
      if i >= 0:
        bad.items.setdefault(int(i), 'skipped before the resume')
    after_pass1 = {i for i in np.asarray(saved['bad_pass1']).tolist() if i >= 0}
    for j, b in enumerate(bases):
      b.restore(saved['bases'][f'b{j}'], phase)

  def ids(items) -> np.ndarray:
    return np.array(sorted(items) or [-1], np.int64)

  def state(ph: int, pos: int) -> dict:
    return dict(phase=np.array(ph), done=np.array(pos), bad=ids(bad.items),
                bad_pass1=ids(after_pass1 if ph == 2 else bad.items),
                bases={f'b{j}': b.state(ph) for j, b in enumerate(bases)})

  cache = ActivationCache(cfg.cache_gb, cfg.cache_dir)
  try:
    # ---- pass 1: forward + views + exact thresholds ----------------------------------------
    t0 = time.perf_counter()
    todo1 = batches[done:] if phase == 1 else []
    for pos, batch in enumerate(tqdm(
        clock.wait('decode_images', loader.prefetch(todo1, ds.load_image, bad)),
        total=len(todo1), desc='pass 1/2 forward + thresholds', unit='batch',
        disable=not cfg.progress), start=(done if phase == 1 else 0) + 1):
      valid = _valid_mask(batch, bad)
      acts = clock.stage('forward', forward, loader.stack_images(batch))
      for l in layers:
        host = clock.stage('cache', np.asarray, acts[l])
        _check_finite(l, host, batch, valid, ds)
        cache.put(batch.index, l, host)
      for b in bases:
        b.pass1(acts[b.layer], batch.ids, valid, clock)
      if ckpt.due(pos, len(batches)):
        ckpt.save(state(1, pos))
    _merge_bad_images(bad, ds)
    if phase == 1:
      after_pass1 = set(bad.items)
      if len(after_pass1) >= len(ds.records):
        raise DissectError(f'none of the {len(ds.records)} probe images could be decoded '
                           '(see the warnings above); nothing to dissect')
      for b in bases:
        b.finish_pass1(max_hw[b.layer], num_labels, num_cats)
      ckpt.save(state(2, 0))
    else:
      for b in bases:
        b.start_counts(num_labels, num_cats)
    timings['forward_and_threshold'] = time.perf_counter() - t0

    # ---- pass 2: views + upsample + threshold + count --------------------------------------
    t0 = time.perf_counter()
    start2 = done if phase == 2 else 0
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
      for b in bases:
        wy, wx = plan.mats[batch.size_key, b.layer]
        b.pass2(acts[b.layer], wy, wx, labels, batch.ids, valid, num_cats=num_cats,
                chunk=cfg.chunk, mesh=mesh, clock=clock)
      if ckpt.due(pos, len(batches)):
        ckpt.save(state(2, pos))
    for b in bases:
      b.finish_pass2()
    _merge_bad_images(bad, ds)
    timings['count'] = time.perf_counter() - t0
  finally:
    cache.close()

  ckpt.clear()
  timings.update(clock.totals)
  used = sum(int(np.sum(_valid_mask(b, bad))) for b in plan.all_batches)
  results = []
  for l in layers:
    for b in (b for b in bases if b.layer == l):
      for i, view in enumerate(b.views):
        results.append(ViewResult(l, view, model.describe(l), b.thresholds[i], b.counts[i], b.top))
  order = {id(v): n for l in layers for n, v in enumerate(plan.views[l])}
  results.sort(key=lambda r: (layers.index(r.layer), order[id(r.view)]))
  resumed = None if saved is None else {'phase': int(saved['phase']), 'done': int(saved['done'])}
  # images whose masks failed in pass 2: their activations already entered T_k
  late = sorted(set(bad.items) - after_pass1)
  return DissectOutput(results, dict(bad.items), used, timings, resumed, late)


def _merge_bad_images(bad: loader.BadImages, ds) -> None:
  everywhere = distributed.allgather_bad_images(bad.items, len(ds.records))
  bad.items.update({i: msg for i, msg in everywhere.items() if i not in bad.items})
