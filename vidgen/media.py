"""Reading and writing videos (mp4 through PyAV, gif and 1-frame png through pillow), and side-by-side grids."""

from __future__ import annotations

import os
from typing import Sequence

import av
import imageio.v3 as iio
import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".gif", ".png")  # .png: a 1-frame video (an image)


def _check_frames(frames: np.ndarray, path: str) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim == 3:  # a single image
    frames = frames[None]
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"{path}: frames must be uint8 [T, H, W, 3], got shape {frames.shape}")
  if frames.dtype != np.uint8:
    raise ValueError(f"{path}: frames must be uint8, got {frames.dtype} (use vidgen.data.to_uint8)")
  return frames


def _write_h264(path: str, frames: np.ndarray, fps: int) -> None:
  """H.264 in this process through PyAV. Not through an ffmpeg subprocess: forking a multithreaded JAX process can
  deadlock the child before it execs. CRF 12 is near-lossless for these small clips."""
  with av.open(path, mode="w") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    stream.options = {"crf": "12", "threads": "1"}  # clips are small: one thread, no encoder thread pool
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def write_video(path: str | os.PathLike, frames: np.ndarray, *, fps: int = 8) -> str:
  """Writes uint8 [T, H, W, 3] to `path` (.mp4, .gif, or .png for T = 1, by extension), atomically (temp file, then
  rename)."""
  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lower()
  if ext not in VIDEO_EXTENSIONS:
    raise ValueError(f"{path}: unsupported extension {ext!r}; use one of {VIDEO_EXTENSIONS}")
  frames = _check_frames(frames, path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{ext}"
  if ext == ".mp4":
    # H.264 with yuv420p needs even sides: pad by edge replication rather than failing on odd sizes.
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
      frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    _write_h264(tmp, frames, fps)
  elif ext == ".png":
    if len(frames) != 1:
      raise ValueError(f"{path}: a .png holds one frame, got {len(frames)}; use .mp4 or .gif")
    iio.imwrite(tmp, frames[0], extension=".png")
  else:
    iio.imwrite(tmp, frames, extension=".gif", duration=1000 / fps, loop=0)
  os.replace(tmp, path)
  return path


def read_video(path: str | os.PathLike) -> np.ndarray:
  """Reads a video (or image) file into uint8 [T, H, W, 3]; a clear error for missing or unreadable files."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such video file")
  try:
    frames = iio.imread(path, index=None, plugin="FFMPEG" if path.lower().endswith(".mp4") else None)
  except Exception as e:  # imageio raises many types for corrupt input; report them uniformly with the path
    raise ValueError(f"{path}: could not decode video ({type(e).__name__}: {e})") from e
  frames = np.asarray(frames)
  if frames.ndim == 3:
    frames = frames[None]
  if frames.shape[-1] == 4:
    frames = frames[..., :3]
  return frames.astype(np.uint8)


def side_by_side(*videos: np.ndarray, gap: int = 2) -> np.ndarray:
  """Places uint8 videos [T, H, W, 3] (same T and H) next to each other with a thin gray gap."""
  t, h = videos[0].shape[:2]
  sep = np.full((t, h, gap, 3), 128, np.uint8)
  parts: list[np.ndarray] = []
  for i, v in enumerate(videos):
    if v.shape[:2] != (t, h):
      raise ValueError(f"side_by_side: video {i} has shape {v.shape}, expected [T={t}, H={h}, ...]")
    parts.extend([sep, v] if i else [v])
  return np.concatenate(parts, axis=2)


def grid(videos: Sequence[np.ndarray], *, gap: int = 2) -> np.ndarray:
  """Stacks rows (each a uint8 video [T, H, W, 3] of equal shape) vertically with a gray gap."""
  t, _, w = videos[0].shape[:3]
  sep = np.full((t, gap, w, 3), 128, np.uint8)
  parts: list[np.ndarray] = []
  for i, v in enumerate(videos):
    parts.extend([sep, v] if i else [v])
  return np.concatenate(parts, axis=1)
