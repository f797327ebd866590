r"""ndjax against PyTorch on the same probe set, weights and thread count: one command.

  .venv/bin/python benchmarks/run.py                 # everything, -> benchmarks/RESULTS.md
  .venv/bin/python benchmarks/run.py --only=main     # just the conv5_3 measurements
  .venv/bin/python benchmarks/run.py --skip_done     # resume: keep measurements already saved
  .venv/bin/python benchmarks/run.py --report        # rewrite RESULTS.md from saved measurements

Every measurement is its own child process (so each peak RSS is its own), timed for wall and CPU
seconds, with its RSS sampled over time and the machine's load average recorded. Parts (--only):
  main     VGG16 conv5_3 on --images probe images (default 1000): (c) the bare forward pass alone,
           ndjax (jit) and PyTorch (channels_last, inference_mode); (a) ndjax end to end (the CLI's
           steps in one process: model + weights, the same `dissect` call, scoring and the CLI's
           output files); (b) benchmarks/torch_reference.py end to end (the same algorithm in fast
           PyTorch); the `dissect` call with profile=True for per-stage times; then parity: the
           PyTorch algorithm on ndjax's own activations must give ndjax's tally bit for bit, ndjax's
           thresholds must equal numpy.quantile over every value of every unit, and the PyTorch run
           on its own activations differs only by conv float noise (quantified).
  repeat   main's four key runs again in reverse order (ABBA), for a noisy, shared machine.
  best     the four key runs with each framework's best forward settings (from the sweep).
  sweep    the bare forward under batch sizes and XLA:CPU library-fusion flags / TorchScript.
  scale    ndjax end to end on conv3_3, conv4_3, conv5_3 at 1x and 4x images (--scale_images)
           with a bounded activation cache: peak RSS growth and time linearity.
  exact    thresholds and counts of conv3_3 and conv4_3 at 1x against numpy and the PyTorch
           algorithm on ndjax's activations.
  plain    ndjax's VGG16 forward against a plain lax.conv stack of the same weights (A/B pairs).
  views    the counting pass of conv5_3 read through 1 view, 5 taus, and 6 rotation bases.
  precision  --compute_dtype=bfloat16 against float32 on conv5_3: time, and what it changes.
  memory_plan  the exact-threshold memory plan of all 13 VGG16 conv layers over 63,305 images.
  thresholds  exact thresholds of a conv3_3-shaped layer over whole passes of N and 4N images:
           the old per-batch top_k merge against the top-m set and the histogram selection.
  profile_layers  per-stage profile of conv3_3 and conv4_3 at the 4x scale.
  cli      `python -m ndjax.main` itself on the main set, as a cross-check.
Measurements are saved as JSON under benchmarks/results/ as they finish and RESULTS.md is
rewritten after each, so an interrupted run still reports what it measured. Big intermediate
files (activations, outputs, spilled caches) go to --work (default /tmp/ndjax_bench).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH = ROOT / 'benchmarks'
RESULTS = BENCH / 'results'
PYTHON = sys.executable
MACHINE: dict = {}          # this invocation's machine facts, stamped on every measurement
sys.path.insert(0, str(ROOT))


# --- child-process measurement ------------------------------------------------------------------
def _loadavg() -> float:
  return os.getloadavg()[0]


def measure(cmd: list[str], name: str, env: dict | None = None, rss_log: pathlib.Path | None = None,
            sample_s: float = 0.5) -> dict:
  """Run a child to completion: wall, CPU (user+sys), peak RSS (kernel high-water mark, wait4),
  the RSS of the child's process tree sampled over time, and the load average around it."""
  import psutil
  print(f'[{time.strftime("%H:%M:%S")}] {name}: {" ".join(cmd)}', flush=True)
  load_before = _loadavg()
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, **(env or {})),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  samples, stop = [], threading.Event()

  def sample():
    ps = psutil.Process(proc.pid)
    while not stop.is_set():
      try:
        rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
        samples.append((round(time.perf_counter() - t0, 2), round(rss / 2**20, 1), _loadavg()))
      except psutil.Error:
        pass
      stop.wait(sample_s)

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  output = proc.stdout.read()
  _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - t0
  proc.returncode = os.waitstatus_to_exitcode(status)
  stop.set()
  sampler.join()
  if rss_log is not None:
    rss_log.write_text('t_s,rss_mb,load1\n' + ''.join(f'{t},{r},{l}\n' for t, r, l in samples))
  if proc.returncode:
    raise RuntimeError(f'{name} failed ({proc.returncode}):\n{output[-4000:]}')
  return dict(name=name, cmd=' '.join(cmd), wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime,
              peak_rss_mb=usage.ru_maxrss / 1024,
              sampled_peak_rss_mb=max((r for _, r, _ in samples), default=None),
              load_before=load_before, load_after=_loadavg(),
              load_mean=float(np.mean([l for *_, l in samples])) if samples else None,
              output_tail=output[-1500:], machine=dict(MACHINE))


def save(key: str, value: dict) -> None:
  RESULTS.mkdir(parents=True, exist_ok=True)
  (RESULTS / f'{key}.json').write_text(json.dumps(value, indent=1, default=float))


def load(key: str):
  path = RESULTS / f'{key}.json'
  return json.loads(path.read_text()) if path.is_file() else None


# --- workers (run as `run.py worker_<name> ...` in their own process) -----------------------------
def build_ndjax_vgg16():
  """The CLI's model: ndjax VGG16 with the ImageNet trunk weights."""
  from ndjax import models
  import ndjax.ported_weights.registry as registry
  model = models.build('vgg16')
  try:
    registry.load_weights(model, 'imagenet')
  except registry.WeightsError:
    # the ImageNet checkpoint is the conv trunk only; a model built with a classifier head
    # needs it dropped first (what the CLI does for trunk-only weights)
    model.reset_classifier(None)
    registry.load_weights(model, 'imagenet')
  return model


def worker_export(args) -> None:
  """ndjax's ImageNet VGG16 trunk as a torchvision `features` state dict (HWIO -> OIHW)."""
  import torch
  model = build_ndjax_vgg16()
  state = {}
  for name in dir(model):
    if name.startswith('features_') and hasattr(getattr(model, name), 'kernel'):
      conv = getattr(model, name)
      index = name.split('_')[1]
      state[f'{index}.weight'] = torch.from_numpy(
          np.ascontiguousarray(np.asarray(conv.kernel.value).transpose(3, 2, 0, 1)))
      state[f'{index}.bias'] = torch.from_numpy(np.asarray(conv.bias.value).copy())
  torch.save(state, args.out)
  print(f'exported {len(state) // 2} convs to {args.out}')


def _decode_all(ds, n: int) -> np.ndarray:
  import concurrent.futures
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    return np.stack(list(pool.map(ds.load_image, range(n))))


def worker_forward(args) -> None:
  """The bare forward pass over the probe set, images decoded beforehand (not timed): the
  denominator of the `dissection <= 1.3 x forward` target. Optionally saves the activations
  (outside the timed region) for the parity checks."""
  from ndjax.data import broden
  ds = broden.open_broden(args.dataset)
  layers = args.layers.split(',')
  images = _decode_all(ds, min(len(ds.records), args.limit or len(ds.records)))
  n, bs = len(images), args.batch_size
  starts = range(0, n, bs)
  t_compile = time.perf_counter()
  if args.framework == 'jax':
    import jax
    from ndjax.activations import make_forward
    forward = make_forward(build_ndjax_vgg16(), layers)
    run = lambda x: jax.block_until_ready(forward(x))
    to_numpy = lambda a: np.asarray(a)
    versions = dict(jax=jax.__version__, devices=[str(d) for d in jax.devices()])
  else:
    import torch
    sys.path.insert(0, str(BENCH))
    import torch_reference
    torch.set_num_threads(args.threads)
    net = torch_reference.TappedFeatures(args.state_dict, layers)
    if args.torch_mode == 'frozen':
      # TorchScript trace + freeze + optimize_for_inference: oneDNN weight prepacking and
      # conv+ReLU fusion, the usual CPU inference recipe (one tap: the trunk's last layer)
      assert len(layers) == 1 and torch_reference.feature_index(layers[0]) == len(net.features) - 1
      example = torch.zeros(args.batch_size, 3, 224, 224).contiguous(memory_format=torch.channels_last)
      with torch.inference_mode():
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(
            torch.jit.trace(net.features.eval(), example)))
      net.features = frozen

      def run(x):
        with torch.inference_mode():
          images = torch.from_numpy(x)
          y = images.permute(0, 3, 1, 2).flip(1).float() - net.mean
          return {layers[0]: frozen(y.contiguous(memory_format=torch.channels_last))}
    else:
      def run(x):
        with torch.inference_mode():
          return net(torch.from_numpy(x))
    to_numpy = lambda a: a.permute(0, 2, 3, 1).numpy()
    versions = dict(torch=torch.__version__, threads=torch.get_num_threads(),
                    mkldnn=torch.backends.mkldnn.is_available())
  # warm-up / compile on every batch shape used (the last batch can be short)
  for shape in sorted({len(images[s:s + bs]) for s in starts}):
    run(images[:shape])
  t_compile = time.perf_counter() - t_compile
  saved = None
  if args.save_acts:
    out_dir = pathlib.Path(args.save_acts)
    out_dir.mkdir(parents=True, exist_ok=True)
  seconds = cpu_forward = 0.0
  cpu0 = time.process_time()
  for s in starts:
    t, c = time.perf_counter(), time.process_time()
    acts = run(images[s:s + bs])
    seconds += time.perf_counter() - t
    cpu_forward += time.process_time() - c
    if args.save_acts:
      if saved is None:
        saved = {l: np.lib.format.open_memmap(out_dir / f'{l}.npy', 'w+', np.float32,
                                              (n, *to_numpy(acts[l]).shape[1:])) for l in layers}
      for l in layers:
        saved[l][s:s + bs] = to_numpy(acts[l])
  cpu = time.process_time() - cpu0
  if saved:
    for a in saved.values():
      a.flush()
  out = dict(framework=args.framework, layers=layers, images=n, batch_size=bs,
             forward_s=seconds, forward_cpu_s=cpu_forward, images_per_s=n / seconds,
             compile_and_warmup_s=t_compile,
             cpu_s_including_untimed=cpu, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             versions=versions)
  pathlib.Path(args.json).write_text(json.dumps(out, indent=1))


def worker_profile(args) -> None:
  """The CLI's `dissect` call in-process with profile=True: per-stage seconds, and the full
  thresholds + counts (for parity; the CLI's files hold only each unit's best labels)."""
  from ndjax import api
  from ndjax.data import broden
  ds = broden.open_broden(args.dataset)
  model = build_ndjax_vgg16()
  layers = args.layers.split(',')
  t0 = time.perf_counter()
  out = api.dissect(model, ds, layers, tau=args.tau, batch_size=args.batch_size,
                    cache_gb=args.cache_gb, progress=False, profile=True)
  wall = time.perf_counter() - t0
  arrays = {}
  for l in layers:
    arrays[f'{l}/thresholds'] = out.layers[l].thresholds
    for key, value in out.layers[l].counts.as_dict().items():
      arrays[f'{l}/{key}'] = value
  np.savez(args.npz, **arrays)
  pathlib.Path(args.json).write_text(json.dumps(dict(
      timings=out.timings, wall_s=wall, images=out.images_used, layers=layers,
      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), indent=1))


def worker_e2e(args) -> None:
  """ndjax end to end in one process, the steps of `ndjax.main.run()` with a clock between them:
  model + weights (setup), the `dissect` call (profile off, as the CLI runs it), then scoring and
  the CLI's output files (tally.csv, results.json, topk.npz). The CLI cannot say how long its
  output stage takes; this can."""
  t_start, c_start = time.perf_counter(), time.process_time()
  from ndjax import api
  from ndjax.data import broden
  layers = args.layers.split(',')
  ds = broden.open_broden(args.dataset)
  model = build_ndjax_vgg16()
  t_setup, c_setup = time.perf_counter(), time.process_time()
  out = api.dissect(model, ds, layers, tau=args.tau, batch_size=args.batch_size,
                    cache_gb=args.cache_gb, cache_dir=args.cache_dir, progress=False)
  t_dissect, c_dissect = time.perf_counter(), time.process_time()
  meta = {'flags': {'layers': layers, 'tau': args.tau, 'batch_size': args.batch_size,
                    'cache_gb': args.cache_gb}}
  for line in api.write_outputs(out, ds, args.out, model=model, meta=meta, report=False):
    print(line, flush=True)
  t_end, c_end = time.perf_counter(), time.process_time()
  pathlib.Path(args.json).write_text(json.dumps(dict(
      timings=out.timings, setup=t_setup - t_start, dissect=t_dissect - t_setup,
      outputs=t_end - t_dissect, in_process_total=t_end - t_start, images=out.images_used,
      cpu_s=dict(setup=c_setup - c_start, dissect=c_dissect - c_setup, outputs=c_end - c_dissect),
      layers=layers, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
      indent=1))


def worker_thresholds(args) -> None:
  """Exact thresholds of a conv3_3-shaped layer (256 units, 56 x 56, ReLU) over a WHOLE pass of
  N images, for N and 4N: the old per-batch `lax.top_k` merge (a sort of m + batch values per
  batch, so quadratic in N; kept here as the baseline), ndjax's one-pass top-m set (floor cut +
  np.partition) and its two-pass histogram selection. Each batch's values are a pool batch with
  its units permuted (fresh, identically distributed values without paying for an RNG in the
  timed loop); timing covers the selection calls only, wall and process CPU. All three must give
  the same thresholds."""
  import jax
  import jax.numpy as jnp
  from ndjax import thresholds
  h, w, k, bs = 56, 56, 256, args.batch_size
  rng = np.random.default_rng(0)
  pool = [np.maximum(rng.standard_normal((bs, h, w, k), np.float32), 0) for _ in range(4)]

  @jax.jit
  def topk_merge(buffer, acts):                      # the pre-issue-12 merge, verbatim in effect
    values = acts.reshape(-1, buffer.shape[0]).T
    if values.shape[1] > buffer.shape[1]:
      values = jax.lax.top_k(values, buffer.shape[1])[0]
    return jax.lax.top_k(jnp.concatenate([buffer, values], axis=1), buffer.shape[1])[0]

  def batches(images):
    r = np.random.default_rng(images)
    for i in range(-(-images // bs)):
      yield pool[i % len(pool)][..., r.permutation(k)]

  def timed(fn, images):
    data = list(batches(images))                    # materialised outside the clock
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(data)
    return out, time.perf_counter() - wall, time.process_time() - cpu

  def old(data):
    m = thresholds.buffer_size(len(data) * bs * h * w, args.tau)
    buf = jnp.full((k, m), -jnp.inf, jnp.float32)
    for x in data:
      buf = topk_merge(buf, jnp.asarray(x))
    return thresholds.quantile_from_top(np.asarray(buf), len(data) * bs * h * w, args.tau)

  def new(kind):
    def run(data):
      n = len(data) * bs * h * w
      sel = kind(k, n, args.tau)
      for x in data:
        sel.update(x)
      if sel.needs_refine:
        sel.start_refine()
        for x in data:
          sel.refine(x)
      return sel.result()
    return run

  rows = []
  old(list(batches(bs)))                            # compile outside the clock
  for images in (args.threshold_images, 4 * args.threshold_images):
    row = dict(images=images, m=thresholds.buffer_size(images * h * w, args.tau))
    results = {}
    for name, fn in (('topk_merge', old), ('top_m_set', new(thresholds.StreamingThreshold)),
                     ('histogram', new(thresholds.HistogramThreshold))):
      if name == 'topk_merge' and images > args.threshold_images:
        if not args.old_at_4x:
          continue
      results[name], row[f'{name}_wall_s'], row[f'{name}_cpu_s'] = timed(fn, images)
    ref = results['top_m_set']
    row['all_equal'] = all(np.array_equal(r, ref) for r in results.values())
    rows.append(row)
    print(row, flush=True)
  pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


def worker_plain(args) -> None:
  """ndjax's VGG16 forward to conv5_3 against a plain `lax.conv` stack of the same weights (the
  leanest JAX can be: no taps, no model code), paired A/B in one process, batch --batch_size."""
  import re
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from ndjax import activations, api
  model = api.load_model('vgg16', 'random', 0).module
  flat = {jax.tree_util.keystr(p): v for p, v in
          jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]}
  convs = sorted({int(re.search(r'features_(\d+)', k).group(1)) for k in flat if 'features' in k})
  params = [(flat[f"['features_{i}']['kernel'].value"], flat[f"['features_{i}']['bias'].value"])
            for i in convs][:13]
  pools_after = {1, 3, 6, 9}                 # VGG16: a 2x2 max pool closes blocks 1-4
  mean = jnp.array([103.939, 116.779, 123.68], jnp.float32)

  @jax.jit
  def plain(params, x):
    x = x.astype(jnp.float32)[..., ::-1] - mean
    for i, (k, b) in enumerate(params):
      x = jax.lax.conv_general_dilated(x, k, (1, 1), [(1, 1), (1, 1)],
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + b
      x = jax.nn.relu(x)
      if i in pools_after:
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')
    return x

  forward = activations.make_forward(model, ['conv5_3'])
  images = np.random.default_rng(0).integers(0, 256, (args.batch_size, 224, 224, 3), np.uint8)
  same = bool(np.array_equal(np.asarray(plain(params, images)),
                             np.asarray(forward(images)['conv5_3'])))
  times = {'ndjax': [], 'plain': []}
  for _ in range(args.reps):
    for name in ('ndjax', 'plain'):
      t = time.perf_counter()
      jax.block_until_ready(forward(images) if name == 'ndjax' else plain(params, images))
      times[name].append(time.perf_counter() - t)
  row = dict(batch_size=args.batch_size, reps=args.reps, bit_identical=same,
             ndjax_s=times['ndjax'], plain_s=times['plain'],
             ratio_median=float(np.median(np.array(times['ndjax']) / np.array(times['plain']))))
  print(row, flush=True)
  pathlib.Path(args.json).write_text(json.dumps(row, indent=1))


def worker_views(args) -> None:
  """The counting pass per view: VGG16 conv5_3 read through 1 view, 5 taus (one basis) and the
  layer + 5 rotations (6 bases), each its own `dissect(profile=True)` over the same images. The
  forward pass is shared by all views of a run; what grows with views is pass 2. Each case runs
  twice in this process: the first pays the compiles, the second (reported) does not."""
  import dataclasses
  from ndjax import api, views
  from ndjax.data import broden
  ds = broden.open_broden(args.dataset)
  if args.limit:
    ds = dataclasses.replace(ds, records=ds.records[:args.limit])
  model = build_ndjax_vgg16()
  cases = {'1 view': views.ViewSpec(),
           '5 taus': views.ViewSpec(taus=(0.0025, 0.005, 0.01, 0.02, 0.04)),
           'layer + 5 rotations': views.ViewSpec(rotation_seed=0, rotation_alphas=(0.0, 1.0),
                                                 rotations=tuple((s, 1.0) for s in range(1, 5)))}
  rows = []
  for name, spec in cases.items():
    runs = [api.dissect(model, ds, [args.layers], views=spec, batch_size=args.batch_size,
                        cache_gb=args.cache_gb, progress=False, profile=True) for _ in range(2)]
    out = runs[-1]
    t = out.timings
    n = len(out.results)
    rows.append(dict(case=name, views=n, images=out.images_used, forward_s=t.get('forward'),
                     pass2_s=t['count'], pass2_cold_s=runs[0].timings['count'],
                     upsample_count_s=t.get('upsample_count'), stack_labels_s=t.get('stack_labels'),
                     active_units_s=t.get('active_units'),
                     pass2_ms_per_image_per_view=1000 * t['count'] / out.images_used / n))
    print(rows[-1], flush=True)
  pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


def worker_precision(args) -> None:
  """`--compute_dtype=bfloat16` against float32 on the first --limit images of the default probe
  set: wall time of each dissection (compiles included, in this order: f32, bf16, f32 again, bf16
  again; the second of each is reported) and what bf16 changes in the results: thresholds,
  each unit's best label and IoU, and the detectors (best IoU > 0.04)."""
  import dataclasses
  from ndjax import api, tally
  from ndjax.data import broden
  ds = broden.open_broden(args.dataset)
  ds = dataclasses.replace(ds, records=ds.records[:args.limit])
  model = build_ndjax_vgg16()
  runs, seconds = {}, {}
  for dtype in ('float32', 'bfloat16', 'float32', 'bfloat16'):
    t = time.perf_counter()
    runs[dtype] = api.dissect(model, ds, [args.layers], tau=args.tau, batch_size=args.batch_size,
                              cache_gb=args.cache_gb, progress=False, compute_dtype=dtype)
    seconds[dtype] = time.perf_counter() - t
  res = {d: runs[d].layers[args.layers] for d in runs}
  lab = {d: tally.label_units(res[d].counts, ds, 'paper') for d in res}
  l32, l16 = lab['float32'], lab['bfloat16']
  live = l32.best_iou > 0
  det32, det16 = l32.best_iou > 0.04, l16.best_iou > 0.04
  t32, t16 = res['float32'].thresholds, res['bfloat16'].thresholds
  out = dict(images=len(ds.records), layer=args.layers, float32_s=seconds['float32'],
             bfloat16_s=seconds['bfloat16'],
             threshold_max_rel_diff=float(np.max(np.abs(t16 - t32) / np.maximum(np.abs(t32), 1e-12))),
             label_agreement=float(np.mean(l32.best_label[live] == l16.best_label[live])),
             units_compared=int(live.sum()),
             max_best_iou_diff=float(np.abs(l32.best_iou - l16.best_iou).max()),
             detectors_float32=int(det32.sum()), detectors_bfloat16=int(det16.sum()),
             unique_detectors_float32=len(set(l32.best_label[det32].tolist())),
             unique_detectors_bfloat16=len(set(l16.best_label[det16].tolist())))
  print(out, flush=True)
  pathlib.Path(args.json).write_text(json.dumps(out, indent=1))


def worker_memory_plan(args) -> None:
  """The exact-threshold memory plan of every VGG16 conv layer over a Broden-sized probe set
  (63,305 images at 224 px), from the model's real tap shapes and the pipeline's own
  `choose_selection` (no forward pass): per layer the top-m set it would need, the histogram
  alternative, and what the plan picks under the 8 GB cap; plus the activation volume the cache
  policy weighs against memory and disk."""
  from ndjax import activations, dissect, thresholds, views
  from ndjax import models
  model = models.build('vgg16')
  layers = [f'conv{b}_{i}' for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)]
  shapes = activations.tap_shapes(model, layers, (224, 224))
  n_img = args.broden_images
  units = {l: shapes[l][2] for l in layers}
  max_n = {l: n_img * shapes[l][0] * shapes[l][1] for l in layers}
  spec = views.ViewSpec(taus=(args.tau,))
  vs = {l: views.build(spec, units[l]) for l in layers}
  cfg = dissect.DissectConfig(layers=tuple(layers), tau=args.tau)
  selection = dissect.choose_selection(tuple(layers), vs, units, max_n, cfg)
  rows = []
  for l in layers:
    top = thresholds.StreamingThreshold.bytes_needed(units[l], max_n[l], (args.tau,)) / 2**30
    hist = thresholds.HistogramThreshold.bytes_needed(units[l], max_n[l], (args.tau,)) / 2**30
    rows.append(dict(layer=l, shape=list(shapes[l]), values_per_unit=max_n[l],
                     m=thresholds.buffer_size(max_n[l], args.tau), top_m_gib=top,
                     histogram_gib=hist, selection=selection[l],
                     activations_gib=n_img * int(np.prod(shapes[l])) * 4 / 2**30))
  plan = dict(images=n_img, tau=args.tau, cap_gib=cfg.max_buffer_gb, rows=rows,
              top_m_only_gib=sum(r['top_m_gib'] for r in rows),
              planned_gib=sum(r['top_m_gib'] if r['selection'] == 'top' else r['histogram_gib']
                              for r in rows))
  print(json.dumps(plan, indent=1), flush=True)
  pathlib.Path(args.json).write_text(json.dumps(plan, indent=1))


def worker_parity(args) -> None:
  """The PyTorch algorithm on ndjax's saved activations vs ndjax's tally (exact), thresholds vs
  numpy.quantile over all values (exact), and the PyTorch run on its own activations (noise)."""
  import torch
  sys.path.insert(0, str(BENCH))
  import torch_reference
  from ndjax import upsample
  from ndjax.data import broden
  torch.set_num_threads(args.threads)
  ds = broden.open_broden(args.dataset)
  layers = args.layers.split(',')
  ref = np.load(args.ndjax_npz)
  acts = {l: np.load(pathlib.Path(args.acts_dir) / f'{l}.npy', mmap_mode='r') for l in layers}
  report = {}

  class SavedActivations:
    shapes = {l: (a.shape[3], a.shape[1], a.shape[2]) for l, a in acts.items()}

    def __call__(self, ids):
      return {l: torch.from_numpy(np.ascontiguousarray(acts[l][ids])).permute(0, 3, 1, 2)
              for l in layers}

  def compare_counts(counts, l):
    out = {}
    for key in ('inter', 'label_pixels', 'act_paper', 'act_lite', 'act_pixels'):
      a, b = np.asarray(counts[key]), ref[f'{l}/{key}']
      diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
      out[key] = dict(equal=bool(np.array_equal(a, b)), entries_differing=int((diff > 0).sum()),
                      entries=int(diff.size), max_abs_diff=int(diff.max(initial=0)),
                      sum_abs_diff=int(diff.sum()), total=int(np.abs(b).sum()))
    return out

  # 1. numpy.quantile over every value of every unit (the definition) vs ndjax
  for l in layers:
    a = acts[l]
    n, h, w, k = a.shape
    exact = np.empty(k, np.float32)
    group = max(1, int(2**31 // (n * h * w * 4)))        # units per pass: ~2 GB of values
    for u0 in range(0, k, group):
      block = np.empty((min(group, k - u0), n * h * w), np.float32)
      for i0 in range(0, n, 64):
        part = np.asarray(a[i0:i0 + 64, :, :, u0:u0 + group])     # (b, h, w, g)
        block[:, i0 * h * w:(i0 + len(part)) * h * w] = part.reshape(-1, block.shape[0]).T
      exact[u0:u0 + len(block)] = np.quantile(block, 1 - args.tau, axis=1)
    got = ref[f'{l}/thresholds']
    report[l] = dict(units=int(k), values_per_unit=int(n * h * w),
                     thresholds_vs_numpy_quantile=dict(
                         bit_identical_units=int((got == exact).sum()),
                         max_abs_diff=float(np.abs(got - exact).max())))

  # 2. the PyTorch algorithm (F.interpolate upsampling, as benchmarked) on ndjax's activations
  rf = {}
  for l in layers:
    _, h, w, _ = acts[l].shape
    ih, iw, sh, sw = ds.records[0].size_key
    model_rf = (args.rf[l] if args.rf else None)
    wy, wx = upsample.matrices('rf', (h, w), (ih, iw), (sh, sw), model_rf)
    rf[l] = (torch.from_numpy(wy), torch.from_numpy(wx))
  for impl in ('interpolate', 'matrices'):
    t0 = time.perf_counter()
    thr, counts, _, _ = torch_reference.dissect(
        None, ds, layers, tau=args.tau, batch_size=args.batch_size, cache_gb=64.0,
        cache_dir=tempfile.gettempdir(), topk=0, upsample_impl=impl,
        acts_source=SavedActivations(), rf_matrices=rf)
    for l in layers:
      got = ref[f'{l}/thresholds']
      report[l][f'torch_algorithm_on_ndjax_activations[{impl}]'] = dict(
          seconds=time.perf_counter() - t0,
          thresholds_bit_identical_units=int((thr[l] == got).sum()),
          counts=compare_counts(counts[l], l))
    if all(v['equal'] for l in layers
           for v in report[l][f'torch_algorithm_on_ndjax_activations[{impl}]']['counts'].values()):
      break       # F.interpolate already agrees bit for bit: no need for the matrix variant

  # 3. the PyTorch end-to-end run (its own activations) vs ndjax: conv float noise
  if args.torch_out:
    for l in layers:
      t = np.load(pathlib.Path(args.torch_out) / l / 'counts.npz')
      got, theirs = ref[f'{l}/thresholds'], t['thresholds']
      rel = np.abs(theirs - got) / np.maximum(np.abs(got), 1e-30)
      report[l]['torch_end_to_end_vs_ndjax'] = dict(
          thresholds_bit_identical_units=int((theirs == got).sum()),
          thresholds_max_rel_diff=float(rel[got > 0].max(initial=0)),
          thresholds_median_rel_diff=float(np.median(rel[got > 0])) if (got > 0).any() else 0.0,
          counts=compare_counts({k: t[k] for k in t.files if k != 'thresholds'}, l))
  # 4. forward activations of the two frameworks on the first batch
  if args.state_dict:
    net = torch_reference.TappedFeatures(args.state_dict, layers)
    images = np.stack([ds.load_image(i) for i in range(args.batch_size)])
    with torch.inference_mode():
      theirs = net(torch.from_numpy(images))
    for l in layers:
      mine = acts[l][:args.batch_size]
      t = theirs[l].permute(0, 2, 3, 1).numpy()
      scale = np.abs(mine).max()
      report[l]['forward_activations_first_batch'] = dict(
          max_abs_diff=float(np.abs(t - mine).max()), max_abs_value=float(scale),
          max_diff_over_max_value=float(np.abs(t - mine).max() / scale))
  pathlib.Path(args.json).write_text(json.dumps(report, indent=1))


# --- the orchestration ---------------------------------------------------------------------------
def machine_facts(threads: int) -> dict:
  import psutil
  cpu = 'unknown'
  for line in open('/proc/cpuinfo'):
    if line.startswith('model name'):
      cpu = line.split(':', 1)[1].strip()
      break
  flags = open('/proc/cpuinfo').read()
  from importlib import metadata
  versions = {}
  for dist in ('jax', 'jaxlib', 'flax', 'torch', 'torchvision', 'numpy', 'psutil'):
    try:     # package metadata, not imports: the orchestrator stays small beside its children
      versions[dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
      versions[dist] = 'missing'
  def git(*a):
    try:
      return subprocess.run(['git', *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
      return ''
  engine_changes = git('status', '--porcelain', 'ndjax', 'models', 'ported_weights')
  return dict(date=datetime.datetime.now().isoformat(timespec='seconds'), cpu=cpu,
              git_head=git('rev-parse', '--short', 'HEAD'),
              engine_uncommitted=engine_changes.splitlines(),
              logical_cpus=os.cpu_count(), memory_gb=round(psutil.virtual_memory().total / 2**30, 1),
              avx512=' avx512f ' in flags, avx512_bf16='avx512_bf16' in flags,
              python=platform.python_version(), os=platform.platform(), versions=versions,
              threads=threads, xla_flags=os.environ.get('XLA_FLAGS', ''))


def probe_set(n: int) -> str:
  from ndjax.probes import synthetic
  from ndjax.fileio import cache_root
  return str(synthetic.ensure_probe_set(cache_root(), n_images=n, seed=0, progress=False))


def cli_cmd(dataset, layer, batch_size, outdir, cache_gb, cache_dir):
  return [PYTHON, '-m', 'ndjax.main', '--model=vgg16', f'--layers={layer}', f'--dataset={dataset}',
          f'--batch_size={batch_size}', f'--outdir={outdir}', '--progress=false',
          f'--cache_gb={cache_gb}', f'--cache_dir={cache_dir}']


def cli_timings(outdir, layer) -> dict:
  doc = json.loads((pathlib.Path(outdir) / 'vgg16_imagenet' / layer / 'results.json').read_text())
  return doc['timings_s']


def main_steps(args, work: pathlib.Path, round_: str = '') -> list[tuple]:
  """(key, command, detail json) of the main measurements; round_ '' is the first round (it also
  saves the activations for parity), '_r2' the repeat."""
  dataset = probe_set(args.images)
  layer, bs = 'conv5_3', args.batch_size
  common = [f'--dataset={dataset}', f'--layers={layer}', f'--batch_size={bs}',
            f'--threads={args.threads}']
  sd = str(work / 'vgg16_features.pt')
  me = [PYTHON, str(BENCH / 'run.py')]
  key = lambda name: f'main_{name}{round_}'
  save_acts = [] if round_ else [f'--save_acts={work / "acts_main"}']
  return [
      (key('forward_jax'), me + ['worker_forward', '--framework=jax', *common, *save_acts,
                                 f'--json={work / (key("forward_jax") + ".json")}'],
       work / (key('forward_jax') + '.json')),
      (key('ndjax_e2e'), me + ['worker_e2e', *common[:3], f'--cache_gb={args.cache_gb}',
                               f'--cache_dir={work / "spill"}', f'--out={work / key("ndjax_e2e")}',
                               f'--json={work / (key("ndjax_e2e") + ".json")}'],
       work / (key('ndjax_e2e') + '.json')),
      (key('forward_torch'), me + ['worker_forward', '--framework=torch', *common,
                                   f'--state_dict={sd}',
                                   f'--json={work / (key("forward_torch") + ".json")}'],
       work / (key('forward_torch') + '.json')),
      (key('torch_reference'), [PYTHON, str(BENCH / 'torch_reference.py'), f'--state_dict={sd}',
                                *common, f'--cache_gb={args.cache_gb}',
                                f'--cache_dir={work / "spill"}',
                                f'--out={work / ("torch_out" + round_)}',
                                f'--timings_json={work / (key("torch_reference") + ".json")}'],
       work / (key('torch_reference') + '.json')),
      (key('ndjax_profile'), me + ['worker_profile', *common, f'--cache_gb={args.cache_gb}',
                                   f'--npz={work / "ndjax_main.npz"}',
                                   f'--json={work / (key("ndjax_profile") + ".json")}'],
       work / (key('ndjax_profile') + '.json')),
  ]


def run_steps(args, steps, env) -> None:
  for key, cmd, detail in steps:
    if args.skip_done and load(key):
      continue
    result = measure(cmd, key, env, rss_log=RESULTS / f'{key}.rss.csv')
    result['detail'] = json.loads(pathlib.Path(detail).read_text())
    save(key, result)
    write_report(args)


def run_repeat(args, work: pathlib.Path, env: dict) -> None:
  """The four key measurements again in REVERSE order (ABBA with the first round), so that a
  load that drifts during the session weighs on ndjax and PyTorch alike; the report averages."""
  run_steps(args, list(reversed(main_steps(args, work, '_r2')[:4])), env)


def run_main(args, work: pathlib.Path, env: dict) -> None:
  dataset = probe_set(args.images)
  layer, bs = 'conv5_3', args.batch_size
  common = [f'--dataset={dataset}', f'--layers={layer}', f'--batch_size={bs}',
            f'--threads={args.threads}']
  sd = str(work / 'vgg16_features.pt')
  me = [PYTHON, str(BENCH / 'run.py')]
  run_steps(args, main_steps(args, work), env)
  if not (args.skip_done and load('main_parity')):
    result = measure(me + ['worker_parity', *common, f'--acts_dir={work / "acts_main"}',
                           f'--ndjax_npz={work / "ndjax_main.npz"}', f'--torch_out={work / "torch_out"}',
                           f'--state_dict={sd}', f'--json={work / "parity.json"}'], 'main_parity', env)
    result['detail'] = json.loads((work / 'parity.json').read_text())
    save('main_parity', result)
    write_report(args)


def run_scale(args, work: pathlib.Path, env: dict) -> None:
  n1 = args.scale_images
  sets = {1: probe_set(n1), 4: probe_set(4 * n1)}
  me = [PYTHON, str(BENCH / 'run.py')]
  for layer in args.scale_layers.split(','):
    for factor, dataset in sets.items():
      key = f'scale_{layer}_{factor}x_cache{args.scale_cache_gb:g}'
      if args.skip_done and load(key):
        continue
      cmd = me + ['worker_e2e', f'--dataset={dataset}', f'--layers={layer}',
                  f'--batch_size={args.batch_size}', f'--cache_gb={args.scale_cache_gb}',
                  f'--cache_dir={work / "spill"}', f'--out={work / key}',
                  f'--json={work / (key + ".json")}']
      result = measure(cmd, key, env, rss_log=RESULTS / f'{key}.rss.csv')
      result['detail'] = json.loads((work / (key + '.json')).read_text())
      result['images'] = factor * n1
      save(key, result)
      write_report(args)


# XLA:CPU options of this jaxlib that route convolutions/dots to a library, and batch sizes
SWEEP = [
    ('jax', 16, ''), ('jax', 8, ''), ('jax', 32, ''),
    ('jax', 16, '--xla_cpu_experimental_ynn_fusion_type=individual_convolution,individual_dot'),
    ('jax', 16, '--xla_cpu_experimental_xnn_fusion_type=individual_convolution,individual_dot'),
    ('jax', 16, '--xla_cpu_experimental_onednn_fusion_type=individual_convolution,individual_dot'),
    ('jax', 16, '--xla_cpu_experimental_onednn_custom_call=true'),
    ('torch', 16, ''), ('torch', 8, ''), ('torch', 32, ''), ('torch', 16, 'frozen'),
    ('jax', 8, '--xla_cpu_experimental_ynn_fusion_type=individual_convolution,individual_dot'),
    ('jax', 4, ''), ('torch', 4, ''),
    ('jax', 4, '--xla_cpu_experimental_ynn_fusion_type=individual_convolution,individual_dot'),
]
YNN_FLAGS = '--xla_cpu_experimental_ynn_fusion_type=individual_convolution,individual_dot'


def run_sweep(args, work: pathlib.Path, env: dict) -> None:
  """The bare forward on the first --sweep_images images under each setting, alternating
  frameworks so that load drift hits both alike."""
  dataset = probe_set(args.images)
  order = [0, 7, 1, 8, 2, 9, 3, 10, 4, 5, 6, 11, 12, 13, 14]   # jax and torch interleaved
  for i in order:
    framework, bs, flags_ = SWEEP[i]
    key = f'sweep_{framework}_b{bs}_' + (flags_.split('=')[0].replace('--xla_cpu_experimental_', '')
                                         .lstrip('-') if flags_ else 'default')
    if args.skip_done and load(key):
      continue
    cmd = [PYTHON, str(BENCH / 'run.py'), 'worker_forward', f'--framework={framework}',
           f'--dataset={dataset}', '--layers=conv5_3', f'--batch_size={bs}',
           f'--threads={args.threads}', f'--limit={args.sweep_images}',
           f'--state_dict={work / "vgg16_features.pt"}', f'--json={work / (key + ".json")}']
    if flags_ == 'frozen':
      cmd.append('--torch_mode=frozen')
    run_env = dict(env, XLA_FLAGS=flags_) if flags_.startswith('--') else env
    try:
      result = measure(cmd, key, run_env)
      result['detail'] = json.loads((work / (key + '.json')).read_text())
    except RuntimeError as e:
      result = dict(name=key, failed=str(e)[-600:])
    result.update(framework=framework, batch_size=bs, xla_flags=flags_)
    save(key, result)
    write_report(args)


def run_best(args, work: pathlib.Path, env: dict) -> None:
  """The four key measurements with each framework's best forward settings from the sweep
  (batch size, XLA:CPU library fusion), same images, same threads, float32 on both sides."""
  dataset = probe_set(args.images)
  sd = str(work / 'vgg16_features.pt')
  me = [PYTHON, str(BENCH / 'run.py')]
  jax_env = dict(env, XLA_FLAGS=args.best_jax_flags) if args.best_jax_flags else env
  bj, bt = args.best_jax_batch, args.best_torch_batch
  common = lambda bs: [f'--dataset={dataset}', '--layers=conv5_3', f'--batch_size={bs}',
                       f'--threads={args.threads}']
  round_ = '' if not (args.skip_done and load('main_torch_reference_best')) else '_r2'
  steps = [
      ('main_torch_reference_best', env, [PYTHON, str(BENCH / 'torch_reference.py'),
                                          f'--state_dict={sd}', *common(bt),
                                          f'--cache_gb={args.cache_gb}', f'--cache_dir={work / "spill"}',
                                          f'--out={work / ("torch_out_best" + round_)}']),
      ('main_ndjax_e2e_best', jax_env, me + ['worker_e2e', *common(bj)[:3], f'--cache_gb={args.cache_gb}',
                                             f'--cache_dir={work / "spill"}',
                                             f'--out={work / ("main_ndjax_e2e_best" + round_)}']),
      ('main_forward_torch_best', env, me + ['worker_forward', '--framework=torch', *common(bt),
                                             f'--state_dict={sd}']),
      ('main_forward_jax_best', jax_env, me + ['worker_forward', '--framework=jax', *common(bj)]),
  ]
  if round_:         # a second round runs in the reverse order (ABBA)
    steps = [(key + round_, step_env, cmd) for key, step_env, cmd in reversed(steps)]
  for key, step_env, cmd in steps:
    if args.skip_done and load(key):
      continue
    detail = work / f'{key}.json'
    cmd = cmd + ([f'--timings_json={detail}'] if 'torch_reference' in key else [f'--json={detail}'])
    result = measure(cmd, key, step_env, rss_log=RESULTS / f'{key}.rss.csv')
    result['detail'] = json.loads(detail.read_text())
    result['xla_flags'] = step_env.get('XLA_FLAGS', '')
    save(key, result)
    write_report(args)


def run_profile_layers(args, work: pathlib.Path, env: dict) -> None:
  """Per-stage profile of the early layers at the 4x scale (where the threshold merge grows)."""
  dataset = probe_set(4 * args.scale_images)
  for layer in ('conv3_3', 'conv4_3'):
    key = f'profile_{layer}'
    if args.skip_done and load(key):
      continue
    cmd = [PYTHON, str(BENCH / 'run.py'), 'worker_profile', f'--dataset={dataset}',
           f'--layers={layer}', f'--batch_size={args.batch_size}', f'--threads={args.threads}',
           f'--cache_gb={args.scale_cache_gb}', f'--npz={work / (key + ".npz")}',
           f'--json={work / (key + ".json")}']
    result = measure(cmd, key, env, rss_log=RESULTS / f'{key}.rss.csv')
    result['detail'] = json.loads((work / (key + '.json')).read_text())
    save(key, result)
    write_report(args)


def run_worker(args, work: pathlib.Path, env: dict, key: str, worker: str, *flags: str) -> None:
  """One child-process measurement whose worker writes its JSON detail: measure, save, report."""
  if args.skip_done and load(key):
    return
  result = measure([PYTHON, str(BENCH / 'run.py'), worker, *flags,
                    f'--json={work / (key + ".json")}'], key, env)
  result['detail'] = json.loads((work / (key + '.json')).read_text())
  save(key, result)
  write_report(args)


def run_plain(args, work: pathlib.Path, env: dict) -> None:
  run_worker(args, work, env, 'forward_vs_plain_conv', 'worker_plain', '--batch_size=8', '--reps=6')


def run_views(args, work: pathlib.Path, env: dict) -> None:
  from ndjax import api
  run_worker(args, work, env, 'count_pass_per_view', 'worker_views',
             f'--dataset={api.open_probe(None, progress=False).root}',
             f'--limit={args.views_images}', '--layers=conv5_3', f'--batch_size={args.batch_size}')


def run_precision(args, work: pathlib.Path, env: dict) -> None:
  from ndjax import api
  run_worker(args, work, env, 'compute_dtype_bf16', 'worker_precision',
             f'--dataset={api.open_probe(None, progress=False).root}',
             f'--limit={args.views_images}', '--layers=conv5_3', f'--batch_size={args.batch_size}')


def run_memory_plan(args, work: pathlib.Path, env: dict) -> None:
  run_worker(args, work, env, 'memory_plan_broden', 'worker_memory_plan')


def run_thresholds(args, work: pathlib.Path, env: dict) -> None:
  run_worker(args, work, env, 'threshold_selection_cost', 'worker_thresholds',
             f'--threads={args.threads}', f'--batch_size={args.batch_size}',
             f'--threshold_images={args.scale_images}')


def run_cli(args, work: pathlib.Path, env: dict) -> None:
  """Cross-check: the real CLI as a user runs it, same set and layer as the main ratios."""
  dataset = probe_set(args.images)
  out = work / 'cli_out'
  key = 'main_ndjax_cli'
  try:
    result = measure(cli_cmd(dataset, 'conv5_3', args.batch_size, out, args.cache_gb,
                             work / 'spill'), key, env, rss_log=RESULTS / f'{key}.rss.csv')
    result['detail'] = cli_timings(out, 'conv5_3')
  except RuntimeError as e:
    result = dict(name=key, failed=str(e)[-600:])
  save(key, result)
  write_report(args)


def run_exact(args, work: pathlib.Path, env: dict) -> None:
  dataset = probe_set(args.scale_images)
  layers = 'conv3_3,conv4_3'
  common = [f'--dataset={dataset}', f'--layers={layers}', f'--batch_size={args.batch_size}',
            f'--threads={args.threads}']
  me = [PYTHON, str(BENCH / 'run.py')]
  if args.skip_done and load('exact_parity'):
    return
  measure(me + ['worker_forward', '--framework=jax', *common, f'--save_acts={work / "acts_exact"}',
                f'--json={work / "fj_exact.json"}'], 'exact_forward', env)
  measure(me + ['worker_profile', *common, f'--cache_gb={args.scale_cache_gb}',
                f'--npz={work / "ndjax_exact.npz"}', f'--json={work / "np_exact.json"}'],
          'exact_profile', env)
  result = measure(me + ['worker_parity', *common, f'--acts_dir={work / "acts_exact"}',
                         f'--ndjax_npz={work / "ndjax_exact.npz"}',
                         f'--json={work / "parity_exact.json"}'], 'exact_parity', env)
  result['detail'] = json.loads((work / 'parity_exact.json').read_text())
  save('exact_parity', result)
  write_report(args)


# --- RESULTS.md -------------------------------------------------------------------------------------
def write_report(args) -> None:
  import report_md
  (BENCH / 'RESULTS.md').write_text(report_md.render(RESULTS))


def main() -> None:
  parser = argparse.ArgumentParser(description='ndjax vs PyTorch benchmark')
  sub = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1].startswith('worker_') else None
  if sub:
    parser.add_argument('worker')
    parser.add_argument('--dataset')
    parser.add_argument('--layers', default='conv5_3')
    parser.add_argument('--batch_size', type=int, default=16)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--tau', type=float, default=0.005)
    parser.add_argument('--cache_gb', type=float, default=4.0)
    parser.add_argument('--framework', choices=('jax', 'torch'))
    parser.add_argument('--state_dict')
    parser.add_argument('--save_acts')
    parser.add_argument('--acts_dir')
    parser.add_argument('--ndjax_npz')
    parser.add_argument('--torch_out')
    parser.add_argument('--npz')
    parser.add_argument('--json')
    parser.add_argument('--out')
    parser.add_argument('--cache_dir', default=tempfile.gettempdir())
    parser.add_argument('--limit', type=int, default=0, help='forward: first N images only')
    parser.add_argument('--torch_mode', default='eager', choices=('eager', 'frozen'))
    parser.add_argument('--threshold_images', type=int, default=250)
    parser.add_argument('--old_at_4x', type=int, default=1)
    parser.add_argument('--reps', type=int, default=6)
    parser.add_argument('--broden_images', type=int, default=63305)
    args = parser.parse_args()
    args.rf = None
    if sub == 'worker_parity':      # rf geometry of the taps, from ndjax's model (no weights)
      from ndjax import models
      model = models.build('vgg16')
      args.rf = {l: model.rf_geometry(l) for l in args.layers.split(',')}
    globals()[sub](args)
    return

  parser.add_argument('--only',
                      default='main,scale,exact,cli,sweep,repeat,thresholds,plain,views,'
                      'precision,memory_plan,best,profile_layers',
                      help='comma list of: main, scale, exact, cli, sweep, repeat, thresholds, plain, '
                      'views, precision, memory_plan, best, profile_layers')
  parser.add_argument('--best_jax_batch', type=int, default=8)
  parser.add_argument('--best_jax_flags', default='',
                      help=f'XLA_FLAGS of the best round (the sweep also tries {YNN_FLAGS})')
  parser.add_argument('--best_torch_batch', type=int, default=8)
  parser.add_argument('--images', type=int, default=1000, help='probe images for the main ratios')
  parser.add_argument('--scale_images', type=int, default=250, help='the 1x of the 1x/4x runs')
  parser.add_argument('--sweep_images', type=int, default=96, help='images per forward setting')
  parser.add_argument('--views_images', type=int, default=320,
                      help='images of the default probe set for the per-view pass 2 measurement')
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--cache_gb', type=float, default=4.0, help='activation cache, main runs')
  parser.add_argument('--scale_cache_gb', type=float, default=0.05,
                      help='activation cache of the scaling runs (the rest spills to disk); RSS '
                      'stays flat from 1x to 4x only if this is below the 1x run\'s activations')
  parser.add_argument('--scale_layers', default='conv3_3,conv4_3,conv5_3')
  parser.add_argument('--work', default=os.path.join(tempfile.gettempdir(), 'ndjax_bench'))
  parser.add_argument('--skip_done', action='store_true', help='keep measurements already saved')
  parser.add_argument('--report', action='store_true', help='only rewrite RESULTS.md')
  args = parser.parse_args()
  sys.path.insert(0, str(BENCH))
  if args.report:
    write_report(args)
    return
  work = pathlib.Path(args.work)
  work.mkdir(parents=True, exist_ok=True)
  (work / 'spill').mkdir(exist_ok=True)
  # the same thread count on both sides: XLA:CPU's pool and torch's intra-op pool
  # the same thread count on both sides: torch gets --threads (set_num_threads); XLA:CPU sizes its
  # pool to the machine's cores and has no flag for it, so --threads defaults to the core count
  env = {'OMP_NUM_THREADS': str(args.threads)}
  facts = machine_facts(args.threads)
  # machine.json describes the main ratios' machine; every other part records its own facts
  if 'main' in args.only.split(','):
    save('machine', facts)
  MACHINE.update({k: facts[k] for k in ('date', 'cpu', 'logical_cpus', 'git_head')})
  if not (work / 'vgg16_features.pt').is_file():
    measure([PYTHON, str(BENCH / 'run.py'), 'worker_export', f'--out={work / "vgg16_features.pt"}'],
            'export', env)
  only = args.only.split(',')
  if 'main' in only:
    run_main(args, work, env)
  if 'scale' in only:
    run_scale(args, work, env)
  if 'exact' in only:
    run_exact(args, work, env)
  if 'cli' in only:
    run_cli(args, work, env)
  if 'sweep' in only:
    run_sweep(args, work, env)
  if 'repeat' in only:
    run_repeat(args, work, env)
  if 'thresholds' in only:
    run_thresholds(args, work, env)
  if 'plain' in only:
    run_plain(args, work, env)
  if 'views' in only:
    run_views(args, work, env)
  if 'precision' in only:
    run_precision(args, work, env)
  if 'memory_plan' in only:
    run_memory_plan(args, work, env)
  if 'best' in only:
    run_best(args, work, env)
  if 'profile_layers' in only:
    run_profile_layers(args, work, env)
  write_report(args)


if __name__ == '__main__':
  main()
