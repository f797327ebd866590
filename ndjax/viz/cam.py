"""Class activation maps: CAM (Zhou et al. 2016) and Grad-CAM (Selvaraju et al. 2017).

CAM needs a head that is global average pooling + one linear layer: then the logit of class c is
    y_c = mean_{i,j} sum_n w_{c,n} f_n(i, j) + b_c,
so the map M_c(i, j) = sum_n w_{c,n} f_n(i, j) at the pooled layer's resolution splits the logit
exactly over positions (mean_{i,j} M_c + b_c = y_c). Which tap the pool reads and which Linear
follows is a per-model fact (`GAP_HEADS`).

Grad-CAM works at any layer of any model with a head: alpha_n = mean_{i,j} d y_c / d A_n(i, j)
(y_c pre-softmax), map = ReLU(sum_n alpha_n A_n). The gradient at the tap comes from the model's
own edit hook: the tap is edited by `edits.add(delta)` with a zero delta and y_c differentiated
w.r.t. delta. At a GAP+linear tap alpha_n = w_{c,n} / (h w), so Grad-CAM = ReLU(CAM) / (h w).

Both return the raw map at the layer's resolution; display normalisation (`minmax`) and
upsampling (`common.overlay`) happen at the edge.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ndjax import models
from ndjax.models import edits, layers
from ndjax.viz import common

# arch -> (the tap the head's global average pool reads, the one Linear after it). Read off each
# model's `head`: MobileNetV2 pools `features` (features.18, post-ReLU6) into dropout +
# classifier.1; ResNets pool layer4 into fc; GoogLeNet pools inception5b into dropout + fc;
# DenseNet pools relu5 (DenseNet.forward's F.relu of features) into classifier; the AlexNet GAP
# variants pool conv5 (post-ReLU, no pool5) with pool_size=1 into classifier.0. Dropout is the
# identity in eval mode, which `common.Net.of` sets.
GAP_HEADS = {
    'mobilenet_v2': ('features', 'classifier.1'),
    'resnet18': ('layer4', 'fc'),
    'resnet50': ('layer4', 'fc'),
    'resnet152': ('layer4', 'fc'),
    'googlenet': ('inception5b', 'fc'),
    'densenet161': ('relu5', 'classifier'),
    'alexnet_gap_wide': ('conv5', 'classifier.0'),
    'alexnet_gap_wideall': ('conv5', 'classifier.0'),
    'alexnet_gap_wide1024': ('conv5', 'classifier.0'),
    'alexnet_gap_wide2048': ('conv5', 'classifier.0'),
}


# --- CAM ----------------------------------------------------------------------------------------
def cam_layer(net: common.Net) -> str:
  """The tap CAM reads (the one the head's global average pool reads), or a VizError for a model
  whose head is not global average pooling + one linear layer."""
  return gap_head(net)[0]


def gap_head(net: common.Net) -> tuple[str, str]:
  arch = net.module.arch
  if arch not in GAP_HEADS:
    raise common.VizError(
        f'CAM needs a global-average-pooling + one-linear-layer head, which {arch} lacks (CAM '
        f'models: {", ".join(GAP_HEADS)}); use gradcam, which works for any model with a head')
  net.check_head('CAM')
  return GAP_HEADS[arch]


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _cam(net: common.Net, tap: str, linear: str, state, x, classes):
  model = nnx.merge(net.graphdef, state)
  out = model.forward(x, (tap,), logits=True)
  kernel = model.layer(linear).kernel[...]                      # (K, classes)
  weights = jnp.take(kernel, classes, axis=1)                   # (K, B): w_{c_b, n}
  maps = jnp.einsum('bhwk,kb->bhw', out[tap], weights, precision=layers.PRECISION)
  return maps, out['logits']


def cam_with_logits(net: common.Net, state, x, classes) -> tuple[jax.Array, jax.Array]:
  """(CAM maps (B, h, w) of class classes[b] for image b, logits (B, classes)) from one pass:
  the figure needs each class's probability, and the logits prove the decomposition."""
  tap, linear = gap_head(net)
  return _cam(net, tap, linear, state, x, jnp.asarray(classes, jnp.int32))


def cam(net: common.Net, state, x, classes) -> jax.Array:
  """Raw class activation maps (B, h, w): sum_n w_{c,n} f_n(i, j) at the pooled tap's resolution
  (signed; mean over positions + the class bias = the logit)."""
  return cam_with_logits(net, state, x, classes)[0]


# --- Grad-CAM -----------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=(0, 1))
def _gradcam(net: common.Net, path: str, state, x, classes):
  # the tap's shape without running anything (traced, so no second forward at run time)
  shape = jax.eval_shape(lambda s, v: net.apply(s, v, (path,))[path], state, x)

  def score(delta):
    out = net.apply(state, x, (path,), logits=True, edits={path: edits.add(delta)})
    chosen = jnp.take_along_axis(out['logits'], classes[:, None], axis=1)
    # images are independent in eval mode, so the sum's gradient is each image's own
    return chosen.sum(), (out[path], out['logits'])

  grads, (acts, logits) = jax.grad(score, has_aux=True)(jnp.zeros(shape.shape, shape.dtype))
  alpha = grads.mean(axis=(1, 2))                               # (B, K)
  maps = jnp.einsum('bhwk,bk->bhw', acts, alpha, precision=layers.PRECISION)
  return jax.nn.relu(maps), logits


def _layer_path(net: common.Net, layer: str) -> str:
  try:
    return net.module.resolve(layer)
  except KeyError as e:
    raise common.VizError(e.args[0]) from None


def gradcam_with_logits(net: common.Net, state, x, layer: str,
                        classes) -> tuple[jax.Array, jax.Array]:
  """(Grad-CAM maps (B, h, w) at `layer` for class classes[b] of image b, logits (B, classes))."""
  net.check_head('Grad-CAM')
  return _gradcam(net, _layer_path(net, layer), state, x, jnp.asarray(classes, jnp.int32))


def gradcam(net: common.Net, state, x, layer: str, classes) -> jax.Array:
  """Raw Grad-CAM maps (B, h, w) at the layer's resolution: ReLU(sum_n alpha_n A_n) with
  alpha_n the position-mean of d y_c / d A_n, y_c the pre-softmax score."""
  return gradcam_with_logits(net, state, x, layer, classes)[0]


# --- display ------------------------------------------------------------------------------------
def minmax(maps) -> np.ndarray:
  """Each (h, w) map of a (B, h, w) stack scaled to [0, 1] by its own min and max (what CAM's and
  pytorch-grad-cam's code show; a constant map becomes 0)."""
  maps = np.asarray(maps, np.float32)
  low = maps.min(axis=(-2, -1), keepdims=True)
  span = maps.max(axis=(-2, -1), keepdims=True) - low
  return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1), 0).astype(np.float32)


def peaks(net: common.Net, layer: str, maps) -> np.ndarray:
  """(B, 4) int: per map the (row, col) cell of its maximum and that unit's receptive-field centre
  (y, x) in image pixels (rounded down), where the evidence is strongest."""
  maps = np.asarray(maps)
  rf = net.module.receptive_field(layer)
  out = []
  for m in maps:
    i, j = np.unravel_index(int(np.argmax(m)), m.shape)
    out.append((i, j, int(np.floor(rf.centre(i))), int(np.floor(rf.centre(j)))))
  return np.asarray(out, np.int64).reshape(len(maps), 4)


def _softmax(logits) -> np.ndarray:
  return np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1))


def _batches(ctx: common.Context, run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """run(x, classes) -> (maps, logits) over ctx.images in batches -> (maps, classes,
  probabilities of those classes)."""
  maps, classes, probs = [], [], []
  size = ctx.options.batch_size
  for start in range(0, len(ctx.images), size):
    x = ctx.net.preprocess(ctx.images[start:start + size])
    c = ctx.classes(x)
    m, logits = run(x, c)
    maps.append(np.asarray(m))
    classes.append(c)
    probs.append(_softmax(logits)[np.arange(len(c)), c])
  return np.concatenate(maps), np.concatenate(classes), np.concatenate(probs)


def _output(ctx: common.Context, method: str, layer: str, maps, classes, probs) -> common.Output:
  """The figure (per image: photo | min-max map overlaid, titled class + probability), arrays and
  lines (class, probability, where the map peaks)."""
  k = ctx.net.num_classes
  labels = [common.class_label(int(c), k) for c in classes]
  where = peaks(ctx.net, layer, maps)
  shown = minmax(maps)
  rows = [[image, common.overlay(image, heat)] for image, heat in zip(ctx.images, shown)]
  fig = common.grid_figure(rows, title=f'{method} of {ctx.model} at {layer}', cell=2.6)
  axes = np.asarray(fig.axes).reshape(len(rows), 2)
  for (photo_ax, map_ax), name, label, p in zip(axes, ctx.image_names, labels, probs):
    photo_ax.set_title(name, fontsize=8)
    map_ax.set_title(f'{label} (p={p:.2f})', fontsize=8)
  fig.tight_layout()
  h, w = maps.shape[1:]
  lines = [f'{method} at {layer} ({h}x{w}), {ctx.model}:']
  lines += [f'  {name}: {label} p={p:.3f}; peak at cell ({i}, {j}), receptive field centred at '
             f'pixel (y={y}, x={x})'
            for name, label, p, (i, j, y, x) in zip(ctx.image_names, labels, probs, where)]
  arrays = dict(maps=maps, classes=classes, probabilities=probs.astype(np.float32), peaks=where)
  return common.Output(figure=fig, arrays=arrays, lines=lines)


def main_cam(ctx: common.Context) -> common.Output:
  """CLI 'cam': CAM of each image's target class at the model's global-pool tap."""
  ctx.net.check_head('cam')
  tap = cam_layer(ctx.net)
  if ctx.layer is not None and _layer_path(ctx.net, ctx.layer) != ctx.net.module.resolve(tap):
    raise common.VizError(f'CAM is defined only at the layer the global pool reads ({tap} for '
                          f'{ctx.net.module.arch}); drop --layer, or use gradcam for {ctx.layer}')
  maps, classes, probs = _batches(
      ctx, lambda x, c: cam_with_logits(ctx.net, ctx.net.state, x, c))
  return _output(ctx, 'CAM', tap, maps, classes, probs)


def main_gradcam(ctx: common.Context) -> common.Output:
  """CLI 'gradcam': Grad-CAM of each image's target class at --layer (default: the model's
  default dissection layer)."""
  ctx.net.check_head('gradcam')
  layer = ctx.layer or models.default_layers(ctx.net.module)[0]
  maps, classes, probs = _batches(
      ctx, lambda x, c: gradcam_with_logits(ctx.net, ctx.net.state, x, layer, c))
  return _output(ctx, 'Grad-CAM', layer, maps, classes, probs)
