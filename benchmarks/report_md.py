"""Renders benchmarks/RESULTS.md from the JSON measurements in benchmarks/results/.

Pure formatting: every number comes from a saved measurement, so `run.py --report` rebuilds the
page at any time. A hand-written `results/analysis.md` (where the time goes, what to change), if
present, is included after the tables.
"""
from __future__ import annotations

import json
import pathlib


def _load(results: pathlib.Path, key: str):
  path = results / f'{key}.json'
  return json.loads(path.read_text()) if path.is_file() else None


def _f(x, digits=1, unit=''):
  return '—' if x is None else f'{x:,.{digits}f}{unit}'


def _ratio(a, b, digits=2):
  return '—' if a is None or b is None or not b else f'{a / b:.{digits}f}'


def _get(d, *keys):
  for k in keys:
    if d is None or k not in d:
      return None
    d = d[k]
  return d


def _machine(m) -> list[str]:
  if not m:
    return ['(machine facts not recorded yet)']
  v = m['versions']
  return [
      f'- measured {m["date"]}; CPU: {m["cpu"]}, {m["logical_cpus"]} logical CPUs '
      f'(AVX-512: {m["avx512"]}, AVX512-BF16: {m["avx512_bf16"]}), {m["memory_gb"]} GB RAM; {m["os"]}',
      f'- python {m["python"]}; jax {v["jax"]}, jaxlib {v["jaxlib"]}, flax {v["flax"]}; torch '
      f'{v["torch"]}, torchvision {v["torchvision"]}; numpy {v["numpy"]}; psutil {v["psutil"]}',
      f'- code: git {m.get("git_head", "?")}'
      + (f' plus uncommitted engine changes ({len(m["engine_uncommitted"])} files)'
         if m.get('engine_uncommitted') else '') + ' (other engineers edit the engine meanwhile)',
      f'- threads: PyTorch `set_num_threads({m["threads"]})`; XLA:CPU uses one thread per core '
      f'({m["logical_cpus"]}); both decode images in 4 Python threads; float32 on both sides; '
      f'XLA_FLAGS=`{m["xla_flags"] or "(none)"}`',
  ]


def _load_note(*runs) -> str:
  loads = [r.get('load_mean') for r in runs if r and r.get('load_mean') is not None]
  return f'{min(loads):.1f}–{max(loads):.1f}' if loads else '—'


def _mean(runs, *keys):
  values = [_get(r, *keys) for r in runs if r and 'failed' not in r]
  values = [v for v in values if v is not None]
  return sum(values) / len(values) if values else None


def _main(results: pathlib.Path) -> list[str]:
  rounds = lambda name: [r for r in (_load(results, f'main_{name}'), _load(results, f'main_{name}_r2'))
                         if r]
  fjs, fts, nes, trs = rounds('forward_jax'), rounds('forward_torch'), rounds('ndjax_e2e'), \
      rounds('torch_reference')
  prof, cli = _load(results, 'main_ndjax_profile'), _load(results, 'main_ndjax_cli')
  if not any((fjs, fts, nes, trs)):
    return ['(not measured yet)']
  fj = fjs[0] if fjs else None
  n = _get(fj, 'detail', 'images') or _mean(nes, 'detail', 'images')
  n_rounds = max(len(fjs), len(fts), len(nes), len(trs))
  lines = [
      f'VGG16 (ImageNet weights) `conv5_3`, {n} probe images (embedded synthetic Broden set, 224 px '
      f'images, 112 px masks), batch {_get(fj, "detail", "batch_size")}, tau 0.005. Load average '
      f'(1 min) of the machine during these runs: {_load_note(*fjs, *fts, *nes, *trs, prof)} on '
      f'{_machine_cpus(results)} cores (a load of ~2 is the measured process alone; wall times of '
      f'separate processes are only comparable at equal load; CPU seconds, all threads of the '
      f'process, are the steadier measure). '
      + (f'{n_rounds} rounds ran in opposite orders (ABBA); the targets are read from the '
         'least-loaded complete round.' if n_rounds > 1 else ''), '',
      '### Targets', '',
      '| target | measured | verdict |', '|---|---|---|',
  ]
  # the targets from the least-loaded complete round (wall clocks of a shared machine)
  complete = [i for i in range(n_rounds) if all(i < len(x) for x in (fjs, fts, nes, trs))]
  best_i = min(complete, key=lambda i: _mean([fjs[i], fts[i], nes[i], trs[i]], 'load_mean') or 99,
               default=None)
  pick = (lambda runs: runs[best_i]) if best_i is not None else (lambda runs: runs[0] if runs else None)
  fj_, ft_, ne_, tr_ = pick(fjs), pick(fts), pick(nes), pick(trs)
  load_ = _mean([fj_, ft_, ne_, tr_], 'load_mean')
  nd_d_, fwd_j_ = _get(ne_, 'detail', 'dissect'), _get(fj_, 'detail', 'forward_s')
  r1 = None if nd_d_ is None or fwd_j_ is None else nd_d_ / fwd_j_
  r1c = _ratio(_get(ne_, 'detail', 'cpu_s', 'dissect'), _fwd_cpu(fj_))
  pt = _get(prof, 'detail', 'timings') or {}
  r1p = ((pt['forward_and_threshold'] + pt['count']) / pt['forward']) if pt.get('forward') else None
  verdict = lambda x, limit: '—' if x is None else ('met' if x <= limit else 'MISSED')
  where = f'round {best_i + 1 if best_i is not None else 1}, load {_f(load_)}'
  r1w = _ratio(_get(ne_, 'wall_s'), _get(fj_, 'wall_s'), 3)
  lines.append(f'| ndjax dissection wall ≤ 1.05 × one bare ndjax forward pass | {where}: the '
               f'`dissect` call (its compiles included) / the forward loop (compile and warm-up '
               f'excluded) {_f(nd_d_)} s / {_f(fwd_j_)} s = **{_f(r1, 3)}×**, CPU **{r1c}×**; '
               f'whole processes (both with their compiles) **{r1w}×**; inside one profiled run: '
               f'passes / its forward stage = **{_f(r1p, 3)}×** | {verdict(r1, 1.05)} (processes: '
               f'{"—" if r1w == "—" else verdict(float(r1w), 1.05)}; same-run: '
               f'{verdict(r1p, 1.05)}) |')
  after = None
  if pt.get('forward') and n:
    after = 1000 * (pt['forward_and_threshold'] - pt['forward'] + pt['count']
                    + (_get(ne_, 'detail', 'outputs') or 0)) / n
  lines.append(f'| everything after the forward pass ≤ 3 ms per image (thresholds, top-k, upsample '
               f'+ count, outputs) | profiled run: **{_f(after, 2)} ms** per image (pass 1 '
               f'besides the forward {_f(pt.get("forward_and_threshold", 0) - pt.get("forward", 0), 2)}'
               f' s, pass 2 {_f(pt.get("count"), 2)} s, outputs {_f(_get(ne_, "detail", "outputs"), 2)}'
               f' s) | {verdict(after, 3.0)} |')
  r2 = _ratio(_get(ne_, 'wall_s'), _get(tr_, 'wall_s'))
  r2c = _ratio(_get(ne_, 'cpu_s'), _get(tr_, 'cpu_s'))
  lines.append(f'| ndjax end to end faster than the PyTorch reference (ratio < 1) | {where}: process '
               f'wall {_f(_get(ne_, "wall_s"))} s / {_f(_get(tr_, "wall_s"))} s = **{r2}**, CPU '
               f'**{r2c}** (batch 16 both; with each side\'s best batch see below) | '
               f'{"—" if r2 == "—" else ("met" if float(r2) < 1 else "MISSED")} |')
  lines += ['', '### Whole runs (each its own process)', '',
            '| run | round | timed wall s (process wall) | process CPU s | images/s | peak RSS MB | '
            'load avg |', '|---|---|---|---|---|---|---|']
  for label, runs in (('bare forward, ndjax (jit, compile excluded)', fjs),
                      ('bare forward, PyTorch (channels_last, inference_mode)', fts),
                      ('ndjax end to end (setup + dissect + outputs)', nes),
                      ('PyTorch reference end to end', trs),
                      ('ndjax `dissect(profile=True)` (stage clocks)', [prof] if prof else []),
                      ('`python -m ndjax.main` (the CLI, cross-check)', [cli] if cli else [])):
    for i, r in enumerate(runs):
      if 'failed' in r:
        lines.append(f'| {label} | {i + 1} | failed: `{r["failed"].strip().splitlines()[-1][:120]}` '
                     '| | | | |')
        continue
      timed = _get(r, 'detail', 'forward_s') or r['wall_s']
      lines.append(f'| {label} | {i + 1} | {_f(timed)} ({_f(r["wall_s"])}) | {_f(r["cpu_s"])} | '
                   f'{_f(n / timed if n else None, 2)} | {_f(r["peak_rss_mb"], 0)} | '
                   f'{_f(r.get("load_mean"))} |')
  def per_round(fn):
    values = []
    for i in range(n_rounds):
      pick = lambda runs: runs[i] if i < len(runs) else None
      try:
        values.append(fn(pick(fjs), pick(fts), pick(nes), pick(trs)))
      except (TypeError, ZeroDivisionError):
        values.append(None)
    return ' | '.join(_f(v, 2) for v in values)

  head = ' | '.join(f'round {i + 1} (load {_f(_mean([x for x in (fjs + fts + nes + trs)[i::max(1, n_rounds)]], "load_mean"))})'
                    for i in range(n_rounds))
  lines += ['', '### Ratios per round', '', f'| ratio | {head} |', '|---|' + '---|' * n_rounds,
            '| bare forward ndjax / PyTorch, wall | ' + per_round(
                lambda fj, ft, ne, tr: fj['detail']['forward_s'] / ft['detail']['forward_s']) + ' |',
            '| bare forward ndjax / PyTorch, CPU | ' + per_round(
                lambda fj, ft, ne, tr: _fwd_cpu(fj) / _fwd_cpu(ft)) + ' |',
            '| ndjax `dissect()` / bare ndjax forward, wall | ' + per_round(
                lambda fj, ft, ne, tr: ne['detail']['dissect'] / fj['detail']['forward_s']) + ' |',
            '| ndjax `dissect()` / bare ndjax forward, CPU | ' + per_round(
                lambda fj, ft, ne, tr: ne['detail']['cpu_s']['dissect'] / _fwd_cpu(fj)) + ' |',
            '| PyTorch dissection / bare PyTorch forward, wall | ' + per_round(
                lambda fj, ft, ne, tr: tr['detail']['dissect'] / ft['detail']['forward_s']) + ' |',
            '| ndjax / PyTorch end to end, process wall | ' + per_round(
                lambda fj, ft, ne, tr: ne['wall_s'] / tr['wall_s']) + ' |',
            '| ndjax / PyTorch end to end, process CPU | ' + per_round(
                lambda fj, ft, ne, tr: ne['cpu_s'] / tr['cpu_s']) + ' |',
            '| ndjax / PyTorch, dissection only, wall | ' + per_round(
                lambda fj, ft, ne, tr: ne['detail']['dissect'] / tr['detail']['dissect']) + ' |',
            '| ndjax / PyTorch, peak RSS | ' + per_round(
                lambda fj, ft, ne, tr: ne['peak_rss_mb'] / tr['peak_rss_mb']) + ' |',
            '', f'Same-run ratio from the profiled ndjax run: (pass 1 + pass 2) / its forward stage = '
            f'{_f(r1p, 2)}. The load averages of the rounds are in the table above: a load of ~2 '
            'on 2 cores is the measured process alone.']
  # the least-loaded round of each: stage clocks are wall clocks
  by_load = lambda runs: min(runs, key=lambda r: r.get('load_mean') or 99) if runs else None
  ne, tr = by_load(nes), by_load(trs)
  lines += ['', '### Per stage, seconds (ndjax from `profile=True`, which blocks after every stage; '
            'PyTorch is synchronous on CPU; each from its least-loaded run: ndjax load '
            f'{_f(_get(prof, "load_mean"))}, PyTorch load {_f(_get(tr, "load_mean"))})', '',
            '| stage | ndjax s | PyTorch s | ndjax, % of its forward | PyTorch, % of its forward |',
            '|---|---|---|---|---|']
  pt = _get(prof, 'detail', 'timings') or {}
  tt = _get(tr, 'detail') or {}
  groups = [
      ('setup: imports, model, weights', None, 'setup', ne, tr),
      ('forward (pass 1)', 'forward', 'forward', None, None),
      ('threshold: exact top-m merge', 'threshold', 'threshold', None, None),
      ('top-k images per unit (pass 1)', 'topk', 'topk', None, None),
      ('activation cache put/pop', 'cache', 'cache', None, None),
      ('waiting on image decode', 'decode_images', 'decode_images', None, None),
      ('waiting on label decode', 'decode_labels', 'decode_labels', None, None),
      ('label renumbering (stack_labels)', 'stack_labels', 'stack_labels', None, None),
      ('upsample + threshold + count', 'upsample_count', 'upsample_count', None, None),
      ('accumulate counts (host)', 'accumulate', 'accumulate', None, None),
      ('top-k maps gather (pass 2)', 'topk_maps', 'topk_maps', None, None),
      ('pass 1 total (forward + threshold)', 'forward_and_threshold', 'forward_and_threshold', None, None),
      ('pass 2 total (upsample + count)', 'count', 'count', None, None),
      ('outputs: scoring, tally.csv, results.json, topk.npz', None, 'outputs', ne, tr),
  ]
  for label, nkey, tkey, nsrc, tsrc in groups:
    a = _get(nsrc, 'detail', tkey) if nsrc is not None else pt.get(nkey)
    b = _get(tsrc, 'detail', tkey) if tsrc is not None else tt.get(tkey)
    share = lambda x, fwd: '—' if x is None or not fwd else f'{100 * x / fwd:.1f}%'
    lines.append(f'| {label} | {_f(a, 2)} | {_f(b, 2)} | {share(a, pt.get("forward"))} | '
                 f'{share(b, tt.get("forward"))} |')
  if ne and tr:
    nt = ne['detail']['timings']
    lines += ['', f'At equal load (ndjax end to end, profile off, load {_f(ne.get("load_mean"))}; PyTorch '
              f'load {_f(tr.get("load_mean"))}): pass 1 ndjax '
              f'{_f(nt.get("forward_and_threshold"))} s vs PyTorch {_f(tr["detail"]["forward_and_threshold"])} s; '
              f'pass 2 ndjax {_f(nt.get("count"))} s vs PyTorch {_f(tr["detail"]["count"])} s; setup '
              f'(imports, model, weights; ndjax also compiles later, inside pass 1) '
              f'{_f(_get(ne, "detail", "setup"))} s vs {_f(tr["detail"]["setup"])} s; outputs '
              f'{_f(_get(ne, "detail", "outputs"), 2)} s vs {_f(tr["detail"]["outputs"], 2)} s.']
  return lines


def _fwd_cpu(r):
  return _get(r, 'detail', 'forward_cpu_s') or _get(r, 'detail', 'cpu_s_including_untimed')


def _machine_cpus(results):
  m = _load(results, 'machine')
  return m['logical_cpus'] if m else '?'


def _parity(results: pathlib.Path, key: str) -> list[str]:
  p = _load(results, key)
  if not p:
    return ['(not measured yet)']
  lines = ['| layer | check | result |', '|---|---|---|']
  for layer, d in p['detail'].items():
    q = d['thresholds_vs_numpy_quantile']
    lines.append(f'| {layer} | ndjax T_k vs `numpy.quantile` over all {d["values_per_unit"]:,} '
                 f'values of each unit | {q["bit_identical_units"]}/{d["units"]} bit-identical '
                 f'(max abs diff {q["max_abs_diff"]:g}) |')
    for name, v in d.items():
      if name.startswith('torch_algorithm_on_ndjax_activations'):
        counts = v['counts']
        eq = [k for k, c in counts.items() if c['equal']]
        ne = [f'{k}: {c["entries_differing"]}/{c["entries"]} entries differ, Σ|Δ| '
              f'{c["sum_abs_diff"]} of {c["total"]:,}' for k, c in counts.items() if not c['equal']]
        lines.append(f'| {layer} | PyTorch algorithm {name[len("torch_algorithm_on_ndjax_activations"):]} '
                     f'on ndjax\'s activations | thresholds {v["thresholds_bit_identical_units"]}/'
                     f'{d["units"]} bit-identical; counts equal: {", ".join(eq) or "none"}'
                     f'{"; " + "; ".join(ne) if ne else ""} |')
    if 'torch_end_to_end_vs_ndjax' in d:
      v = d['torch_end_to_end_vs_ndjax']
      parts = [f'{k} {c["entries_differing"]}/{c["entries"]} entries differ (Σ|Δ| {c["sum_abs_diff"]} '
               f'of {c["total"]:,}, max {c["max_abs_diff"]})' for k, c in v['counts'].items()]
      lines.append(f'| {layer} | PyTorch end to end (its own convolutions) vs ndjax | thresholds '
                   f'{v["thresholds_bit_identical_units"]}/{d["units"]} bit-identical, median rel. '
                   f'diff {v["thresholds_median_rel_diff"]:.1e}, max {v["thresholds_max_rel_diff"]:.1e}; '
                   f'{"; ".join(parts)} |')
    if 'forward_activations_first_batch' in d:
      v = d['forward_activations_first_batch']
      lines.append(f'| {layer} | conv activations, PyTorch vs ndjax, first batch | max abs diff '
                   f'{v["max_abs_diff"]:.2e} at max value {v["max_abs_value"]:.1f} '
                   f'({v["max_diff_over_max_value"]:.1e} relative) |')
  return lines


# float32 activation bytes per 224 px image of each VGG16 layer (h * w * units * 4)
ACT_BYTES = {'conv3_3': 56 * 56 * 256 * 4, 'conv4_3': 28 * 28 * 512 * 4, 'conv5_3': 14 * 14 * 512 * 4}


def _scale(results: pathlib.Path) -> list[str]:
  rows = ['| layer | `--cache_gb` | images | process wall s | `dissect` wall s | pass 1 s | pass 2 s | `dissect` CPU s | '
          'peak RSS MB | activations total / spilled | load avg | 4× / 1× `dissect` wall | 4× / 1× `dissect` CPU | '
          'marginal wall s/image vs 1× s/image | RSS growth 1×→4× |',
          '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  any_row = False
  variants = sorted({p.stem.split('_cache')[1] for p in results.glob('scale_*_cache*.json')},
                    key=float, reverse=True)
  for layer, cache in ((l, c) for l in ('conv3_3', 'conv4_3', 'conv5_3') for c in variants):
    one = _load(results, f'scale_{layer}_1x_cache{cache}')
    four = _load(results, f'scale_{layer}_4x_cache{cache}')
    for factor, r in ((1, one), (4, four)):
      if not r:
        continue
      any_row = True
      extra = ['', '', '', '']
      if factor == 4 and one:
        d1, d4 = one['detail']['dissect'], r['detail']['dissect']
        c1, c4 = _get(one, 'detail', 'cpu_s', 'dissect'), _get(r, 'detail', 'cpu_s', 'dissect')
        n1 = one['images']
        extra = [f'{d4 / d1:.2f}', _ratio(c4, c1),
                 f'{(d4 - d1) / (r["images"] - n1):.3f} vs {d1 / n1:.3f}',
                 f'{100 * (r["peak_rss_mb"] / one["peak_rss_mb"] - 1):+.1f}%']
      t = r['detail']['timings']
      total_gb = r['images'] * ACT_BYTES[layer] / 2**30
      cache_gb = float(next((a.split('=')[1] for a in r['cmd'].split() if a.startswith('--cache_gb=')), 0))
      spilled = max(0.0, total_gb - cache_gb)
      rows.append(f'| {layer} | {cache} | {r["images"]} | {_f(r["wall_s"])} | {_f(r["detail"]["dissect"])} | '
                  f'{_f(t.get("forward_and_threshold"))} | {_f(t.get("count"))} | '
                  f'{_f(_get(r, "detail", "cpu_s", "dissect"))} | {_f(r["peak_rss_mb"], 0)} | '
                  f'{_f(total_gb, 2)} GB / {_f(spilled, 2)} GB | '
                  f'{_f(r.get("load_mean"))} | {" | ".join(extra)} |')
  return rows if any_row else ['(not measured yet)']


def _best(results: pathlib.Path) -> list[str]:
  names = ('torch_reference', 'ndjax_e2e', 'forward_torch', 'forward_jax')
  rounds = []
  for suffix in ('_best', '_best_r2'):
    runs = {n: _load(results, f'main_{n}{suffix}') for n in names}
    if any(runs.values()):
      rounds.append(runs)
  if not rounds:
    return ['(not measured yet)']
  first = rounds[0]
  flags = (first['ndjax_e2e'] or first['forward_jax'] or {}).get('xla_flags') or '(none)'
  lines = [f'ndjax: batch {_batch(first["ndjax_e2e"])}, XLA_FLAGS=`{flags}`; PyTorch: batch '
           f'{_batch(first["torch_reference"])}, eager channels_last (TorchScript freezing was not '
           'faster, see the sweep). Round 1 ran in the order PyTorch reference, ndjax, PyTorch '
           'forward, ndjax forward; round 2 (if present) in the reverse order.', '',
           '| run | round | timed wall s (process wall) | process CPU s | images/s | peak RSS MB | '
           'load avg |', '|---|---|---|---|---|---|---|']
  for i, runs in enumerate(rounds):
    n = _get(runs['ndjax_e2e'], 'detail', 'images') or _get(runs['forward_jax'], 'detail', 'images')
    for label, name in (('PyTorch reference end to end', 'torch_reference'),
                        ('ndjax end to end', 'ndjax_e2e'), ('bare forward, PyTorch', 'forward_torch'),
                        ('bare forward, ndjax', 'forward_jax')):
      r = runs[name]
      if r:
        timed = _get(r, 'detail', 'forward_s') or r['wall_s']
        lines.append(f'| {label} | {i + 1} | {_f(timed)} ({_f(r["wall_s"])}) | {_f(r["cpu_s"])} | '
                     f'{_f(n / timed if n else None, 2)} | {_f(r["peak_rss_mb"], 0)} | '
                     f'{_f(r.get("load_mean"))} |')

  def ratio_row(label, fn):
    cells = []
    for runs in rounds:
      try:
        cells.append(_f(fn(runs['forward_jax'], runs['forward_torch'], runs['ndjax_e2e'],
                           runs['torch_reference']), 2))
      except (TypeError, KeyError, ZeroDivisionError):
        cells.append('—')
    return f'| {label} | ' + ' | '.join(cells) + ' |'

  head = ' | '.join(f'round {i + 1}' for i in range(len(rounds)))
  lines += ['', f'| ratio | {head} |', '|---|' + '---|' * len(rounds),
            ratio_row('ndjax `dissect()` / bare ndjax forward, wall (target ≤ 1.05)',
                      lambda fj, ft, ne, tr: ne['detail']['dissect'] / fj['detail']['forward_s']),
            ratio_row('ndjax `dissect()` / bare ndjax forward, CPU',
                      lambda fj, ft, ne, tr: ne['detail']['cpu_s']['dissect'] / _fwd_cpu(fj)),
            ratio_row('ndjax / PyTorch end to end, process wall (target < 1)',
                      lambda fj, ft, ne, tr: ne['wall_s'] / tr['wall_s']),
            ratio_row('ndjax / PyTorch end to end, process CPU',
                      lambda fj, ft, ne, tr: ne['cpu_s'] / tr['cpu_s']),
            ratio_row('bare forward ndjax / PyTorch, wall',
                      lambda fj, ft, ne, tr: fj['detail']['forward_s'] / ft['detail']['forward_s']),
            ratio_row('bare forward ndjax / PyTorch, CPU',
                      lambda fj, ft, ne, tr: _fwd_cpu(fj) / _fwd_cpu(ft)),
            ratio_row('PyTorch dissection / bare PyTorch forward, wall',
                      lambda fj, ft, ne, tr: tr['detail']['dissect'] / ft['detail']['forward_s'])]
  for i, runs in enumerate(rounds):
    ne, tr = runs['ndjax_e2e'], runs['torch_reference']
    if ne and tr:
      nt, tt = ne['detail']['timings'], tr['detail']
      lines += ['', f'Round {i + 1} pass totals: ndjax pass 1 {_f(nt.get("forward_and_threshold"))} s, '
                f'pass 2 {_f(nt.get("count"))} s; PyTorch pass 1 {_f(tt.get("forward_and_threshold"))} s '
                f'(forward {_f(tt.get("forward"))} s), pass 2 {_f(tt.get("count"))} s '
                f'(upsample + count {_f(tt.get("upsample_count"))} s).']
  return lines


def _batch(r):
  cmd = (r or {}).get('cmd', '')
  return next((a.split('=')[1] for a in cmd.split() if a.startswith('--batch_size=')), '?')


def _sweep(results: pathlib.Path) -> list[str]:
  rows = ['| framework | batch | setting (XLA_FLAGS) | forward s | images/s | CPU s / image | load avg |',
          '|---|---|---|---|---|---|---|']
  found = sorted(results.glob('sweep_*.json'), key=lambda p: p.stat().st_mtime)
  for path in found:
    r = json.loads(path.read_text())
    if 'failed' in r:
      rows.append(f'| {r["framework"]} | {r["batch_size"]} | `{r["xla_flags"]}` | failed | | | |')
      continue
    d = r['detail']
    setting = ('TorchScript trace + freeze + optimize_for_inference' if r['xla_flags'] == 'frozen'
               else f'`{r["xla_flags"] or "(none)"}`')
    rows.append(f'| {r["framework"]} | {r["batch_size"]} | {setting} | '
                f'{_f(d["forward_s"])} | {_f(d["images_per_s"], 2)} | '
                f'{_f(d["forward_cpu_s"] / d["images"], 3)} | {_f(r.get("load_mean"))} |')
  return rows if found else ['(not measured yet)']


def _stamp(result: dict) -> str:
  m = result.get('machine') or {}
  return (f'Measured {m["date"][:16].replace("T", " ")} on {m["cpu"]}, {m["logical_cpus"]} logical '
          f'CPUs, git {m["git_head"]}.' if m else '')


def _section(title: str, result: dict | None, body) -> list[str]:
  """A report section: heading, when and where it was measured, `body(detail)` lines."""
  if not result:
    return [f'## {title}', '', '(not measured yet)', '']
  return [f'## {title}', '', _stamp(result), '', *body(result['detail']), '']


def _selection_body(d: list[dict]) -> list[str]:
  names = (('topk_merge', 'per-batch `lax.top_k` merge (before)'),
           ('top_m_set', 'top-m set: floor cut + `np.partition` (now, one pass)'),
           ('histogram', 'histogram selection (now, two passes, fixed memory)'))
  lines = ['Selection calls only (the values are generated outside the clock); wall and '
           'process CPU seconds; 4x/1x is the CPU-second ratio (linear = 4.0).', '',
           '| selection | ' + ' | '.join(f'{r["images"]:,} images: wall s / CPU s' for r in d) +
           ' | 4x / 1x CPU |', '|---|' + '---|' * (len(d) + 1)]
  for key, label in names:
    cells = [f'{_f(r.get(key + "_wall_s"), 2)} / {_f(r.get(key + "_cpu_s"), 2)}' for r in d]
    ratio = (d[-1][key + '_cpu_s'] / d[0][key + '_cpu_s']
             if key + '_cpu_s' in d[-1] and key + '_cpu_s' in d[0] else None)
    lines.append(f'| {label} | ' + ' | '.join(cells) + f' | {_f(ratio, 2)} |')
  return lines + ['', 'Same thresholds from all three: ' + ', '.join(
      f'{r["images"]:,} images {"yes" if r["all_equal"] else "NO"}' for r in d)]


def _plain_body(d: dict) -> list[str]:
  return [f'Batch {d["batch_size"]}, {d["reps"]} A/B pairs in one process: median ndjax / plain = '
          f'**{d["ratio_median"]:.3f}**; outputs bit-identical: {"yes" if d["bit_identical"] else "NO"}. '
          f'Seconds per batch, ndjax: {", ".join(f"{t:.2f}" for t in d["ndjax_s"])}; plain: '
          f'{", ".join(f"{t:.2f}" for t in d["plain_s"])}.']


def _memory_plan_body(d: dict) -> list[str]:
  lines = [f'{d["images"]:,} images at 224 px, tau {d["tau"]}, cap {d["cap_gib"]:g} GiB '
           f'(`DissectConfig.max_buffer_gb`). Top-m sets for all 13 layers would take '
           f'{d["top_m_only_gib"]:.1f} GiB; the plan takes **{d["planned_gib"]:.1f} GiB**. '
           'Arithmetic from the model\'s tap shapes and the pipeline\'s own `choose_selection`.',
           '', '| layer | map | values per unit | m | top-m GiB | histogram GiB | plan | '
           'activations GiB (cache: memory, disk or recompute) |', '|---|---|---|---|---|---|---|---|']
  for r in d['rows']:
    lines.append(f'| {r["layer"]} | {"×".join(map(str, r["shape"]))} | {r["values_per_unit"]:,} | '
                 f'{r["m"]:,} | {r["top_m_gib"]:.2f} | {r["histogram_gib"]:.2f} | {r["selection"]} | '
                 f'{r["activations_gib"]:.0f} |')
  return lines


def _views_body(d: list[dict]) -> list[str]:
  lines = ['| views | n | images | forward s (shared) | pass 2 s (first run, with compiles) | '
           'pass 2 s | of which upsample + count s | pass 2 ms / image / view |',
           '|---|---|---|---|---|---|---|---|']
  for r in d:
    lines.append(f'| {r["case"]} | {r["views"]} | {r["images"]:,} | {_f(r["forward_s"], 1)} | '
                 f'{_f(r.get("pass2_cold_s"), 1)} | {_f(r["pass2_s"], 1)} | '
                 f'{_f(r["upsample_count_s"], 1)} | {_f(r["pass2_ms_per_image_per_view"], 2)} |')
  return lines


def _precision_body(d: dict) -> list[str]:
  return [f'{d["images"]:,} images of the default probe set, {d["layer"]}, each dissection run '
          'twice in one process (the second reported, compiles excluded).', '',
          '| | float32 | bfloat16 |', '|---|---|---|',
          f'| dissection wall s | {_f(d["float32_s"], 1)} | {_f(d["bfloat16_s"], 1)} |',
          f'| detectors (best IoU > 0.04) | {d["detectors_float32"]} | {d["detectors_bfloat16"]} |',
          f'| unique detector labels | {d["unique_detectors_float32"]} | '
          f'{d["unique_detectors_bfloat16"]} |', '',
          f'Same best label on {100 * d["label_agreement"]:.1f} % of the {d["units_compared"]} '
          f'units with any IoU; largest change of a unit\'s best IoU {d["max_best_iou_diff"]:.4f}; '
          f'thresholds move by up to {100 * d["threshold_max_rel_diff"]:.2f} % (relative).']


def render(results: pathlib.Path) -> str:
  machine = _load(results, 'machine')
  lines = ['# ndjax vs PyTorch: benchmark results', '',
           'Written by `benchmarks/run.py` (one command; see its docstring and README "Benchmarks"). '
           'Every number below is from the JSON files in `benchmarks/results/`; peak RSS is the '
           'kernel high-water mark of the measured process (`wait4` ru_maxrss); RSS over time is in '
           '`results/*.rss.csv`.', '', '## Machine', '', *_machine(machine), '',
           '## Main: VGG16 conv5_3, ndjax vs the PyTorch reference', '', *_main(results), '',
           '## Main with each framework\'s best forward settings', '', *_best(results), '',
           '## Correctness on the benchmark set', '', *_parity(results, 'main_parity'), '',
           '## Scaling: 1× vs 4× images, bounded memory', '']
  lines += ['ndjax end to end (the CLI\'s steps) per layer, at most `--cache_gb` of activations in '
            'memory, the rest spilled losslessly to disk (`--cache_dir`). Time linearity: 4×/1× of '
            'the `dissect` call (the 1× carries the fixed compile cost, so 4× / 1× slightly under 4 '
            'is linear), and the marginal seconds per extra image against the 1× seconds per image.',
            '']
  lines += _scale(results)
  lines += ['', '## Exact thresholds and counts on the early layers (1× set)', '',
            *_parity(results, 'exact_parity'), '']
  profiles = [(l, _load(results, f'profile_{l}')) for l in ('conv3_3', 'conv4_3')]
  main_prof = _load(results, 'main_ndjax_profile')
  profiles.append(('conv5_3', main_prof))
  if any(p for _, p in profiles[:2]):
    stages = ('forward', 'threshold', 'topk', 'cache', 'decode_images', 'stack_labels',
              'upsample_count', 'accumulate', 'topk_maps', 'decode_labels',
              'forward_and_threshold', 'count')
    lines += ['## Where ndjax spends its time, per layer (`dissect(profile=True)`, seconds)', '',
              '| layer | images | ' + ' | '.join(stages) + ' | passes / forward | load avg |',
              '|---|---|' + '---|' * (len(stages) + 2)]
    for layer, p in profiles:
      if not p:
        continue
      t = p['detail']['timings']
      ratio = (t['forward_and_threshold'] + t['count']) / t['forward'] if t.get('forward') else None
      lines.append(f'| {layer} | {p["detail"]["images"]} | ' +
                   ' | '.join(_f(t.get(s_), 1) for s_ in stages) +
                   f' | {_f(ratio, 2)} | {_f(p.get("load_mean"))} |')
    lines += ['']
  lines += _section('Exact thresholds over a whole pass, 1x and 4x images (conv3_3 shapes: 256 '
                    'units, 56 × 56, ReLU values, batches of 16)',
                    _load(results, 'threshold_selection_cost'), _selection_body)
  lines += _section('ndjax\'s model code against a plain `lax.conv` stack (VGG16 to conv5_3, same '
                    'weights)', _load(results, 'forward_vs_plain_conv'), _plain_body)
  lines += _section('Every VGG16 conv layer over a Broden-sized probe set: the exact-threshold '
                    'memory plan', _load(results, 'memory_plan_broden'), _memory_plan_body)
  lines += _section('The counting pass per view (VGG16 conv5_3)',
                    _load(results, 'count_pass_per_view'), _views_body)
  lines += _section('`--compute_dtype=bfloat16` against float32 (VGG16 conv5_3)',
                    _load(results, 'compute_dtype_bf16'), _precision_body)
  lines += ['## Forward-pass settings (bare forward, first images of the main set)', '',
            *_sweep(results), '']
  analysis = results / 'analysis.md'
  if analysis.is_file():
    lines += [analysis.read_text().rstrip(), '']
  return '\n'.join(lines) + '\n'
