"""Kill a dissection with SIGKILL in each pass, resume it, and get a bit-identical result."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tests.conftest import CATS, LABELS, make_broden, random_images


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ['--model=vgg16', '--weights=random', '--seed=5', '--layers=conv4_3,conv5_3', '--batch_size=2',
        '--tau=0.02', '--noprogress', '--topk=3', '--checkpoint_every=1', '--run_name=r',
        '--label_sets']       # the label-set counts and their registry resume too


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  return make_broden(tmp_path_factory.mktemp('resume') / 'broden', CATS, LABELS,
                     random_images(np.random.default_rng(3), 24))


def _cmd(dataset, out, *extra):
  return [sys.executable, '-m', 'ndjax.main', *ARGS, f'--dataset={dataset}', f'--outdir={out}', *extra]


def _kill_when(proc, out, phase, done_at_least, timeout=300):
  """SIGKILL the run once its checkpoint says it is in `phase` with >= `done_at_least` batches."""
  from ndjax import resume
  deadline = time.time() + timeout
  store = resume.StateStore(str(out / 'r' / '.resume'), 0, {})
  while time.time() < deadline:
    assert proc.poll() is None, 'run finished before it could be killed'
    try:
      states = store._states()
      if states:
        import orbax.checkpoint as ocp
        tree = ocp.v1.load(states[-1][1])
        if int(tree['phase']) == phase and int(tree['done']) >= done_at_least:
          proc.send_signal(signal.SIGKILL)
          proc.wait()
          return int(tree['done'])
    except Exception:       # a state being written or removed right now: look again
      pass
    time.sleep(0.05)
  raise AssertionError('no checkpoint appeared')


def _outputs(out):
  res = {}
  for layer in ('conv4_3', 'conv5_3'):
    d = out / 'r' / layer
    top = np.load(d / 'topk.npz')
    sets = np.load(d / 'sets.npz')
    res[layer] = ((d / 'tally.csv').read_text(),
                  [u['threshold'] for u in json.loads((d / 'results.json').read_text())['units']],
                  top['images'], top['maps'], sets['members'], sets['unit_pixels'], sets['pixels'])
  return res


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(dataset, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  ref = subprocess.run(_cmd(dataset, tmp_path / 'ref'), capture_output=True, text=True, cwd=REPO,
                       env=env, timeout=600)
  assert ref.returncode == 0, ref.stderr
  assert not (tmp_path / 'ref' / 'r' / '.resume').exists()     # removed after a finished run

  out = tmp_path / 'killed'
  p = subprocess.Popen(_cmd(dataset, out), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
  _kill_when(p, out, phase=1, done_at_least=3)                 # killed during pass 1
  p = subprocess.Popen(_cmd(dataset, out, '--resume'), cwd=REPO, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _kill_when(p, out, phase=2, done_at_least=4)                 # and again during pass 2
  assert not (out / 'r' / 'conv5_3' / 'tally.csv').exists()    # nothing written yet
  r = subprocess.run(_cmd(dataset, out, '--resume'), capture_output=True, text=True, cwd=REPO,
                     env=env, timeout=600)
  assert r.returncode == 0, r.stderr
  doc = json.loads((out / 'r' / 'conv5_3' / 'results.json').read_text())
  assert doc['resumed_from']['phase'] == 2 and doc['resumed_from']['done'] >= 4
  a, b = _outputs(tmp_path / 'ref'), _outputs(out)
  for layer in a:
    assert a[layer][0] == b[layer][0]
    assert a[layer][1] == b[layer][1]
    np.testing.assert_array_equal(a[layer][2], b[layer][2])
    for i in range(3, 7):
      np.testing.assert_array_equal(a[layer][i], b[layer][i])


def test_resume_refuses_another_run(dataset, tmp_path, monkeypatch):
  from ndjax import resume
  monkeypatch.chdir(tmp_path)                 # a relative checkpoint dir, as --outdir's default is
  store = resume.StateStore('ck', 0, {'tau': 0.02})
  store.save({'phase': np.array(1)})
  other = resume.StateStore(str(tmp_path / 'ck'), 0, {'tau': 0.005})
  with pytest.raises(resume.ResumeError, match='different run .*tau'):
    other.load_latest()
  assert int(resume.StateStore(str(tmp_path / 'ck'), 0, {'tau': 0.02}).load_latest()['phase']) == 1
