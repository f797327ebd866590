"""Dissect your own Flax model: `wrap` an nnx module (or `wrap_linen` a linen module and its
variables) into the model contract the engine, the reports and the toolbox use (`layers.TapModel`'s:
`model(images_uint8, taps)`, `resolve`, `layer_names`, `describe`, `rf_geometry`,
`receptive_field`, `channels`, `arch`, `preprocessing`, `preprocess`, `forward`).

You give three things:
  features(net, x) -> {tap name: (B, h, w, K) array}   the intermediates to dissect, from the
                     preprocessed float NHWC input x (your forward pass, returning what it passes);
  taps             {tap name: geometry}: where each tap's units sit in the input. A `Grid` (unit
                     (i, j) centred at origin + (i, j) * spacing input pixels, seeing a window of
                     `size` pixels), e.g. `Grid.of((3, 1, 1), (2, 2, 0))` composed from the
                     (kernel, stride, padding) of the layers up to the tap, or `Grid.patches(p)` for
                     p x p patch tokens; or None: the tap is upsampled with `center` (a plain
                     bilinear stretch over the image, NetDissect-Lite's), and results.json says so;
  preprocessing    a convention name ('torch', 'caffe', 'inception', 'none') or a function from
                     uint8 RGB NHWC images to your network's float input.

The wrapper is an nnx module holding your network, so the engine splits, jit-compiles and shards
it like the zoo's models. Interventions and backward rules of the zoo (`edits=`, guided
backpropagation) need the zoo's tap machinery; a wrapped model refuses them with one line.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ndjax.models import layers


@dataclasses.dataclass(frozen=True)
class Grid:
  """A tap's unit grid in input pixels (pixel i covers [i, i + 1))."""
  origin: float
  spacing: float
  size: float

  @classmethod
  def of(cls, *ops: Sequence[int]) -> 'Grid':
    """Composed from the input through (kernel, stride, padding[, dilation]) of each conv / pool."""
    g = layers.Geo(0.5, 1.0, 3, 1.0)
    for op in ops:
      g = g.through(*op)
    return cls(g.origin, g.spacing, g.size)

  @classmethod
  def patches(cls, patch: int, image_size: int) -> 'Grid':
    """Patch tokens of a vision transformer after attention: centred on their patches, each seeing
    the whole image (a window twice the image, so that it covers it from any token)."""
    return cls(patch / 2, float(patch), 2.0 * image_size)


class Wrapped(nnx.Module):
  """A user's network with the zoo's model contract (see the module docstring)."""

  def __init__(self, net, features: Callable, taps: Mapping[str, Grid | None], *,
               preprocessing: str | Callable = 'torch', name: str = 'custom',
               example_size: int = 224):
    if not taps:
      raise ValueError('name at least one tap')
    bad = [t for t, g in taps.items() if g is not None and not isinstance(g, Grid)]
    if bad:
      raise ValueError(f'tap {bad[0]!r}: its geometry must be a Grid or None (center upsampling)')
    if isinstance(preprocessing, str) and preprocessing not in layers.PREPROCESSING:
      raise ValueError(f'unknown preprocessing {preprocessing!r}; valid: '
                       f'{", ".join(layers.PREPROCESSING)}, or a function of the uint8 images')
    self.net = net
    self.features = features
    self.grids = dict(taps)
    self.preprocessing = preprocessing
    self.arch = name
    self.aliases = {}
    self.num_classes = None
    self.trunk_end = None
    # shapes from an abstract pass: every tap must come out as an NHWC map
    spec = jax.ShapeDtypeStruct((1, example_size, example_size, 3), jnp.uint8)
    shapes = jax.eval_shape(lambda im: self._all(self.preprocess(im)), spec)
    self.channels_of = {}
    for t in self.grids:
      if t not in shapes:
        raise ValueError(f'tap {t!r} is not among what features() returns: '
                         f'{", ".join(sorted(shapes))}')
      if len(shapes[t].shape) != 4:
        raise ValueError(f'tap {t!r} has shape {shapes[t].shape}; dissection needs (B, h, w, K) '
                         'maps (reshape tokens to their grid in features())')
      self.channels_of[t] = int(shapes[t].shape[-1])

  def _all(self, x) -> dict:
    return dict(self.features(self.net, x))

  # --- the contract ---------------------------------------------------------------------------------
  def preprocess(self, images):
    if callable(self.preprocessing):
      return self.preprocessing(images)
    return layers.preprocess(images, self.preprocessing)

  def forward(self, x, taps: Sequence[str] = (), *, logits: bool = False, edits=None,
              nonlinearity='standard', rngs=None) -> dict:
    if logits or edits or nonlinearity != 'standard':
      raise ValueError(f'{self.arch} is a wrapped model: it has taps only (no logits, edits or '
                       'backward rules; those need a zoo model)')
    out = self._all(x)
    return {t: out[self.resolve(t)] for t in taps}

  def __call__(self, images_uint8, taps: Sequence[str]) -> dict:
    return self.forward(self.preprocess(images_uint8), taps)

  def has_head(self) -> bool:
    return False

  def layer_names(self) -> list[str]:
    return list(self.grids)

  def resolve(self, layer: str) -> str:
    if layer in self.grids:
      return layer
    raise KeyError(f'unknown layer {layer!r} for {self.arch}; valid: {", ".join(self.grids)}')

  def describe(self, layer: str) -> str:
    where = ('unit grid declared' if self.grids[self.resolve(layer)] is not None
             else 'no geometry declared: center upsampling')
    return f'{layer}: a tap of the wrapped model {self.arch} ({where})'

  def rf_geometry(self, layer: str) -> tuple[float, float] | None:
    g = self.grids[self.resolve(layer)]
    return None if g is None else (g.origin, g.spacing)

  def receptive_field(self, layer: str) -> layers.ReceptiveField | None:
    g = self.grids[self.resolve(layer)]
    return None if g is None else layers.ReceptiveField(g.origin, g.spacing, g.size)

  def channels(self, layer: str) -> int:
    return self.channels_of[self.resolve(layer)]


def wrap(net: nnx.Module, features: Callable, taps: Mapping[str, Grid | None], **kwargs) -> Wrapped:
  """A flax.nnx network as a dissectable model (see the module docstring)."""
  return Wrapped(net, features, taps, **kwargs)


class _Linen(nnx.Module):
  """A linen module and its variables as an nnx module (the variables are its state)."""

  def __init__(self, module, variables):
    self.module = module
    self.variables = nnx.Param(jax.tree.map(jnp.asarray, variables))

  def intermediates(self, x) -> dict:
    _, state = self.module.apply(self.variables.get_value(), x, capture_intermediates=True,
                                 mutable=['intermediates'])
    return _flatten(state['intermediates'])


def _flatten(tree, prefix: str = '') -> dict:
  """linen's {'Conv_0': {'__call__': (y,)}} -> {'Conv_0': y}; the whole module's output is
  'output'."""
  out = {}
  for k, v in tree.items():
    if k == '__call__':
      out[prefix or 'output'] = v[-1] if isinstance(v, tuple) else v
    else:
      out.update(_flatten(v, f'{prefix}/{k}' if prefix else k))
  return out


def wrap_linen(module, variables, taps: Mapping[str, Grid | None], **kwargs) -> Wrapped:
  """A flax.linen module and its variables: the taps are its submodules' outputs by their path
  (`Conv_0`, `block1/conv`: linen's capture_intermediates; `output`: the module's own), NHWC maps."""
  return Wrapped(_Linen(module, variables), lambda net, x: net.intermediates(x), taps, **kwargs)
