"""Where tokens sit: a clip's `(T, H, W)` token grid in raster order, or packed rows of several clips (Patch n' Pack).

Layers take a *layout*: a static grid tuple for a batch of same-size clips, or a `PackedLayout` for rows that hold
several clips (and images) of different sizes end to end, NaViT style (arXiv 2307.06304). A packed row carries, per
token, the clip it belongs to (segment id, 0 = padding), its coordinates in that clip's token grid, and that grid.
"""

from __future__ import annotations

from typing import Sequence, Union

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class PackedLayout:
  """Token placement of packed rows.

  Attributes:
    segment_ids: `[B, L]` int32; 0 = padding, 1..S = the clip a token belongs to (its per-clip inputs are at index
      `segment_id - 1`).
    positions: `[B, L, 3]` int32 coordinates (t, h, w) of each token in its clip's token grid (0 for padding).
    grids: `[B, L, 3]` int32 token grid (T, H, W) of each token's clip (1 for padding).
  """

  segment_ids: jax.Array
  positions: jax.Array
  grids: jax.Array

  @property
  def segment_index(self) -> jax.Array:
    """`[B, L]` index into per-clip arrays `[B, S, ...]` (padding reads clip 0 and is masked elsewhere)."""
    return jnp.maximum(self.segment_ids - 1, 0)

  @property
  def valid(self) -> jax.Array:
    """`[B, L]` bool, True for real tokens."""
    return self.segment_ids > 0


Layout = Union[tuple, PackedLayout]


def grid_positions(grid: Sequence[int]) -> np.ndarray:
  """`[T*H*W, 3]` int32 (t, h, w) coordinates of a token grid in raster order."""
  t, h, w = (int(g) for g in grid)
  return np.stack(np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 3).astype(
      np.int32)


def per_clip(values: jax.Array, layout: PackedLayout) -> jax.Array:
  """Per-clip values `[B, S, ...]` -> per-token `[B, L, ...]` (each token reads its clip's row)."""
  index = layout.segment_index.reshape(*layout.segment_index.shape, *([1] * (values.ndim - 2)))
  return jnp.take_along_axis(values, index, axis=1)
