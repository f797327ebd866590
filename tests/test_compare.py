"""Cross-run plots: the numbers drawn equal results.json's unique_detectors, for run and layer folders."""
import json
import os
import re
import subprocess
import sys

import pytest

from ndjax import compare
from tests.conftest import REPO, dissected_runs


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  return dissected_runs(tmp_path_factory, seeds=(1, 2))


def _unique(layer_dir):
  return json.loads((layer_dir / 'results.json').read_text())['unique_detectors']


def _svg_bars(path) -> dict[tuple[int, str], tuple[int, float]]:
  """{(bar index, category): (count in the id, drawn height)} read back from the SVG."""
  text = path.read_text()
  bars = {}
  for m in re.finditer(r'<g id="bar-(\d+)-([A-Za-z0-9_.-]+)-(\d+)">\s*<path d="([^"]*)"', text):
    ys = [float(v) for v in re.findall(r'[ML] [-\d.]+ ([-\d.]+)', m.group(4))]
    bars[int(m.group(1)), m.group(2)] = (int(m.group(3)), max(ys) - min(ys))
  return bars


def _check_figure(out, stem, expect):
  """expect: [(label, layer dir)]: the drawn segments are the layers' unique_detectors."""
  numbers = json.loads((out / 'compare.json').read_text())[stem]
  assert [b['label'] for b in numbers['bars']] == [label for label, _ in expect]
  bars = _svg_bars(out / f'{stem}.svg')
  scale = None
  for i, (_, layer) in enumerate(expect):
    unique = _unique(layer)
    assert numbers['bars'][i]['unique_detectors'] == unique
    assert numbers['bars'][i]['total'] == sum(unique.values())
    for cat, n in unique.items():
      drawn, height = bars[i, cat]
      assert drawn == n
      scale = scale or (height / n if n else None)
      if scale:
        assert abs(height - n * scale) < 1e-3 * max(1, n * scale), (stem, i, cat)
  assert len(bars) == len(expect) * len(_unique(expect[0][1]))
  assert (out / f'{stem}.png').stat().st_size > 5000


def test_compare_cli_runs_and_layers(runs, tmp_path):
  out = tmp_path / 'cmp'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, '-m', 'ndjax.compare', str(runs[1]), str(runs[2]),
                      f'--out={out}'], capture_output=True, text=True, cwd=REPO, env=env,
                     timeout=300)
  assert r.returncode == 0, r.stderr
  assert r.stderr.strip() == ''
  lines = r.stdout.splitlines()
  for seed in (1, 2):
    for layer in ('conv3', 'conv5'):
      unique = _unique(runs[seed] / layer)
      assert (f'alexnet_random_s{seed}/{layer}: {sum(unique.values())} unique concepts among '
              in '\n'.join(lines))
  stems = {'layers_alexnet_random_s1', 'layers_alexnet_random_s2', 'runs_conv3', 'runs_conv5',
           'runs'}
  assert {p.name for p in out.iterdir()} == ({f'{s}.{x}' for s in stems for x in ('png', 'svg')}
                                             | {'compare.json'})
  for seed in (1, 2):    # Fig. 13: across the layers of one run, in dissection order
    _check_figure(out, f'layers_alexnet_random_s{seed}',
                  [(l, runs[seed] / l) for l in ('conv3', 'conv5')])
  for layer in ('conv3', 'conv5'):    # Fig. 14: one layer across runs
    _check_figure(out, f'runs_{layer}', [(f'alexnet_random_s{s}', runs[s] / layer) for s in (1, 2)])
  _check_figure(out, 'runs', [(f'alexnet_random_s{s}\nconv5', runs[s] / 'conv5') for s in (1, 2)])
  assert 'unique detectors' in (out / 'runs.svg').read_text()    # text stays text


def test_layer_folders_and_same_named_runs(runs, tmp_path):
  """Layer folders as inputs keep the order given; two runs of one name get their parent's too."""
  copy = tmp_path / 'elsewhere' / runs[1].name / 'conv5'
  copy.mkdir(parents=True)
  copy.joinpath('results.json').write_bytes((runs[2] / 'conv5' / 'results.json').read_bytes())
  results = compare.load([runs[1] / 'conv5', runs[1] / 'conv3', copy, runs[1] / 'conv5'])
  assert [(r.run, r.layer) for r in results] == [
      ('out/alexnet_random_s1', 'conv5'), ('out/alexnet_random_s1', 'conv3'),
      ('elsewhere/alexnet_random_s1', 'conv5')]
  assert results[2].unique_detectors == _unique(runs[2] / 'conv5')
  written = compare.compare([runs[1] / 'conv5', runs[1] / 'conv3', copy], tmp_path / 'out')
  assert {p.name for p in written} >= {'layers_out_alexnet_random_s1.svg', 'runs_conv5.svg',
                                       'runs.svg', 'compare.json'}
  _check_figure(tmp_path / 'out', 'layers_out_alexnet_random_s1',
                [('conv5', runs[1] / 'conv5'), ('conv3', runs[1] / 'conv3')])


def _broken_layer(root):
  (root / 'layer').mkdir()
  (root / 'layer' / 'results.json').write_text('{')
  return root / 'layer'


@pytest.mark.parametrize('make, message', [
    (lambda root: root / 'missing', 'is not a directory'),
    (lambda root: root, 'holds no results.json'),
    (_broken_layer, 'is not a readable dissection results.json'),
])
def test_bad_input(tmp_path, make, message):
  with pytest.raises(compare.CompareError, match=message):
    compare.compare([make(tmp_path)], tmp_path / 'o')
  assert not (tmp_path / 'o').exists()


def test_cli_bad_input_is_one_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, '-m', 'ndjax.compare', str(tmp_path),
                      f'--out={tmp_path / "o"}'], capture_output=True, text=True, cwd=REPO,
                     env=env, timeout=120)
  assert r.returncode == 2 and r.stdout == ''
  assert r.stderr.strip().splitlines() == [
      f'ndjax.compare: error: {tmp_path} holds no results.json, nor do its subfolders: give a run '
      'folder (<outdir>/<run>) or a layer folder (<outdir>/<run>/<layer>)']


def _view_folder(run_dir, source, folder, view, unique):
  """A view folder with `source`'s results.json, as the CLI writes it for `view`."""
  doc = json.loads((source / 'results.json').read_text())
  doc.update(folder=folder, view=view, unique_detectors=unique)
  (run_dir / folder).mkdir(parents=True)
  (run_dir / folder / 'results.json').write_text(json.dumps(doc))
  return run_dir / folder


def _rotation(alpha):
  return {'name': f'rot_s0_a{alpha:g}', 'kind': 'rotation', 'tau': 0.005, 'seed': 0,
          'alpha': alpha, 'units': 256, 'orthogonality_error': 1e-7, 'det': 1.0}


def test_views_side_by_side(runs, tmp_path):
  """An alpha sweep: bars named by folder, a figure per layer across its views, and the plain
  layer (not a view) standing for a run in the cross-run figure."""
  sweep = {}
  for seed, alphas in ((1, (0.5, 1.0)), (2, (1.0,))):
    run_dir = tmp_path / 'sweep' / f'alexnet_s{seed}'
    for layer in ('conv3', 'conv5'):
      src = runs[seed] / layer
      _view_folder(run_dir, src, layer, {'name': '', 'kind': 'identity', 'tau': 0.005},
                   _unique(src))
    for i, a in enumerate(alphas):    # made-up counts, different from the plain layer's
      plain = _unique(runs[seed] / 'conv5')
      unique = {c: n + 2 * i + 1 + j for j, (c, n) in enumerate(plain.items())}
      _view_folder(run_dir, runs[seed] / 'conv5', f'conv5@rot_s0_a{a:g}', _rotation(a), unique)
    sweep[seed] = run_dir
  results = compare.load([sweep[1], sweep[2]])
  assert [(r.run, r.folder, r.view) for r in results] == [
      ('alexnet_s1', 'conv3', ''), ('alexnet_s1', 'conv5', ''),
      ('alexnet_s1', 'conv5@rot_s0_a0.5', 'rot_s0_a0.5'),
      ('alexnet_s1', 'conv5@rot_s0_a1', 'rot_s0_a1'),
      ('alexnet_s2', 'conv3', ''), ('alexnet_s2', 'conv5', ''),
      ('alexnet_s2', 'conv5@rot_s0_a1', 'rot_s0_a1')]
  lines = compare.summary_lines(results)
  unique = _unique(sweep[1] / 'conv5@rot_s0_a0.5')
  assert lines[2].startswith(f'alexnet_s1/conv5@rot_s0_a0.5: {sum(unique.values())} unique '
                             'concepts among 256 units')
  out = tmp_path / 'cmp'
  written = compare.compare([sweep[1], sweep[2]], out)
  stems = {'layers_alexnet_s1', 'views_alexnet_s1_conv5', 'layers_alexnet_s2',
           'views_alexnet_s2_conv5', 'runs_conv3', 'runs_conv5', 'runs_conv5_rot_s0_a1', 'runs'}
  assert {p.name for p in written} == ({f'{s}.{x}' for s in stems for x in ('png', 'svg')}
                                       | {'compare.json'})
  s1 = sweep[1]
  _check_figure(out, 'views_alexnet_s1_conv5', [(f, s1 / f) for f in (
      'conv5', 'conv5@rot_s0_a0.5', 'conv5@rot_s0_a1')])
  _check_figure(out, 'layers_alexnet_s1', [(f, s1 / f) for f in (
      'conv3', 'conv5', 'conv5@rot_s0_a0.5', 'conv5@rot_s0_a1')])
  _check_figure(out, 'runs_conv5_rot_s0_a1', [(f'alexnet_s{s}', sweep[s] / 'conv5@rot_s0_a1')
                                              for s in (1, 2)])
  _check_figure(out, 'runs', [(f'alexnet_s{s}\nconv5', sweep[s] / 'conv5') for s in (1, 2)])
  bars = json.loads((out / 'compare.json').read_text())['views_alexnet_s1_conv5']['bars']
  assert [(b['folder'], b['view']) for b in bars] == [
      ('conv5', ''), ('conv5@rot_s0_a0.5', 'rot_s0_a0.5'), ('conv5@rot_s0_a1', 'rot_s0_a1')]
  assert 'conv5@rot_s0_a0.5' in (out / 'views_alexnet_s1_conv5.svg').read_text()
