"""Spatial crops for training convolutional autoencoders on parts of frames.

A fully convolutional VAE learns the same function from a crop as from the whole frame, so training on crops buys more
distinct clips per step for the same pixels. On sparse data (one small shape on black) a uniform crop is often empty and
teaches nothing, so `content_crop` picks among the windows that hold something. Offsets lie on a lattice of `grid`
pixels: with grid = the VAE's spatial factor, every crop sits on the latent grid the way full frames do.
"""

from __future__ import annotations

import numpy as np


def crop_offsets(height: int, width: int, size: int, grid: int) -> list[tuple[int, int]]:
  """Top-left corners (y, x), multiples of `grid`, of the size x size windows inside a height x width frame."""
  if size < 1 or size > min(height, width):
    raise ValueError(f"crop size must be in [1, {min(height, width)}] for {height}x{width} frames, got {size}")
  if grid < 1:
    raise ValueError(f"crop grid must be >= 1 pixel, got {grid}")
  return [(y, x) for y in range(0, height - size + 1, grid) for x in range(0, width - size + 1, grid)]


def content_crop(video: np.ndarray, size: int, *, grid: int, rng: np.random.Generator) -> np.ndarray:
  """[T, H, W, C] -> [T, size, size, C]: the same window in every frame, drawn uniformly from the lattice windows
  whose pixels are not all equal over the clip (all windows when none qualifies, e.g. a blank clip)."""
  if video.ndim != 4:
    raise ValueError(f"content_crop expects a clip [T, H, W, C], got shape {video.shape}")
  offsets = crop_offsets(video.shape[1], video.shape[2], size, grid)
  windows = [video[:, y:y + size, x:x + size] for y, x in offsets]
  with_content = [w for w in windows if w.min() != w.max()]
  candidates = with_content or windows
  return candidates[rng.integers(len(candidates))]


def random_crop(video: np.ndarray, size: int, *, grid: int, rng: np.random.Generator) -> np.ndarray:
  """[T, H, W, C] -> [T, size, size, C]: one window drawn uniformly from the lattice windows (natural footage has
  content everywhere, so no search for it)."""
  offsets = crop_offsets(video.shape[1], video.shape[2], size, grid)
  y, x = offsets[rng.integers(len(offsets))]
  return video[:, y:y + size, x:x + size]


__all__ = ["content_crop", "crop_offsets", "random_crop"]
