"""Receptive-field geometry of a conv/pool stack, in closed form over its op spec.

Every model's `rf_geometry` comes from the geometry pass of `models/layers.py` (the model's own
forward code run on `Geo` values); for the op-spec stacks of `models/convstack.py` this module gives
the same numbers directly from the spec, and the tests hold the two equal.

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
