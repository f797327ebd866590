"""Activations of named layers: one jit-compiled forward pass per batch for all requested taps."""
from __future__ import annotations

from typing import Callable, Sequence

import jax
from flax import nnx


def make_forward(model: nnx.Module, taps: Sequence[str], mesh=None) -> Callable[[jax.Array], dict]:
  """uint8 NHWC images -> {tap: (B, h, w, K) float32}, compiled once per input shape.

  The model is split into a static graph and its parameter state so the compiled function is a
  pure function of (params, images); the forward stops after the deepest tap. With a mesh, the
  parameters are replicated and each batch is split over the mesh's 'batch' axis (data parallel).
  """
  taps = tuple(taps)
  graphdef, state = nnx.split(model)
  if mesh is not None:
    from jax.sharding import NamedSharding, PartitionSpec as P
    state = jax.device_put(state, NamedSharding(mesh, P()))
    batch_sharding = NamedSharding(mesh, P('batch'))

    @jax.jit
    def forward_sharded(state, images):
      return nnx.merge(graphdef, state)(images, taps)

    return lambda images: forward_sharded(state, jax.device_put(images, batch_sharding))

  @jax.jit
  def forward(state, images):
    return nnx.merge(graphdef, state)(images, taps)

  return lambda images: forward(state, images)


def tap_shapes(model: nnx.Module, taps: Sequence[str], image_hw: tuple[int, int]) -> dict:
  """{tap: (h, w, K)} for one image size, without running the model."""
  forward = make_forward(model, taps)
  spec = jax.ShapeDtypeStruct((1, *image_hw, 3), jax.numpy.uint8)
  return {t: s.shape[1:] for t, s in jax.eval_shape(forward, spec).items()}
