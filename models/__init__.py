"""Model registry: name -> constructor (a functools.partial of one class per family)."""
from __future__ import annotations

from models import convstack

MODELS = {
    'vgg16': convstack.vgg16,
    'vgg16_bn': convstack.vgg16_bn,
    'alexnet': convstack.alexnet,
}

# The paper's default layer per model (its last conv layer, post-ReLU).
DEFAULT_LAYERS = {'vgg16': ('conv5_3',), 'vgg16_bn': ('conv5_3',), 'alexnet': ('conv5',)}


def build(name: str, seed: int = 0):
  """Construct a model with its definition's own random initialisation from `seed`."""
  from flax import nnx
  if name not in MODELS:
    raise KeyError(f'unknown model {name!r}; valid: {", ".join(sorted(MODELS))}')
  return MODELS[name](rngs=nnx.Rngs(seed))
