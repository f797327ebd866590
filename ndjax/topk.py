"""Each unit's top-k probe images (by per-image maximum activation), from the dissection's own pass.

Pass 1 keeps a running top-k of per-image maxima per unit on the device (values and dataset image
indices, merged batch by batch like the threshold buffers). Pass 2, which sees every batch's
activations again from the cache, copies out the maps of the images that made the final top-k, so
the report can draw each unit's thresholded, upsampled mask on its top images without another
forward pass. Saved per layer as `topk.npz`.
"""
from __future__ import annotations

import functools
import io

import jax
import jax.numpy as jnp
import numpy as np

from ndjax import fileio, upsample


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _merge(values, images, acts, ids, valid):
  """values/images (K, k); acts (B, h, w, K); ids (B,) dataset indices; valid (B,) bool."""
  k = values.shape[1]
  peak = jnp.where(valid[:, None], acts.max(axis=(1, 2)), -jnp.inf)          # (B, K)
  cand_v = jnp.concatenate([values, peak.T], axis=1)
  cand_i = jnp.concatenate([images, jnp.broadcast_to(ids[None], (values.shape[0], len(ids)))], axis=1)
  # explicit order: larger value first, ties to the earlier image (empty slots last)
  tie = jnp.where(cand_i < 0, jnp.iinfo(jnp.int32).max, cand_i)
  neg_v, _, order_i = jax.lax.sort((-cand_v, tie, cand_i), dimension=1, num_keys=2)
  return -neg_v[:, :k], order_i[:, :k]


class TopImages:
  """Running top-k images per unit; then their activation maps, gathered in the second pass."""

  def __init__(self, units: int, k: int):
    self.k = k
    self.values = jnp.full((units, k), -jnp.inf, jnp.float32)
    self.images = jnp.full((units, k), -1, jnp.int32)
    self.maps = None

  def update(self, acts: jax.Array, ids: np.ndarray, valid: np.ndarray) -> None:
    self.values, self.images = _merge(self.values, self.images, acts,
                                      jnp.asarray(ids, jnp.int32), jnp.asarray(valid))

  def finish_ranking(self, max_hw: tuple[int, int]) -> None:
    """Freeze the ranking (merged over processes); allocate NaN-padded map storage for pass 2."""
    from ndjax import distributed
    self.values, self.images = np.array(self.values), np.array(self.images)
    if distributed.process_count() > 1:
      g = distributed.allgather({'values': self.values, 'images': self.images})
      values = np.concatenate(list(g['values']), axis=1)
      images = np.concatenate(list(g['images']), axis=1)
      # the single-process order: larger value first, ties to the earlier image
      order = np.lexsort((np.where(images < 0, np.iinfo(np.int32).max, images), -values), axis=1)
      order = order[:, : self.k]
      self.values = np.take_along_axis(values, order, axis=1)
      self.images = np.take_along_axis(images, order, axis=1)
    self.images[~np.isfinite(self.values)] = -1       # fewer than k valid images
    self.maps = np.full(self.images.shape + tuple(max_hw), np.nan, np.float32)
    self.map_hw = np.zeros(self.images.shape + (2,), np.int32)

  def gather(self, acts: np.ndarray, ids: np.ndarray) -> None:
    """Copy out the maps of this batch's images that are in some unit's top-k."""
    slot_of = {int(i): s for s, i in enumerate(ids) if i >= 0}
    units, ranks = np.nonzero(np.isin(self.images, list(slot_of)))
    if not len(units):
      return
    slots = np.array([slot_of[int(i)] for i in self.images[units, ranks]])
    h, w = acts.shape[1:3]
    self.maps[units, ranks, :h, :w] = acts[slots, :, :, units]      # (n, h, w)
    self.map_hw[units, ranks] = (h, w)

  def merge_processes(self) -> None:
    """Each process copied the maps of the images it saw; take each from its owner."""
    from ndjax import distributed
    if distributed.process_count() == 1:
      return
    g = distributed.allgather({'maps': self.maps, 'map_hw': self.map_hw})
    owner = np.argmax(g['map_hw'][..., 0] > 0, axis=0)                    # (K, k)
    units, ranks = np.indices(owner.shape)
    self.maps = g['maps'][owner, units, ranks]
    self.map_hw = g['map_hw'][owner, units, ranks]

  def save(self, path: str) -> None:
    """Atomic write of images, values, maps, map_hw."""
    buf = io.BytesIO()
    np.savez_compressed(buf, images=self.images, values=self.values, maps=self.maps,
                        map_hw=self.map_hw)
    fileio.atomic_write(path, buf.getvalue())


def unit_mask(act_map: np.ndarray, threshold: float, image_hw, mask_hw, mode: str,
              rf: tuple[float, float] | None) -> np.ndarray:
  """The unit's mask on one image, exactly as the dissection counted it (`threshold_masks`)."""
  wy, wx = upsample.matrices(mode, act_map.shape, image_hw, mask_hw, rf)
  masks = upsample.threshold_masks(jnp.asarray(act_map, jnp.float32)[None, :, :, None],
                                   jnp.asarray([threshold], jnp.float32), jnp.asarray(wy),
                                   jnp.asarray(wx))
  return np.asarray(masks[0, 0])
