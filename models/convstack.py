"""One Flax NNX class for plain conv/pool stacks (VGG, AlexNet trunks), variants as specs.

A model is a list of ops in torchvision's `features.N` order, so every op's output can be tapped
by its torchvision module path, and the paper's names (conv5_3 = post-ReLU, pool5, ...) are aliases
onto those paths. The same spec drives the receptive-field geometry the upsampler uses
(`models/geometry.py`), so the two can never disagree.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from models import geometry


@dataclasses.dataclass(frozen=True)
class Op:
  kind: str                      # 'conv' | 'bn' | 'relu' | 'pool'
  out: int = 0                   # conv output channels
  kernel: int = 1
  stride: int = 1
  padding: int = 0


def vgg_ops(cfg: Sequence, batch_norm: bool = False) -> tuple[Op, ...]:
  """torchvision's `make_layers`: 3x3 pad-1 convs (+BN) + ReLU, 2x2 max pools."""
  ops = []
  for v in cfg:
    if v == 'M':
      ops.append(Op('pool', kernel=2, stride=2))
    else:
      ops.append(Op('conv', out=v, kernel=3, stride=1, padding=1))
      if batch_norm:
        ops.append(Op('bn', out=v))
      ops.append(Op('relu'))
  return tuple(ops)


def paper_names(ops: Sequence[Op], block_style: str) -> dict[str, int]:
  """Paper layer names -> op index. Conv names mean the POST-ReLU output (Caffe's in-place ReLU)."""
  names = {}
  block, within, conv_count, pool_count = 1, 0, 0, 0
  last_conv_relu = None
  for i, op in enumerate(ops):
    if op.kind == 'conv':
      within += 1
      conv_count += 1
      last_conv_relu = None
    elif op.kind == 'relu':
      last_conv_relu = i
      if block_style == 'vgg':
        names[f'conv{block}_{within}'] = i
      else:
        names[f'conv{conv_count}'] = i
    elif op.kind == 'pool':
      pool_count += 1
      names[f'pool{pool_count}'] = i
      block += 1
      within = 0
  del last_conv_relu
  return names


VGG16_CFG = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M')

ALEXNET_OPS = (
    Op('conv', 64, 11, 4, 2), Op('relu'), Op('pool', kernel=3, stride=2),
    Op('conv', 192, 5, 1, 2), Op('relu'), Op('pool', kernel=3, stride=2),
    Op('conv', 384, 3, 1, 1), Op('relu'),
    Op('conv', 256, 3, 1, 1), Op('relu'),
    Op('conv', 256, 3, 1, 1), Op('relu'), Op('pool', kernel=3, stride=2),
)

# Input conventions. 'caffe': the original VGG/Caffe weights (BGR, 0-255, minus the BGR mean);
# 'torch': torchvision (RGB in [0, 1], per-channel mean/std, one std per channel, not one for all).
PREPROCESSING = {
    'caffe': dict(bgr=True, scale=1.0, mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0)),
    'torch': dict(bgr=False, scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    'none': dict(bgr=False, scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),  # raw 0-255 RGB
}


def preprocess(images_uint8: jax.Array, convention: str) -> jax.Array:
  """uint8 RGB NHWC -> the float input the weights were trained on."""
  p = PREPROCESSING[convention]
  x = images_uint8.astype(jnp.float32)
  if p['bgr']:
    x = x[..., ::-1]
  x = x * p['scale']
  return (x - jnp.asarray(p['mean'], jnp.float32)) / jnp.asarray(p['std'], jnp.float32)


class ConvStack(nnx.Module):
  """A conv/BN/ReLU/max-pool trunk; `__call__` returns the requested taps only.

  Parameters live in attributes named `features_<N>` (N = torchvision index), so a torchvision
  state_dict key `features.N.weight` maps to `features_N.kernel` one to one.
  """

  def __init__(self, ops: Sequence[Op], *, in_channels: int = 3, block_style: str = 'vgg',
               preprocessing: str = 'caffe', name: str = 'convstack', rngs: nnx.Rngs):
    self.ops = tuple(ops)
    self.preprocessing = preprocessing
    self.arch = name
    # torchvision's VGG/AlexNet init: kaiming-normal (fan_out, relu) weights, zero biases.
    kernel_init = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')
    c = in_channels
    for i, op in enumerate(self.ops):
      if op.kind == 'conv':
        setattr(self, f'features_{i}', nnx.Conv(
            c, op.out, (op.kernel, op.kernel), strides=(op.stride, op.stride),
            padding=[(op.padding, op.padding)] * 2, kernel_init=kernel_init,
            bias_init=nnx.initializers.zeros_init(), rngs=rngs))
        c = op.out
      elif op.kind == 'bn':
        setattr(self, f'features_{i}', nnx.BatchNorm(
            c, use_running_average=True, momentum=0.9, epsilon=1e-5, rngs=rngs))
    self.out_channels = c
    self.aliases = paper_names(self.ops, block_style)

  # --- layer naming -------------------------------------------------------------------------
  def layer_names(self) -> list[str]:
    return list(self.aliases) + [f'features.{i}' for i in range(len(self.ops))]

  def resolve(self, layer: str) -> int:
    """Layer name (paper alias or torchvision path) -> op index. Raises KeyError listing valid ones."""
    if layer in self.aliases:
      return self.aliases[layer]
    if layer.startswith('features.') and layer[9:].isdigit() and int(layer[9:]) < len(self.ops):
      return int(layer[9:])
    raise KeyError(f'unknown layer {layer!r} for {self.arch}; valid: {", ".join(self.layer_names())}')

  def describe(self, layer: str) -> str:
    """What the activation of `layer` is, for results.json."""
    i = self.resolve(layer)
    op = self.ops[i]
    what = {'conv': 'Conv2d output (pre-ReLU)', 'bn': 'BatchNorm output (pre-ReLU)',
            'relu': 'ReLU output (post-ReLU)', 'pool': 'MaxPool output'}[op.kind]
    return f'features.{i}: {what}'

  def rf_geometry(self, layer: str) -> tuple[float, float]:
    """(origin, spacing) of the tap's unit centres in input pixels (see models/geometry.py)."""
    return geometry.rf_centres(self.ops, self.resolve(layer))

  def channels(self, layer: str) -> int:
    c = 0
    for op in self.ops[: self.resolve(layer) + 1]:
      if op.kind == 'conv':
        c = op.out
    return c

  # --- forward ------------------------------------------------------------------------------
  def __call__(self, images_uint8: jax.Array, taps: Sequence[str]) -> dict[str, jax.Array]:
    """uint8 RGB NHWC images -> {tap: NHWC float32 activation}; stops after the deepest tap."""
    want = {self.resolve(t): t for t in taps}
    x = preprocess(images_uint8, self.preprocessing)
    out = {}
    for i, op in enumerate(self.ops[: max(want) + 1]):
      if op.kind in ('conv', 'bn'):
        x = getattr(self, f'features_{i}')(x)
      elif op.kind == 'relu':
        x = jax.nn.relu(x)
      elif op.kind == 'pool':
        pad = ((0, 0), (op.padding, op.padding), (op.padding, op.padding), (0, 0))
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, op.kernel, op.kernel, 1),
                                  (1, op.stride, op.stride, 1), pad)
      if i in want:
        out[want[i]] = x
    return {t: out[t] for t in taps}


vgg16 = functools.partial(ConvStack, vgg_ops(VGG16_CFG), block_style='vgg', name='vgg16')
vgg16_bn = functools.partial(ConvStack, vgg_ops(VGG16_CFG, batch_norm=True), block_style='vgg',
                             name='vgg16_bn')
alexnet = functools.partial(ConvStack, ALEXNET_OPS, block_style='alexnet', preprocessing='torch',
                            name='alexnet')
