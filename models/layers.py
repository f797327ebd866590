"""Building blocks that mirror torch.nn exactly, and the tap machinery every ndjax model shares.

Every model is written once, as plain Python over these blocks, and that one definition serves
three purposes:
  * the forward pass on arrays (NHWC float32), recording the outputs of the module paths asked for
    and stopping as soon as the deepest of them is known;
  * a geometry pass at construction, where the same code runs on `Geo` values instead of arrays:
    each conv/pool composes its (kernel, stride, padding) into the unit-centre grid, so the
    receptive-field geometry the upsampler uses cannot disagree with the network that runs;
  * the list of tappable module paths, in the order the forward pass produces them.

Parameters live in flat attributes named after their torchvision module path with dots replaced by
underscores (`layer1.0.conv1` -> `layer1_0_conv1`), so a torchvision state_dict key maps to a
checkpoint name by one rule (see `ndjax.ported_weights.torch_state`).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import difflib
import functools
import math
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


# --- numerical policy -----------------------------------------------------------------------------
# Every convolution and matmul of the models runs at this precision, passed explicitly. Why: on
# accelerators XLA's DEFAULT precision is not float32 (TPUs multiply in one bf16 pass, NVIDIA GPUs
# may use TF32 with a 10-bit mantissa), so the same weights would give activations that differ by
# ~1e-3 relative between CPU and GPU/TPU, and T_k and the masks with them. 'highest' asks for full
# float32 products everywhere; on CPU it changes nothing. The engine records it in results.json.
PRECISION = 'highest'


# --- geometry values ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Geo:
  """The unit grid of a feature map in input pixels: centre of unit j = origin + j * spacing, and
  each unit sees a square window of `size` input pixels around its centre (its receptive field).

  Input pixel i covers [i, i + 1), so the image itself is Geo(0.5, 1.0, 3, 1.0). All kernels,
  strides and paddings of the supported models are square, so one (origin, spacing, size) holds
  for both axes. Where branches meet (residual sums, concatenations) the size is the largest
  branch's: a unit there can see every pixel any branch sees.
  """
  origin: float
  spacing: float
  channels: int
  size: float = 1.0

  def through(self, kernel: int, stride: int, padding: int, dilation: int = 1,
              channels: int | None = None) -> 'Geo':
    """The grid after a conv/pool: output j's window starts at input j*stride - padding, and
    spans `dilation * (kernel - 1)` more input units, each `spacing` pixels apart."""
    span = dilation * (kernel - 1)
    return Geo(self.origin + self.spacing * (span / 2 - padding), self.spacing * stride,
               self.channels if channels is None else channels, self.size + span * self.spacing)


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
  """Where a tap's units look in the input image, in input-pixel coordinates (pixel i covers
  [i, i + 1)): unit (i, j) is centred at (origin + i * spacing, origin + j * spacing) and sees the
  `size` x `size` window around that centre (parts of it may lie in the padding, off the image)."""
  origin: float
  spacing: float
  size: float

  def centre(self, index: int) -> float:
    return self.origin + index * self.spacing

  def window(self, i: int, j: int) -> tuple[float, float, float, float]:
    """(top, left, bottom, right) of unit (i, j)'s receptive field, unclipped; bottom and right
    are exclusive, so the window holds `size` pixels along each axis."""
    half = self.size / 2
    y, x = self.centre(i), self.centre(j)
    return y - half, x - half, y + half, x + half

  def pixel_window(self, i: int, j: int, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """The window clipped to the image, as integer slice bounds (top, left, bottom, right)."""
    top, left, bottom, right = self.window(i, j)
    h, w = image_hw
    return (max(0, math.floor(top)), max(0, math.floor(left)),
            min(h, math.ceil(bottom)), min(w, math.ceil(right)))


def is_geo(x: Any) -> bool:
  return isinstance(x, Geo)


# --- parameter initialisation ---------------------------------------------------------------------
# Tensors larger than this are drawn in parallel chunks of this many values (numpy frees the GIL).
_PARALLEL_CHUNK = 1 << 22


class Init:
  """Parameter initialisers that run on the host (numpy), seeded once from an `nnx.Rngs`.

  Why not JAX's initialisers: each new parameter shape compiles a small XLA program (about 0.3 s
  on a 2-core CPU for a truncated normal), and GoogLeNet or DenseNet-161 have hundreds of distinct
  shapes, so building a model took 15-45 s; numpy draws them in well under a second. The stream
  is deterministic given the seed and the order layers are created in.
  """

  def __init__(self, rngs: nnx.Rngs):
    words = np.asarray(jax.random.key_data(rngs.params())).ravel()
    self.rng = np.random.default_rng([int(w) for w in words])

  @staticmethod
  def fans(shape: Sequence[int]) -> tuple[int, int]:
    """(fan_in, fan_out) as torch counts them, for HWIO conv and (in, out) Linear kernels."""
    if len(shape) == 2:
      return shape[0], shape[1]
    receptive = int(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive

  def kaiming_normal(self, mode: str = 'fan_in'):
    """torch.nn.init.kaiming_normal_(mode, nonlinearity='relu'): N(0, 2 / fan)."""
    def init(shape):
      fan = self.fans(shape)[0 if mode == 'fan_in' else 1]
      return self._standard_normal(shape) * np.float32(np.sqrt(2.0 / fan))
    return init

  def normal(self, std: float):
    return lambda shape: self._standard_normal(shape) * np.float32(std)

  def trunc_normal(self, std: float, low: float, high: float):
    """torch.nn.init.trunc_normal_: N(0, std) redrawn until inside [low, high] (absolute bounds)."""
    def init(shape):
      values = self._standard_normal(shape) * np.float32(std)
      outside = (values < low) | (values > high)
      while outside.any():
        values[outside] = self.rng.standard_normal(int(outside.sum()), np.float32) * np.float32(std)
        outside = (values < low) | (values > high)
      return values
    return init

  def torch_default(self):
    """torch's default Conv2d/Linear weight init (kaiming_uniform_, a=sqrt(5)): U(+-1/sqrt(in))."""
    def init(shape):
      return self._uniform(shape, 1.0 / np.sqrt(self.fans(shape)[0]))
    return init

  def torch_default_bias(self, fan_in: int):
    """torch's default bias init: U(+-1/sqrt(fan_in)) with the weight's fan_in."""
    return lambda shape: self._uniform(shape, 1.0 / np.sqrt(fan_in))

  def _standard_normal(self, shape) -> np.ndarray:
    """N(0, 1) float32; large tensors (VGG's 102M-weight classifier) are drawn in fixed chunks on
    all cores, each chunk from its own child seed, so the values do not depend on the core count."""
    size = int(np.prod(shape))
    if size < _PARALLEL_CHUNK:
      return self.rng.standard_normal(shape, np.float32)
    out = np.empty(size, np.float32)
    starts = range(0, size, _PARALLEL_CHUNK)
    seeds = np.random.SeedSequence(int(self.rng.integers(2**63))).spawn(len(starts))

    def fill(start, seed):
      np.random.default_rng(seed).standard_normal(
          out=out[start:start + _PARALLEL_CHUNK], dtype=np.float32)

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
      list(pool.map(fill, starts, seeds))
    return out.reshape(shape)

  def _uniform(self, shape, bound: float) -> np.ndarray:
    return (self.rng.random(shape, np.float32) * 2 - 1) * np.float32(bound)

  @staticmethod
  def zeros(shape):
    return np.zeros(shape, np.float32)


def _param(values: np.ndarray) -> nnx.Param:
  # device_put, not jnp.asarray: the latter compiles a conversion per new shape
  return nnx.Param(jax.device_put(np.asarray(values, np.float32)))


# --- layers with parameters -----------------------------------------------------------------------
class Conv2d(nnx.Module):
  """torch.nn.Conv2d: symmetric zero padding, dilation, groups; kernel stored HWIO."""
  description = 'Conv2d output (pre-activation)'

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
               padding: int = 0, *, dilation: int = 1, groups: int = 1, bias: bool = True,
               weight_init: Callable, bias_init: Callable = Init.zeros):
    self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
    self.dilation, self.groups, self.out_channels = dilation, groups, out_channels
    self.kernel = _param(weight_init((kernel_size, kernel_size, in_channels // groups,
                                      out_channels)))
    self.bias = _param(bias_init((out_channels,))) if bias else None

  def __call__(self, x):
    if is_geo(x):
      return x.through(self.kernel_size, self.stride, self.padding, self.dilation,
                       channels=self.out_channels)
    y = jax.lax.conv_general_dilated(
        x, self.kernel[...], (self.stride, self.stride), [(self.padding, self.padding)] * 2,
        rhs_dilation=(self.dilation, self.dilation), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        feature_group_count=self.groups, precision=PRECISION)
    return y if self.bias is None else y + self.bias[...]


class BatchNorm2d(nnx.Module):
  """torch.nn.BatchNorm2d with torch's conventions in both modes.

  Eval (`use_running_average=True`, the default): (x - running_mean) / sqrt(running_var + eps) *
  w + b. Train (`model.train()` sets `use_running_average=False`): normalise by the batch's mean
  and biased variance over (N, H, W), and move the running statistics by `momentum` towards the
  batch mean and the UNBIASED batch variance (n / (n - 1)), as torch does; those updates are
  state changes of the module, kept by `nnx.jit` / `nnx.update`.
  """
  description = 'BatchNorm2d output (pre-activation)'

  def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1):
    self.epsilon = eps
    self.momentum = momentum
    self.use_running_average = True
    self.scale = _param(np.ones(num_features))
    self.bias = _param(np.zeros(num_features))
    self.mean = nnx.BatchStat(jax.device_put(np.zeros(num_features, np.float32)))
    self.var = nnx.BatchStat(jax.device_put(np.ones(num_features, np.float32)))

  def __call__(self, x):
    if is_geo(x):
      return x
    if self.use_running_average:
      mean, var = self.mean[...], self.var[...]
    else:
      count = x.size // x.shape[-1]
      if count < 2:
        raise ValueError(f'BatchNorm2d in train mode needs more than one value per channel; got '
                         f'input of shape {tuple(x.shape)} (use a larger batch or image)')
      mean = jnp.mean(x, axis=(0, 1, 2))
      var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
      m = self.momentum
      self.mean.value = (1 - m) * self.mean[...] + m * mean
      self.var.value = (1 - m) * self.var[...] + m * var * (count / (count - 1))
    multiplier = self.scale[...] * jax.lax.rsqrt(var + self.epsilon)
    return (x - mean) * multiplier + self.bias[...]


def dropout(rate: float) -> nnx.Dropout:
  """torch.nn.Dropout(rate): identity in eval mode; after `model.train()` zeroes each value with
  probability `rate` and scales the rest by 1 / (1 - rate), drawing from the pass's `nnx.Rngs`
  ('dropout' stream). It holds no RNG state itself, so checkpoints stay weights + statistics."""
  return nnx.Dropout(rate, deterministic=True)


class Linear(nnx.Module):
  """torch.nn.Linear; kernel stored (in, out)."""
  description = 'Linear output'

  def __init__(self, in_features: int, out_features: int, *, weight_init: Callable,
               bias_init: Callable = Init.zeros):
    self.kernel = _param(weight_init((in_features, out_features)))
    self.bias = _param(bias_init((out_features,)))

  def __call__(self, x):
    return jnp.matmul(x, self.kernel[...], precision=PRECISION) + self.bias[...]


# --- the nonlinearity -----------------------------------------------------------------------------
# Every ReLU and ReLU6 of every model calls the pass's nonlinearity `rule(x, cap)` (cap None: ReLU,
# cap 6: ReLU6), so one argument of `TapModel.forward` swaps the backward rule through all of them
# (guided backpropagation, the deconvnet) without touching model code. All rules compute the same
# forward values; they differ only in what flows backward.
def _inside(x, cap):
  """Where torch's ReLU/ReLU6 pass the gradient: strictly above 0 and, with a cap, strictly below
  it (torch's threshold_backward and hardtanh_backward give 0 AT the kinks)."""
  inside = x > 0
  return inside if cap is None else inside & (x < cap)


def _clamp(x, cap):
  y = jnp.maximum(x, 0.0)
  return y if cap is None else jnp.minimum(y, cap)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def standard(x, cap=None):
  """ReLU / ReLU6 with torch's derivative (0 at x = 0 and at x = cap; `jnp.clip`'s is 0.5 at a
  cap, which MobileNetV2 hits often: many of its activations sit exactly at 6)."""
  return _clamp(x, cap)


@standard.defjvp
def _standard_jvp(cap, primals, tangents):
  (x,), (t,) = primals, tangents
  return _clamp(x, cap), jnp.where(_inside(x, cap), t, jnp.zeros_like(t))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def guided(x, cap=None):
  """Guided backpropagation (Springenberg et al. 2015): backward passes g only where the forward
  input was inside the linear range AND g > 0."""
  return _clamp(x, cap)


def _guided_fwd(x, cap):
  return _clamp(x, cap), _inside(x, cap)


def _guided_bwd(cap, inside, g):
  return (jnp.where(inside & (g > 0), g, jnp.zeros_like(g)),)


guided.defvjp(_guided_fwd, _guided_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def deconvnet(x, cap=None):
  """The deconvnet's rule (Zeiler & Fergus 2014): backward rectifies the signal itself, relu(g),
  whatever the forward input was."""
  return _clamp(x, cap)


def _deconvnet_fwd(x, cap):
  return _clamp(x, cap), None


def _deconvnet_bwd(cap, _, g):
  return (jnp.maximum(g, 0.0),)


deconvnet.defvjp(_deconvnet_fwd, _deconvnet_bwd)

NONLINEARITIES = {'standard': standard, 'guided': guided, 'deconvnet': deconvnet}


def nonlinearity_rule(rule: str | Callable) -> Callable:
  """A rule by name ('standard', 'guided', 'deconvnet') or a callable `rule(x, cap)` as is."""
  if callable(rule):
    return rule
  if rule not in NONLINEARITIES:
    raise ValueError(f'unknown nonlinearity {rule!r}; valid: {", ".join(NONLINEARITIES)} '
                     'or a callable rule(x, cap)')
  return NONLINEARITIES[rule]


# --- parameter-free ops (arrays or Geo) -----------------------------------------------------------
def _pool_geometry(size: int, kernel: int, stride: int, padding: int,
                   ceil_mode: bool) -> tuple[int, int]:
  """(output size, padding after the input) of torch's pooling output-size rule."""
  span = size + 2 * padding - kernel
  if ceil_mode:
    out = -(-span // stride) + 1
    # torch drops a last window that would start in the right padding
    if (out - 1) * stride >= size + padding:
      out -= 1
  else:
    out = span // stride + 1
  # never negative: input cells past the last window are simply unused (a negative pad would crop
  # them, which the forward allows but reduce_window's gradient does not)
  return out, max((out - 1) * stride + kernel - size - padding, 0)


def max_pool(x, kernel: int, stride: int | None = None, padding: int = 0, ceil_mode: bool = False):
  """torch.nn.MaxPool2d (dilation 1): padding never wins the max."""
  stride = kernel if stride is None else stride
  if is_geo(x):
    return x.through(kernel, stride, padding)
  pads = [(0, 0)]
  for size in x.shape[1:3]:
    _, after = _pool_geometry(size, kernel, stride, padding, ceil_mode)
    pads.append((padding, after))
  pads.append((0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, kernel, kernel, 1),
                               (1, stride, stride, 1), pads)


def avg_pool(x, kernel: int, stride: int | None = None, padding: int = 0, ceil_mode: bool = False,
             count_include_pad: bool = True):
  """torch.nn.AvgPool2d: the divisor counts the explicit padding only if count_include_pad, and
  never the extra right padding that ceil_mode adds."""
  stride = kernel if stride is None else stride
  if is_geo(x):
    return x.through(kernel, stride, padding)
  pads, counted = [(0, 0)], []
  for size in x.shape[1:3]:
    _, after = _pool_geometry(size, kernel, stride, padding, ceil_mode)
    pads.append((padding, after))
    weight = np.zeros(size + padding + after + padding, np.float32)
    weight[:size + 2 * padding] = 1.0 if count_include_pad else 0.0
    weight[padding:padding + size] = 1.0
    counted.append(weight)
  pads.append((0, 0))
  window, strides = (1, kernel, kernel, 1), (1, stride, stride, 1)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pads)
  # the per-window divisor is separable: (pixels counted along y) x (along x)
  divisors = [np.lib.stride_tricks.sliding_window_view(w, kernel)[::stride].sum(-1)
              for w in counted]
  divisor = np.outer(divisors[0], divisors[1])[None, :, :, None]
  return total / jnp.asarray(divisor, x.dtype)


def adaptive_avg_pool(x, output_size: int):
  """torch.nn.AdaptiveAvgPool2d: window i spans [floor(i*n/o), ceil((i+1)*n/o))."""
  def averaging(n: int) -> np.ndarray:
    matrix = np.zeros((output_size, n), np.float32)
    for i in range(output_size):
      start, stop = (i * n) // output_size, -(-((i + 1) * n) // output_size)
      matrix[i, start:stop] = 1.0 / (stop - start)
    return matrix
  rows, cols = (jnp.asarray(averaging(n)) for n in x.shape[1:3])
  return jnp.einsum('oh,bhwc,pw->bopc', rows, x, cols, precision=PRECISION)


def add(main, shortcut):
  """Residual sum; the grid is the main branch's (both branches share the grid spacing), the
  receptive field the larger of the two."""
  if is_geo(main):
    if not math.isclose(main.spacing, shortcut.spacing):
      raise ValueError(f'residual branches on different grids: {main} vs {shortcut}')
    return dataclasses.replace(main, size=max(main.size, shortcut.size))
  return main + shortcut


def concat(parts: Sequence):
  """torch.cat(parts, dim=1) in NHWC; the grid is the first (main) part's, the receptive field
  the largest part's."""
  if is_geo(parts[0]):
    return dataclasses.replace(parts[0], channels=sum(p.channels for p in parts),
                               size=max(p.size for p in parts))
  return jnp.concatenate(parts, axis=-1)


def flatten_nchw(x):
  """torch.flatten(x, 1) of the NCHW tensor, so Linear weights ported from torch apply unchanged."""
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


# --- input conventions ----------------------------------------------------------------------------
# 'caffe': the original VGG/Caffe weights (BGR, 0-255, minus the BGR mean);
# 'hed': the HED edge detector's Caffe mean (BGR, 0-255, minus its own BGR mean);
# 'torch': torchvision (RGB in [0, 1], per-channel mean/std, one std per channel, not one for all).
PREPROCESSING = {
    'caffe': dict(bgr=True, scale=1.0, mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0)),
    'hed': dict(bgr=True, scale=1.0, mean=(104.00699, 116.66877, 122.67892), std=(1.0, 1.0, 1.0)),
    'torch': dict(bgr=False, scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    'none': dict(bgr=False, scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),  # raw 0-255 RGB
    # timm's ViTs (augreg): RGB in [-1, 1]
    'inception': dict(bgr=False, scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
}


def preprocess(images: jax.Array, convention: str) -> jax.Array:
  """RGB NHWC images in 0-255 (uint8, or float for a differentiable input) -> the float input the
  weights were trained on. The models' `forward` takes its output, so gradients w.r.t. pixels
  exist; `deprocess` inverts it."""
  p = PREPROCESSING[convention]
  x = jnp.asarray(images).astype(jnp.float32)
  if p['bgr']:
    x = x[..., ::-1]
  x = x * p['scale']
  return (x - jnp.asarray(p['mean'], jnp.float32)) / jnp.asarray(p['std'], jnp.float32)


def deprocess(x: jax.Array, convention: str) -> jax.Array:
  """The inverse of `preprocess`: a model input (or a gradient-sized step in it) back to float RGB
  0-255 pixels, for showing it as an image."""
  p = PREPROCESSING[convention]
  x = jnp.asarray(x, jnp.float32) * jnp.asarray(p['std'], jnp.float32) + jnp.asarray(
      p['mean'], jnp.float32)
  x = x / p['scale']
  return x[..., ::-1] if p['bgr'] else x


# One function per convention: preprocess_caffe(images) etc.
preprocess_caffe = functools.partial(preprocess, convention='caffe')
preprocess_hed = functools.partial(preprocess, convention='hed')
preprocess_torch = functools.partial(preprocess, convention='torch')


# --- taps, edits and the pass's nonlinearity ------------------------------------------------------
class _Done(Exception):
  """Raised by the recorder once every requested tap is final: the forward pass stops there."""


class Recorder:
  """One forward pass's context: collects module outputs by path, applies edits, and supplies the
  pass's nonlinearity and dropout randomness. Every tappable output goes through `__call__`, every
  ReLU/ReLU6 through `relu`/`relu6`, so model code never names either concern.

  wanted: path -> how many times that module runs (a module called several times, such as a ResNet
  block's shared ReLU, means its last call, as a torch forward hook that overwrites would see).
  Passing wanted=None records every path, its call count, value and description (the geometry pass).
  stop_after: a path after whose (last) call the pass ends even if nothing is wanted (truncated
  trunks); None runs to the end. stop=False never ends the pass early (the head follows).
  edits: path -> (call, fn): the output of that call is replaced by fn(output) before it flows on
  (and before it is recorded); the shape must stay the same.
  rule: the nonlinearity `rule(x, cap)` (see `standard`); rngs: the `nnx.Rngs` dropout draws from.
  """

  def __init__(self, wanted: dict[str, int] | None, stop_after: tuple[str, int] | None = None, *,
               stop: bool = True, edits: dict[str, tuple[int, Callable]] | None = None, rule: Callable = standard,
               rngs: nnx.Rngs | None = None):
    self.everything = wanted is None
    self.remaining = dict(wanted or {})
    self.stop_after = stop_after if stop else None
    self.stop = stop
    self.edits = dict(edits or {})
    self.rule = rule
    self.rngs = rngs
    self.values: dict[str, Any] = {}
    self.calls: dict[str, int] = {}
    self.descriptions: dict[str, str] = {}

  def __call__(self, path: str, value, description: str):
    calls = self.calls[path] = self.calls.get(path, 0) + 1
    edit = self.edits.get(path)
    if edit is not None and edit[0] == calls and not is_geo(value):
      edited = edit[1](value)
      if jnp.shape(edited) != value.shape:
        raise ValueError(f'the edit of {path} returned shape {jnp.shape(edited)}; it must keep the '
                         f'output shape {value.shape}')
      value = jnp.asarray(edited, value.dtype)
    if self.everything:
      self.values[path] = value
      self.descriptions.setdefault(path, description)
    elif path in self.remaining:
      self.values[path] = value
      if calls == self.remaining[path]:
        del self.remaining[path]
        if not self.remaining and self.stop:
          raise _Done
    if self.stop_after is not None and self.stop_after == (path, calls):
      raise _Done
    return value

  def relu(self, x):
    return x if is_geo(x) else self.rule(x, None)

  def relu6(self, x):
    return x if is_geo(x) else self.rule(x, 6.0)

  def dropout(self, layer: nnx.Dropout, x):
    return layer(x, rngs=self.rngs)


# --- the model base class -------------------------------------------------------------------------
class TapModel(nnx.Module):
  """A network whose every module output can be tapped by its torchvision module path.

  Subclasses create their layers with `self.add_layer(path, layer)`, write the trunk (everything up
  to the spatial features) in `trunk(x, rec)` and the classifier in `head(features, rec)`, list head
  layer paths in `head_paths()` and rebuild the head in `build_head(num_classes, init)`, then call
  `self.finish()` at the end of `__init__`.

  Contract used by the engine: `model(images_uint8_nhwc, taps) -> {tap: (B, h, w, K) float32}`,
  `resolve`, `layer_names`, `describe`, `rf_geometry`, `arch`, `preprocessing`. For gradients,
  training and interventions: `preprocess` and `forward` (float input, `logits`, `edits`,
  `nonlinearity`, `rngs`), `receptive_field`, and flax's `train()` / `eval()`.

  Model code routes every tappable output through `rec(path, value, description)`, every ReLU
  through `rec.relu` / `rec.relu6` and every dropout through `rec.dropout`: the pass's Recorder
  decides what is recorded, edited, which backward rule runs and where randomness comes from.
  """

  arch: str
  preprocessing: str
  aliases: dict[str, str]        # paper name -> module path

  # --- construction helpers -----------------------------------------------------------------------
  @staticmethod
  def attribute(path: str) -> str:
    """Attribute holding the layer at a torchvision module path: dots become underscores."""
    return path.replace('.', '_')

  def add_layer(self, path: str, layer: nnx.Module) -> None:
    setattr(self, self.attribute(path), layer)

  def layer(self, path: str) -> nnx.Module:
    return getattr(self, self.attribute(path))

  def has_layer(self, path: str) -> bool:
    return isinstance(getattr(self, self.attribute(path), None), nnx.Module)

  def run(self, rec: Recorder, path: str, x, description: str | None = None):
    """Apply the layer stored at `path` and record its output under that path."""
    layer = self.layer(path)
    return rec(path, layer(x), description or layer.description)

  def parameter_paths(self) -> list[str]:
    """Module paths of the layers that hold parameters (trunk, then head)."""
    return [p for p in (*self._paths, *self.head_paths()) if self.has_layer(p)]

  def finish(self) -> None:
    """Run the geometry pass: the tappable paths in forward order, their call counts, grids."""
    rec = Recorder(None)
    self.trunk(Geo(0.5, 1.0, 3, 1.0), rec)
    self._paths = tuple(rec.values)
    self._calls = dict(rec.calls)
    self._geometry = {path: (geo.origin, geo.spacing, geo.channels, geo.size)
                      for path, geo in rec.values.items()}
    self._descriptions = dict(rec.descriptions)
    self.trunk_end = None
    self.num_classes = getattr(self, 'num_classes', None)

  # --- naming -------------------------------------------------------------------------------------
  def layer_names(self) -> list[str]:
    return list(self.aliases) + list(self._paths)

  def resolve(self, layer: str) -> str:
    """Layer name (paper alias or torchvision module path) -> module path; KeyError if unknown."""
    path = self.aliases.get(layer, layer)
    if path in self._geometry:
      return path
    raise KeyError(self._unknown_layer_message(layer))

  def _unknown_layer_message(self, layer: str) -> str:
    names = self.layer_names()
    close = difflib.get_close_matches(layer, names, n=3)
    hint = f' (did you mean {", ".join(close)}?)' if close else ''
    truncated = (f'; the loaded weights end at {self.trunk_end}' if self.trunk_end else '')
    if len(names) <= 80:
      listed = ', '.join(names)
    else:
      # Deep networks have hundreds of paths; list the coarse ones and say where the rest are.
      coarse = list(self.aliases) + [p for p in self._paths if p.count('.') <= 1]
      deeper = len(names) - len(coarse)
      example = next(p for p in reversed(self._paths) if p.count('.') >= 2)
      listed = (f'{", ".join(coarse)}, and {deeper} deeper module paths such as {example} '
                '(model.layer_names() lists all)')
    return f'unknown layer {layer!r} for {self.arch}{hint}{truncated}; valid: {listed}'

  def describe(self, layer: str) -> str:
    path = self.resolve(layer)
    calls = self._calls[path]
    what = self._descriptions[path]
    if calls > 1:
      what += f'; the module runs {calls} times per pass, this is its last call'
    return f'{path}: {what}' + (f'; paper name {layer}' if layer != path else '')

  def rf_geometry(self, layer: str) -> tuple[float, float]:
    """(origin, spacing) of the tap's unit centres in input pixels: unit j at origin + j*spacing."""
    origin, spacing, _, _ = self._geometry[self.resolve(layer)]
    return origin, spacing

  def receptive_field(self, layer: str) -> ReceptiveField:
    """The tap's unit grid and receptive-field size (the largest over branches), so a unit's
    patch is `receptive_field(layer).window(i, j)` of the input image."""
    origin, spacing, _, size = self._geometry[self.resolve(layer)]
    return ReceptiveField(origin, spacing, size)

  def channels(self, layer: str) -> int:
    return self._geometry[self.resolve(layer)][2]

  # --- forward ------------------------------------------------------------------------------------
  def input_transform(self, x):
    """Hook for model-specific input transforms after preprocessing (GoogLeNet's)."""
    return x

  def _stop_after(self) -> tuple[str, int] | None:
    return (self.trunk_end, self._calls[self.trunk_end]) if self.trunk_end else None

  def preprocess(self, images: jax.Array) -> jax.Array:
    """RGB NHWC images in 0-255 -> this model's float input (its weights' convention)."""
    return preprocess(images, self.preprocessing)

  def has_head(self) -> bool:
    return self.num_classes is not None and self.trunk_end is None

  def forward(self, x: jax.Array, taps: Sequence[str] = (), *, logits: bool = False,
              edits: dict[str, Callable] | None = None, nonlinearity: str | Callable = 'standard',
              rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """Preprocessed float NHWC input -> {tap: (B, h, w, K) output} (+ 'logits': (B, classes)).

    Differentiable in `x` and in the edits. Without `logits`, the pass stops after the deepest tap.
    edits: {layer name: fn}: that tap's output is replaced by fn(output) before it flows on (see
      `ndjax.models.edits`: zero units, replace the map, add a direction); a tap asked for AND
      edited reports the edited value. A module that runs several times is edited at its last call,
      the call its tap means.
    nonlinearity: the rule every ReLU/ReLU6 of the pass uses: 'standard' (torch's gradient),
      'guided', 'deconvnet', or a callable `rule(x, cap)`.
    rngs: dropout's randomness, needed only in train mode (`model.train()`); BatchNorm then uses
      batch statistics and updates its running averages (torch's conventions).
    """
    if logits and not self.has_head():
      raise ValueError(self._no_head_message())
    paths = {tap: self.resolve(tap) for tap in taps}
    edit_paths = {}
    for layer, fn in (edits or {}).items():
      path = self.resolve(layer)
      if path in edit_paths:
        raise ValueError(f'{layer} and another name both edit module {path}; give one edit')
      edit_paths[path] = (self._calls[path], fn)
    rec = Recorder({p: self._calls[p] for p in paths.values()}, self._stop_after(),
                   stop=not logits, edits=edit_paths, rule=nonlinearity_rule(nonlinearity),
                   rngs=rngs)
    try:
      features = self.trunk(self.input_transform(x), rec)
    except _Done:
      features = None
    out = {tap: rec.values[path] for tap, path in paths.items()}
    if logits:
      out['logits'] = self.head(features, rec)
    return out

  def __call__(self, images_uint8: jax.Array, taps: Sequence[str]) -> dict[str, jax.Array]:
    """uint8 RGB NHWC images -> {tap: NHWC float32 activation}; stops after the deepest tap."""
    return self.forward(self.preprocess(images_uint8), taps)

  def logits(self, images_uint8: jax.Array) -> jax.Array:
    """(B, num_classes) class scores of the full network (eval mode: dropout off)."""
    return self.forward(self.preprocess(images_uint8), logits=True)['logits']

  def _no_head_message(self) -> str:
    if self.trunk_end is not None:
      return (f'this {self.arch} has no classifier head: its weights end at {self.trunk_end}; '
              'logits need weights with a classifier (e.g. a torchvision .pth file)')
    return (f'this {self.arch} has no classifier head: its weights cover the conv trunk only; '
            'logits need weights with a classifier (e.g. a torchvision .pth file)')

  # --- weights-driven changes ---------------------------------------------------------------------
  def reset_classifier(self, num_classes: int | None, init: Init | None = None) -> None:
    """Give the model a head for `num_classes` classes (Places365: 365), or none (trunk only).

    A new head is randomly initialised (from `init`, default seed 0): loading weights overwrites it.
    """
    if num_classes == self.num_classes:
      return
    for path in self.head_paths():
      if self.has_layer(path):
        delattr(self, self.attribute(path))
    self.num_classes = num_classes
    if num_classes is not None:
      self.build_head(num_classes, init or Init(nnx.Rngs(0)))

  def truncate(self, last_path: str | None) -> None:
    """Keep the trunk up to and including `last_path` (weights that end there, e.g. CRAFT's
    VGG16-BN, which stops at conv5_2); later layers and the head are removed."""
    if last_path is None:
      return
    if last_path not in self._geometry:
      raise KeyError(self._unknown_layer_message(last_path))
    self.reset_classifier(None)
    keep = self._paths[:self._paths.index(last_path) + 1]
    for path in self._paths[len(keep):]:
      if self.has_layer(path):
        delattr(self, self.attribute(path))
    self._paths = keep
    self._geometry = {p: self._geometry[p] for p in keep}
    self.aliases = {a: p for a, p in self.aliases.items() if p in self._geometry}
    self.trunk_end = last_path
