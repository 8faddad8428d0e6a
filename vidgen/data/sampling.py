"""Clip sampling shared by every real-data source: which frames of a video to take, and how to size them.

A `ClipSpec` (built from `config.data`) says: `num_frames` frames, `frame_stride` source frames apart (or, with
`fps` > 0, spaced to play at that frame rate whatever the source's rate), starting at a random, first or centred
offset; frames resized so the shorter side covers the target, then a centre or random `height` x `width` crop, and an
optional random horizontal flip. Sources decode only the frames `frame_indices` picks, then call `fit_frames`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
from PIL import Image

from vidgen.config import require

OFFSETS = ("random", "start", "center")
CROPS = ("center", "random")
SHORT_CLIPS = ("skip", "pad")  # a video with fewer frames than a clip needs: skip it, or repeat its last frame


class BadRecord(Exception):
  """A record that cannot give a clip (unreadable, too short, no frames, ...); `reason` is said in the warning."""


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  num_frames: int
  height: int
  width: int
  frame_stride: int = 1
  fps: float = 0.0  # > 0: sample at this frame rate (stride from the source's rate) instead of frame_stride
  offset: str = "random"
  crop: str = "center"
  flip: bool = False
  short_clips: str = "skip"

  @classmethod
  def from_config(cls, data: Mapping[str, Any], **overrides: Any) -> "ClipSpec":
    """The spec of `config.data` (fields absent there take the defaults above); `overrides` replace fields."""
    fields = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
    return cls(**{**fields, **overrides})

  def validate(self, prefix: str = "data") -> None:
    """ConfigError naming `config.<prefix>.<field>` for a value no clip can be sampled with."""
    for name in ("num_frames", "height", "width", "frame_stride"):
      value = getattr(self, name)
      require(isinstance(value, int) and value >= 1, f"{prefix}.{name}", f"must be an integer >= 1, got {value!r}")
    require(isinstance(self.fps, (int, float)) and self.fps >= 0, f"{prefix}.fps",
            f"must be >= 0 (0: use frame_stride), got {self.fps!r}")
    require(self.offset in OFFSETS, f"{prefix}.offset", f"must be one of {OFFSETS}, got {self.offset!r}")
    require(self.crop in CROPS, f"{prefix}.crop", f"must be one of {CROPS}, got {self.crop!r}")
    require(isinstance(self.flip, bool), f"{prefix}.flip", f"must be True or False, got {self.flip!r}")
    require(self.short_clips in SHORT_CLIPS, f"{prefix}.short_clips",
            f"must be one of {SHORT_CLIPS}, got {self.short_clips!r}")

  def stride_for(self, source_fps: float | None) -> float:
    """Source frames between two sampled frames (fractional with a target fps)."""
    if self.fps > 0 and source_fps:
      return max(float(source_fps) / self.fps, 1e-6)
    return float(self.frame_stride)


def frame_indices(num_available: int, source_fps: float | None, spec: ClipSpec,
                  rng: np.random.Generator) -> np.ndarray:
  """Indices (non-decreasing) of the source frames of one clip from a video of `num_available` frames.

  Raises BadRecord for an empty video, and for one too short for the clip when `spec.short_clips == "skip"`; with
  "pad" a short video repeats its last frame. A 1-frame source (an image) gives `num_frames` copies of frame 0 only
  when the clip is 1 frame long or the policy pads.
  """
  if num_available < 1:
    raise BadRecord("no frames")
  stride = spec.stride_for(source_fps)
  span = (spec.num_frames - 1) * stride  # source frames covered, first to last sampled frame
  room = num_available - 1 - span
  if room < 0:
    if spec.short_clips == "skip":
      fps = f" at {source_fps:g} fps" if source_fps else ""
      raise BadRecord(f"too short: {num_available} frames{fps}, a clip of {spec.num_frames} frames with stride "
                      f"{stride:g} needs {int(np.ceil(span)) + 1}")
    room = 0.0
  if spec.offset == "random":
    start = rng.uniform(0.0, room) if room > 0 else 0.0
  elif spec.offset == "center":
    start = room / 2
  else:
    start = 0.0
  positions = start + stride * np.arange(spec.num_frames)
  return np.minimum(np.floor(positions + 1e-6).astype(np.int64), num_available - 1)


def to_rgb(frames: np.ndarray) -> np.ndarray:
  """Frames [T, H, W], [T, H, W, 1|2|3|4] of any integer or float dtype -> uint8 [T, H, W, 3].

  Grayscale is repeated over the channels; alpha is composited over black. Floats are taken as [0, 1]; NaN and Inf
  become 0 and values are clipped, so no bad sample reaches the model.
  """
  frames = np.asarray(frames)
  if frames.ndim == 3:
    frames = frames[..., None]
  if frames.ndim != 4 or frames.shape[-1] not in (1, 2, 3, 4) or min(frames.shape[:3]) < 1:
    raise BadRecord(f"frames of shape {frames.shape} are not [T, H, W] or [T, H, W, 1-4 channels]")
  if frames.dtype != np.uint8:
    x = np.nan_to_num(frames.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if np.issubdtype(frames.dtype, np.floating):
      x = x * 255.0
    elif np.issubdtype(frames.dtype, np.integer) and frames.dtype.itemsize > 1:
      x = x / float(np.iinfo(frames.dtype).max) * 255.0
    frames = np.clip(np.round(x), 0, 255).astype(np.uint8)
  channels = frames.shape[-1]
  if channels in (2, 4):  # luminance / colour + alpha over black
    alpha = frames[..., -1:].astype(np.float32) / 255.0
    frames = np.round(frames[..., :-1].astype(np.float32) * alpha).astype(np.uint8)
  if frames.shape[-1] == 1:
    frames = np.repeat(frames, 3, axis=-1)
  return np.ascontiguousarray(frames)


def fit_frames(frames: np.ndarray, spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
  """Decoded frames (any size, channel layout) -> uint8 [T, height, width, 3]: resize the shorter side to cover the
  target (antialiased), crop (centre or random; one window for the whole clip), random horizontal flip."""
  frames = to_rgb(frames)
  _, h, w, _ = frames.shape
  scale = max(spec.height / h, spec.width / w)
  new_h, new_w = max(spec.height, int(round(h * scale))), max(spec.width, int(round(w * scale)))
  if (new_h, new_w) != (h, w):
    frames = np.stack([np.asarray(Image.fromarray(f).resize((new_w, new_h), Image.BICUBIC)) for f in frames])
  if spec.crop == "random":
    y, x = int(rng.integers(new_h - spec.height + 1)), int(rng.integers(new_w - spec.width + 1))
  else:
    y, x = (new_h - spec.height) // 2, (new_w - spec.width) // 2
  frames = frames[:, y:y + spec.height, x:x + spec.width]
  if spec.flip and rng.random() < 0.5:
    frames = frames[:, :, ::-1]
  return np.ascontiguousarray(frames)


def sample_clip(frames: np.ndarray, spec: ClipSpec, rng: np.random.Generator,
                source_fps: float | None = None) -> np.ndarray:
  """A clip of a video already in memory (all its frames [N, H, W, C]): `frame_indices`, then `fit_frames`."""
  frames = np.asarray(frames)
  return fit_frames(frames[frame_indices(len(frames), source_fps, spec, rng)], spec, rng)


__all__ = ["BadRecord", "CROPS", "ClipSpec", "OFFSETS", "SHORT_CLIPS", "fit_frames", "frame_indices", "sample_clip",
           "to_rgb"]
