"""Edits of a tap's output for `TapModel.forward(..., edits={layer: fn})`: ablation, replacement,
steering. Each returns fn(output) -> new output of the same (B, h, w, K) shape.

Gradients w.r.t. a tap (Grad-CAM) come from the same hook: edit the tap with `add(delta)` for a
zero `delta` and differentiate w.r.t. `delta`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np


def _unit_mask(units: Sequence[int], channels: int) -> np.ndarray:
  units = np.atleast_1d(np.asarray(units, np.int64))
  if units.size and (units.min() < 0 or units.max() >= channels):
    raise ValueError(f'unit indices must lie in [0, {channels}); got {units.tolist()}')
  mask = np.zeros(channels, bool)
  mask[units] = True
  return mask


def set_units(units: Sequence[int], value: float = 0.0) -> Callable:
  """Units (channels) `units` take the constant `value` everywhere: ablation when value is 0."""
  def edit(x):
    return jnp.where(_unit_mask(units, x.shape[-1]), jnp.asarray(value, x.dtype), x)
  return edit


def zero_units(units: Sequence[int]) -> Callable:
  """Ablate units: their whole maps become 0 (the paper's Sec. 3.9 ablation)."""
  return set_units(units, 0.0)


def keep_units(units: Sequence[int]) -> Callable:
  """Ablate every unit except `units`."""
  def edit(x):
    return jnp.where(_unit_mask(units, x.shape[-1]), x, jnp.zeros((), x.dtype))
  return edit


def replace(value) -> Callable:
  """Replace the whole map by `value` (broadcast to the output's shape)."""
  return lambda x: jnp.broadcast_to(jnp.asarray(value, x.dtype), x.shape)


def add(delta) -> Callable:
  """Add `delta` (broadcast to the output's shape): with a zero delta, d(loss)/d(delta) is the
  gradient at the tap."""
  return lambda x: x + jnp.asarray(delta, x.dtype)


def add_direction(direction, scale: float = 1.0) -> Callable:
  """Add `scale * direction` (a (K,) vector in unit space) at every position: steering along a
  concept direction."""
  def edit(x):
    d = jnp.asarray(direction, x.dtype)
    if d.shape != (x.shape[-1],):
      raise ValueError(f'direction must have shape ({x.shape[-1]},), got {d.shape}')
    return x + scale * d
  return edit
