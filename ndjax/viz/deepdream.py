"""DeepDream (Mordvintsev, Olah & Tyka 2015, "Inceptionism"): amplify whatever a layer already
sees in the photo, by gradient ascent on the image.

The objective is 0.5 * ||A_L(x)||^2, whose gradient at the layer is the activations themselves:
exactly the original Caffe recipe ("set the layer's diff to its data, backprop"). Each step, as in
Google's notebook (`make_step` / `deepdream`):
  * the image is rolled by a random shift of up to `jitter` pixels each way (seeded), the gradient
    taken there and rolled back: the pattern cannot lock onto the pixel grid;
  * the step is normalised, x += lr * g / mean|g|, so lr is the mean step whatever the layer's
    scale; it is taken in PIXEL units (0-255; x = u * `class_model.pixel_gain`), so the notebook's
    step_size 1.5 means the same for Caffe-space VGG16 and torchvision-space MobileNetV2;
  * the image is clipped to valid 0-255 pixels.
Octaves: the photo is resized down by `octave_scale` per octave (bilinear, from the full-size
photo); the dream runs from the smallest scale up, and the detail it added (dream - photo) is
upsampled onto the next scale's photo before that octave's steps.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ndjax.viz import class_model, common

# What `main` uses when the options leave steps or lr unset (None): the notebook's 10 steps per
# octave of step 1.5 (pixel units).
DEFAULT_STEPS = 10
DEFAULT_LR = 1.5


def objective(acts: jax.Array) -> jax.Array:
  """(B,) 0.5 * ||A||^2 per image: its gradient w.r.t. A is A."""
  return 0.5 * (acts ** 2).sum(axis=(1, 2, 3))


def layer_objective(net: common.Net, state, x, layer: str) -> jax.Array:
  """(B,) the DeepDream objective of the images x (model input) at `layer`."""
  return objective(net.apply(state, x, (layer,))[layer])


@functools.partial(jax.jit, static_argnames=('net', 'layer'))
def gradient(net: common.Net, state, x, layer: str) -> jax.Array:
  """d objective / d x: the layer's activations backpropagated to the input."""
  return jax.grad(lambda v: layer_objective(net, state, v, layer).sum())(x)


@functools.partial(jax.jit, static_argnames=('net', 'layer', 'jitter'))
def _octave(net, state, x, keys, lr, low, high, *, layer, jitter):
  """`len(keys)` DeepDream steps at one scale (one compiled loop per image size)."""
  gain = class_model.pixel_gain(net)

  def step(x, key):
    if jitter:
      shift = jax.random.randint(key, (2,), -jitter, jitter + 1)
      g = jnp.roll(gradient(net, state, jnp.roll(x, shift, axis=(1, 2)), layer),
                   -shift, axis=(1, 2))
    else:
      g = gradient(net, state, x, layer)
    g_pixels = g * gain                         # d objective / d u, u = x / gain
    scale = jnp.abs(g_pixels).mean(axis=(1, 2, 3), keepdims=True)
    x = x + gain * lr * g_pixels / jnp.maximum(scale, 1e-30)
    return jnp.clip(x, low, high), None

  x, _ = jax.lax.scan(step, x, keys)
  return x


def octave_sizes(hw: tuple[int, int], octaves: int, scale: float) -> list[tuple[int, int]]:
  """Image sizes from the full size down: size / scale^i, at least 1 pixel."""
  return [(max(1, round(hw[0] / scale ** i)), max(1, round(hw[1] / scale ** i)))
          for i in range(octaves)]


def dream(net: common.Net, state, x, layer: str, steps: int, lr: float, octaves: int,
          octave_scale: float, jitter: int, seed: int) -> jax.Array:
  """The DeepDream of the images x (model input, (B, H, W, C)) at `layer`: `steps` normalised
  ascent steps of `lr` (pixel units) per octave, from the smallest of `octaves` scales up."""
  if steps < 1 or octaves < 1:
    raise common.VizError(f'steps and octaves must be >= 1, got {steps} and {octaves}')
  if octave_scale < 1:
    raise common.VizError(f'octave_scale must be >= 1, got {octave_scale}')
  x = jnp.asarray(x, jnp.float32)
  low, high = (b * class_model.pixel_gain(net) for b in class_model.pixel_bounds(net))
  batch, channels = x.shape[0], x.shape[-1]
  bases = [jax.image.resize(x, (batch, h, w, channels), 'linear')
           for h, w in octave_sizes(x.shape[1:3], octaves, octave_scale)]
  key = jax.random.key(seed)
  detail = jnp.zeros_like(bases[-1])
  for i, base in reversed(list(enumerate(bases))):
    detail = jax.image.resize(detail, base.shape, 'linear')
    keys = jax.random.split(jax.random.fold_in(key, i), steps)
    dreamt = _octave(net, state, base + detail, keys, jnp.float32(lr), low, high, layer=layer,
                     jitter=int(jitter))
    detail = dreamt - base
  return dreamt


def main(ctx: common.Context) -> common.Output:
  """CLI 'deepdream': each photo and its dream at --layer; lines: the objective before/after."""
  net, o = ctx.net, ctx.options
  x = net.preprocess(ctx.images)
  steps = o.steps if o.steps is not None else DEFAULT_STEPS
  lr = o.lr if o.lr is not None else DEFAULT_LR
  dreamt = dream(net, net.state, x, ctx.layer, steps, lr, o.octaves, o.octave_scale, o.jitter,
                 o.seed)
  before = np.asarray(layer_objective(net, net.state, x, ctx.layer))
  after = np.asarray(layer_objective(net, net.state, dreamt, ctx.layer))
  rgb = common.to_uint8(net.deprocess(dreamt))
  rows = [[image, d] for image, d in zip(ctx.images, rgb)]
  titles = ['photo', f'DeepDream {ctx.layer}']
  fig = common.grid_figure(rows, row_titles=ctx.image_names, col_titles=titles, cell=3.4,
                           title=f'{ctx.model}: DeepDream of {ctx.layer}; {o.octaves} octaves x '
                           f'{steps} steps, lr {lr:g}, jitter {o.jitter}')
  lines = [f'{name}: 0.5 ||A_{ctx.layer}||^2 {b:.4g} -> {a:.4g} ({a / max(b, 1e-30):.1f}x)'
           for name, b, a in zip(ctx.image_names, before, after)]
  return common.Output(figure=fig, arrays=dict(dream=rgb, objective_before=before,
                                               objective_after=after),
                       lines=lines)
