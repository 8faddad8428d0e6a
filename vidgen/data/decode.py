"""Reading one clip from a file: videos with PyAV, seeking to the sampled frames instead of decoding the whole file;
images (1-frame videos) with Pillow. Anything that cannot give a clip raises `BadRecord` with the reason.

Frame i of a video (or of its [start, end) segment) is the frame shown at time start + i / fps, where fps is the
stream's average rate unless the record gives one. Containers that overstate their length (a truncated file) are
caught after decoding: fewer frames than promised is "truncated", handled by the `short_clips` policy.
"""

from __future__ import annotations

import math
import os

import av
import numpy as np
from PIL import Image

from vidgen.data.sampling import BadRecord, ClipSpec, fit_frames, frame_indices

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".gif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + IMAGE_EXTENSIONS
MAX_SECONDS = 24 * 3600.0  # a longer stated duration is broken metadata, not a video
MAX_PIXELS = 8192 * 8192  # larger frames are refused before decoding (decompression bombs, broken headers)
DURATION_SLACK = 0.002  # s: a stated duration this much short of a frame's end still counts that frame


def is_media(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in MEDIA_EXTENSIONS


def read_image(path: str) -> np.ndarray:
  """An image file -> uint8 frames [1, H, W, C] (C in 1-4, as stored)."""
  try:
    with Image.open(path) as image:
      if image.width * image.height > MAX_PIXELS:
        raise BadRecord(f"image of {image.width}x{image.height} pixels is larger than {MAX_PIXELS}")
      if image.mode not in ("L", "LA", "RGB", "RGBA", "I;16", "I", "F"):
        image = image.convert("RGBA")  # palette, CMYK, YCbCr, ...: to a mode with a plain array form
      pixels = np.asarray(image)
  except BadRecord:
    raise
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise BadRecord(f"unreadable image: {type(e).__name__}: {e}") from None
  if pixels.dtype == np.int32 or pixels.dtype == np.float32:  # 32-bit grayscale: scale by the image's own range
    pixels = pixels.astype(np.float32)
    pixels = pixels / max(float(np.nanmax(np.abs(pixels))), 1e-6) if np.isfinite(pixels).any() else pixels
  return pixels[None]


def read_clip(path: str, spec: ClipSpec, rng: np.random.Generator, *, start: float | None = None,
              end: float | None = None, fps: float | None = None) -> np.ndarray:
  """One clip of `path` sampled by `spec`: uint8 [num_frames, height, width, 3].

  Args:
    start, end: a segment of the video in seconds (a manifest's `start` / `end`); default the whole video.
    fps: the source's frame rate when the container's is wrong (a manifest's `fps`).
  """
  if not os.path.isfile(path):
    raise BadRecord("file not found")
  if os.path.getsize(path) == 0:
    raise BadRecord("empty file (0 bytes)")
  if os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS:
    frames = read_image(path)
    return fit_frames(frames[frame_indices(1, None, spec, rng)], spec, rng)
  try:
    frames, rate = _read_video_frames(path, spec, rng, start, end, fps)
  except BadRecord:
    raise
  except (av.FFmpegError, OSError, ValueError, IndexError, ZeroDivisionError, OverflowError) as e:
    raise BadRecord(f"unreadable video: {type(e).__name__}: {e}") from None
  return fit_frames(frames, spec, rng)


def probe(path: str, *, start: float | None = None, end: float | None = None,
          fps: float | None = None) -> tuple[int, int, int, float | None]:
  """(frames available, height, width, frame rate) of a video (or its [start, end) segment) from its header, or
  (1, height, width, None) for an image, without decoding; BadRecord when it cannot give a clip."""
  if not os.path.isfile(path):
    raise BadRecord("file not found")
  if os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS:
    try:
      with Image.open(path) as image:
        return 1, image.height, image.width, None
    except (OSError, ValueError, SyntaxError) as e:
      raise BadRecord(f"unreadable image: {type(e).__name__}: {e}") from None
  try:
    with av.open(path) as container:
      stream, num_available, rate, _ = _video_extent(container, start, end, fps)
      return num_available, stream.height, stream.width, rate
  except BadRecord:
    raise
  except (av.FFmpegError, OSError, ValueError, IndexError, ZeroDivisionError, OverflowError) as e:
    raise BadRecord(f"unreadable video: {type(e).__name__}: {e}") from None


def _video_extent(container, start, end, fps):
  """(video stream, frames available in the segment, frame rate, segment start in s) of an open container."""
  if not container.streams.video:
    raise BadRecord("no video stream")
  stream = container.streams.video[0]
  if stream.width * stream.height > MAX_PIXELS or stream.width < 1 or stream.height < 1:
    raise BadRecord(f"frames of {stream.width}x{stream.height} pixels")
  rate = float(fps or stream.average_rate or stream.guessed_rate or 0.0)
  if not 0 < rate < 1000:
    raise BadRecord(f"no usable frame rate ({rate:g} fps); give one with the manifest's fps column")
  duration = _duration(container, stream)
  segment_start = max(float(start or 0.0), 0.0)
  segment_end = min(float(end), duration) if end is not None else duration
  if not 0 < duration <= MAX_SECONDS:
    raise BadRecord(f"stated duration {duration:g} s is outside (0, {MAX_SECONDS:g}] s")
  if segment_end <= segment_start:
    raise BadRecord(f"segment [{segment_start:g}, {segment_end:g}] s is empty (video lasts {duration:g} s)")
  # Durations are stored to about a millisecond (Matroska rounds to ms): 8 frames at 12 fps may last 0.666 s.
  num_available = max(int(math.floor((segment_end - segment_start + DURATION_SLACK) * rate + 1e-6)), 1)
  return stream, num_available, rate, segment_start


def _read_video_frames(path, spec, rng, start, end, fps) -> tuple[np.ndarray, float]:
  with av.open(path) as container:
    stream, num_available, rate, segment_start = _video_extent(container, start, end, fps)
    indices = frame_indices(num_available, rate, spec, rng)
    frames, error = _decode_indices(container, stream, segment_start, rate, indices)
  if len(frames) < len(indices):
    if spec.short_clips == "skip" or not frames:
      raise BadRecord(f"truncated: the container promises {num_available} frames, decoding gave {len(frames)} of the "
                      f"{len(indices)} sampled" + (f" ({error})" if error else ""))
    frames += [frames[-1]] * (len(indices) - len(frames))
  return np.stack(frames), rate


def _duration(container, stream) -> float:
  """The video stream's duration in seconds. The container's is the longest stream's, audio included, so it is the
  last resort: Matroska / WebM state a stream's duration only in its DURATION tag."""
  if stream.duration and stream.time_base:
    return float(stream.duration * stream.time_base)
  tag = _tag_seconds(stream.metadata.get("DURATION"))
  if tag:
    return tag
  if stream.frames and stream.average_rate:
    return stream.frames / float(stream.average_rate)
  if container.duration is not None:
    return container.duration / 1e6  # av.time_base: microseconds
  return 0.0


def _tag_seconds(text: str | None) -> float | None:
  """"HH:MM:SS.fraction" (a Matroska DURATION tag) -> seconds; None when absent or malformed."""
  try:
    hours, minutes, seconds = (float(part) for part in str(text).split(":"))
  except ValueError:
    return None
  total = hours * 3600 + minutes * 60 + seconds
  return total if math.isfinite(total) and total > 0 else None


def _decode_indices(container, stream, segment_start: float, rate: float,
                    indices: np.ndarray) -> tuple[list[np.ndarray], str]:
  """Frames at `indices` (non-decreasing) of the segment: seek to the key frame before the first, decode forward.

  Damaged data (a truncated file) ends decoding: the frames before it are returned with the error, for the caller's
  short_clips policy.
  """
  offset = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
  first_time = segment_start + indices[0] / rate
  if first_time > 0.5 / rate:
    container.seek(int((first_time + offset) / stream.time_base), stream=stream, backward=True, any_frame=False)
  wanted, out, frame_index = list(indices), [], -1
  try:
    for frame in container.decode(stream):
      if frame.pts is not None and frame.time is not None:
        frame_index = int(math.floor((frame.time - offset - segment_start) * rate + 0.5))
      else:  # no timestamps: count frames (decoding started at the beginning, as no seek was possible)
        frame_index += 1
      if frame_index < wanted[0]:
        continue
      pixels = None
      while wanted and wanted[0] <= frame_index:  # this frame stands for every index it covers
        pixels = frame.to_ndarray(format="rgb24") if pixels is None else pixels
        out.append(pixels)
        wanted.pop(0)
      if not wanted:
        break
  except av.FFmpegError as e:
    return out, f"{type(e).__name__}: {e}"
  return out, ""


__all__ = ["IMAGE_EXTENSIONS", "MEDIA_EXTENSIONS", "VIDEO_EXTENSIONS", "is_media", "read_clip", "read_image"]
