"""Activations of named layers: one jit-compiled forward pass per batch for all requested taps.

The compiled forward is a pure function of (parameters, images), cached by the model's STRUCTURE
(its nnx graph definition) and the taps: experiments that dissect many weight snapshots or seeds of
one architecture compile it once, not once per call.
"""
from __future__ import annotations

import functools
import hashlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def structure_key(graphdef) -> tuple:
  """A fingerprint of an nnx graph definition (module tree and static attributes, not weights).

  GraphDefs of these models hold dict attributes and are not hashable, so they cannot key jit's
  own cache; their repr is deterministic and equal for equal structures. The repr names classes
  only by their bare name, so the classes' identities join the key: a class redefined with the
  same name (a notebook edit of `trunk`) is another structure. The cache holds the first
  graphdef, which keeps those classes alive, so their ids are never reused by another class.
  """
  types = tuple(id(getattr(n, 'type', None)) for n in getattr(graphdef, 'nodes', ()))
  return hashlib.sha1(repr(graphdef).encode()).hexdigest(), types


COMPUTE_DTYPES = ('float32', 'bfloat16')


@functools.lru_cache(maxsize=64)
def _compiled(key: tuple, taps: tuple[str, ...], mesh, compute_dtype: str) -> tuple[Callable, list]:
  holder = []       # the first graphdef seen for this structure; equal structures share it

  def forward(state, images):
    if compute_dtype == 'float32':
      model = nnx.merge(holder[0], state)
      model.eval()     # dissection is of the network at inference, whatever mode it was left in
      return model(images, taps)
    # reduced precision: parameters and the preprocessed input in bf16, the taps back in f32
    dtype = jnp.dtype(compute_dtype)
    cast = lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
    model = nnx.merge(holder[0], jax.tree.map(cast, state))
    model.eval()
    out = model.forward(cast(model.preprocess(images)), taps)
    return {t: v.astype(jnp.float32) for t, v in out.items()}

  return jax.jit(forward), holder


def make_forward(model: nnx.Module, taps: Sequence[str], mesh=None,
                 compute_dtype: str = 'float32') -> Callable[[jax.Array], dict]:
  """uint8 NHWC images -> {tap: (B, h, w, K) float32}, compiled once per structure and shape.

  The forward stops after the deepest tap. With a mesh, the parameters are replicated and each
  batch is split over the mesh's 'batch' axis (data parallel). `compute_dtype='bfloat16'` runs
  the network in bf16 (for accelerators; thresholds and counts stay exact over what it computes,
  but the activations themselves are rounded, so labels can differ from float32's).
  """
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f'compute_dtype={compute_dtype!r}: use one of {", ".join(COMPUTE_DTYPES)}')
  taps = tuple(taps)
  graphdef, state = nnx.split(model)
  fn, holder = _compiled(structure_key(graphdef), taps, mesh, compute_dtype)
  if not holder:
    holder.append(graphdef)
  if mesh is not None:
    from jax.sharding import NamedSharding, PartitionSpec as P
    state = jax.device_put(state, NamedSharding(mesh, P()))
    batch_sharding = NamedSharding(mesh, P('batch'))
    return lambda images: fn(state, jax.device_put(images, batch_sharding))
  return lambda images: fn(state, images)


def tap_shapes(model: nnx.Module, taps: Sequence[str], image_hw: tuple[int, int]) -> dict:
  """{tap: (h, w, K)} for one image size, without running the model."""
  forward = make_forward(model, taps)
  spec = jax.ShapeDtypeStruct((1, *image_hw, 3), jax.numpy.uint8)
  return {t: s.shape[1:] for t, s in jax.eval_shape(forward, spec).items()}


def pooled(module: nnx.Module, ds, layer: str, batch_size: int = 8, progress: bool = True,
           indices=None):
  """(N, K) float64 global average of `layer` per probe image (one forward pass, images of one
  size batched together): the features of linear probes and of the toolbox's t-SNE.
  indices: which images (default all, in order)."""
  import numpy as np
  from tqdm import tqdm
  forward = make_forward(module, [layer])
  out, batch, shapes = [], [], None

  def flush():
    acts = np.asarray(forward(np.stack(batch))[layer], np.float64)
    out.extend(acts.mean(axis=(1, 2)))
    batch.clear()

  order = range(len(ds.records)) if indices is None else indices
  for i in tqdm(order, desc='pooled features', disable=not progress, mininterval=2):
    image = ds.load_image(int(i))
    if batch and (len(batch) == batch_size or image.shape != shapes):
      flush()
    batch.append(image)
    shapes = image.shape
  if batch:
    flush()
  return np.stack(out)
