"""One unit projected back to pixels: the deconvnet (Zeiler & Fergus 2014) and guided
backpropagation (Springenberg et al. 2015).

Both run the network forward to the layer, keep ONE unit's own activation as the top signal (every
other unit of the layer zeroed) and send it back to the input. They differ only at the
rectifiers, whose backward rule the models let a pass replace (`nonlinearity=` of `forward`, the
rules in models/layers.py): the deconvnet rectifies the backward signal itself, relu(g); guided
backpropagation also masks it where the forward input was off, as the plain gradient does. Max-pool
'switches' are the ordinary gradient of max pooling, and the 'transposed filters' are the
ordinary gradient of a convolution, so the projection IS a vector-Jacobian product of the layer
output w.r.t. the input, with the unit's activation as the vector.

keep='map' sends back the unit's whole map; keep='max' only its strongest activation in each image
(Zeiler & Fergus's figures), whose projection then lies inside that position's receptive field.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ndjax.models import layers as model_layers
from ndjax.viz import common

KEEPS = ('map', 'max')


def unit_signal(acts: jax.Array, unit, keep: str) -> jax.Array:
  """The top signal: (B, h, w, K) zeros except unit `unit` (an int, or one per image: (B,) ints),
  which keeps its own activation over its whole map (keep='map') or at its argmax position only
  (keep='max'; ties to the first in row-major order, as numpy's argmax). Held constant
  (stop_gradient): it is the vector of the VJP, not part of the function."""
  if keep not in KEEPS:
    raise common.VizError(f'unknown keep {keep!r}; valid: {", ".join(KEEPS)}')
  units = jnp.broadcast_to(jnp.asarray(unit, jnp.int32), acts.shape[:1])
  select = jax.nn.one_hot(units, acts.shape[-1], dtype=acts.dtype)[:, None, None, :]
  a = (acts * select).sum(axis=-1)                                      # (B, h, w)
  if keep == 'map':
    kept = a
  else:
    flat = a.reshape(a.shape[0], -1)
    at_max = jax.nn.one_hot(flat.argmax(axis=1), flat.shape[1], dtype=a.dtype)
    kept = (at_max * flat.max(axis=1, keepdims=True)).reshape(a.shape)
  return jax.lax.stop_gradient(kept[..., None] * select)


def _project(net: common.Net, state, x, layer: str, units, rule: str, keep: str) -> jax.Array:
  acts, pull_back = jax.vjp(lambda v: net.apply(state, v, (layer,), nonlinearity=rule)[layer], x)
  return pull_back(unit_signal(acts, units, keep))[0]


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5, 6))
def project(net: common.Net, state, x, layer: str, unit: int, rule: str,
            keep: str = 'max') -> jax.Array:
  """(B, H, W, C) unit `unit` of `layer` projected onto the (preprocessed) input `x` under the
  backward rule `rule` ('deconvnet', 'guided'; 'standard' gives the plain gradient)."""
  return _project(net, state, x, layer, unit, rule, keep)


@functools.partial(jax.jit, static_argnums=(0, 3, 5, 6))
def project_units(net: common.Net, state, x, layer: str, units, rule: str,
                  keep: str = 'max') -> jax.Array:
  """`project` with one unit per image ((B,) ints, traced: one compilation serves every unit),
  as the report's views need: each image is some unit's top image."""
  return _project(net, state, x, layer, units, rule, keep)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def unit_maxima(net: common.Net, state, x, layer: str, unit: int) -> tuple[jax.Array, jax.Array]:
  """((B,) the unit's strongest activation per image, (B, 2) its (row, col) on the layer's grid)."""
  a = net.apply(state, x, (layer,))[layer][..., unit]
  flat = a.reshape(a.shape[0], -1)
  index = flat.argmax(axis=1)
  return flat.max(axis=1), jnp.stack([index // a.shape[2], index % a.shape[2]], axis=1)


def to_pixels(net: common.Net, images, grad_x) -> np.ndarray:
  """A gradient w.r.t. the model input -> w.r.t. the RGB pixels (the preprocessing's VJP: channel
  order and per-channel scale), so it can be shown as an RGB image."""
  _, pull_back = jax.vjp(
      lambda im: model_layers.preprocess(im, net.module.preprocessing),
      jnp.asarray(images, jnp.float32))
  return np.asarray(pull_back(jnp.asarray(grad_x, jnp.float32))[0])


def signed_rgb(projection: np.ndarray, percentile: float = 99.5) -> np.ndarray:
  """(H, W, 3) -> [0, 1] image, 0 at mid grey, scaled symmetrically by the image's own
  `percentile`-th absolute value (Zeiler & Fergus's display: sign and structure, not magnitude)."""
  p = np.asarray(projection, np.float32)
  scale = float(np.percentile(np.abs(p), percentile)) or float(np.abs(p).max()) or 1.0
  return np.clip(0.5 + 0.5 * p / scale, 0.0, 1.0)


def boxed(image01: np.ndarray, box: tuple[int, int, int, int], width: int = 2,
          colour: tuple[float, float, float] = (1.0, 0.9, 0.0)) -> np.ndarray:
  """A copy of a float [0, 1] RGB image with a frame (yellow by default) around
  (top, left, bottom, right)."""
  out = np.array(image01, np.float32)
  top, left, bottom, right = box
  colour = np.asarray(colour, np.float32)
  out[top:top + width, left:right] = colour
  out[max(top, bottom - width):bottom, left:right] = colour
  out[top:bottom, left:left + width] = colour
  out[top:bottom, max(left, right - width):right] = colour
  return out


def _main(ctx: common.Context, rule: str) -> common.Output:
  method = {'deconvnet': 'deconvnet', 'guided': 'guided backpropagation'}[rule]
  unit = ctx.need_unit(rule)
  keep = ctx.options.keep
  if keep not in KEEPS:
    raise common.VizError(f'unknown --keep={keep}; valid: {", ".join(KEEPS)}')
  net, layer = ctx.net, ctx.layer
  x = net.preprocess(ctx.images)
  grad_x = np.asarray(project(net, net.state, x, layer, unit, rule, keep))
  pixels = to_pixels(net, ctx.images, grad_x)
  maxima, positions = (np.asarray(a) for a in unit_maxima(net, net.state, x, layer, unit))
  rf = net.module.receptive_field(layer)
  hw = ctx.images.shape[1:3]
  windows = np.array([rf.pixel_window(int(i), int(j), hw) for i, j in positions])
  rows, lines = [], []
  for image, projection, (top, left, bottom, right), name, peak, (i, j) in zip(
      ctx.images, pixels, windows, ctx.image_names, maxima, positions):
    shown = signed_rgb(projection)
    if keep == 'max':
      photo = boxed(image.astype(np.float32) / 255, (top, left, bottom, right))
      rows.append([photo, shown, shown[top:bottom, left:right], image[top:bottom, left:right]])
    else:
      rows.append([image, shown])
    lines.append(f'{name}  {layer} unit {unit}: max activation {peak:.4g} at ({i}, {j}), '
                 f'receptive field rows {top}:{bottom} cols {left}:{right}')
  columns = (['photo (receptive field of the max)', 'projection', 'projection, crop',
              'photo, crop'] if keep == 'max' else ['photo', 'projection'])
  fig = common.grid_figure(rows, row_titles=ctx.image_names, col_titles=columns,
                           title=f'{method}: {ctx.model} {layer} unit {unit} (keep={keep})')
  return common.Output(figure=fig,
                       arrays=dict(projection=grad_x, projection_rgb=pixels, max_activation=maxima,
                                   max_position=positions, window=windows),
                       lines=lines)


def main_deconvnet(ctx: common.Context) -> common.Output:
  """CLI 'deconvnet': one unit's deconvnet projection per photo."""
  return _main(ctx, 'deconvnet')


def main_guided(ctx: common.Context) -> common.Output:
  """CLI 'guided': one unit's guided-backpropagation projection per photo."""
  return _main(ctx, 'guided')
