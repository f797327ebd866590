"""Model registry: name -> constructor taking `rngs=nnx.Rngs(seed)`; each mirrors torchvision.

All models share the contract of `models.layers.TapModel`: `model(images_uint8_nhwc, taps)`,
`preprocess` + `forward(x_float, taps, logits=, edits=, nonlinearity=, rngs=)` (differentiable,
editable, train mode via `model.train()`), `resolve`, `layer_names`, `describe`, `rf_geometry`,
`receptive_field`, `logits`, `arch`, `preprocessing`.
"""
from __future__ import annotations

from ndjax.models import convstack, densenet, googlenet, mobilenet, resnet, vit

MODELS = {
    'alexnet': convstack.alexnet,
    'vgg16': convstack.vgg16,
    'vgg16_bn': convstack.vgg16_bn,
    'googlenet': googlenet.googlenet,
    'resnet18': resnet.resnet18,
    'resnet50': resnet.resnet50,
    'resnet152': resnet.resnet152,
    'densenet161': densenet.densenet161,
    'mobilenet_v2': mobilenet.mobilenet_v2,
    # the paper's AlexNet training variants (random init; trained with `ndjax.train`)
    'alexnet_bn': convstack.alexnet_bn,
    'alexnet_nodropout': convstack.alexnet_nodropout,
    'alexnet_gap_wide': convstack.alexnet_gap_wide,
    'alexnet_gap_wideall': convstack.alexnet_gap_wideall,
    'alexnet_gap_wide1024': convstack.alexnet_gap_wide1024,      # Fig 24's wider conv5
    'alexnet_gap_wide2048': convstack.alexnet_gap_wide2048,
    # vision transformers (timm's layout; random init): patch tokens of each block as maps
    'vit_tiny': vit.vit_tiny,
    'vit_small': vit.vit_small,
    'vit_base': vit.vit_base,
    'dinov2_vits14': vit.dinov2_vits14,
}

# The default layer per model: the paper's last conv layer (post-ReLU) or the final features.
DEFAULT_LAYERS = {
    'alexnet': ('conv5',),
    'vgg16': ('conv5_3',),
    'vgg16_bn': ('conv5_3',),
    'googlenet': ('inception5b',),
    'resnet18': ('layer4',),
    'resnet50': ('layer4',),
    'resnet152': ('layer4',),
    'densenet161': ('relu5',),
    'mobilenet_v2': ('features',),
    'alexnet_bn': ('conv5',),
    'alexnet_nodropout': ('conv5',),
    'alexnet_gap_wide': ('conv5',),
    'alexnet_gap_wideall': ('conv5',),
    'alexnet_gap_wide1024': ('conv5',),
    'alexnet_gap_wide2048': ('conv5',),
    'vit_tiny': ('block12',),
    'vit_small': ('block12',),
    'vit_base': ('block12',),
    'dinov2_vits14': ('block12',),
}


def default_layers(model) -> tuple[str, ...]:
  """`DEFAULT_LAYERS` of the model's arch, or, when its weights end before them (CRAFT's VGG16-BN
  trunk stops at conv5_2), its deepest paper-named layer."""
  names = model.layer_names()
  wanted = DEFAULT_LAYERS.get(model.arch)
  if wanted is None:                  # a wrapped user model (models/adapter.py): its last tap
    return (names[-1],)
  if all(layer in names for layer in wanted):
    return wanted
  return (list(model.aliases)[-1] if model.aliases else names[-1],)


def build(name: str, seed: int = 0):
  """Construct a model with its definition's own random initialisation from `seed`."""
  from flax import nnx
  if name not in MODELS:
    raise KeyError(f'unknown model {name!r}; valid: {", ".join(sorted(MODELS))}')
  return MODELS[name](rngs=nnx.Rngs(seed))
