"""Image-specific class saliency (Simonyan, Vedaldi & Zisserman 2014): which pixels the class score
is most sensitive to, read off one backward pass.

The score is the PRE-softmax logit S_c: the softmax's derivative also depends on the other classes'
scores, so a pixel could look salient by lowering a competitor rather than raising c (the paper's
argument). The gradient is taken w.r.t. the preprocessed input the network sees; the saliency map
is its largest absolute value over the colour channels (the paper's Eq. 3 for RGB images).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ndjax.viz import common


def class_scores(net: common.Net, state, x, classes) -> jax.Array:
  """(B,) pre-softmax score of each image's target class."""
  logits = net.apply(state, x, logits=True)['logits']
  return jnp.take_along_axis(logits, jnp.asarray(classes)[:, None], axis=1)[:, 0]


@functools.partial(jax.jit, static_argnums=0)
def gradient(net: common.Net, state, x, classes) -> jax.Array:
  """(B, H, W, C) d S_c / d x per image. One backward pass serves the whole batch: image b's score
  depends on image b alone (eval mode), so the gradient of the summed scores w.r.t. x_b is
  d S_{c_b}(x_b) / d x_b."""
  return jax.grad(lambda v: class_scores(net, state, v, classes).sum())(x)


@functools.partial(jax.jit, static_argnums=0)
def saliency(net: common.Net, state, x, classes) -> jax.Array:
  """(B, H, W) the saliency map: |d S_c / d x| maximised over channels."""
  return jnp.abs(gradient(net, state, x, classes)).max(axis=-1)


probabilities = common.class_probability     # (kept: the name the tests and callers use)
caption = common.caption


def figure(images: np.ndarray, maps: np.ndarray, names: list[str], captions: list[str]):
  """Per image: the photo (captioned with class and probability) and its saliency map, scaled to
  the map's own 99.5th percentile."""
  rows = [[image, common.normalise(m)] for image, m in zip(images, maps)]
  fig = common.grid_figure(rows, row_titles=names, col_titles=['photo', 'saliency'], cmap='gray',
                           title='saliency: |d class score / d input|, max over RGB')
  for row, text in enumerate(captions):
    caption(fig.axes[2 * row], text)
  return fig


def main(ctx: common.Context) -> common.Output:
  """CLI 'saliency': the saliency map of each photo's target class (predicted when not given)."""
  net = ctx.net
  net.check_head('saliency')
  x = net.preprocess(ctx.images)
  classes = jnp.asarray(ctx.classes(x))
  grad = np.asarray(gradient(net, net.state, x, classes))
  maps = np.abs(grad).max(axis=-1)
  probability = np.asarray(probabilities(net, net.state, x, classes))
  classes = np.asarray(classes)
  labels = [common.class_label(int(c), net.num_classes) for c in classes]
  captions = [f'{label}\np={p:.3f}' for label, p in zip(labels, probability)]
  lines = [f'{name}  {label}  p={p:.4f}'
           for name, label, p in zip(ctx.image_names, labels, probability)]
  return common.Output(figure=figure(ctx.images, maps, ctx.image_names, captions),
                       arrays=dict(saliency=maps, gradient=grad, classes=classes,
                                   probability=probability),
                       lines=lines)
