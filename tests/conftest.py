"""Shared test helpers: a hand-rolled Broden writer (independent of ndjax's own writer), the small
random probe sets, torchvision references (torch imported lazily) and the CLI runner."""
from __future__ import annotations

import csv
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from ndjax import models
from ndjax.models import layers as model_layers
from ndjax.ported_weights import torch_state


def write_mask(path: pathlib.Path, labels: np.ndarray) -> None:
  labels = np.asarray(labels, np.int64)
  rgb = np.zeros(labels.shape + (3,), np.uint8)
  rgb[..., 0] = labels % 256
  rgb[..., 1] = labels // 256
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(rgb).save(path)


def write_csv(path: pathlib.Path, header: list[str], rows: list[list]) -> None:
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def make_broden(root: pathlib.Path, categories: list[str], labels: dict[int, tuple[str, str]],
                images: list[dict], index_columns: list[str] | None = None) -> pathlib.Path:
  """Write a Broden directory by hand.

  labels: number -> (name, category); c_<cat>.csv gets each label of its category with a coverage
  computed from the images. images: dicts with 'image' (uint8 HxWx3), 'masks' {cat: [int arrays]},
  'image_labels' {cat: [ints]}.
  """
  root.mkdir(parents=True, exist_ok=True)
  cover = {n: 0.0 for n in labels}
  freq = {n: 0 for n in labels}
  rows = []
  for i, item in enumerate(images):
    img = item['image']
    name = f'src/img{i:04d}.jpg' if item.get('jpg', False) else f'src/img{i:04d}.png'
    (root / 'images' / 'src').mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / 'images' / name)
    sh = sw = None
    cells = {c: [] for c in categories}
    seen = set()
    for cat, layers in item.get('masks', {}).items():
      for j, lab in enumerate(layers):
        sh, sw = lab.shape
        mname = f'src/img{i:04d}_{cat}_{j}.png'
        write_mask(root / 'images' / mname, lab)
        cells[cat].append(mname)
        for n in np.unique(lab):
          if n > 0:
            cover[int(n)] += float(np.mean(lab == n))
            seen.add(int(n))
    for cat, nums in item.get('image_labels', {}).items():
      for n in nums:
        cells[cat].append(str(n))
        if n > 0:
          cover[n] += 1.0
          seen.add(n)
    for n in seen:
      freq[n] += 1
    if sh is None:
      sh, sw = item.get('mask_size', (img.shape[0] // 2, img.shape[1] // 2))
    rows.append([name, 'train', img.shape[0], img.shape[1], sh, sw] +
                [';'.join(cells[c]) for c in (index_columns or categories)])
  write_csv(root / 'index.csv', ['image', 'split', 'ih', 'iw', 'sh', 'sw'] + (index_columns or categories), rows)
  write_csv(root / 'label.csv', ['number', 'name', 'category', 'frequency', 'coverage', 'syns'],
            [[n, nm, f'{c}({freq[n]})', freq[n], f'{cover[n]:.4f}', ''] for n, (nm, c) in sorted(labels.items())])
  cat_rows = []
  for cat in categories:
    members = sorted(n for n, (_, c) in labels.items() if c == cat)
    write_csv(root / f'c_{cat}.csv', ['code', 'number', 'name', 'frequency', 'coverage'],
              [[k + 1, n, labels[n][0], freq[n], f'{cover[n]:.6f}'] for k, n in enumerate(members)])
    cat_rows.append([cat, min(members, default=0), max(members, default=0), len(members),
                     sum(freq[n] for n in members)])
  write_csv(root / 'category.csv', ['name', 'first', 'last', 'count', 'frequency'], cat_rows)
  return root


@pytest.fixture
def broden_factory(tmp_path):
  def factory(*args, name='broden', **kwargs):
    return make_broden(tmp_path / name, *args, **kwargs)
  return factory


def _torch():
  return pytest.importorskip('torch')


def _torchvision():
  return pytest.importorskip('torchvision')


CATS = ['color', 'object', 'part', 'material', 'scene', 'texture']


LABELS = {1: ('red-c', 'color'), 2: ('green-c', 'color'), 3: ('blue-c', 'color'),
          4: ('car', 'object'), 5: ('tree', 'object'), 6: ('house', 'object'), 7: ('sky', 'object'),
          8: ('wheel', 'part'), 9: ('roof', 'part'), 10: ('door', 'part'),
          11: ('wood', 'material'), 12: ('street-s', 'scene'), 13: ('beach-s', 'scene'),
          14: ('striped', 'texture'), 15: ('dotted', 'texture')}


SIZES = [((40, 40), (20, 20)), ((36, 44), (18, 22))]


def random_images(rng, n):
  items = []
  for i in range(n):
    (ih, iw), (sh, sw) = SIZES[i % 2]
    item = {'image': rng.integers(0, 256, (ih, iw, 3), dtype=np.uint8), 'masks': {},
            'image_labels': {}}
    blob = lambda labels: np.where(rng.random((sh, sw)) < 0.5,
                                   rng.choice(labels, (sh, sw)), 0).astype(np.int32)
    kind = i % 4        # like Broden: images carry different subsets of categories
    if kind in (0, 1):
      item['masks']['color'] = [blob([1, 2, 3])]
    if kind in (0, 2):
      item['masks']['object'] = [blob([4, 5, 6, 7])]
      item['masks']['part'] = [blob([8, 9]), blob([9, 10])]        # two part layers
    if kind == 3:
      item['masks']['material'] = [blob([11])]
      item['image_labels']['texture'] = [int(rng.choice([14, 15]))]
    if kind in (0, 2):
      item['image_labels']['scene'] = [int(rng.choice([12, 13])), 0]   # 0 = dropped label
    items.append(item)
  return items


def bilinear_by_hand(a, image_hw, mask_hw, rf):
  """(h, w) -> (sh, sw) reading each mask pixel's four neighbours, one pixel at a time."""
  (h, w), (sh, sw) = a.shape, mask_hw
  origin, spacing = rf
  out = np.zeros((sh, sw))
  def pos(m, size_img, size_mask, n):
    p = ((m + 0.5) * size_img / size_mask - origin) / spacing
    p = min(max(p, 0.0), n - 1)
    lo = int(np.floor(p))
    return lo, min(lo + 1, n - 1), p - lo
  for y in range(sh):
    y0, y1, fy = pos(y, image_hw[0], sh, h)
    for x in range(sw):
      x0, x1, fx = pos(x, image_hw[1], sw, w)
      out[y, x] = ((1 - fy) * ((1 - fx) * a[y0, x0] + fx * a[y0, x1]) +
                   fy * ((1 - fx) * a[y1, x0] + fx * a[y1, x1]))
  return out


def photo_like_images(count: int, size: int, seed: int = 0) -> np.ndarray:
  """Smooth colour fields with blurred shapes: edges and blobs at several scales, like photos."""
  rng = np.random.default_rng(seed)
  images = []
  for _ in range(count):
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
      corner = rng.integers(0, size - 20, 2)
      box = [int(v) for v in (*corner, *(corner + rng.integers(10, size // 2, 2)))]
      colour = tuple(int(c) for c in rng.integers(0, 256, 3))
      (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    texture = rng.normal(0, 6, (size, size, 3))
    images.append(np.clip(np.asarray(image, np.float32) + texture, 0, 255).astype(np.uint8))
  return np.stack(images)


# Odd, non-square inputs exercise ceil_mode's partial windows, asymmetric sizes and adaptive pools
# that enlarge (VGG's 7x7 avgpool over a 4x3 map).
IMAGE_HW = (131, 117)


TORCH_MODELS = {
    'alexnet': lambda: _torchvision().models.alexnet(weights=None),
    'vgg16': lambda: _torchvision().models.vgg16(weights=None),
    'vgg16_bn': lambda: _torchvision().models.vgg16_bn(weights=None),
    # transform_input=True is what torchvision's ImageNet GoogLeNet runs (and ndjax's default)
    'googlenet': lambda: _torchvision().models.googlenet(weights=None, aux_logits=False,
                                                      transform_input=True, init_weights=True),
    'resnet18': lambda: _torchvision().models.resnet18(weights=None),
    'resnet50': lambda: _torchvision().models.resnet50(weights=None),
    'resnet152': lambda: _torchvision().models.resnet152(weights=None),
    'densenet161': lambda: _torchvision().models.densenet161(weights=None),
    'mobilenet_v2': lambda: _torchvision().models.mobilenet_v2(weights=None),
}


# Module paths after the spatial trunk (pooling to a vector, the classifier): not taps.
HEAD_MODULES = {
    'alexnet': ('avgpool', 'classifier'), 'vgg16': ('avgpool', 'classifier'),
    'vgg16_bn': ('avgpool', 'classifier'), 'googlenet': ('avgpool', 'dropout', 'fc'),
    'resnet18': ('avgpool', 'fc'), 'resnet50': ('avgpool', 'fc'), 'resnet152': ('avgpool', 'fc'),
    'densenet161': ('classifier',), 'mobilenet_v2': ('classifier',),
}


# Taps that are no torch module: path -> how to get them from the captured module outputs.
NON_MODULE_TAPS = {'densenet161': {'relu5': lambda captured: _torch().relu(captured['features'])}}


def torch_input(images: np.ndarray):
  torch = _torch()
  """torchvision's normalisation, done in float32 the way models.layers.preprocess does it."""
  p = model_layers.PREPROCESSING['torch']
  x = images.astype(np.float32) * np.float32(p['scale'])
  x = (x - np.asarray(p['mean'], np.float32)) / np.asarray(p['std'], np.float32)
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def perturbed_torch_model(arch: str, seed: int = 0):
  """torchvision's randomly initialised model with every BatchNorm tensor perturbed a little:
  enough that a swapped or misplaced BN tensor shows (errors of percents), little enough to keep
  torchvision's default conditioning (a deep random net whose BNs renormalise every branch
  amplifies float32 rounding: ResNet-152's layer4 then differs from float64 by 1e-3 in torch
  itself).
  """
  torch = _torch()
  torch.manual_seed(seed)
  model = TORCH_MODELS[arch]()
  with torch.no_grad():
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
      bn.weight.uniform_(0.8, 1.2)
      bn.bias.normal_(0.0, 0.1)
      bn.running_mean.normal_(0.0, 0.1)
      bn.running_var.uniform_(0.8, 1.25)
  return model.eval()


def torch_outputs(model, arch: str, images: np.ndarray) -> tuple[dict, np.ndarray]:
  """({module path: NHWC numpy output of its last call}, logits) for the trunk's modules."""
  torch = _torch()
  captured = {}

  def keep(name):
    def hook(module, inputs, output):
      # clone now: an in-place ReLU after this module would otherwise rewrite what we keep
      captured[name] = output.detach().clone()
    return hook

  handles = [module.register_forward_hook(keep(name)) for name, module in model.named_modules()
             if name and name.split('.')[0] not in HEAD_MODULES[arch]]
  with torch.no_grad():
    logits = model(torch_input(images)).numpy()
  for handle in handles:
    handle.remove()
  for path, derive in NON_MODULE_TAPS.get(arch, {}).items():
    captured[path] = derive(captured)
  return {k: v.numpy().transpose(0, 2, 3, 1) for k, v in captured.items()}, logits


def ported(arch: str, torch_model):
  """ndjax model with the torch model's weights, through the state_dict converter."""
  model = models.build(arch, seed=1)
  state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
  torch_state.load_state_dict(model, state, source='torch model')
  return model


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
  scale = float(np.abs(ref).max())
  diff = float(np.abs(ours - ref).max())
  return diff / scale if scale > 0 else diff


REPO = pathlib.Path(__file__).resolve().parent.parent


def ndjax_module(module, *args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', module, *args], capture_output=True, text=True,
                        cwd=REPO, env=env, timeout=600)


def dissected_runs(tmp_path_factory, seeds=(1,)) -> dict[int, pathlib.Path]:
  """{seed: run folder} of `alexnet --weights=random --seed=S` over one small probe set.

  Kept in the session's base temp folder, so test_report and test_compare share the runs.
  """
  root = tmp_path_factory.getbasetemp() / 'ndjax_report_inputs'
  probe = root / 'probe'
  if not (probe / 'index.csv').is_file():
    r = ndjax_module('ndjax.probes.build', '--probe=synthetic', f'--out={probe}', '--n_images=16',
               '--noprogress')
    assert r.returncode == 0, r.stderr
  runs = {}
  for seed in seeds:
    run = root / 'out' / f'alexnet_random_s{seed}'
    if not (run / 'done').is_file():
      r = ndjax_module('ndjax.main', '--model=alexnet', '--weights=random', f'--seed={seed}',
                 f'--dataset={probe}', '--layers=conv3,conv5', '--batch_size=8', '--noprogress',
                 f'--outdir={root / "out"}')
      assert r.returncode == 0, r.stderr
      (run / 'done').write_text(r.stdout)      # the CLI's printed summary lines
    runs[seed] = run
  return runs


def dithered(count: int, size: int, seed: int) -> np.ndarray:
  """Photo-like float RGB 0-255 images with uniform [0, 1) dither: no flat regions, so no max-pool
  window holds an exact mathematical tie (near-ties remain: see test_models_autodiff's
  `_float64`)."""
  images = photo_like_images(count, size, seed=seed).astype(np.float32)
  return images + np.random.default_rng(seed).uniform(0, 1, images.shape).astype(np.float32)


def calibrated(torch_model, size: int):
  """The torch model with every BatchNorm's running statistics measured on a batch of other
  images (size x size), then perturbed (mean += N(0, 0.1) std, var *= U(0.8, 1.25)).

  Why: with random weights and unit running statistics, activations shrink layer by layer
  (GoogLeNet's convs are N(0, 0.01)), so deep taps barely depend on the input: zeroing units
  changed GoogLeNet's inception5b by 2e-7 relative, and MobileNetV2's logits were ~1e-10, which
  no test can tell from rounding. Measured statistics keep every layer's input O(1), as in a
  trained network.
  """
  torch = _torch()
  norms = [m for m in torch_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  if not norms:
    return torch_model
  generator = torch.Generator().manual_seed(0)
  for bn in norms:
    bn.reset_running_stats()
    bn.momentum = None                      # cumulative average: one batch sets the statistics
  torch_model.train()
  for m in torch_model.modules():           # dropout off: the statistics of the eval network
    if isinstance(m, torch.nn.Dropout):
      m.eval()
  x = np.asarray(model_layers.preprocess_torch(dithered(4, size, seed=11)))
  with torch.no_grad():
    torch_model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    for bn in norms:
      bn.momentum = 0.1
      std = bn.running_var.sqrt()
      bn.running_mean.add_(0.1 * std * torch.randn(bn.running_mean.shape, generator=generator))
      bn.running_var.mul_(0.8 + 0.45 * torch.rand(bn.running_var.shape, generator=generator))
  return torch_model.eval()
