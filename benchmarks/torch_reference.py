r"""Network Dissection in plain, fast PyTorch: the baseline ndjax is benchmarked against.

  python benchmarks/torch_reference.py --state_dict=vgg16_features.pt \
      --dataset=~/.cache/ndjax/probe/synthetic_v1_n1000_s0 --layers=conv5_3 --out=DIR

The SAME algorithm as ndjax (the semantics in README.md, "What is computed"), written the way a careful
PyTorch user would write it, so that the comparison is against a strong baseline, not a straw man:
  * torchvision's VGG16 `features` in `inference_mode`, channels_last, batched, `set_num_threads`;
  * pass 1: forward, exact per-unit threshold T_k = numpy.quantile(values, 1 - tau) from a running
    top-m buffer merged with `torch.topk` (m = floor(tau * (n - 1)) + 2 values decide it), running
    top-k images per unit, activations kept between the passes (memory up to --cache_gb, spilled
    losslessly to .npy files beyond it);
  * pass 2: bilinear upsampling with `F.interpolate(align_corners=False)` (for VGG16 this is the
    paper's receptive-field-centred bilinear: every unit centre is at (i + 0.5) * stride), strict
    `> T_k` masks, counts as one-hot matmuls against the labels present in the batch, in chunks
    of images to bound the upsampled tensor;
  * IoU with the paper's denominator and the `lite` variant, tally.csv in NetDissect's layout.
Only numpy, PIL and torch are imported (plus ndjax's Broden reader, which is numpy + PIL): no JAX in
this process, so its time and memory are the PyTorch side's alone. Weights come from a
torchvision-format state dict written by `benchmarks/run.py` from ndjax's ImageNet VGG16 (the
identical numbers, HWIO -> OIHW).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import io
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ndjax.data import broden  # noqa: E402  (numpy + PIL only)

# Caffe VGG16 input: BGR, 0-255, minus the BGR mean (what ndjax's model applies itself).
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
# The paper's layer names for torchvision's vgg16().features: conv names are the post-ReLU output.
VGG16_LAYERS = {'conv1_1': 1, 'conv1_2': 3, 'conv2_1': 6, 'conv2_2': 8, 'conv3_1': 11,
                'conv3_2': 13, 'conv3_3': 15, 'conv4_1': 18, 'conv4_2': 20, 'conv4_3': 22,
                'conv5_1': 25, 'conv5_2': 27, 'conv5_3': 29}


def feature_index(layer: str) -> int:
  if layer in VGG16_LAYERS:
    return VGG16_LAYERS[layer]
  if layer.startswith('features.') and layer[9:].isdigit():
    return int(layer[9:])
  raise KeyError(f'unknown VGG16 layer {layer!r}; valid: {", ".join(VGG16_LAYERS)} or features.N')


# --- model ------------------------------------------------------------------------------------------
class TappedFeatures(torch.nn.Module):
  """vgg16().features up to the deepest tap; returns {layer: (B, K, h, w)} channels_last."""

  def __init__(self, state_dict_path: str, layers):
    super().__init__()
    self.taps = {layer: feature_index(layer) for layer in layers}
    depth = max(self.taps.values()) + 1
    features = torchvision.models.vgg16().features[:depth]
    state = torch.load(state_dict_path, map_location='cpu', weights_only=True)
    features.load_state_dict({k: v for k, v in state.items() if int(k.split('.')[0]) < depth})
    tapped = set(self.taps.values())
    for i, module in enumerate(features):
      # an in-place ReLU would overwrite a tapped pre-ReLU conv output
      if isinstance(module, torch.nn.ReLU) and i - 1 in tapped:
        module.inplace = False
    self.features = features.eval().to(memory_format=torch.channels_last)
    self.register_buffer('mean', torch.tensor(CAFFE_BGR_MEAN).view(1, 3, 1, 1))

  def forward(self, images_uint8_nhwc: torch.Tensor) -> dict[str, torch.Tensor]:
    # NHWC uint8 -> NCHW view whose memory is already channels_last; RGB -> BGR; minus the mean
    x = images_uint8_nhwc.permute(0, 3, 1, 2).flip(1).float() - self.mean
    x = x.contiguous(memory_format=torch.channels_last)
    wanted = {i: layer for layer, i in self.taps.items()}
    out = {}
    for i, module in enumerate(self.features):
      x = module(x)
      if i in wanted:
        out[wanted[i]] = x
    return out


# --- data -------------------------------------------------------------------------------------------
def plan_batches(ds: broden.BrodenDataset, batch_size: int) -> list[np.ndarray]:
  """Dataset indices per batch, grouped by (image, mask) size; a group's last batch is short."""
  groups: dict[tuple, list[int]] = {}
  for i, rec in enumerate(ds.records):
    groups.setdefault(rec.size_key, []).append(i)
  return [np.array(ids[s:s + batch_size]) for ids in groups.values()
          for s in range(0, len(ids), batch_size)]


def prefetch(batches, load, workers: int = 4, depth: int = 3):
  """Decode batches in a thread pool (PIL releases the GIL), `depth` batches ahead, in order."""
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = []
    for ids in batches:
      pending.append((ids, [pool.submit(load, int(i)) for i in ids]))
      if len(pending) > depth:
        ids0, futures = pending.pop(0)
        yield ids0, [f.result() for f in futures]
    for ids0, futures in pending:
      yield ids0, [f.result() for f in futures]


class ActivationCache:
  """Activations between the passes: in memory up to a budget, then .npy files (bit-exact)."""

  def __init__(self, budget_gb: float, spill_dir: str):
    self.budget, self.used = int(budget_gb * 2**30), 0
    self.memory, self.disk = {}, {}
    self.tmp = tempfile.mkdtemp(prefix='torchref_acts_', dir=spill_dir)

  def put(self, key, acts: torch.Tensor) -> None:
    nhwc = acts.permute(0, 2, 3, 1).numpy()         # channels_last memory: a free view
    if self.used + nhwc.nbytes <= self.budget:
      self.memory[key] = acts
      self.used += nhwc.nbytes
    else:
      path = os.path.join(self.tmp, f'{len(self.disk)}.npy')
      np.save(path, nhwc)
      self.disk[key] = path

  def pop(self, key) -> torch.Tensor:
    if key in self.memory:
      acts = self.memory.pop(key)
      self.used -= acts.numel() * 4
      return acts
    path = self.disk.pop(key)
    acts = torch.from_numpy(np.load(path)).permute(0, 3, 1, 2)
    os.unlink(path)
    return acts

  def close(self) -> None:
    shutil.rmtree(self.tmp, ignore_errors=True)


# --- exact thresholds ----------------------------------------------------------------------------
def buffer_size(n: int, tau: float) -> int:
  """Values per unit that decide numpy.quantile(values, 1 - tau) of n values."""
  below = math.floor((n - 1) * np.float64(1.0 - tau))
  return max(1, min(n, n - below))


class TopMThreshold:
  """Running top-m values per unit; the (1 - tau) quantile exactly as numpy's default computes it."""

  def __init__(self, units: int, n: int, tau: float):
    self.n, self.tau = n, tau
    self.m = buffer_size(n, tau)
    self.buffer = torch.full((units, self.m), -math.inf)

  def update(self, acts: torch.Tensor) -> None:
    values = acts.permute(1, 0, 2, 3).reshape(acts.shape[1], -1)       # (K, B*h*w)
    if values.shape[1] > self.m:
      values = torch.topk(values, self.m, dim=1, sorted=False).values
    merged = torch.cat([self.buffer, values], dim=1)
    self.buffer = torch.topk(merged, self.m, dim=1, sorted=False).values

  def result(self) -> np.ndarray:
    top = torch.sort(self.buffer, dim=1, descending=True).values.numpy()
    # numpy 'linear' method: virtual index v = (n-1)q; lerp of positions floor(v), floor(v)+1,
    # in float32 arithmetic with numpy's _lerp formula (switches form at t >= 0.5)
    virtual = (self.n - 1) * np.float64(1.0 - self.tau)
    lo = math.floor(virtual)
    hi = min(lo + 1, self.n - 1)
    if virtual >= self.n - 1:
      lo = hi = self.n - 1
    t = float(virtual - lo)
    a, b = top[:, self.n - 1 - lo], top[:, self.n - 1 - hi]
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


class TopImages:
  """Each unit's top-k images by maximum activation (pass 1), and their maps (pass 2)."""

  def __init__(self, units: int, k: int):
    self.k = k
    self.values = torch.full((units, k), -math.inf)
    self.images = torch.full((units, k), -1, dtype=torch.long)
    self.maps = None

  def update(self, acts: torch.Tensor, ids: np.ndarray) -> None:
    peak = acts.amax(dim=(2, 3)).T                                       # (K, B)
    ids_t = torch.from_numpy(ids).long().expand(peak.shape[0], -1)
    values, pos = torch.topk(torch.cat([self.values, peak], 1), self.k, dim=1)
    self.values, self.images = values, torch.gather(torch.cat([self.images, ids_t], 1), 1, pos)

  def finish_ranking(self, hw) -> None:
    self.maps = torch.full((*self.images.shape, *hw), math.nan)

  def gather(self, acts: torch.Tensor, ids: np.ndarray) -> None:
    slot_of = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long)
    slot_of[torch.from_numpy(ids).long()] = torch.arange(len(ids))
    hit = (self.images >= 0) & (self.images <= int(ids.max()))
    slots = torch.where(hit, slot_of[self.images.clamp(0, int(ids.max()))], -1)
    units, ranks = torch.nonzero(slots >= 0, as_tuple=True)
    if len(units):
      self.maps[units, ranks] = acts[slots[units, ranks], units]


# --- counting ---------------------------------------------------------------------------------------
def count_batch(acts, threshold, layers, image_labels, label_cat, num_cats: int, mask_hw,
                chunk: int, upsample_impl: str = 'interpolate', wy=None, wx=None) -> dict:
  """Counts for the labels present in one batch (local ids 0..P-1, -1 = none).

  acts (B, K, h, w) channels_last; layers (B, L, sh, sw) long; image_labels (B, I) long;
  label_cat (P,) long primary category per local label. Returns float32 tensors of exact
  integers (a batch's counts stay far below 2^24): inter (K, P), label_pixels (P,),
  act_paper (K, C), act_lite (K, C), act_pixels (K,).
  """
  b, k = acts.shape[:2]
  p = len(label_cat)
  pixels = mask_hw[0] * mask_hw[1]
  cat_onehot = F.one_hot(label_cat, num_cats).float()                              # (P, C)
  totals = dict(inter=torch.zeros(k, p), label_pixels=torch.zeros(p),
                act_paper=torch.zeros(k, num_cats), act_lite=torch.zeros(k, num_cats),
                act_pixels=torch.zeros(k))
  for s in range(0, b, chunk):
    # the definition's mask: upsample(a - T_k) > 0 (a plateau equal to T_k stays off exactly)
    a = acts[s:s + chunk] - threshold.view(1, k, 1, 1)
    c = len(a)
    if upsample_impl == 'interpolate':
      up = F.interpolate(a, size=mask_hw, mode='bilinear', align_corners=False)
    else:      # ndjax's separable matrices as its two taps per row (y first, then x), each sum
      # w_lo * x_lo + w_hi * x_hi rounded the way ndjax rounds it (a BLAS matmul would fuse
      # multiply-adds and move a pixel sitting on T_k): bit-level comparison runs
      up = _two_taps(a, wy, axis=2)
      up = _two_taps(up, wx, axis=3)
    # strict > 0 written straight into a float tensor (4x faster than bool then .float());
    # (c, sh, sw, K) memory order for channels_last: a free (c, X, K) view, pixel-major
    mask = torch.gt(up, 0.0, out=torch.empty_like(up))
    mask = mask.permute(0, 2, 3, 1).reshape(c, pixels, k)
    # label SETS (the definition: a pixel carrying c in several mask layers, or c also as an
    # image-level label, counts once), one column per present label plus a dropped "none" column
    lay = (layers[s:s + chunk].reshape(c, -1, pixels) + 1).permute(0, 2, 1)        # (c, X, L)
    pix_onehot = torch.zeros(c, pixels, p + 1).scatter_add_(2, lay, torch.ones(lay.shape))[..., 1:]
    img = image_labels[s:s + chunk] + 1
    img_onehot = torch.zeros(c, p + 1).scatter_add_(1, img, torch.ones(img.shape))[:, 1:]
    labelled = ((pix_onehot > 0) | (img_onehot[:, None, :] > 0)).float()            # (c, X, P)
    act_per_image = mask.sum(1)                                                     # (c, K)

    # per-image intersections: one batched GEMM over the pixels (the transposed mask is a view)
    inter_image = torch.bmm(mask.transpose(1, 2), labelled)                         # (c, K, P)
    totals['inter'] += inter_image.sum(0)
    label_pixels_image = pix_onehot.sum(1)                                          # (c, P)
    totals['label_pixels'] += labelled.sum((0, 1))
    # paper: an image counts for category C if it carries a label of C; lite: if the unit's mask
    # touches a pixel labelled in C, i.e. its intersection with some label of C is non-empty
    img_cat = (img_onehot @ cat_onehot) > 0                                         # (c, C)
    relevant = (((label_pixels_image @ cat_onehot) > 0) | img_cat).float()
    touches = ((inter_image @ cat_onehot) > 0) | img_cat[:, None]                   # (c, K, C)
    totals['act_paper'] += act_per_image.T @ relevant
    totals['act_lite'] += torch.einsum('ck,ckC->kC', act_per_image, touches.float())
    totals['act_pixels'] += act_per_image.sum(0)
  return totals


def _two_taps(x: torch.Tensor, w: torch.Tensor, axis: int) -> torch.Tensor:
  """Apply a bilinear matrix w (S, H) along `axis` of x as lo/hi gathers and one weighted sum."""
  nz = w != 0
  lo = nz.float().argmax(dim=1)
  hi = w.shape[1] - 1 - nz.flip(1).float().argmax(dim=1)
  rows = torch.arange(w.shape[0])
  w_lo, w_hi = w[rows, lo], torch.where(hi > lo, w[rows, hi], torch.zeros_like(w[rows, lo]))
  shape = [1] * x.dim()
  shape[axis] = -1
  return (x.index_select(axis, lo) * w_lo.view(shape)
          + x.index_select(axis, hi) * w_hi.view(shape))


class LabelRenumbering:
  """Global label numbers of a batch -> local ids of the labels present (0 and uncategorised out)."""

  def __init__(self, primary: np.ndarray):
    self.primary = torch.from_numpy(primary).long()
    self.lookup = torch.full((len(primary),), -1, dtype=torch.long)

  def __call__(self, layers: torch.Tensor, image_labels: torch.Tensor):
    # presence by counting (linear time) rather than sorting with torch.unique
    seen = torch.bincount(layers.reshape(-1), minlength=len(self.primary))
    seen += torch.bincount(image_labels.reshape(-1), minlength=len(self.primary))
    seen[0] = 0
    present = torch.nonzero((seen > 0) & (self.primary >= 0)).flatten()
    self.lookup.fill_(-1)
    self.lookup[present] = torch.arange(len(present))
    return self.lookup[layers], self.lookup[image_labels], present, self.primary[present]


def stack_labels(items, max_layers: int, max_image: int, mask_hw):
  b = len(items)
  layers = np.zeros((b, max(1, max_layers), *mask_hw), np.int64)
  image = np.zeros((b, max(1, max_image)), np.int64)
  for slot, (lay, img) in enumerate(items):
    layers[slot, :len(lay)] = lay
    image[slot, :len(img)] = img
  return torch.from_numpy(layers), torch.from_numpy(image)


# --- the two passes ---------------------------------------------------------------------------------
class Stages:
  """Wall seconds per stage (torch on CPU is synchronous, so a clock around a call is exact)."""

  def __init__(self):
    self.totals: dict[str, float] = {}

  def add(self, name: str, t0: float) -> float:
    t1 = time.perf_counter()
    self.totals[name] = self.totals.get(name, 0.0) + t1 - t0
    return t1


def dissect(net: TappedFeatures, ds: broden.BrodenDataset, layers, *, tau: float, batch_size: int,
            cache_gb: float, cache_dir: str, chunk: int = 4, topk: int = 10,
            upsample_impl: str = 'interpolate', acts_source=None, rf_matrices=None):
  """Both passes. `acts_source(ids) -> {layer: (B, K, h, w)}` replaces the forward pass (used to
  run this algorithm on ndjax's own activations for the bit-level parity check)."""
  stages = Stages()
  batches = plan_batches(ds, batch_size)
  with torch.inference_mode():
    sizes = {rec.size_key for rec in ds.records}
    if len(sizes) != 1:
      raise ValueError('this reference handles one image/mask size per probe set')
    ih, iw, sh, sw = sizes.pop()
    probe = net(torch.zeros((1, ih, iw, 3), dtype=torch.uint8)) if acts_source is None else None
    shapes = ({l: tuple(v.shape[1:]) for l, v in probe.items()} if probe is not None
              else acts_source.shapes)
    n_images = len(ds.records)
    thresholds = {l: TopMThreshold(shapes[l][0], n_images * shapes[l][1] * shapes[l][2], tau)
                  for l in layers}
    top = {l: TopImages(shapes[l][0], topk) for l in layers} if topk else {}
    cache = ActivationCache(cache_gb, cache_dir)
    try:
      # pass 1: forward + thresholds + top images, activations cached
      t_pass = t = time.perf_counter()
      for index, (ids, images) in enumerate(prefetch(batches, ds.load_image)):
        t = stages.add('decode_images', t)
        if acts_source is None:
          acts = net(torch.from_numpy(np.stack(images)))
        else:
          acts = acts_source(ids)
        t = stages.add('forward', t)
        for l in layers:
          thresholds[l].update(acts[l])
          t = stages.add('threshold', t)
          if top:
            top[l].update(acts[l], ids)
            t = stages.add('topk', t)
          cache.put((index, l), acts[l])
          t = stages.add('cache', t)
      thr = {l: thresholds[l].result() for l in layers}
      for l in top:
        top[l].finish_ranking(shapes[l][1:])
      t = stages.add('threshold', t)
      pass1 = time.perf_counter() - t_pass

      # pass 2: upsample + threshold + count
      t_pass = t = time.perf_counter()
      num_labels, num_cats = len(ds.label_names), len(ds.categories)
      counts = {l: dict(inter=np.zeros((shapes[l][0], num_labels), np.int64),
                        label_pixels=np.zeros(num_labels, np.int64),
                        act_paper=np.zeros((shapes[l][0], num_cats), np.int64),
                        act_lite=np.zeros((shapes[l][0], num_cats), np.int64),
                        act_pixels=np.zeros(shapes[l][0], np.int64)) for l in layers}
      renumber = LabelRenumbering(ds.primary)
      thr_t = {l: torch.from_numpy(thr[l]) for l in layers}
      max_layers, max_image = ds.max_layers(), ds.max_image_labels()
      for index, (ids, items) in enumerate(prefetch(batches, ds.load_labels)):
        t = stages.add('decode_labels', t)
        lay, img = stack_labels(items, max_layers, max_image, (sh, sw))
        lay, img, present, label_cat = renumber(lay, img)
        t = stages.add('stack_labels', t)
        for l in layers:
          acts = cache.pop((index, l))
          t = stages.add('cache', t)
          wy, wx = rf_matrices[l] if rf_matrices else (None, None)
          out = count_batch(acts, thr_t[l], lay, img, label_cat, num_cats, (sh, sw), chunk,
                            upsample_impl, wy, wx)
          t = stages.add('upsample_count', t)
          g = present.numpy()
          c = counts[l]
          c['inter'][:, g] += out['inter'].round().long().numpy()
          c['label_pixels'][g] += out['label_pixels'].round().long().numpy()
          for key in ('act_paper', 'act_lite', 'act_pixels'):
            c[key] += out[key].round().long().numpy()
          t = stages.add('accumulate', t)
          if top:
            top[l].gather(acts, ids)
            t = stages.add('topk_maps', t)
      pass2 = time.perf_counter() - t_pass
    finally:
      cache.close()
  timings = dict(stages.totals, forward_and_threshold=pass1, count=pass2)
  return thr, counts, top, timings


# --- scoring and outputs ------------------------------------------------------------------------------
def label_units(counts: dict, primary: np.ndarray, num_cats: int, denominator: str):
  """IoU of every unit with every label in its primary category; each unit's best per category."""
  act = counts['act_paper' if denominator == 'paper' else 'act_lite']
  has_cat = primary >= 0
  act_per_label = np.where(has_cat[None], act[:, np.maximum(primary, 0)], 0)
  union = act_per_label + counts['label_pixels'][None] - counts['inter']
  iou = np.where(has_cat[None] & (union > 0), counts['inter'] / np.maximum(union, 1), 0.0)
  k = iou.shape[0]
  best = np.zeros((k, num_cats), np.int64)
  for c in range(num_cats):
    members = np.flatnonzero(primary == c)
    if len(members):
      best[:, c] = members[np.argmax(iou[:, members], axis=1)]
  best_iou = np.take_along_axis(iou, best, 1)
  return iou, act_per_label, best, best_iou


def write_outputs(out_dir: str, layer: str, ds, thr, counts, top, denominator: str,
                  iou_threshold: float) -> str:
  iou, act, best, best_iou = label_units(counts, ds.primary, len(ds.categories), denominator)
  best_cat = np.argmax(best_iou, 1)
  rows_best = best[np.arange(len(best)), best_cat]
  score = best_iou[np.arange(len(best)), best_cat]
  header = ['unit', 'category', 'label', 'score']
  for cat in ds.categories:
    header += [f'{cat}-label', f'{cat}-truth', f'{cat}-activation', f'{cat}-intersect', f'{cat}-iou']
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(header)
  for u in np.lexsort((np.arange(len(score)), -score)):
    row = [int(u) + 1, ds.categories[best_cat[u]], ds.label_names[rows_best[u]], float(score[u])]
    for c in range(len(ds.categories)):
      lab = best[u, c]
      row += [ds.label_names[lab], int(counts['label_pixels'][lab]), int(act[u, lab]),
              int(counts['inter'][u, lab]), float(iou[u, lab])]
    writer.writerow(row)
  layer_dir = os.path.join(out_dir, layer)
  os.makedirs(layer_dir, exist_ok=True)
  with open(os.path.join(layer_dir, 'tally.csv'), 'w', newline='') as f:
    f.write(buf.getvalue())
  detectors = score > iou_threshold
  unique = {cat: len(set(rows_best[detectors & (best_cat == c)].tolist()))
            for c, cat in enumerate(ds.categories)}
  units = [{'unit': u + 1, 'threshold': float(thr[u]), 'label': ds.label_names[rows_best[u]],
            'category': ds.categories[best_cat[u]], 'iou': float(score[u])} for u in range(len(score))]
  with open(os.path.join(layer_dir, 'results.json'), 'w') as f:
    json.dump({'layer': layer, 'detectors': int(detectors.sum()), 'unique_detectors': unique,
               'units': units}, f, indent=1)
  if top:
    np.savez_compressed(os.path.join(layer_dir, 'topk.npz'), images=top.images.numpy(),
                        values=top.values.numpy(), maps=top.maps.numpy())
  np.savez(os.path.join(layer_dir, 'counts.npz'), thresholds=thr, **counts)
  return (f'{layer}: {int(detectors.sum())}/{len(score)} units are detectors of '
          f'{sum(unique.values())} unique concepts')


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--state_dict', required=True, help='torchvision vgg16 features state dict')
  parser.add_argument('--dataset', required=True)
  parser.add_argument('--layers', default='conv5_3')
  parser.add_argument('--tau', type=float, default=0.005)
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--chunk', type=int, default=4, help='images per counting step')
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--cache_gb', type=float, default=4.0)
  parser.add_argument('--cache_dir', default=tempfile.gettempdir())
  parser.add_argument('--topk', type=int, default=10)
  parser.add_argument('--denominator', default='paper', choices=('paper', 'lite'))
  parser.add_argument('--iou_threshold', type=float, default=0.04)
  parser.add_argument('--out', required=True)
  parser.add_argument('--timings_json', default=None, help='write stage timings here')
  args = parser.parse_args(argv)

  t_start, c_start = time.perf_counter(), time.process_time()
  torch.set_num_threads(args.threads)
  layers = args.layers.split(',')
  ds = broden.open_broden(os.path.expanduser(args.dataset))
  net = TappedFeatures(args.state_dict, layers)
  t_setup, c_setup = time.perf_counter(), time.process_time()
  thr, counts, top, timings = dissect(net, ds, layers, tau=args.tau, batch_size=args.batch_size,
                                      cache_gb=args.cache_gb, cache_dir=args.cache_dir,
                                      chunk=args.chunk, topk=args.topk)
  t_dissect, c_dissect = time.perf_counter(), time.process_time()
  for l in layers:
    print(write_outputs(args.out, l, ds, thr[l], counts[l], top.get(l), args.denominator,
                        args.iou_threshold), flush=True)
  t_end, c_end = time.perf_counter(), time.process_time()
  timings.update(setup=t_setup - t_start, dissect=t_dissect - t_setup, outputs=t_end - t_dissect,
                 cpu_s=dict(setup=c_setup - c_start, dissect=c_dissect - c_setup,
                            outputs=c_end - c_dissect),
                 in_process_total=t_end - t_start, peak_rss_mb=peak_rss_mb(),
                 threads=torch.get_num_threads(), images=len(ds.records))
  if args.timings_json:
    with open(args.timings_json, 'w') as f:
      json.dump(timings, f, indent=1)


if __name__ == '__main__':
  main()
