"""Every convolution and matmul states its precision: none runs at XLA's DEFAULT, which on GPUs and
TPUs means TF32 or bf16 passes. Checked on the lowered StableHLO, so it holds without an
accelerator (on CPU the numbers are the same either way, which is why a parity test cannot see it).
"""
import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from ndjax import iou, models, tiles, upsample
from ndjax.models import layers

# A StableHLO convolution prints `precision_config = [#stablehlo<precision HIGHEST>, ...]`, a
# dot_general `precision = [HIGHEST, HIGHEST]`; both fit on the op's line.
PRODUCT = re.compile(r'stablehlo\.(convolution|dot_general|dot)\b')


def _products(fn, *args) -> list[str]:
  text = jax.jit(fn).lower(*args).as_text()
  return [line.strip() for line in text.splitlines() if PRODUCT.search(line)]


def _highest(line: str) -> bool:
  return line.count('HIGHEST') == 2 and 'DEFAULT' not in line and 'HIGH,' not in line


def test_policy_constant():
  assert layers.PRECISION == 'highest'
  assert jax.lax.Precision(layers.PRECISION) == jax.lax.Precision.HIGHEST


@pytest.mark.parametrize('arch', sorted(models.MODELS))
def test_model_forward_is_highest_precision(arch):
  """The whole network with its classifier (every Conv2d, Linear and adaptive pool)."""
  model = models.build(arch)
  graphdef, state = nnx.split(model)
  if model.has_head():
    logits = lambda state, x: nnx.merge(graphdef, state).logits(x)
  else:                                   # a backbone (dinov2_vits14): its deepest tap
    tap = models.DEFAULT_LAYERS[arch]
    logits = lambda state, x: nnx.merge(graphdef, state)(x, tap)
  ops = _products(logits, state, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.uint8))
  convs = [op for op in ops if 'convolution' in op]
  assert convs and len(ops) > len(convs)            # both kinds are there to check
  bad = [op[:300] for op in ops if not _highest(op)]
  assert not bad, f'{len(bad)} of {len(ops)} products not at HIGHEST precision, e.g. {bad[0]}'


def test_count_kernel_products():
  """The count: upsampling at HIGHEST; the 0/1 matmul deliberately bf16 x bf16 -> f32 (exact)."""
  b, h, w, k, sh, sw, ci, cats = 4, 7, 7, 5, 20, 20, 8, 3
  f32, i32 = jnp.float32, jnp.int32
  args = (jax.ShapeDtypeStruct((b, h, w, k), f32), jax.ShapeDtypeStruct((k,), f32),
          jax.ShapeDtypeStruct((sh, h), f32), jax.ShapeDtypeStruct((sw, w), f32),
          dict(side=jax.ShapeDtypeStruct((b, sh * sw, ci + cats + 1), jnp.bool_),
               ids=jax.ShapeDtypeStruct((b, ci), i32),
               img_cat=jax.ShapeDtypeStruct((b, cats), jnp.bool_),
               relevant=jax.ShapeDtypeStruct((b, cats), jnp.bool_)),
          jax.ShapeDtypeStruct((b,), jnp.bool_))
  def count(acts, thr, wy, wx, side, valid):
    units = jnp.broadcast_to(jnp.arange(k, dtype=i32), (b, k))
    return iou._count(acts, thr, wy, wx, side, valid, units, chunk=2, num_local=16)
  ops = _products(count, *args)
  exact_01 = [op for op in ops if re.search(r'\(tensor<[^>]*xbf16>, tensor<[^>]*xbf16>\)', op)]
  assert len(exact_01) == 1 and all('xf32>' in op.split('->')[-1] for op in exact_01)
  rest = [op for op in ops if op not in exact_01]
  assert rest and all(_highest(op) for op in rest), rest
  masks = _products(upsample.threshold_masks, *args[:4])
  assert len(masks) == 2 and all(_highest(op) for op in masks)


def test_hot_tile_kernel_products():
  """The hot-tile count interpolates elementwise in f32 (no product at all) and has exactly one
  0/1 matmul, bf16 x bf16 -> f32 (exact)."""
  b, h, w, k, ci, cats, blocks = 2, 7, 7, 5, 8, 3, tiles.BLOCKS
  f32, i32 = jnp.float32, jnp.int32
  taps = [upsample.two_taps(upsample.interpolation_matrix(20, n, 1.5, 3.0)) for n in (h, w)]
  geometry = tiles.tiles(*taps)
  side = dict(side=jax.ShapeDtypeStruct((b, 400, ci + cats + 1), jnp.bool_),
              ids=jax.ShapeDtypeStruct((b, ci), i32),
              img_cat=jax.ShapeDtypeStruct((b, cats), jnp.bool_),
              relevant=jax.ShapeDtypeStruct((b, cats), jnp.bool_))
  def count(acts, thr, side, image, tile, units):
    return iou._count_tiles(acts, thr, geometry.device, side, image, tile, units, num_local=16)
  ops = _products(count, jax.ShapeDtypeStruct((b, h, w, k), f32), jax.ShapeDtypeStruct((k,), f32),
                  side, jax.ShapeDtypeStruct((blocks,), i32), jax.ShapeDtypeStruct((blocks,), i32),
                  jax.ShapeDtypeStruct((blocks, tiles.ROWS), i32))
  assert len(ops) == 1, ops
  assert re.search(r'\(tensor<[^>]*xbf16>, tensor<[^>]*xbf16>\)', ops[0]) and 'xf32>' in ops[0]
