"""Datasets and input pipelines: sources chosen by `config.data.name` (vidgen.data.sources), batch iterators, the
latent cache. The embedded default source is `shapes` (procedural captioned moving shapes, vidgen.data.shapes)."""

import numpy as np

from vidgen.data.clips import ClipIterator


def to_model_range(video_uint8) -> np.ndarray:
  """uint8 frames [..., 3] in [0, 255] -> float32 in [-1, 1] (the VAE's input range)."""
  return np.asarray(video_uint8, np.float32) / 127.5 - 1.0


def to_uint8(video) -> np.ndarray:
  """float frames in [-1, 1] -> uint8 [0, 255] (clipped)."""
  return np.clip(np.round((np.asarray(video, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


__all__ = ["ClipIterator", "to_model_range", "to_uint8"]
