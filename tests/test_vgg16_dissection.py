"""The real ImageNet VGG16 dissected end to end through the CLI on a small embedded probe set."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ndjax import models
from ndjax.data import broden
from ndjax.probes import synthetic
from ndjax.ported_weights.registry import load_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_real_vgg16_cli_thresholds_are_exact(tmp_path):
  probe = synthetic.generate(tmp_path / 'probe', n_images=40, seed=7, progress=False)
  out = tmp_path / 'out'
  r = subprocess.run([sys.executable, '-m', 'ndjax.main', '--model=vgg16', '--tau=0.005',
                      f'--dataset={probe}', '--layers=conv4_3,conv5_3', f'--outdir={out}',
                      '--run_name=real', '--batch_size=8', '--noprogress'],
                     capture_output=True, text=True, cwd=REPO, timeout=900)
  assert r.returncode == 0, r.stderr
  assert 'Traceback' not in r.stderr and 'WARNING: Location' not in r.stdout + r.stderr
  summary = [l for l in r.stdout.splitlines() if 'units are detectors' in l]
  assert [l.split(':')[0] for l in summary] == ['conv4_3', 'conv5_3']

  # thresholds equal numpy.quantile over every activation of the real network, recomputed here
  ds = broden.open_broden(probe)
  model = models.build('vgg16')
  manifest = load_weights(model, 'imagenet')
  images = np.stack([ds.load_image(i) for i in range(len(ds.records))])
  for layer in ('conv4_3', 'conv5_3'):
    doc = json.loads((out / 'real' / layer / 'results.json').read_text())
    assert doc['weights_manifest']['source_sha256'] == manifest['source_sha256']
    acts = np.concatenate([np.asarray(model(images[s:s + 8], (layer,))[layer])
                           for s in range(0, len(images), 8)])
    ref = np.quantile(acts.reshape(-1, acts.shape[-1]), 0.995, axis=0)
    got = np.array([u['threshold'] for u in doc['units']], np.float32)
    np.testing.assert_array_equal(got, ref)
    assert (ref > 0).mean() > 0.5                 # a real network: most units fire somewhere
    rows = list(csv.DictReader(open(out / 'real' / layer / 'tally.csv')))
    assert doc['detectors'] == sum(float(x['score']) > 0.04 for x in rows)
    assert summary[('conv4_3', 'conv5_3').index(layer)].startswith(
        f'{layer}: {doc["detectors"]}/512 units are detectors')
