"""The mask definition of dissection_semantics.md, read literally in float64 (no ndjax code).

A mask pixel is on iff its bilinear value is > T AND at least one source value it reads with a
non-zero weight is > T ("Upsampling to mask resolution"). The brute-force tests compare ndjax
against this, never against ndjax's own output.
"""
from __future__ import annotations

import fractions

import numpy as np


def axis_sources(mask_size: int, image_size: int, n: int, origin, spacing):
  """Per mask pixel along one axis: (lo, hi, weight of hi) of its two grid neighbours.

  Grid point j sits at origin + j*spacing in image pixels; mask pixel m's centre (m + 0.5) is image
  coordinate (m + 0.5) * image/mask; positions beyond the outermost points are clamped. Positions
  are exact rationals, so a weight is zero exactly when the pixel centre sits on a grid point
  (float64 would leave ~1e-16 there, and a source with that weight would count as read).
  """
  origin, spacing = fractions.Fraction(origin), fractions.Fraction(spacing)
  lo, hi, frac = [], [], []
  for m in range(mask_size):
    centre = (m + fractions.Fraction(1, 2)) * fractions.Fraction(image_size, mask_size)
    p = (centre - origin) / spacing
    p = min(max(p, fractions.Fraction(0)), fractions.Fraction(n - 1))
    lo.append(int(p))                               # floor: p >= 0
    hi.append(min(lo[-1] + 1, n - 1))
    frac.append(float(p - lo[-1]))
  return np.array(lo), np.array(hi), np.array(frac)


def centre_grid(image_size: int, n: int):
  """`center` mode as a grid: n map pixels stretched over the image, points at their centres."""
  spacing = fractions.Fraction(image_size, n)
  return spacing / 2, spacing


def mask_by_hand(a: np.ndarray, threshold: float, image_hw, mask_hw, grid_y, grid_x=None):
  """(h, w) map -> bool (sh, sw) mask by the definition; grid_* = (origin, spacing) per axis."""
  a = np.asarray(a, np.float64)
  t = float(np.float32(threshold))
  (h, w), grid_x = a.shape, grid_x or grid_y
  y0, y1, fy = axis_sources(mask_hw[0], image_hw[0], h, *grid_y)
  x0, x1, fx = axis_sources(mask_hw[1], image_hw[1], w, *grid_x)
  value = np.zeros(mask_hw)
  any_above = np.zeros(mask_hw, bool)
  for ys, wy in ((y0, 1 - fy), (y1, fy)):
    for xs, wx in ((x0, 1 - fx), (x1, fx)):
      weight = wy[:, None] * wx[None, :]
      source = a[ys[:, None], xs[None, :]]
      value += weight * source
      any_above |= (weight > 0) & (source > t)      # weight 0 exactly: the source is not read
  return (value > t) & any_above
