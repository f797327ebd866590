"""Data parallel over 8 simulated CPU devices and over 2 jax.distributed processes: same tally."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from tests.conftest import CATS, LABELS, make_broden, random_images


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ['--model=vgg16', '--weights=random', '--seed=2', '--layers=conv3_3,conv5_3',
        '--batch_size=8', '--tau=0.02', '--noprogress', '--topk=4']


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  rng = np.random.default_rng(11)
  return make_broden(tmp_path_factory.mktemp('dist') / 'broden', CATS, LABELS, random_images(rng, 21))


def _env(devices):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return env


def _outputs(run_dir):
  out = {}
  for layer in ('conv3_3', 'conv5_3'):
    doc = json.loads((run_dir / layer / 'results.json').read_text())
    top = np.load(run_dir / layer / 'topk.npz')
    out[layer] = ((run_dir / layer / 'tally.csv').read_text(),
                  [u['threshold'] for u in doc['units']], top['images'], top['maps'])
  return out


def _single(dataset, out, devices, *extra):
  r = subprocess.run([sys.executable, '-m', 'ndjax.main', *ARGS, f'--dataset={dataset}',
                      f'--outdir={out}', *extra], capture_output=True, text=True, cwd=REPO,
                     env=_env(devices), timeout=600)
  assert r.returncode == 0, r.stderr
  return _outputs(out / 'vgg16_random_s2')


def _assert_same(a, b):
  for layer in a:
    assert a[layer][0] == b[layer][0]                  # tally.csv byte for byte
    assert a[layer][1] == b[layer][1]                  # exact thresholds
    np.testing.assert_array_equal(a[layer][2], b[layer][2])
    np.testing.assert_array_equal(a[layer][3], b[layer][3])


@pytest.fixture(scope='module')
def reference(dataset, tmp_path_factory):
  return _single(dataset, tmp_path_factory.mktemp('one'), devices=1)


@pytest.mark.slow
def test_eight_devices_equal_one(dataset, tmp_path):
  # XLA:CPU's convolution rounding can depend on the batch it sees, so the reference runs the
  # same per-device batch (1 image) on one device; everything after the forward pass must agree
  # to the bit.
  one = _single(dataset, tmp_path / 'one', 1, '--batch_size=1')
  _assert_same(one, _single(dataset, tmp_path / 'eight', 8, '--batch_size=8'))


@pytest.mark.slow
def test_two_processes_equal_one(dataset, reference, tmp_path):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen([sys.executable, '-m', 'ndjax.main', *ARGS, f'--dataset={dataset}',
                             f'--outdir={tmp_path}', f'--coordinator_address=127.0.0.1:{port}',
                             '--num_processes=2', f'--process_id={i}'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=_env(1)) for i in range(2)]
  results = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, results):
    assert p.returncode == 0, err
  assert 'units are detectors' in results[0][0] and 'units are detectors' not in results[1][0]
  _assert_same(reference, _outputs(tmp_path / 'vgg16_random_s2'))
