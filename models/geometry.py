"""Receptive-field geometry of a tap, from the same op specs the models run.

Coordinates are continuous: input pixel i covers [i, i+1), centre i + 0.5. A conv/pool with kernel
k, stride s and padding p maps output index j to the window starting at input index j*s - p, whose
centre is (j*s - p + (k-1)/2) in the previous layer's index space. Composing from the image
(centre of index 0 at 0.5, spacing 1) gives, for every tap, `centre(j) = origin + j * spacing`.
"""
from __future__ import annotations

from typing import Sequence


def rf_centres(ops: Sequence, upto: int) -> tuple[float, float]:
  """(origin, spacing) in input-pixel coordinates of the unit centres after op `upto` (inclusive).

  Square kernels/strides, so the same numbers hold for both axes.
  """
  origin, spacing = 0.5, 1.0
  for op in ops[: upto + 1]:
    if op.kind in ('conv', 'pool'):
      origin += spacing * ((op.kernel - 1) / 2 - op.padding)
      spacing *= op.stride
  return origin, spacing
