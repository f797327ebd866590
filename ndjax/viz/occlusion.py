"""Occlusion sensitivity (Zeiler & Fergus 2014): slide a grey square over the image and watch the
target class's probability; where covering the image makes it drop is what the class depends on.

Unlike gradient maps this measures a finite change of the network's output, so it holds for large
perturbations and needs no backward pass; the price is one forward pass per square position,
batched here on the device (`batch` occluded copies per forward, one compiled loop).

Square positions follow Captum's `Occlusion`, so its attributions are comparable: top-left corners
0, s, 2s, ... along each axis up to the first one at or past H - w; when (H - w) is no multiple of
the stride that last square is cut off by the image border (Captum pads its window with a negative
pad there), so every pixel is covered by at least one square.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ndjax.viz import common
from ndjax.viz.backprop import boxed


def corners(size: int, window: int, stride: int) -> np.ndarray:
  """Top-left corners of the square along one axis of length `size` (Captum's rule: the count is
  ceil((size - window) / stride) + 1)."""
  if not 1 <= window <= size:
    raise common.VizError(f'--window={window} must lie in 1..{size} (the image side)')
  if stride < 1 or (stride > window and window < size):
    raise common.VizError(f'--stride={stride} must lie in 1..{window} (the window), or squares '
                          'would skip pixels')
  return np.arange(math.ceil((size - window) / stride) + 1) * stride


def coverage(size: int, window: int, stride: int) -> np.ndarray:
  """(size, positions) 1 where pixel r lies inside the square at position j, else 0."""
  starts = corners(size, window, stride)
  pixels = np.arange(size)[:, None]
  return ((pixels >= starts) & (pixels < starts + window)).astype(np.float32)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 7))
def occlusion_map(net: common.Net, state, x, classes, window: int = 32, stride: int = 8,
                  baseline: float = 0.0, batch: int = 32) -> jax.Array:
  """(B, nh, nw) softmax probability of each image's target class with a `window` x `window`
  square of value `baseline` (model input space: 0 is the mean colour) at each position."""
  n, h, w, _ = x.shape
  tops, lefts = corners(h, window, stride), corners(w, window, stride)
  classes = jnp.asarray(classes)
  # every (image, top, left) as one flat list, padded to whole forward batches
  image, top, left = (a.ravel() for a in np.meshgrid(np.arange(n), tops, lefts, indexing='ij'))
  total = image.size
  pad = -total % batch
  image, top, left = (np.concatenate([a, np.zeros(pad, a.dtype)]).reshape(-1, batch)
                      for a in (image, top, left))
  rows, cols = jnp.arange(h), jnp.arange(w)

  def occluded(i, t, l):
    inside = (((rows >= t) & (rows < t + window))[:, None] &
              ((cols >= l) & (cols < l + window))[None, :])
    return jnp.where(inside[:, :, None], jnp.asarray(baseline, x.dtype), x[i])

  def chunk(args):
    i, t, l = args
    logits = net.apply(state, jax.vmap(occluded)(i, t, l), logits=True)['logits']
    p = jax.nn.softmax(logits, axis=-1)
    return jnp.take_along_axis(p, classes[i][:, None], axis=1)[:, 0]

  probs = jax.lax.map(chunk, (jnp.asarray(image), jnp.asarray(top), jnp.asarray(left)))
  return probs.reshape(-1)[:total].reshape(n, tops.size, lefts.size)


class_probability = common.class_probability


def mean_over_squares(values, hw: tuple[int, int], window: int, stride: int) -> jax.Array:
  """(B, nh, nw) one value per square -> (B, H, W): each pixel's mean over the squares covering
  it (every pixel is covered by at least one)."""
  rows, cols = coverage(hw[0], window, stride), coverage(hw[1], window, stride)
  total = jnp.einsum('ri,bij,cj->brc', rows, values, cols)
  return total / np.outer(rows.sum(1), cols.sum(1))


def occlusion_attribution(net: common.Net, state, x, classes, window: int = 32, stride: int = 8,
                          baseline: float = 0.0, batch: int = 32) -> jax.Array:
  """(B, H, W, C) Captum `Occlusion`'s attribution with f = the target class's probability and a
  (C, window, window) window of stride (C, stride, stride): per pixel, the mean over the squares
  covering it of f(x) - f(x with that square occluded); the same for every channel."""
  probs = occlusion_map(net, state, x, classes, window, stride, baseline, batch)
  drop = class_probability(net, state, x, classes)[:, None, None] - probs
  per_pixel = mean_over_squares(drop, x.shape[1:3], window, stride)
  return jnp.broadcast_to(per_pixel[..., None], x.shape)


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
  return np.clip((values - low) / ((high - low) or 1.0), 0.0, 1.0)


def main(ctx: common.Context) -> common.Output:
  """CLI 'occlusion': the target class's probability as the grey square moves over each photo."""
  net, o = ctx.net, ctx.options
  net.check_head('occlusion')
  x = net.preprocess(ctx.images)
  classes = jnp.asarray(ctx.classes(x))
  hw = ctx.images.shape[1:3]
  probs = np.asarray(occlusion_map(net, net.state, x, classes, o.window, o.stride, o.baseline,
                                   o.batch_size))
  p0 = np.asarray(class_probability(net, net.state, x, classes))
  per_pixel = np.asarray(mean_over_squares(probs, hw, o.window, o.stride))
  tops, lefts = corners(hw[0], o.window, o.stride), corners(hw[1], o.window, o.stride)
  rows, lines, minima, where, captions = [], [], [], [], []
  for image, p_map, heat, p, c, name in zip(ctx.images, probs, per_pixel, p0, np.asarray(classes),
                                            ctx.image_names):
    i, j = np.unravel_index(p_map.argmin(), p_map.shape)
    top, left = int(tops[i]), int(lefts[j])
    box = (top, left, min(top + o.window, hw[0]), min(left + o.window, hw[1]))
    minima.append(p_map[i, j])
    where.append(box)
    # colours span this image's own range (a 32 px square often moves p by a few tenths only):
    # blue = the lowest probability, red = the highest (unoccluded or above)
    low, high = float(p_map.min()), float(max(p_map.max(), p))
    rows.append([image, boxed(common.overlay(image, _stretch(heat, low, high)), box,
                              colour=(1.0, 1.0, 1.0)), _stretch(p_map, low, high)])
    label = common.class_label(int(c), net.num_classes)
    captions.append(f'{label}\np={p:.3f} unoccluded\nmin {low:.3f} (white square)\n'
                    f'colours: blue {low:.3f} .. red {high:.3f}')
    lines.append(f'{name}  {label}  p unoccluded {p:.4f}  min p {p_map[i, j]:.4f} with the square '
                 f'at rows {box[0]}:{box[2]} cols {box[1]}:{box[3]}')
  fig = common.grid_figure(
      rows, row_titles=ctx.image_names, cmap='jet',
      col_titles=['photo', 'p(class), mean over squares covering each pixel',
                  'p(class) per square position'],
      title=f'occlusion: {ctx.model}, {o.window}px square, stride {o.stride}, '
      f'value {o.baseline:g}')
  for row, text in enumerate(captions):
    common.caption(fig.axes[3 * row], text)
  classes = np.asarray(classes)
  return common.Output(figure=fig,
                       arrays=dict(probability_map=probs, probability=p0, classes=classes,
                                   per_pixel=per_pixel, min_window=np.array(where)),
                       lines=lines)


