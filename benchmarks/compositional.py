r"""Compositional explanations: ndjax's label-set search against a brute-force pixel-mask search.

  .venv/bin/python benchmarks/compositional.py --results=<run>/conv5_3 --units=0,1,2,3

The reference is compexp's algorithm (Mu & Andreas 2020) written plainly in NumPy: every unit
mask and every label mask is an explicit bit array over all probe pixels (packed, 1 bit per mask
pixel), and every candidate formula of every beam step is evaluated by bitwise AND / OR / AND NOT
over those arrays and scored by popcounts. It shares ndjax's beam rules (the best `beam_size`
single labels with IoU > 0; candidates in compexp's order; no repeated label; one beam slot per
distinct mask) so that both must return the same formulas with the same IoUs, which this script
checks. Unit masks come from the model's forward pass and `upsample.threshold_masks` at the
thresholds of the dissection folder (the mask semantics are tested elsewhere; this measures and
checks the search). Times: the reference per unit (extrapolated to the layer), ndjax's search
over every unit of the layer; written as JSON with the CPU model.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def unit_masks(results_dir, units, batch_size=8):
  """(len(units), pixels / 8) packed unit masks over the probe set, in image order."""
  import jax.numpy as jnp
  from ndjax import activations, api, results, upsample
  vd = results.load(results_dir)
  res = vd.results
  model = api.load_model(res['model'], res['weights'], res.get('seed', 0))
  ds = api.open_probe(res.get('resolved', {}).get('dataset') or None, progress=False)
  ds = dataclasses.replace(ds, records=ds.records[:res['images']])     # an --images subset
  layer = res['layer']
  forward = activations.make_forward(model.module, [layer])
  thresholds = jnp.asarray(vd.thresholds[units])
  out = []
  for s in range(0, len(ds.records), batch_size):
    ids = range(s, min(s + batch_size, len(ds.records)))
    images = np.stack([ds.load_image(i) for i in ids])
    acts = forward(images)[layer][..., units]
    rec = ds.records[s]
    wy, wx = upsample.matrices(res['upsample']['mode'], acts.shape[1:3], (rec.ih, rec.iw),
                               (rec.sh, rec.sw), model.module.rf_geometry(layer))
    m = np.asarray(upsample.threshold_masks(acts, thresholds, jnp.asarray(wy), jnp.asarray(wx)))
    out.append(m.reshape(len(ids), len(units), -1).transpose(1, 0, 2))        # (U, b, X)
    if s % 400 == 0:
      print(f'  forward {s}/{len(ds.records)}', file=sys.stderr, flush=True)
  masks = np.concatenate(out, axis=1).reshape(len(units), -1)
  return np.packbits(masks, axis=1), ds


def label_masks(ds):
  """(num_labels, pixels / 8) packed: label c's pixels (image-level labels: the whole image)."""
  from ndjax import labels as labels_lib
  x = ds.records[0].sh * ds.records[0].sw
  n = len(ds.records)
  bits = np.zeros((ds.num_labels, n * x), bool)
  for i in range(n):
    im = labels_lib.image_labels(*ds.load_labels(i), ds.primary, len(ds.categories))
    bits[im.ids, i * x:(i + 1) * x] = im.sets.T
  return np.packbits(bits, axis=1)


def popcount(a) -> int:
  return int(np.bitwise_count(a).sum(dtype=np.int64))


def brute_force(unit, labels, beam_size=5, max_length=3):
  """compexp's beam search on explicit masks; -> [(labels, ops, iou)] best first."""
  unit_px = popcount(unit)
  label_px = np.array([popcount(l) for l in labels])
  iou = lambda m: (lambda i: i / (unit_px + popcount(m) - i) if unit_px + popcount(m) - i else 0.0)(
      popcount(unit & m))
  singles = np.array([iou(l) if label_px[c] else 0.0 for c, l in enumerate(labels)])
  order = np.argsort(-singles, kind='stable')[:beam_size]
  beam = [((int(c),), (), labels[c], singles[c]) for c in order if singles[c] > 0]
  for _ in range(max_length - 1):
    cands = list(beam)
    for labs, ops, mask, _ in beam:
      for c in range(len(labels)):
        if not label_px[c] or c in labs:
          continue
        for op, new in enumerate((mask | labels[c], mask & labels[c], mask & ~labels[c])):
          cands.append((labs + (c,), ops + (op,), new, iou(new)))
    order = sorted(range(len(cands)), key=lambda i: -cands[i][3])     # stable: compexp's order
    beam, seen = [], set()
    for i in order:
      key = cands[i][2].tobytes()
      if key not in seen:
        seen.add(key)
        beam.append(cands[i])
      if len(beam) == beam_size:
        break
  return [(labs, ops, s) for labs, ops, _, s in beam]


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--results', required=True, help='dissected layer folder holding sets.npz')
  p.add_argument('--units', default='0,1,2,3', help='units for the brute-force reference')
  p.add_argument('--out', default='benchmarks/results/compositional.json')
  args = p.parse_args()
  from ndjax import formulas, labelsets, results
  units = [int(u) for u in args.units.split(',')]
  sets = labelsets.LabelSets.load(os.path.join(args.results, labelsets.FILE))
  probe = results.load(args.results).probe
  t0 = time.perf_counter()
  ours = formulas.explain(sets, len(probe.label_names))
  ours_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  umasks, ds = unit_masks(args.results, units)
  lmasks = label_masks(ds)
  masks_s = time.perf_counter() - t0
  per_unit, agree = [], []
  for j, u in enumerate(units):
    t0 = time.perf_counter()
    ref = brute_force(umasks[j], lmasks)
    per_unit.append(time.perf_counter() - t0)
    mine = [(f.labels, f.ops, s) for f, s in ours[u].beam]
    same = (len(ref) == len(mine) and all(a[:2] == b[:2] and a[2] == b[2] for a, b in zip(ref, mine)))
    agree.append(same)
    show = lambda labs, ops: formulas.Formula(labs, ops).to_str(probe.label_names)
    print(f'unit {u}: reference {show(*ref[0][:2])} {ref[0][2]:.6f} ({per_unit[-1]:.1f} s); '
          f'ndjax {show(*mine[0][:2])} {mine[0][2]:.6f}; whole beam identical: {same}', flush=True)
  k = sets.unit_pixels.shape[0]
  doc = dict(results=os.path.abspath(args.results), units=units, layer_units=k,
             label_sets=sets.num_sets, labels=len(probe.label_names),
             pixels=int(sets.pixels.sum()), ndjax_search_all_units_s=round(ours_s, 2),
             reference_s_per_unit=[round(t, 1) for t in per_unit],
             reference_extrapolated_all_units_s=round(float(np.mean(per_unit)) * k, 0),
             reference_mask_building_s=round(masks_s, 1), beams_identical=agree,
             cpu=_cpu(), cores=os.cpu_count(), python=platform.python_version(),
             measured=time.strftime('%Y-%m-%dT%H:%M:%S'))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out + '.tmp', 'w') as f:
    json.dump(doc, f, indent=1)
  os.replace(args.out + '.tmp', args.out)
  print(json.dumps(doc, indent=1))
  if not all(agree):
    sys.exit(1)


def _cpu() -> str:
  try:
    for line in open('/proc/cpuinfo'):
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


if __name__ == '__main__':
  main()
