"""Differentiable, trainable, editable models: every zoo model against torch autograd and torch's
train mode, on the same (random, BN-perturbed) weights converted through `ported_weights`.

Per model, with dropout off:
  * the input gradients of a unit's spatial mean at two taps and of one logit equal
    torch.autograd's (max|diff| / max|ref| <= 1e-4 each);
  * zeroing units at the shallow tap (`edits`) gives the same deeper tap and logits as a torch
    forward hook that zeroes them;
  * one train-mode forward (`model.train()`, batch statistics) equals torch's train-mode forward,
    and every BatchNorm's running mean and variance after it equal torch's.
Plus: ReLU6's gradient at its kinks equals torch's, guided backprop / the deconvnet equal Captum's,
dropout follows nnx rngs, receptive-field sizes equal a hand computation, logits of a trunk-only
model fail with one line.
"""
from __future__ import annotations

import copy
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ndjax import models
from ndjax.models import edits, layers
from tests.conftest import (TORCH_MODELS, calibrated, dithered, perturbed_torch_model,
                            photo_like_images, ported, relative_error)

torch = pytest.importorskip('torch')

RTOL = 1e-4
HW = 64            # small inputs: every model still has a >= 2x2 final map
CLASS = 7

# (shallow tap, deep tap) per model, as torchvision module paths: module outputs that no in-place
# op rewrites later (torch autograd and hooks see them as ndjax's taps do).
TAPS = {
    'alexnet': ('features.4', 'features.11'),
    'vgg16': ('features.15', 'features.29'),
    'vgg16_bn': ('features.22', 'features.42'),
    'googlenet': ('inception3b', 'inception5b'),
    'resnet18': ('layer2', 'layer4'),
    'resnet50': ('layer2', 'layer4'),
    'resnet152': ('layer2', 'layer4'),
    'densenet161': ('features.denseblock2', 'features.transition3'),
    'mobilenet_v2': ('features.6', 'features.18'),
}


def _nhwc(t) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1) if t.ndim == 4 else t.detach().numpy()


def _torch_x(x: np.ndarray, requires_grad: bool = False):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(
      requires_grad)


def _run_torch(model, x: np.ndarray, taps, *, ablate: tuple[str, list] | None = None,
               grad: bool = False):
  """(taps {path: NCHW tensor}, logits, input tensor) of one torch forward; ablate=(module path,
  units) zeroes those units of that module's output by a forward hook."""
  captured, handles = {}, []
  modules = dict(model.named_modules())
  for path in taps:
    handles.append(modules[path].register_forward_hook(
        lambda m, i, o, path=path: captured.__setitem__(path, o)))
  if ablate is not None:
    path, units = ablate

    def zero(module, inputs, output):
      keep = torch.ones(output.shape[1], dtype=output.dtype)
      keep[units] = 0
      return output * keep[None, :, None, None]
    # prepended, so the capturing hooks see the edited output
    handles.append(modules[path].register_forward_hook(zero, prepend=True))
  inputs = _torch_x(x, requires_grad=grad)
  logits = model(inputs)
  for handle in handles:
    handle.remove()
  return captured, logits, inputs


def _dropout_off(model):
  for m in model.modules():
    if isinstance(m, torch.nn.Dropout):
      m.eval()


@pytest.fixture(scope='module', params=list(TORCH_MODELS))
def pair(request):
  """(arch, torch model, ndjax model with its weights, preprocessed float input)."""
  arch = request.param
  torch_model = calibrated(perturbed_torch_model(arch), HW)
  model = ported(arch, torch_model)
  x = np.asarray(model.preprocess(dithered(2, HW, seed=5)))
  return arch, torch_model, model, x


def _float64(torch_model, model):
  """Both models in float64 (call inside `jax.enable_x64(True)`).

  Why the gradient and train-mode comparisons run in float64: in float32, about 1 max-pool window
  in 40,000 holds two values closer than the two frameworks' rounding differences (~1e-7), so
  torch and XLA pick different maxima there and send that window's gradient to different pixels,
  a local 100 % difference (measured: VGG16-BN, 1 flipped window of 38,635; torch float32 itself
  agreed with torch float64 there, by luck); and 150 random layers with batch statistics amplify
  rounding to ~1e-3 (ResNet-152). Float64 shrinks rounding below every such gap, so the test
  compares the functions and their derivatives, not the luck of the draw. The float32 forward
  parity is test_models_parity's.
  """
  model = nnx.clone(model)
  nnx.update(model, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), nnx.state(model)))
  return copy.deepcopy(torch_model).double(), model


def _unit(activation: np.ndarray) -> int:
  """The tap's most active unit (a fixed index may be dead: all-zero maps, zero gradient)."""
  return int(np.argmax(np.asarray(activation).mean((0, 1, 2))))


def test_input_gradients_and_ablation_equal_torch(pair):
  arch, torch_model, model, x = pair
  start = time.perf_counter()
  shallow, deep = TAPS[arch]
  base = model.forward(x, (shallow, deep))
  unit_1, unit_2 = _unit(base[shallow]), _unit(base[deep])
  ablated = [int(u) for u in np.argsort(-np.asarray(base[shallow]).mean((0, 1, 2)))[:3]]
  x64 = x.astype(np.float64)
  with jax.enable_x64(True):
    torch64, model64 = _float64(torch_model, model)
    graphdef, state = nnx.split(model64)

    def objectives(x, state):
      out = nnx.merge(graphdef, state).forward(x, (shallow, deep), logits=True)
      return jnp.stack([out[shallow][..., unit_1].mean(), out[deep][..., unit_2].mean(),
                        out['logits'][0, CLASS]])

    def ablate(x, state):         # zero the shallow tap's most active units, look downstream
      return nnx.merge(graphdef, state).forward(x, (deep,), logits=True,
                                                edits={shallow: edits.zero_units(ablated)})

    # one compiled program; weights as arguments, not constants (XLA would fold 100M values)
    gradients, edited = jax.device_get(jax.jit(
        lambda x, state: (jax.jacrev(objectives)(x, state), ablate(x, state)))(x64, state))
  torch64.eval()
  captured, logits, inputs = _run_torch(torch64, x64, (shallow, deep), grad=True)
  targets = [captured[shallow][:, unit_1].mean(), captured[deep][:, unit_2].mean(),
             logits[0, CLASS]]
  errors = {}
  for name, target, ours in zip(('shallow unit', 'deep unit', 'logit'), targets, gradients):
    (reference,) = torch.autograd.grad(target, inputs, retain_graph=True)
    reference = _nhwc(reference)
    assert np.abs(reference).max() > 0, name
    errors[f'grad {name}'] = relative_error(ours, reference)

  with torch.no_grad():
    captured, logits, _ = _run_torch(torch64, x64, (shallow, deep), ablate=(shallow, ablated))
  reference_deep = _nhwc(captured[deep])
  assert relative_error(np.asarray(base[deep]), reference_deep) > 1e-3, (
      'zeroing the units changed little downstream: the test could not fail')
  assert np.all(captured[shallow][:, ablated].numpy() == 0)
  errors['ablated deep tap'] = relative_error(edited[deep], reference_deep)
  errors['ablated logits'] = relative_error(edited['logits'], _nhwc(logits))
  print(f'\n{arch}: ' + ', '.join(f'{k} {v:.1e}' for k, v in errors.items()) +
        f' ({time.perf_counter() - start:.1f} s)')
  assert all(e <= RTOL for e in errors.values()), errors


def test_train_mode_forward_and_running_statistics_equal_torch(pair):
  arch, torch_model, model, x = pair
  shallow, deep = TAPS[arch]
  with jax.enable_x64(True):
    torch64, model = _float64(torch_model, model)
    model.train()
    model.set_attributes(deterministic=True, raise_if_not_found=False)     # dropout off
    norms = [p for p in model.parameter_paths()
             if isinstance(model.layer(p), layers.BatchNorm2d)]
    before = {p: np.array(model.layer(p).mean[...]) for p in norms}

    @nnx.jit
    def step(model, x):
      return model.forward(x, (shallow, deep), logits=True)

    x64 = x.astype(np.float64)
    ours = jax.device_get(step(model, x64))
    stats = {p: (np.array(model.layer(p).mean[...]), np.array(model.layer(p).var[...]))
             for p in norms}

  torch64.train()
  _dropout_off(torch64)
  with torch.no_grad():
    captured, logits, _ = _run_torch(torch64, x64, (shallow, deep))
  errors = {'shallow': relative_error(ours[shallow], _nhwc(captured[shallow])),
            'deep': relative_error(ours[deep], _nhwc(captured[deep])),
            'logits': relative_error(ours['logits'], _nhwc(logits))}
  modules = dict(torch64.named_modules())
  stat_errors = {}
  for path, (mean, var) in stats.items():
    stat_errors[f'{path}.running_mean'] = relative_error(mean,
                                                         modules[path].running_mean.numpy())
    stat_errors[f'{path}.running_var'] = relative_error(var, modules[path].running_var.numpy())
  if norms:
    worst = max(stat_errors, key=stat_errors.get)
    errors[f'running stats (worst {worst})'] = stat_errors[worst]
    moved = max(np.abs(stats[p][0] - before[p]).max() for p in norms)
    assert moved > 1e-3, 'running statistics did not move'
  print(f'\n{arch} train mode: ' + ', '.join(f'{k} {v:.1e}' for k, v in errors.items()))
  assert all(e <= RTOL for e in errors.values()), errors


def test_loaded_weights_never_alias_the_callers_arrays():
  """A torch state_dict's `.numpy()` views share memory with the tensors; torch's train mode
  updates BN buffers in place. Loading must copy, or torch would rewrite our weights."""
  torch_model = perturbed_torch_model('resnet18')
  model = ported('resnet18', torch_model)
  before = np.array(model.bn1.mean[...])
  with torch.no_grad():
    torch_model.bn1.running_mean.add_(1.0)
    torch_model.conv1.weight.mul_(2.0)
  np.testing.assert_array_equal(np.asarray(model.bn1.mean[...]), before)
  assert not np.allclose(np.asarray(model.bn1.mean[...]), torch_model.bn1.running_mean.numpy())


def _torch_relu6_grad(x: np.ndarray, g: np.ndarray) -> np.ndarray:
  t = torch.from_numpy(x).requires_grad_(True)
  torch.nn.functional.relu6(t).backward(torch.from_numpy(g))
  return t.grad.numpy()


def test_relu6_and_relu_gradients_at_the_kinks_equal_torch():
  x = np.array([-1.0, 0.0, 0.5, 5.999, 6.0, 6.001, 7.0], np.float32)
  g = np.arange(1, 8, dtype=np.float32)
  ours = jax.grad(lambda v: jnp.sum(layers.standard(v, 6.0) * g))(jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(ours), _torch_relu6_grad(x, g))
  assert float(ours[4]) == 0.0 and float(ours[1]) == 0.0    # jnp.clip would give 0.5 * g here
  t = torch.from_numpy(x).requires_grad_(True)
  torch.relu(t).backward(torch.from_numpy(g))
  ours = jax.grad(lambda v: jnp.sum(layers.standard(v) * g))(jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(ours), t.grad.numpy())
  # forward-mode agrees with reverse mode (custom JVP)
  tangent = jax.jvp(lambda v: layers.standard(v, 6.0), (jnp.asarray(x),), (jnp.asarray(g),))[1]
  np.testing.assert_array_equal(np.asarray(tangent), _torch_relu6_grad(x, g))


def test_mobilenet_relu6_plateau_gradient_equals_torch():
  """A MobileNetV2 whose first BatchNorm saturates many units exactly at 6: the input gradient
  equals torch's (with jnp.clip's 0.5 at the cap it would not). Float32: MobileNetV2 has no max
  pool, so no near-tie can route a gradient elsewhere."""
  torch_model = perturbed_torch_model('mobilenet_v2')
  with torch.no_grad():
    bn = torch_model.features[0][1]
    bn.weight.zero_()
    bn.bias.fill_(6.0)            # channel outputs exactly 6 wherever ...
    bn.weight[:8] = 1.0           # ... except 8 channels that stay live
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)
  model = ported('mobilenet_v2', torch_model)
  x = np.asarray(model.preprocess(dithered(1, 48, seed=2)))
  at_cap = np.asarray(model.forward(x, ('features.0.1',))['features.0.1']) == 6.0
  assert at_cap.mean() > 0.5
  graphdef, state = nnx.split(model)
  grad = jax.jit(jax.grad(lambda v, state: nnx.merge(graphdef, state).forward(
      v, logits=True)['logits'][0, CLASS]))(x, state)
  inputs = _torch_x(x, requires_grad=True)
  torch_model.eval()
  torch_model(inputs)[0, CLASS].backward()
  assert relative_error(np.asarray(grad), _nhwc(inputs.grad)) <= RTOL


@pytest.mark.parametrize('arch,rule', [('vgg16', 'guided'), ('resnet18', 'guided'),
                                       ('resnet18', 'deconvnet')])
def test_guided_backprop_and_deconvnet_equal_captum(arch, rule):
  captum_attr = pytest.importorskip('captum.attr')
  torch_model = perturbed_torch_model(arch)
  for m in torch_model.modules():         # Captum hooks modules; in-place ReLUs confuse hooks
    if isinstance(m, torch.nn.ReLU):
      m.inplace = False
  model = ported(arch, torch_model)
  x64 = np.asarray(model.preprocess(dithered(2, HW, seed=4))).astype(np.float64)
  with jax.enable_x64(True):         # float64: see _float64 (max-pool near-ties)
    torch64, model64 = _float64(torch_model, model)
    graphdef, state = nnx.split(model64)

    @functools.partial(jax.jit, static_argnums=2)
    def gradient(state, x, rule):
      return jax.value_and_grad(lambda v: nnx.merge(graphdef, state).forward(
          v, logits=True, nonlinearity=rule)['logits'][:, CLASS].sum())(x)

    (value, ours), (plain_value, plain) = (jax.device_get(gradient(state, x64, r))
                                           for r in (rule, 'standard'))
  assert value == plain_value                 # the forward values do not depend on the rule
  method = {'guided': captum_attr.GuidedBackprop, 'deconvnet': captum_attr.Deconvolution}[rule]
  reference = _nhwc(method(torch64.eval()).attribute(_torch_x(x64), target=CLASS))
  error = relative_error(ours, reference)
  print(f'\n{arch} {rule}: max rel err vs Captum {error:.1e}')
  assert error <= RTOL
  assert relative_error(plain, reference) > 1e-2      # the rule changed something


def test_tap_gradient_through_an_additive_edit_equals_torch():
  """Grad-CAM's hook: d logit / d(tap) by differentiating a zero `edits.add(delta)` (float32: no
  max pool lies between layer3 and the logits)."""
  torch_model = perturbed_torch_model('resnet18')
  model = ported('resnet18', torch_model)
  x = np.asarray(model.preprocess(dithered(1, HW, seed=6)))
  shape = model.forward(x, ('layer3',))['layer3'].shape
  grad = jax.grad(lambda d: model.forward(x, logits=True, edits={'layer3': edits.add(d)})
                  ['logits'][0, CLASS])(jnp.zeros(shape))
  captured, logits, _ = _run_torch(torch_model.eval(), x, ('layer3',))
  captured['layer3'].retain_grad()
  logits[0, CLASS].backward()
  assert relative_error(np.asarray(grad), _nhwc(captured['layer3'].grad)) <= RTOL


def test_edits_replace_and_add_direction_flow_downstream():
  model = models.build('alexnet', seed=0)
  x = np.asarray(model.preprocess(photo_like_images(2, HW, seed=1)))
  base = model.forward(x, ('conv4', 'conv5'))
  replaced = model.forward(x, ('conv4', 'conv5'), edits={'conv4': edits.replace(base['conv4'])})
  np.testing.assert_array_equal(np.asarray(replaced['conv5']), np.asarray(base['conv5']))
  direction = np.zeros(256, np.float32)
  direction[4] = 2.5
  steered = model.forward(x, ('conv4',), edits={'conv4': edits.add_direction(direction)})['conv4']
  np.testing.assert_allclose(np.asarray(steered) - np.asarray(base['conv4']),
                             np.broadcast_to(direction, base['conv4'].shape), atol=1e-5)
  kept = model.forward(x, ('conv4',), edits={'conv4': edits.keep_units([4])})['conv4']
  assert np.all(np.asarray(kept)[..., 5:] == 0) and np.any(np.asarray(kept)[..., 4] != 0)
  with pytest.raises(ValueError, match='must keep the output shape'):
    model.forward(x, ('conv5',), edits={'conv4': lambda a: a[..., :3]})
  with pytest.raises(ValueError, match=r'unit indices must lie in \[0, 256\)'):
    model.forward(x, ('conv5',), edits={'conv4': edits.zero_units([256])})
  with pytest.raises(KeyError, match='unknown layer'):
    model.forward(x, ('conv5',), edits={'conv9': edits.zero_units([0])})


def test_dropout_follows_nnx_rngs_in_train_mode_only():
  model = models.build('alexnet', seed=0)
  x = np.asarray(model.preprocess(photo_like_images(2, HW, seed=1)))
  evaluated = np.asarray(model.forward(x, logits=True)['logits'])
  np.testing.assert_array_equal(evaluated, np.asarray(model.logits(photo_like_images(2, HW, 1))))
  model.train()
  first = np.asarray(model.forward(x, logits=True, rngs=nnx.Rngs(dropout=1))['logits'])
  again = np.asarray(model.forward(x, logits=True, rngs=nnx.Rngs(dropout=1))['logits'])
  other = np.asarray(model.forward(x, logits=True, rngs=nnx.Rngs(dropout=2))['logits'])
  np.testing.assert_array_equal(first, again)
  assert np.abs(first - other).max() > 1e-3 and np.abs(first - evaluated).max() > 1e-3
  with pytest.raises(ValueError):
    model.forward(x, logits=True)                      # train mode needs rngs for dropout
  # torch's Dropout(p): zero with probability p, survivors scaled by 1 / (1 - p)
  layer = layers.dropout(0.5)
  layer.deterministic = False
  out = np.asarray(layer(jnp.ones(200_000), rngs=nnx.Rngs(dropout=0)))
  assert set(np.unique(out)) == {0.0, 2.0}
  assert abs((out == 0).mean() - 0.5) < 0.005        # 7 sigma of Binomial(2e5, 0.5)
  model.eval()
  np.testing.assert_array_equal(np.asarray(model.forward(x, logits=True)['logits']), evaluated)


def _hand_rf(ops) -> int:
  """Receptive field of a chain of (kernel, stride): r += (k - 1) * jump; jump *= s."""
  r, jump = 1, 1
  for k, s in ops:
    r += (k - 1) * jump
    jump *= s
  return r


def test_receptive_field_sizes_equal_hand_computation():
  alexnet = models.build('alexnet')
  conv1, pool, conv5, conv3 = (11, 4), (3, 2), (5, 1), (3, 1)
  assert alexnet.receptive_field('conv1').size == _hand_rf([conv1]) == 11
  assert alexnet.receptive_field('conv5').size == _hand_rf(
      [conv1, pool, conv5, pool, conv3, conv3, conv3]) == 163
  assert alexnet.receptive_field('pool5').size == 195
  vgg = models.build('vgg16')
  c, p = (3, 1), (2, 2)
  chain = [c, c, p, c, c, p, c, c, c, p, c, c, c, p, c, c, c]
  assert vgg.receptive_field('conv5_3').size == _hand_rf(chain) == 196
  assert vgg.receptive_field('conv4_3').size == _hand_rf(chain[:13]) == 92
  assert vgg.receptive_field('pool5').size == _hand_rf(chain + [p]) == 212
  resnet = models.build('resnet18')
  stem = [(7, 2), (3, 2)]
  stage = lambda stride: [(3, stride), (3, 1), (3, 1), (3, 1)]
  assert resnet.receptive_field('layer1').size == _hand_rf(stem + stage(1)) == 43
  assert resnet.receptive_field('layer4').size == _hand_rf(
      stem + stage(1) + stage(2) + stage(2) + stage(2)) == 435
  # the 1x1 shortcut of a downsampling block sees less than the main branch; the block the most
  assert resnet.receptive_field('layer2.0.downsample').size == 43
  assert resnet.receptive_field('layer2.0').size == 43 + 8 + 16
  # a window is centred on the unit: conv5_3's unit (0, 0) at 8 px, first-unit window [-90, 106)
  rf = vgg.receptive_field('conv5_3')
  assert rf.window(0, 0) == (8 - 98, 8 - 98, 8 + 98, 8 + 98)
  assert rf.pixel_window(1, 2, (224, 224)) == (0, 0, 24 + 98, 40 + 98)


def test_receptive_field_over_branches_is_the_largest():
  googlenet = models.build('googlenet')
  rf = googlenet.receptive_field
  # inception3a's branches: 1x1 conv, 1x1 then 3x3, 1x1 then 3x3, 3x3 pool then 1x1
  base = rf('maxpool2').size
  jump = rf('maxpool2').spacing
  assert rf('inception3a.branch1').size == base
  assert rf('inception3a.branch2').size == base + 2 * jump
  assert rf('inception3a').size == base + 2 * jump


def test_logits_of_a_trunk_only_model_is_one_clear_line():
  trunk = models.MODELS['vgg16'](rngs=nnx.Rngs(0), num_classes=None)
  with pytest.raises(ValueError, match='no classifier head: its weights cover the conv trunk only'):
    trunk.logits(np.zeros((1, 32, 32, 3), np.uint8))
  model = models.build('vgg16_bn')
  model.truncate('features.39')
  with pytest.raises(ValueError, match='its weights end at features.39'):
    model.forward(np.zeros((1, 32, 32, 3), np.float32), logits=True)


@pytest.mark.parametrize('convention', ['caffe', 'hed', 'torch'])
def test_preprocess_functions_and_deprocess(convention):
  images = photo_like_images(2, 32, seed=0)
  x = {'caffe': layers.preprocess_caffe, 'hed': layers.preprocess_hed,
       'torch': layers.preprocess_torch}[convention](images)
  p = layers.PREPROCESSING[convention]
  rgb = images.astype(np.float64)
  bgr = rgb[..., ::-1] if p['bgr'] else rgb
  by_hand = (bgr * p['scale'] - np.asarray(p['mean'])) / np.asarray(p['std'])
  np.testing.assert_allclose(np.asarray(x), by_hand, atol=2e-5)
  np.testing.assert_allclose(np.asarray(layers.deprocess(x, convention)), rgb, atol=1e-3)
  # float 0-255 input is differentiable and gives the same as uint8
  np.testing.assert_array_equal(np.asarray(layers.preprocess(rgb.astype(np.float32), convention)),
                                np.asarray(x))
