"""Exact sparsity of thresholded, upsampled masks: count only the tiles a unit can light up.

A bilinear upsampling row reads two neighbouring sources (`upsample.two_taps`), and consecutive
mask rows read the same pair until the next grid point: the rows with one (lo, hi) pair form a
segment, and a segment in y times a segment in x is a TILE whose every pixel reads the same
2 x 2 block of source cells. `upsample.threshold_masks` never turns a pixel on when all its
sources are <= T_k, so a tile can hold mask pixels only if one of its <= 4 sources is > T_k: the
tile is HOT for that unit. At tau = 0.005 that is ~3 % of the (unit, pixel) pairs of VGG16
conv5_3 (1,400 hot tiles of 8 x 8 pixels per image out of 115,200), so computing masks on hot
tiles only, with the very same arithmetic as the dense path, gives the same bits for ~30x less
work. Measured on VGG16 (160 default probe images, 2-core AMD EPYC, pass 2 ms/image dense ->
tiles, same counts): conv5_3 (8 x 8 tiles) 9.6 -> 3.9, conv4_3 (4 x 4) 18.1 -> 6.3, conv3_3
(2 x 2) 11.3 -> 8.9, conv2_2 (1 x 1) 10.4 -> 13.7: layers upsampled less than 2x per axis keep
the dense path.

Host side here: the tile geometry (`Tiles`, once per layer and image size) and, per batch, the
list of hot (image, tile, unit) triples packed into blocks of `ROWS` units sharing one
(image, tile), so the device gathers each tile's label rows once per block (`iou._count_tiles`).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

ROWS = 8            # units per block (one (image, tile) per block)
BLOCKS = 1024       # blocks per on-device step: bounds the (BLOCKS, tile pixels, labels) gather
MIN_AREA = 4        # tiles smaller than this (upsampling < 2x per axis): the dense path is faster


@dataclasses.dataclass(frozen=True)
class Axis:
  lo: np.ndarray      # (J,) the two sources of each segment
  hi: np.ndarray
  pix: np.ndarray     # (J, T) mask rows of each segment, -1 = padding
  w_lo: np.ndarray    # (J, T) float32 the rows' weights (0 on padding)
  w_hi: np.ndarray


def axis(taps) -> Axis:
  """Segments of one axis from its `upsample.two_taps` (lo, hi, w_lo, w_hi)."""
  lo, hi, w_lo, w_hi = (np.asarray(a) for a in taps)
  new = np.ones(len(lo), bool)
  new[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
  starts = np.flatnonzero(new)
  ends = np.append(starts[1:], len(lo))
  t = int((ends - starts).max())
  pix = np.full((len(starts), t), -1, np.int32)
  wl = np.zeros((len(starts), t), np.float32)
  wh = np.zeros((len(starts), t), np.float32)
  for j, (s, e) in enumerate(zip(starts, ends)):
    pix[j, :e - s] = np.arange(s, e)
    wl[j, :e - s], wh[j, :e - s] = w_lo[s:e], w_hi[s:e]
  return Axis(lo[starts].astype(np.int32), hi[starts].astype(np.int32), pix, wl, wh)


@dataclasses.dataclass(frozen=True)
class Tiles:
  y: Axis
  x: Axis
  pix: np.ndarray     # (Jy * Jx, Ty * Tx) flat mask pixel of each tile pixel; X = padding

  @property
  def area(self) -> int:
    return self.pix.shape[1]

  @functools.cached_property
  def device(self) -> dict:
    return dict(y=jax.tree.map(jnp.asarray, dataclasses.astuple(self.y)),
                x=jax.tree.map(jnp.asarray, dataclasses.astuple(self.x)), pix=jnp.asarray(self.pix))


def tiles(taps_y, taps_x) -> Tiles:
  y, x = axis(taps_y), axis(taps_x)
  sw = len(np.asarray(taps_x[0]))
  x_pixels = len(np.asarray(taps_y[0])) * sw
  pad = (y.pix[:, None, :, None] < 0) | (x.pix[None, :, None, :] < 0)
  flat = np.where(pad, x_pixels, y.pix[:, None, :, None] * sw + x.pix[None, :, None, :])
  return Tiles(y, x, flat.reshape(len(y.lo) * len(x.lo), -1).astype(np.int32))


@jax.jit
def _hot(acts, thresholds, valid, y_lo, y_hi, x_lo, x_hi):
  ex = (acts > thresholds) & valid[:, None, None, None]
  ex = ex[:, y_lo] | ex[:, y_hi]
  return (ex[:, :, x_lo] | ex[:, :, x_hi]).reshape(acts.shape[0], -1, acts.shape[3])


def hot_blocks(acts, thresholds, valid, t: Tiles) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The batch's hot (image, tile, unit) triples in blocks: (image (N,), tile (N,), units (N, ROWS)
  with -1 = empty row), N padded to a power-of-two number of BLOCKS-block steps (few compiles).
  acts: (B, h, w, K); thresholds: (K,); valid: (B,) bool."""
  hot = np.asarray(_hot(jnp.asarray(acts), jnp.asarray(thresholds, jnp.float32), jnp.asarray(valid),
                        t.y.lo, t.y.hi, t.x.lo, t.x.hi))                     # (B, J, K)
  per = hot.sum(axis=2).ravel()                          # hot units of each (image, tile)
  image, tile, unit = np.nonzero(hot)                    # sorted by (image, tile): groups
  rank = np.arange(len(unit)) - np.repeat(np.cumsum(per) - per, per)
  blocks = -(-per // ROWS)
  block = np.repeat(np.cumsum(blocks) - blocks, per) + rank // ROWS
  steps = max(1, -(-int(blocks.sum()) // BLOCKS))
  n = BLOCKS * (1 << (steps - 1).bit_length())
  out_image, out_tile = np.zeros(n, np.int32), np.zeros(n, np.int32)
  out_units = np.full((n, ROWS), -1, np.int32)
  out_image[block], out_tile[block] = image, tile
  out_units[block, rank % ROWS] = unit
  return out_image, out_tile, out_units
