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
    gathers: optional {attention kind: `WindowGather`}: self-attention of that kind runs on fixed-size window
      blocks instead of a mask over the whole row (same result, far less work when windows are small).
  """

  segment_ids: jax.Array
  positions: jax.Array
  grids: jax.Array
  gathers: dict | None = None

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


@flax.struct.dataclass
class WindowGather:
  """The windows of packed rows as fixed-size blocks, for attention at `windows x window_size` cost instead of a
  row-by-row mask. Built on the host by `window_gather`.

  Attributes:
    tokens: `[B, windows, window_size]` int32 row position of each block entry (0 where unused).
    valid: `[B, windows, window_size]` bool, True where an entry is a real token.
    slot: `[B, L]` int32 flat block entry (`window * window_size + k`) of each token (0 for padding tokens).
  """

  tokens: jax.Array
  valid: jax.Array
  slot: jax.Array


def _window_keys(segment_ids, positions, window) -> np.ndarray:
  """`[L, 4]` (segment, window coordinates) of each token; `window` as `vidgen.layers.attention.window_groups`."""
  keys = np.zeros((len(segment_ids), 4), np.int64)
  keys[:, 0] = segment_ids
  if window is not None:
    for axis, size in enumerate(window):
      if size is not None:
        keys[:, 1 + axis] = positions[:, axis] // size
  return keys


def window_gather(segment_ids: np.ndarray, positions: np.ndarray, window, *, windows: int | None,
                  window_size: int, max_windows: int | None = None) -> WindowGather:
  """Blocks of the windows of packed rows (numpy, host side): `segment_ids` `[B, L]`, `positions` `[B, L, 3]`;
  `window` None (a whole clip), or per axis a size or None (the whole axis).

  `windows`: blocks per row; None = the most any row needs, rounded up to a power of two (so batches of similar
  rows share one compiled shape) and capped at `max_windows`. ValueError when a row has more windows than the
  blocks or a window more than `window_size` tokens."""
  segment_ids, positions = np.asarray(segment_ids), np.asarray(positions)
  batch, length = segment_ids.shape
  rows = []
  for b in range(batch):
    real = np.flatnonzero(segment_ids[b] > 0)
    if not len(real):
      rows.append((real, np.zeros(0, np.int64), np.zeros(0, np.int64)))
      continue
    _, window_of, counts = np.unique(_window_keys(segment_ids[b, real], positions[b, real], window), axis=0,
                                     return_inverse=True, return_counts=True)
    rows.append((real, window_of.reshape(-1), counts))
  if windows is None:
    most = max([len(counts) for _, _, counts in rows] + [1])
    windows = 1 << (most - 1).bit_length()
    windows = min(windows, max_windows) if max_windows else windows
  tokens = np.zeros((batch, windows, window_size), np.int32)
  valid = np.zeros((batch, windows, window_size), bool)
  slot = np.zeros((batch, length), np.int32)
  for b, (real, window_of, counts) in enumerate(rows):
    if not len(real):
      continue
    if len(counts) > windows or counts.max() > window_size:
      raise ValueError(f"row {b} has {len(counts)} windows of up to {counts.max()} tokens for window {window}; the "
                       f"blocks hold {windows} windows of {window_size}")
    order = np.argsort(window_of, kind="stable")  # tokens of a window stay in raster order
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(real), np.int64)
    rank[order] = np.arange(len(real)) - starts[window_of[order]]
    tokens[b, window_of, rank] = real
    valid[b, window_of, rank] = True
    slot[b, real] = window_of * window_size + rank
  return WindowGather(tokens, valid, slot)


def gather_bounds(grids: Sequence[Sequence[int]], window, row_length: int) -> tuple[int, int]:
  """(windows, window_size) that hold the windows of any row of `row_length` tokens made of clips of the token grids
  `grids`: a window is at most the largest clip's window, and a row's windows are at most its tokens times the most
  windows per token of any grid."""
  sizes, ratios = [], []
  for grid in grids:
    grid = np.asarray(grid)
    box = grid if window is None else np.array([g if w is None else min(w, g) for g, w in zip(grid, window)])
    count = int(np.prod(-(-grid // box)))
    sizes.append(int(np.prod(box)))
    ratios.append(count / int(np.prod(grid)))
  return max(min(int(np.ceil(row_length * max(ratios))), row_length), 1), max(sizes)
