"""Feature inversion (Mahendran & Vedaldi 2015, "Understanding deep image representations by
inverting them"): which image has the same representation at a layer as the photo? What survives
tells what the layer keeps.

x* = argmin_x ||phi(x) - phi0||^2 / ||phi0||^2 + alpha_weight * N_alpha(x) + tv_weight * N_TV(x)

with phi0 = phi(x0) and the paper's normalisations (its Sec. 3.3), in PIXEL units (0-255 about the
mean image, whatever the model's preprocessing; see `class_model.pixel_gain`):
  * the loss is relative: 1 means 'no better than the zero image', whatever the layer's scale;
  * N_alpha(x) = sum |u / B|^alpha / (H W), B = 80: the paper's B, the average pixel norm of
    mean-subtracted natural images, so a typical image has N_alpha ~ 1;
  * N_TV(x) = sum_ij sum_c [(u_i,j+1 - u_ij)^2 + (u_i+1,j - u_ij)^2] / (H W V^2), V = B / 6.5 (the
    paper's TV^beta with beta = 2; the last row/column has no forward difference and adds 0).
The optimiser runs on z = u / B (an image of unit scale), so Adam's lr is the step in units of B
(lr 0.05 ~ 4 grey levels per step), from small seeded noise (z ~ N(0, 0.01^2)).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ndjax.viz import class_model, common

B = 80.0                 # the paper's natural-image pixel norm, 0-255 units
V = B / 6.5              # its typical neighbour difference
NOISE = 0.01             # the start: N(0, NOISE^2) in units of B
# What `main` uses when the options leave steps or lr unset (None); tuned on VGG16 ImageNet
# (chelsea: 100 steps give conv1_2 38.7 dB ... conv5_3 15.5 dB at 224 px, each layer's features
# matched within 4 %). With these normalisations --tv_weight=0.01 suits every layer (1 blurs
# conv1_2's inversion to a brown smudge).
DEFAULT_STEPS = 100
DEFAULT_LR = 0.05
# The paper's layers for its two classic models; other models: coarse module paths (see `taps`).
PAPER_TAPS = (('conv1_2', 'conv2_2', 'conv3_3', 'conv4_3', 'conv5_3'),
              ('conv1', 'conv2', 'conv3', 'conv4', 'conv5'))


def alpha_norm(z: jax.Array, alpha: float) -> jax.Array:
  """(B,) sum |z|^alpha / (H W) per image, z the image in units of B."""
  return (jnp.abs(z) ** alpha).sum(axis=(1, 2, 3)) / (z.shape[1] * z.shape[2])


def total_variation(z: jax.Array) -> jax.Array:
  """(B,) the squared-gradient TV (beta = 2) per image, normalised by H W (V / B)^2: z is the
  image in units of B, so this is sum (du)^2 / (H W V^2) in pixel units u."""
  dy = jnp.diff(z, axis=1)
  dx = jnp.diff(z, axis=2)
  tv = (dy ** 2).sum(axis=(1, 2, 3)) + (dx ** 2).sum(axis=(1, 2, 3))
  return tv * (B / V) ** 2 / (z.shape[1] * z.shape[2])


def representation_loss(phi: jax.Array, phi0: jax.Array) -> jax.Array:
  """(B,) ||phi - phi0||^2 / ||phi0||^2 per image."""
  return (((phi - phi0) ** 2).sum(axis=(1, 2, 3)) /
          jnp.maximum((phi0 ** 2).sum(axis=(1, 2, 3)), 1e-30))


def objective_terms(net: common.Net, state, z, phi0, layer: str, alpha: float) -> dict:
  """{'loss', 'alpha', 'tv'}: each (B,) at z (the image in units of B about the mean)."""
  x = z * (B * class_model.pixel_gain(net))
  phi = net.apply(state, x, (layer,))[layer]
  return dict(loss=representation_loss(phi, phi0), alpha=alpha_norm(z, alpha),
              tv=total_variation(z))


@functools.partial(jax.jit, static_argnames=('net', 'layer', 'steps', 'alpha'))
def _invert(net, state, x0, z0, lr, tv_weight, alpha_weight, *, layer, steps, alpha):
  phi0 = net.apply(state, x0, (layer,))[layer]
  opt = optax.adam(lr)

  def total(z):
    t = objective_terms(net, state, z, phi0, layer, alpha)
    return (t['loss'] + alpha_weight * t['alpha'] + tv_weight * t['tv']).sum()

  def step(carry, _):
    z, opt_state = carry
    value, g = jax.value_and_grad(total)(z)
    updates, opt_state = opt.update(g, opt_state, z)
    return (optax.apply_updates(z, updates), opt_state), value

  (z, _), _ = jax.lax.scan(step, (z0, opt.init(z0)), None, length=steps)
  return z * (B * class_model.pixel_gain(net))


def invert(net: common.Net, state, x0, layer: str, steps: int, lr: float, tv_weight: float,
           alpha: float, alpha_weight: float, seed: int) -> jax.Array:
  """The model input x (same shape as x0) whose `layer` representation matches x0's, by `steps`
  Adam steps of rate `lr` (in units of B) on the normalised objective (module docstring), from
  small noise drawn from `seed`."""
  if steps < 1:
    raise common.VizError(f'steps must be >= 1, got {steps}')
  x0 = jnp.asarray(x0, jnp.float32)
  z0 = NOISE * jax.random.normal(jax.random.key(seed), x0.shape, jnp.float32)
  return _invert(net, state, x0, z0, jnp.float32(lr), jnp.float32(tv_weight),
                 jnp.float32(alpha_weight), layer=layer, steps=int(steps), alpha=float(alpha))


def psnr(rgb, reference_rgb) -> np.ndarray:
  """(B,) peak signal-to-noise ratio in dB of 0-255 RGB images (clipped to 0-255) vs the
  reference: 10 log10(255^2 / MSE)."""
  a = np.clip(np.asarray(rgb, np.float64), 0, 255)
  b = np.asarray(reference_rgb, np.float64)
  mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
  return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12))


def taps(net: common.Net, layer: str) -> list[str]:
  """Which layers `main` inverts, up to and including `layer` (the CLI's --layer; by default the
  model's last conv layer): the paper's conv layers where the model names them (VGG16's
  conv1_2 ... conv5_3, AlexNet's conv1 ... conv5), else 5 module paths with at most one dot,
  spread evenly in forward order from the first to `layer`."""
  module = net.module
  paths = module.layer_names()[len(module.aliases):]         # forward order
  end = paths.index(module.resolve(layer))
  for names in PAPER_TAPS:
    if all(n in module.aliases for n in names):
      chosen = [n for n in names if paths.index(module.resolve(n)) <= end]
      if layer not in chosen and module.resolve(layer) not in map(module.resolve, chosen):
        chosen.append(layer)
      return chosen
  coarse = [p for p in paths[:end + 1] if p.count('.') <= 1]
  if module.resolve(layer) not in coarse:
    coarse.append(module.resolve(layer))
  picks = np.unique(np.round(np.linspace(0, len(coarse) - 1, min(5, len(coarse)))).astype(int))
  return [coarse[i] for i in picks]


def main(ctx: common.Context) -> common.Output:
  """CLI 'inversion': the first photo and its reconstruction from each layer of `taps`."""
  net, o = ctx.net, ctx.options
  image = ctx.images[:1]
  x0 = net.preprocess(image)
  steps = o.steps if o.steps is not None else DEFAULT_STEPS
  lr = o.lr if o.lr is not None else DEFAULT_LR
  layers = taps(net, ctx.layer)
  recons, scores, lines = [], [], []
  for layer in layers:
    x = invert(net, net.state, x0, layer, steps, lr, o.tv_weight, o.alpha, o.alpha_weight, o.seed)
    rgb = np.asarray(net.deprocess(x))
    z = x / (B * class_model.pixel_gain(net))
    phi0 = net.apply(net.state, x0, (layer,))[layer]
    loss = float(objective_terms(net, net.state, z, phi0, layer, o.alpha)['loss'][0])
    value = float(psnr(rgb, image)[0])
    recons.append(rgb[0])
    scores.append(value)
    lines.append(f'{layer}: PSNR {value:.2f} dB vs the original, relative feature error '
                 f'{loss:.4f}')
  cells = [image[0]] + [common.to_uint8(r) for r in recons]
  titles = [ctx.image_names[0]] + [f'{l}\n{s:.1f} dB' for l, s in zip(layers, scores)]
  fig = common.grid_figure([cells], col_titles=titles, cell=2.6,
                           title=f'{ctx.model}: what each layer keeps (feature inversion, '
                           f'{steps} Adam steps, TV {o.tv_weight:g})')
  return common.Output(figure=fig,
                       arrays=dict(original=image, reconstructions=np.stack(recons),
                                   psnr=np.asarray(scores), layers=np.asarray(layers)),
                       lines=lines)
