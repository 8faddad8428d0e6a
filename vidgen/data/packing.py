"""Patch n' Pack (NaViT, arXiv 2307.06304) for video: clips and images of any size and duration, patchified and packed
end to end into fixed-length token rows, and taken back apart.

    batch = pack(latents, patch=(1, 2, 2), row_length=1024)     # latents: a list of [T, H, W, C] of any sizes
    out = dit.packed(batch.patches, t, batch.layout, cond)        # t, labels, text: `batch.per_clip(values)`
    clips = batch.unpack(out)                                     # a list of [T, H, W, C_out], in input order

Rows are filled first-fit in decreasing token count, which keeps padding to the last row or two on mixed batches.
Shapes are static: a fixed `rows` x `row_length` and a fixed number of clip slots per row keep one compiled program
for every mix of sizes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import einops
import numpy as np

from vidgen.layers.embeddings import token_grid
from vidgen.layers.layout import PackedLayout, gather_bounds, grid_positions, window_gather


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where one clip went: row, clip slot in that row, first token, and its token grid (T', H', W')."""

  row: int
  slot: int
  start: int
  grid: tuple[int, int, int]

  @property
  def length(self) -> int:
    return int(np.prod(self.grid))


def plan(grids: Sequence[Sequence[int]], row_length: int, *, rows: int | None = None,
         slots: int | None = None) -> list[Placement]:
  """Places clips with token grids `grids` into rows of `row_length` tokens: first fit, longest clip first.

  Args:
    grids: token grid (T', H', W') of each clip.
    row_length: tokens per row.
    rows: the number of rows to fill; None = as many as needed. ValueError when the clips do not fit.
    slots: most clips per row; None = no limit.

  Returns:
    One `Placement` per clip, in the order of `grids`.
  """
  if row_length < 1:
    raise ValueError(f"row_length must be >= 1, got {row_length}")
  lengths = [int(np.prod(g)) for g in grids]
  too_long = [(i, n) for i, n in enumerate(lengths) if n > row_length]
  if too_long:
    i, n = too_long[0]
    raise ValueError(f"clip {i} has {n} tokens (grid {tuple(grids[i])}), more than row_length={row_length}")
  used: list[int] = []
  count: list[int] = []
  placed: dict[int, Placement] = {}
  for i in sorted(range(len(grids)), key=lambda i: -lengths[i]):  # stable: equal lengths keep input order
    row = next((r for r in range(len(used))
                if used[r] + lengths[i] <= row_length and (slots is None or count[r] < slots)), None)
    if row is None:
      if rows is not None and len(used) == rows:
        raise ValueError(f"{len(grids)} clips ({sum(lengths)} tokens) do not fit {rows} rows of {row_length} tokens"
                         + ("" if slots is None else f" with at most {slots} clips a row"))
      used.append(0)
      count.append(0)
      row = len(used) - 1
    placed[i] = Placement(row=row, slot=count[row], start=used[row], grid=tuple(int(g) for g in grids[i]))
    used[row] += lengths[i]
    count[row] += 1
  return [placed[i] for i in range(len(grids))]


@dataclasses.dataclass
class PackedBatch:
  """Packed rows and where every clip is. Arrays are numpy; `layout` feeds `VideoDiT.packed` as is."""

  patches: np.ndarray            # [rows, row_length, P, C]
  layout: PackedLayout           # segment ids, positions and grids, numpy int32
  placements: list[Placement]    # one per input clip, in input order
  patch: tuple[int, int, int]
  slots: int                     # clip slots per row (S): per-clip arrays are [rows, S, ...]

  @property
  def rows(self) -> int:
    return self.layout.segment_ids.shape[0]

  @property
  def row_length(self) -> int:
    return self.layout.segment_ids.shape[1]

  def token_efficiency(self) -> float:
    """Fraction of the rows' tokens that belong to a clip."""
    return float(np.mean(np.asarray(self.layout.segment_ids) > 0))

  def per_clip(self, values, fill=0) -> np.ndarray:
    """Per-clip values `[n_clips, ...]` (input order) -> `[rows, slots, ...]`; empty slots hold `fill`."""
    values = np.asarray(values)
    if values.shape[0] != len(self.placements):
      raise ValueError(f"per_clip: got {values.shape[0]} values for {len(self.placements)} clips")
    out = np.full((self.rows, self.slots, *values.shape[1:]), fill, values.dtype)
    for p, value in zip(self.placements, values):
      out[p.row, p.slot] = value
    return out

  def pack_like(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Per-token inputs with the clips' sizes (task channels, self-conditioning: `[T, H, W, C']` each) ->
    `[rows, row_length, P, C']` placed like the latents."""
    if len(arrays) != len(self.placements):
      raise ValueError(f"pack_like: got {len(arrays)} arrays for {len(self.placements)} clips")
    channels = {np.shape(a)[-1] for a in arrays}
    if len(channels) != 1:
      raise ValueError(f"pack_like: every array needs the same channel count; got {sorted(channels)}")
    out = np.zeros((self.rows, self.row_length, int(np.prod(self.patch)), channels.pop()), np.asarray(arrays[0]).dtype)
    for i, (p, array) in enumerate(zip(self.placements, arrays)):
      patches = _patchify(np.asarray(array), self.patch)
      if patches.shape[0] != p.length:
        raise ValueError(f"pack_like: array {i} has shape {np.shape(array)}, not the size of clip {i} (token grid "
                         f"{p.grid}, patch {self.patch})")
      out[p.row, p.start:p.start + p.length] = patches
    return out

  def unpack(self, patches) -> list[np.ndarray]:
    """Packed outputs `[rows, row_length, P, C']` -> one `[T, H, W, C']` per clip, in input order."""
    patches = np.asarray(patches)
    expected = (self.rows, self.row_length, int(np.prod(self.patch)))
    if patches.shape[:3] != expected:
      raise ValueError(f"unpack: expected [rows, row_length, P, C'] = {expected} + (C',), got {patches.shape}")
    return [_unpatchify(patches[p.row, p.start:p.start + p.length], p.grid, self.patch) for p in self.placements]


def _patchify(x: np.ndarray, patch: Sequence[int]) -> np.ndarray:
  """`[T, H, W, C]` -> `[N, P, C]`, tokens in raster order and patch values in (pt, ph, pw) order (as
  `vidgen.layers.embeddings.patchify`, with channels kept apart)."""
  pt, ph, pw = patch
  return einops.rearrange(x, "(t pt) (h ph) (w pw) c -> (t h w) (pt ph pw) c", pt=pt, ph=ph, pw=pw)


def _unpatchify(tokens: np.ndarray, grid: Sequence[int], patch: Sequence[int]) -> np.ndarray:
  t, h, w = grid
  pt, ph, pw = patch
  return einops.rearrange(tokens, "(t h w) (pt ph pw) c -> (t pt) (h ph) (w pw) c", t=t, h=h, w=w, pt=pt, ph=ph,
                          pw=pw)


def block_shapes(windows: Mapping[str, Any], grids: Sequence[Sequence[int]], row_length: int
                 ) -> dict[str, tuple[Any, int, int]]:
  """{attention kind: (window, windows per row, window size)} for `pack(blocks=...)`: fixed block shapes that hold
  the windows of any row of clips with token grids among `grids` (e.g. every bucket's), so one compiled program
  serves every mix. `windows`: {kind: window in packed rows}, e.g. `DiTSpec.packed_windows`."""
  return {kind: (window, *gather_bounds(grids, window, row_length)) for kind, window in windows.items()}


def pack(latents: Sequence[np.ndarray], *, patch: Sequence[int], row_length: int, rows: int | None = None,
         slots: int | None = None, blocks: Mapping[str, tuple[Any, int, int]] | None = None) -> PackedBatch:
  """Patchifies `latents` (each `[T, H, W, C]`, any T, H, W divisible by `patch`) and packs them into rows.

  Args:
    latents: the clips; images are 1-frame clips.
    patch: (pt, ph, pw).
    row_length: tokens per row.
    rows: fixed number of rows (static shapes for jit); None = as many as needed.
    slots: fixed clip slots per row; None = the most any row got.
    blocks: optional `block_shapes(...)`: the layout then carries each attention kind's window blocks
      (`vidgen.layers.layout.WindowGather`), and attention costs windows x window size instead of the row squared.
      Blocks per row are as many as the rows need, rounded up to a power of two (a few compiled shapes over many
      batches), at most the bound of `block_shapes`.
  """
  patch = tuple(int(p) for p in patch)
  if not latents:
    raise ValueError("pack: no clips")
  bad = [i for i, x in enumerate(latents) if np.ndim(x) != 4]
  if bad:
    raise ValueError(f"pack: clip {bad[0]} has shape {np.shape(latents[bad[0]])}; each clip must be [T, H, W, C]")
  channels = {np.shape(x)[-1] for x in latents}
  if len(channels) != 1:
    raise ValueError(f"pack: every clip needs the same channel count; got {sorted(channels)}")
  grids = []
  for i, x in enumerate(latents):
    try:
      grids.append(token_grid(np.shape(x)[:3], patch))
    except ValueError as e:
      raise ValueError(f"pack: clip {i}: {e}") from None
  placements = plan(grids, row_length, rows=rows, slots=slots)
  n_rows = rows if rows is not None else max(p.row for p in placements) + 1
  n_slots = slots if slots is not None else max(p.slot for p in placements) + 1
  segment_ids = np.zeros((n_rows, row_length), np.int32)
  positions = np.zeros((n_rows, row_length, 3), np.int32)
  grid_of = np.ones((n_rows, row_length, 3), np.int32)
  for p in placements:
    span = slice(p.start, p.start + p.length)
    segment_ids[p.row, span] = p.slot + 1
    positions[p.row, span] = grid_positions(p.grid)
    grid_of[p.row, span] = p.grid
  gathers = None
  if blocks:
    gathers = {kind: window_gather(segment_ids, positions, window, windows=None, window_size=size, max_windows=n)
               for kind, (window, n, size) in blocks.items()}
  layout = PackedLayout(segment_ids, positions, grid_of, gathers)
  batch = PackedBatch(patches=np.empty((n_rows, row_length, 0, 0)), layout=layout,
                      placements=placements, patch=patch, slots=n_slots)
  return dataclasses.replace(batch, patches=batch.pack_like(latents))
