"""Class-model visualisation (Simonyan, Vedaldi & Zisserman 2014) and feature visualisation of one
unit, with Yosinski et al.'s (2015) image regularisers.

Gradient ASCENT on S(I) - l2 * ||I||^2 from the zero image: S is the class's PRE-softmax score
(the softmax can rise by lowering the other classes instead of raising c) or a unit's mean
activation. Zero in model input space is the mean image, so the result is shown with the mean
added back (`net.deprocess`), contrast-stretched about the mean grey.

The core `ascend` is generic and pure: any x -> (B,) score function, one jit-compiled loop
(`lax.scan`) whose update rule is optax's SGD on the negated objective. After each update it
applies, in the order of Yosinski's deep-visualization toolbox (`optimize_image`): a Gaussian blur
after updates 1, k + 1, 2k + 1, ... (his `ii % blur_every == 0`), then zeroes the pixels of small
norm, then those of small contribution |sum_c x * dS/dx| (his px_abs_benefit).

`main` runs the ascent in PIXEL units: u, the deviation from the mean in 0-255 per channel (the
Caffe space the papers worked in), mapped to the model's input by x = u * `pixel_gain(net)`. So
--lr and --l2 (Simonyan's lambda) mean the same for every preprocessing convention (Caffe BGR
0-255, torchvision's [0, 1] / std), and the blur and percentiles do not care.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.tree_util import Partial

from ndjax.viz import common

# What `main` uses when the options leave lr or steps unset (None). In pixel units the class
# score's gradient is small (~3e-5 per grey level for MobileNetV2's goldfish at the mean image), so
# the SGD rate is large: 300 takes the goldfish logit from ~0 to ~100 in 200 steps at 224 px
# (~1 min here) and serves VGG16's units too (with --l2=1e-4 and the 0-255 bounds).
DEFAULT_STEPS = 200
DEFAULT_LR = 300.0
# A unit is visualised from small seeded noise (pixel units), not from the mean image: a deep
# ReLU unit is often off (output and gradient 0) on the flat mean image, and would never move.
UNIT_NOISE = 10.0


# --- pixel units ----------------------------------------------------------------------------------
def pixel_gain(net: common.Net) -> jax.Array:
  """(C,) model-input units per 0-255 pixel unit, in the model's channel order: x = u * gain maps
  a deviation u from the mean image (pixel units) to the model's input (`preprocess` is affine:
  x = (rgb * scale - mean) / std, so its linear part is scale / std per channel)."""
  from ndjax.models import layers
  p = layers.PREPROCESSING[net.module.preprocessing]
  return jnp.asarray(p['scale'], jnp.float32) / jnp.asarray(p['std'], jnp.float32)


def pixel_bounds(net: common.Net) -> tuple[jax.Array, jax.Array]:
  """(low, high), each (C,): the pixel-unit deviations u from the mean that keep the image inside
  0-255 (u = pixel - mean / scale, in the model's channel order)."""
  from ndjax.models import layers
  p = layers.PREPROCESSING[net.module.preprocessing]
  mean = jnp.asarray(p['mean'], jnp.float32) / p['scale']
  return -mean, 255.0 - mean


def _in_pixels(score_fn, gain, u):
  return score_fn(u * gain)


def in_pixels(score_fn, gain) -> Partial:
  """u -> score_fn(u * gain): a score over model inputs as a score over pixel-unit images."""
  return Partial(_in_pixels, score_fn, gain)


# --- score functions ------------------------------------------------------------------------------
# Each is a `jax.tree_util.Partial` whose bound arguments (the parameters, the class or unit) are
# pytree leaves: `ascend` receives them as traced arguments, so the weights are never folded into
# the compiled loop as constants and a new class or unit reuses the same compilation.
@functools.lru_cache(maxsize=16)
def _class_logit(net: common.Net):
  def score(state, c, x):
    return net.apply(state, x, logits=True)['logits'][:, c]
  return score


@functools.lru_cache(maxsize=64)
def _unit_mean(net: common.Net, layer: str):
  def score(state, unit, x):
    return common.unit_objective(net.apply(state, x, (layer,))[layer], unit, 'mean')
  return score


def class_score(net: common.Net, state, c: int) -> Partial:
  """x -> (B,) the pre-softmax score (logit) of class c."""
  return Partial(_class_logit(net), state, jnp.asarray(c, jnp.int32))


def unit_score(net: common.Net, state, layer: str, unit: int) -> Partial:
  """x -> (B,) the mean of the unit's activation map at `layer` (feature visualisation)."""
  return Partial(_unit_mean(net, layer), state, jnp.asarray(unit, jnp.int32))


# --- Yosinski's regularisers ----------------------------------------------------------------------
def gaussian_blur(x: jax.Array, sigma: float) -> jax.Array:
  """(B, H, W, C) blurred over H and W per channel: scipy.ndimage.gaussian_filter's kernel
  (truncated at 4 sigma) and boundary ('reflect', numpy's 'symmetric'), the filter Yosinski's
  toolbox calls; separable, as two 1-D passes."""
  if sigma <= 0:
    return x
  radius = int(4.0 * sigma + 0.5)
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  kernel = np.exp(-0.5 * (t / sigma) ** 2)
  kernel = (kernel / kernel.sum()).astype(np.float32)
  for axis in (1, 2):
    pad = [(0, 0)] * 4
    pad[axis] = (radius, radius)
    padded = jnp.pad(x, pad, mode='symmetric')
    n = x.shape[axis]
    x = sum(float(w) * jax.lax.slice_in_dim(padded, k, k + n, axis=axis)
            for k, w in enumerate(kernel))
  return x


def zero_below_percentile(x: jax.Array, values: jax.Array, pct: float) -> jax.Array:
  """Zero x's pixels (all channels) whose (B, H, W) `values` lie strictly below their image's
  `pct`-th percentile (numpy's linear interpolation): pct=50 zeroes the lower half."""
  threshold = jnp.percentile(values, pct, axis=(1, 2), keepdims=True)
  return jnp.where((values < threshold)[..., None], jnp.zeros((), x.dtype), x)


# --- the ascent -----------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=('steps', 'blur_every', 'blur_sigma', 'clip_norm_pct',
                                             'clip_contrib_pct'))
def _ascend(score_fn, x0, lr, l2, bounds, *, steps, blur_every, blur_sigma, clip_norm_pct,
            clip_contrib_pct):
  opt = optax.sgd(lr)

  def step(carry, i):
    x, opt_state = carry
    scores, g_score = _score_and_grad(score_fn, x)
    # the gradient of the NEGATED objective -(S - l2 ||x||^2): optax minimises
    updates, opt_state = opt.update(-(g_score - 2 * l2 * x), opt_state, x)
    x = optax.apply_updates(x, updates)
    if blur_every and blur_sigma > 0:
      x = jax.lax.cond(i % blur_every == 0, lambda v: gaussian_blur(v, blur_sigma),
                       lambda v: v, x)
    if clip_norm_pct > 0:
      x = zero_below_percentile(x, jnp.linalg.norm(x, axis=-1), clip_norm_pct)
    if clip_contrib_pct > 0:
      # Yosinski's first-order estimate of what zeroing a pixel changes the score: |sum_c x dS/dx|
      x = zero_below_percentile(x, jnp.abs((x * g_score).sum(-1)), clip_contrib_pct)
    if bounds is not None:
      x = jnp.clip(x, *bounds)
    return (x, opt_state), scores

  (x, _), history = jax.lax.scan(step, (x0, opt.init(x0)), jnp.arange(steps))
  return x, jnp.concatenate([history, score_fn(x)[None]])


def _score_and_grad(score_fn, x):
  """((B,) scores, dS/dx): one backward pass serves the batch (each score reads its own image)."""
  total, vjp = jax.vjp(score_fn, x)
  return total, vjp(jnp.ones_like(total))[0]


def ascend(score_fn, x0, steps: int, lr: float, l2: float, blur_every: int = 0,
           blur_sigma: float = 0.5, clip_norm_pct: float = 0.0, clip_contrib_pct: float = 0.0,
           bounds: tuple | None = None) -> tuple[jax.Array, jax.Array]:
  """Gradient ascent on score_fn(x) - l2 * ||x||^2 per image from x0 -> (x, history).

  score_fn: x (B, H, W, C) -> (B,) scores (a `Partial` from `class_score`/`unit_score` keeps the
  weights a traced argument; any other callable is compiled with what it closes over).
  Each step: SGD update x += lr * (dS/dx - 2 l2 x); then, after updates 1, k + 1, 2k + 1, ...
  (k = `blur_every`), a Gaussian blur of `blur_sigma` px; then pixels whose norm over channels is
  below the `clip_norm_pct` percentile are zeroed; then those whose contribution
  |sum_c x * dS/dx| (dS/dx at the step's start) is below the `clip_contrib_pct` percentile.
  0 switches each regulariser off (Yosinski's optimize_image, in his order). Last, with
  `bounds` = (low, high) (arrays broadcast against x), x is clipped into that box (a projected
  ascent: `main` keeps the image a valid 0-255 picture).
  history: (steps + 1, B) the score before each update and, last, at the returned x.
  """
  if steps < 1:
    raise common.VizError(f'steps must be >= 1, got {steps}')
  if not 0 <= clip_norm_pct <= 100 or not 0 <= clip_contrib_pct <= 100:
    raise common.VizError('clip percentiles must lie in [0, 100]')
  if not isinstance(score_fn, Partial):
    score_fn = Partial(score_fn)
  if bounds is not None:
    bounds = tuple(jnp.asarray(b, jnp.float32) for b in bounds)
  return _ascend(score_fn, jnp.asarray(x0, jnp.float32), jnp.float32(lr), jnp.float32(l2), bounds,
                 steps=int(steps), blur_every=int(blur_every), blur_sigma=float(blur_sigma),
                 clip_norm_pct=float(clip_norm_pct), clip_contrib_pct=float(clip_contrib_pct))


# --- the CLI --------------------------------------------------------------------------------------
def display(net: common.Net, x) -> np.ndarray:
  """(B, H, W, 3) in [0, 1]: the image with the mean added back (`deprocess`), its deviation from
  the mean stretched to its 99.5th percentile about mid grey (class models are faint)."""
  rgb = np.asarray(net.deprocess(x))
  mean = np.asarray(net.deprocess(jnp.zeros_like(x)))
  return np.stack([common.normalise(d) for d in rgb - mean])


def figure(images01: np.ndarray, history: np.ndarray, title: str):
  """The synthesised image(s) and the score per step."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  n = len(images01)
  fig, axes = plt.subplots(1, n + 1, figsize=(4.2 * (n + 1), 4.4), squeeze=False,
                           gridspec_kw=dict(width_ratios=[1.3] * n + [1]))
  for ax, image in zip(axes[0], images01):
    ax.imshow(image)
    ax.axis('off')
  curve = axes[0][n]
  curve.plot(np.arange(len(history)), history)
  curve.set_xlabel('step')
  curve.set_ylabel('score')
  curve.grid(alpha=0.3)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  return fig


def pre_activation(module, layer: str) -> str:
  """The tap a post-ReLU layer's ReLU reads (vgg16 conv5_3 -> features.28), else `layer`.

  Feature visualisation ascends the unit BEFORE its ReLU, as Yosinski's and Lucid's tools do: from
  noise a deep unit is often off everywhere, and a ReLU output that stays 0 has no gradient, so the
  ascent would never start; the pre-activation rises from below zero and the image that maximises
  it maximises the ReLU output too.
  """
  path = module.resolve(layer)
  paths = list(module._paths)
  i = paths.index(path)
  if module._descriptions.get(path, '').startswith('ReLU output') and i > 0:
    before = paths[i - 1]
    if module.channels(before) == module.channels(path):
      return before
  return layer


def main(ctx: common.Context) -> common.Output:
  """CLI 'class_model': with --unit, feature visualisation of that unit of --layer (any model;
  its pre-ReLU value, see `pre_activation`); otherwise the class model of --target (needs a
  classifier head)."""
  net, o = ctx.net, ctx.options
  size = int(ctx.images.shape[1])
  if ctx.unit is not None:
    unit = ctx.need_unit('feature visualisation')
    tap = pre_activation(net.module, ctx.layer)
    score = unit_score(net, net.state, tap, unit)
    what = (f'{ctx.layer} unit {unit} (mean activation'
            + (f' before its ReLU: {tap})' if tap != ctx.layer else ')'))
  else:
    if ctx.target is None:
      raise common.VizError('class_model needs --target (a class index or an ImageNet name such '
                            'as goldfish), or --layer and --unit for one unit')
    net.check_head('class_model')
    c = common.resolve_class(ctx.target, net.num_classes)
    score = class_score(net, net.state, c)
    what = f'class {common.class_label(c, net.num_classes)} (pre-softmax score)'
  gain = pixel_gain(net)
  steps = o.steps if o.steps is not None else DEFAULT_STEPS
  lr = o.lr if o.lr is not None else DEFAULT_LR
  u0 = jnp.zeros((1, size, size, 3), jnp.float32)
  if ctx.unit is not None:
    u0 = UNIT_NOISE * jax.random.normal(jax.random.key(o.seed), u0.shape, jnp.float32)
  u, history = ascend(in_pixels(score, gain), u0, steps, lr, o.l2, o.blur_every, o.blur_sigma,
                      o.clip_norm_pct, o.clip_contrib_pct, bounds=pixel_bounds(net))
  x = u * gain
  history = np.asarray(history)
  image = display(net, x)
  title = (f'{ctx.model}: {what}; {steps} steps, lr {lr:g}, l2 {o.l2:g}'
           + (f', blur {o.blur_sigma:g} every {o.blur_every}' if o.blur_every else '')
           + (f', clip norm<p{o.clip_norm_pct:g}' if o.clip_norm_pct else '')
           + (f', clip contrib<p{o.clip_contrib_pct:g}' if o.clip_contrib_pct else ''))
  start = 'the zero (mean) image' if ctx.unit is None else f'noise (seed {o.seed})'
  lines = [f'{what}: score {history[0, 0]:.4g} at {start} -> {history[-1, 0]:.4g} after {steps} '
           'steps']
  if not np.any(history):
    lines.append('the unit never fired (an output that stays 0 has no gradient): try another '
                 '--seed or a larger --lr')
  return common.Output(figure=figure(image, history, title),
                       arrays=dict(image=np.asarray(net.deprocess(x)), display=image,
                                   history=history),
                       lines=lines)
