"""The accelerator benchmark (run by benchmarks/accelerator.sh): VGG16 conv5_3 over a generated
Broden-format probe set, on whatever `jax.devices()` offers, written to one JSON file.

Measures, on one device kind, in one process:
  - the bare forward pass (the same compiled forward the dissection uses) over preloaded images;
  - the whole dissection (`ndjax.api.dissect`, decode included) and its ratio to the bare forward;
  - a per-stage profile of the dissection on a subset (`profile=True` blocks after each stage);
  - bfloat16 compute against float32 on a subset: label agreement and the largest IoU change.
Random VGG16 weights (seed 0) unless --weights names a checkpoint carried to the machine: the
device machine reaches no registry. Needs nothing beyond ndjax's own dependencies.

  python benchmarks/accelerator.py --images=63305 --out=results.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np


def machine() -> dict:
  import jax
  dev = jax.devices()
  return dict(backend=jax.default_backend(), devices=[str(d) for d in dev],
              device_kind=dev[0].device_kind, device_count=len(dev), jax=jax.__version__,
              python=platform.python_version(), host_cpus=os.cpu_count(),
              host=platform.platform())


def build_probe(n: int, root: pathlib.Path) -> tuple[str, float]:
  out = root / f'synthetic_{n}'
  t = time.perf_counter()
  if not (out / 'index.csv').is_file():
    subprocess.run([sys.executable, '-m', 'ndjax.probes.build', '--probe=synthetic', f'--out={out}',
                    f'--n_images={n}', f'--workers={max(1, (os.cpu_count() or 2) - 1)}',
                    '--noprogress'], check=True)
  return str(out), time.perf_counter() - t


def best_labels(out, ds, layer: str):
  from ndjax import tally
  labels = tally.label_units(out.layers[layer].counts, ds, 'paper')
  return labels.best_label, labels.best_iou


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--images', type=int, default=63305, help='probe images (Broden: 63,305)')
  p.add_argument('--subset', type=int, default=2000, help='images for the profile and bf16 runs')
  p.add_argument('--batch_size', type=int, default=0, help='0: 64 on accelerators, 8 on CPU')
  p.add_argument('--layer', default='conv5_3')
  p.add_argument('--weights', default='random')
  p.add_argument('--work', default=os.path.join(tempfile.gettempdir(), 'ndjax_accel'))
  p.add_argument('--out', required=True, help='the results JSON')
  p.add_argument('--tests', default='', help='pytest summary line to record')
  args = p.parse_args()

  import jax
  from ndjax import activations, api
  facts = machine()
  bs = args.batch_size or (8 if facts['backend'] == 'cpu' else 64)
  result = dict(machine=facts, images=args.images, batch_size=bs, layer=args.layer,
                weights=args.weights, tests=args.tests)
  out_path = pathlib.Path(args.out)
  out_path.parent.mkdir(parents=True, exist_ok=True)

  def save():
    tmp = out_path.with_suffix('.tmp')
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out_path)

  work = pathlib.Path(args.work)
  work.mkdir(parents=True, exist_ok=True)
  root, build_s = build_probe(args.images, work)
  result['probe_build_s'] = round(build_s, 1)
  ds = api.open_probe(root, progress=False)
  model = api.load_model('vgg16', args.weights, 0)
  save()

  # bare forward over preloaded images: what the dissection should cost little more than
  n_pre = min(args.images, 4096)
  images = np.stack([ds.load_image(i) for i in range(n_pre)])
  forward = activations.make_forward(model.module, [args.layer])
  jax.block_until_ready(forward(images[:bs]))                          # compile
  t = time.perf_counter()
  done = 0
  while done < args.images:
    start = done % (n_pre - bs + 1)
    last = forward(images[start:start + bs])
    done += bs
  jax.block_until_ready(last)
  fwd = time.perf_counter() - t
  result['bare_forward'] = dict(s=round(fwd, 2), ms_per_image=round(1000 * fwd / done, 3))
  save()

  # the whole dissection, decode included
  t = time.perf_counter()
  full = api.dissect(model, ds, [args.layer], batch_size=bs, progress=False)
  wall = time.perf_counter() - t
  result['dissection'] = dict(s=round(wall, 2), ms_per_image=round(1000 * wall / args.images, 3),
                              over_bare_forward=round(wall / fwd, 3),
                              timings_s={k: round(v, 2) for k, v in full.timings.items()})
  save()

  # per-stage profile and bf16 vs f32 on a subset
  sub = dataclasses.replace(ds, records=list(ds.records[:args.subset]))
  prof = api.dissect(model, sub, [args.layer], batch_size=bs, progress=False, profile=True)
  result['profile_subset'] = dict(images=args.subset, timings_s={k: round(v, 3) for k, v in
                                                                 prof.timings.items()})
  save()
  runs = {}
  for dtype in ('float32', 'bfloat16'):
    t = time.perf_counter()
    runs[dtype] = api.dissect(model, sub, [args.layer], batch_size=bs, progress=False,
                              compute_dtype=dtype)
    runs[dtype + '_s'] = time.perf_counter() - t
  l32, iou32 = best_labels(runs['float32'], sub, args.layer)
  l16, iou16 = best_labels(runs['bfloat16'], sub, args.layer)
  live = iou32 > 0
  result['bfloat16_vs_float32'] = dict(
      images=args.subset, label_agreement=float(np.mean(l32[live] == l16[live])) if live.any() else None,
      max_best_iou_diff=float(np.abs(iou32 - iou16).max()),
      float32_s=round(runs['float32_s'], 2), bfloat16_s=round(runs['bfloat16_s'], 2))
  save()
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  main()
