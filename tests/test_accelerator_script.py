"""benchmarks/accelerator.sh takes the CPU path cleanly where there is no accelerator: it runs its
steps on jax's default backend and writes one complete results file."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_accelerator_script_runs_on_cpu(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable, NDJAX_ACCEL_IMAGES='16', NDJAX_ACCEL_SUBSET='8',
             NDJAX_ACCEL_TESTS='0', TMPDIR=str(tmp_path))
  r = subprocess.run(['bash', os.path.join(ROOT, 'benchmarks', 'accelerator.sh'),
                      str(tmp_path / 'out')], env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-2000:]
  res = json.loads((tmp_path / 'out' / 'accelerator.json').read_text())
  assert res['machine']['backend'] == 'cpu' and res['batch_size'] == 8
  assert res['dissection']['over_bare_forward'] > 0 and res['bare_forward']['ms_per_image'] > 0
  assert set(res['profile_subset']['timings_s']) >= {'forward', 'upsample_count', 'threshold'}
  agree = res['bfloat16_vs_float32']['label_agreement']
  assert 0.5 <= agree <= 1.0          # bf16 moves a few labels on a random VGG16, not most
  assert not list((tmp_path / 'out').glob('*.tmp'))
