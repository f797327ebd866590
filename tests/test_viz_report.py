"""The --viz step and the report's unit pages: top patches and guided-backprop views.

One tiny dissection (AlexNet, random weights, conv5, 16 procedural images) with `--viz=2`; what
viz.npz holds is checked against the probe images, the model's receptive fields, and a fresh
single-unit guided backpropagation per view; the report's patches against hand-computed CSS.
"""
from __future__ import annotations

import html
import re

import numpy as np
import pytest
from PIL import Image

from ndjax import models, results
from ndjax.data import open_dataset
from ndjax.models.layers import PREPROCESSING
from ndjax.viz import backprop, common, patches, unitviews
from tests.conftest import ndjax_module


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp('viz_report')
  probe = root / 'probe'
  r = ndjax_module('ndjax.probes.build', '--probe=synthetic', f'--out={probe}', '--n_images=16',
                   '--noprogress')
  assert r.returncode == 0, r.stderr
  r = ndjax_module('ndjax.main', '--model=alexnet', '--weights=random', '--seed=1',
                   f'--dataset={probe}', '--layers=conv5', '--topk=3', '--viz=2', '--noprogress',
                   f'--outdir={root / "out"}')
  assert r.returncode == 0, r.stderr
  return root / 'out' / 'alexnet_random_s1' / 'conv5', open_dataset(str(probe))


def test_viz_views_are_each_units_top_images_cropped_to_their_windows(run):
  folder, ds = run
  view = results.load(folder)
  viz = unitviews.read(folder)
  top = view.top
  model = models.build('alexnet', seed=1)
  rf = model.receptive_field('conv5')
  assert view.results['receptive_field'] == {'origin': rf.origin, 'spacing': rf.spacing,
                                             'size': rf.size}
  expected = [(u, p) for u in range(256) for p in patches.top_patches(top, u, rf, 2)]
  assert len(viz['units']) == len(expected) > 256
  net = common.Net.of(model)
  checked = 0
  for n, (u, p) in enumerate(expected):
    assert (viz['units'][n], viz['ranks'][n], viz['images'][n]) == (u, p.rank, p.image)
    assert tuple(viz['windows'][n]) == p.window
    image = ds.load_image(p.image)
    crop = patches.crop(image, p.window)
    np.testing.assert_array_equal(viz['patches'][n], np.asarray(Image.fromarray(crop).resize(
        (unitviews.VIZ_PX, unitviews.VIZ_PX), Image.Resampling.BILINEAR)))
    if n % 97 == 0:        # a sample: one guided backprop per view is slow on 2 cores
      g = np.asarray(backprop.project(net, net.state, net.preprocess(image[None]), 'conv5', u,
                                      'guided', 'max'))[0]
      # w.r.t. RGB pixels: torch preprocessing is (p / 255 - mean) / std per channel
      g = g / (255 * np.asarray(PREPROCESSING['torch']['std'], np.float32))
      t, l, b, r = p.window
      outside = g.copy()
      outside[max(t, 0):b, max(l, 0):r] = 0
      assert np.abs(g).max() > 0 and np.abs(outside).max() == 0     # only its window reaches
      shown = unitviews.display(g, p.window)
      assert np.abs(shown.astype(int) - viz['guided'][n].astype(int)).max() <= 1
      checked += 1
  assert checked >= 3


def test_report_unit_pages_show_patches_and_guided_views(run):
  folder, ds = run
  page = (folder / 'report.html').read_text()
  view = results.load(folder)
  rf = patches.receptive_field(view.results)
  unit = 4
  section = page[page.index(f'id="unit-{unit + 1}"'):]
  section = section[:section.index('</section>')]
  spans = re.findall(r'<span class="p i(\d+)" title="[^"]*" style="([^"]*)"></span>', section)
  found = patches.top_patches(view.top, unit, rf, 9)
  assert len(spans) == len(found) == 3                   # --topk=3 kept three images
  for (image, style), p in zip(spans, found):
    rec = ds.records[p.image]
    t, l, b, r = p.window
    s = 72 / (b - t)
    assert int(image) == p.image
    assert html.unescape(style) == (f'background-size:{rec.iw * s:.1f}px {rec.ih * s:.1f}px;'
                                    f'background-position:{-l * s:.1f}px {-t * s:.1f}px')
    assert f'.i{p.image}{{background-image:url(data:image/jpeg;base64,' in page
  assert section.count('<span class="gv"') == 2
