"""Test media written on the fly: videos in every container the files source reads, images in every mode, and
deliberately broken files, so the data path is tested without any download.

Video frames count: frame i is a flat gray field of level `LEVEL0 + LEVEL_STEP * i`, which survives lossy codecs and
resizing, so `frame_numbers(clip)` tells which source frames a sampled clip holds.
"""

from __future__ import annotations

import os
import struct

import numpy as np

LEVEL0, LEVEL_STEP = 10, 10
MAX_FRAMES = (255 - LEVEL0) // LEVEL_STEP + 1  # frames a counting video can number distinctly

# extension -> (codec, pixel format); .gif is written by Pillow. ffv1 and 4:4:4 H.264 take odd frame sizes.
CODECS = {".mp4": ("libx264", "yuv420p"), ".mov": ("libx264", "yuv420p"), ".webm": ("libvpx-vp9", "yuv420p"),
          ".avi": ("mpeg4", "yuv420p"), ".mkv": ("ffv1", "yuv444p")}
GIF_FPS = 10  # GIF frame durations are whole centiseconds: 10 fps is exact


def counting_frames(num_frames: int, height: int = 32, width: int = 32, *, noise: int = 0,
                    seed: int = 0) -> np.ndarray:
  """uint8 [num_frames, height, width, 3]: frame i is gray level LEVEL0 + LEVEL_STEP * i (+ uniform noise in
  [-noise, noise], which makes every frame cost about the same bytes, so a cut file loses its later frames)."""
  if num_frames > MAX_FRAMES:
    raise ValueError(f"a counting video has at most {MAX_FRAMES} frames, got {num_frames}")
  levels = LEVEL0 + LEVEL_STEP * np.arange(num_frames, dtype=np.int32)
  frames = np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3))
  if noise:
    frames = frames + np.random.default_rng(seed).integers(-noise, noise + 1, frames.shape)
  return np.clip(frames, 0, 255).astype(np.uint8)


def frame_numbers(video: np.ndarray) -> np.ndarray:
  """The source frame index of each frame of a clip of a counting video: int [T]."""
  means = np.asarray(video, np.float32).reshape(len(video), -1).mean(axis=1)
  return np.round((means - LEVEL0) / LEVEL_STEP).astype(np.int64)


def write_video(path: str, frames: np.ndarray, fps: float = 12, *, codec: str | None = None,
                pix_fmt: str | None = None, gop: int = 4, options: dict[str, str] | None = None,
                container_options: dict[str, str] | None = None) -> str:
  """uint8 frames [T, H, W, 3] -> `path`, encoded by PyAV with the extension's codec (CODECS; .gif through Pillow).

  A key frame every `gop` frames, so reading a later clip seeks rather than decoding from the start.
  """
  import av

  ext = os.path.splitext(path)[1].lower()
  frames = np.asarray(frames, np.uint8)
  if ext == ".gif":
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return path
  default_codec, default_pix_fmt = CODECS[ext]
  with av.open(path, "w", options=container_options or {}) as container:
    stream = container.add_stream(codec or default_codec, rate=fps, options=options or {})
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = pix_fmt or default_pix_fmt
    stream.codec_context.gop_size = gop
    for f in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
    container.mux(stream.encode())
  return path


def write_video_with_audio(path: str, frames: np.ndarray, fps: float = 12, *, audio_seconds: float) -> str:
  """A video (.mkv, .webm or .mp4) with a silent audio track of `audio_seconds`: longer audio makes the container's
  duration longer than the video's."""
  import av

  ext = os.path.splitext(path)[1].lower()
  codec, pix_fmt = {".mkv": ("ffv1", "yuv444p"), ".webm": ("libvpx-vp9", "yuv420p"),
                    ".mp4": ("libx264", "yuv420p")}[ext]
  rate, chunk = 48000, 960
  with av.open(path, "w") as container:
    video = container.add_stream(codec, rate=fps)
    video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
    audio = container.add_stream("libopus" if ext == ".webm" else "aac", rate=rate)
    for f in np.asarray(frames, np.uint8):
      container.mux(video.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
    container.mux(video.encode())
    for pts in range(0, int(audio_seconds * rate), chunk):
      silence = av.AudioFrame.from_ndarray(np.zeros((1, chunk), np.float32), format="flt", layout="mono")
      silence.sample_rate, silence.pts = rate, pts
      container.mux(audio.encode(silence))
    container.mux(audio.encode())
  return path


def write_caption(media_path: str, caption: str) -> str:
  """The sidecar caption NAME.txt of NAME.ext."""
  path = os.path.splitext(media_path)[0] + ".txt"
  with open(path, "w", encoding="utf-8") as f:
    f.write(caption + "\n")
  return path


def write_image(path: str, pixels: np.ndarray, mode: str | None = None, **save_options) -> str:
  """An array -> an image file by Pillow (`mode` converts first, e.g. "P")."""
  from PIL import Image

  image = Image.fromarray(np.asarray(pixels))
  if mode is not None:
    image = image.convert(mode)
  image.save(path, **save_options)
  return path


def gradient(height: int, width: int) -> np.ndarray:
  """uint8 [height, width, 3] whose red channel is 4 * x (the column), green 4 * y and blue 128: a crop's offset and a
  flip can be read back."""
  y, x = np.mgrid[:height, :width]
  return np.stack([4 * x, 4 * y, np.full_like(x, 128)], axis=-1).clip(0, 255).astype(np.uint8)


def write_good_videos(directory: str, num_frames: int = 24, fps: float = 12, height: int = 32,
                      width: int = 32) -> dict[str, str]:
  """A counting video per container: extension ("mp4", "webm", "mov", "avi", "mkv", "gif") -> path; the GIF plays at
  GIF_FPS."""
  os.makedirs(directory, exist_ok=True)
  frames = counting_frames(num_frames, height, width)
  paths = {}
  for ext in (*CODECS, ".gif"):
    path = os.path.join(directory, f"count{ext}")
    paths[ext[1:]] = write_video(path, frames, GIF_FPS if ext == ".gif" else fps)
  return paths


# What each image of `write_images` turns into, as an RGB colour (None: see the test).
RGBA_COLOR, PALETTE_COLORS, TINY_COLOR = (200, 100, 50), ((255, 0, 0), (0, 0, 255)), (10, 200, 30)


def write_images(directory: str) -> dict[str, str]:
  """Images in every mode the decoder converts: name -> path.

    jpg, webp   RGB gradient 32x64 (lossy)        gray      "L", level 100, 32x32
    png         RGB gradient 32x64 (exact)         gray16    "I;16", level 40000 of 65535, 32x32
    rgba        "RGBA": left half RGBA_COLOR opaque, right half transparent
    palette     "P": left half red, right half blue      tiny   1x1 TINY_COLOR      odd   33x47 RGB gradient
  """
  os.makedirs(directory, exist_ok=True)
  path = lambda name: os.path.join(directory, name)  # noqa: E731
  rgba = np.zeros((32, 32, 4), np.uint8)
  rgba[:, :16] = (*RGBA_COLOR, 255)
  rgba[:, 16:] = (255, 255, 255, 0)  # colour under zero alpha must not show
  palette = np.zeros((32, 32, 3), np.uint8)
  palette[:, :16], palette[:, 16:] = PALETTE_COLORS
  return {
      "jpg": write_image(path("photo.jpg"), gradient(32, 64), quality=95),
      "png": write_image(path("gradient.png"), gradient(32, 64)),
      "webp": write_image(path("photo.webp"), gradient(32, 64), quality=95),
      "gray": write_image(path("gray.png"), np.full((32, 32), 100, np.uint8)),
      "gray16": write_image(path("gray16.png"), np.full((32, 32), 40000, np.uint16)),
      "rgba": write_image(path("rgba.png"), rgba),
      "palette": write_image(path("palette.png"), palette, mode="P"),
      "tiny": write_image(path("tiny.png"), np.array([[TINY_COLOR]], np.uint8)),
      "odd": write_image(path("odd.png"), gradient(33, 47)),
  }


def absurd_duration_mp4(good_mp4: str, path: str) -> str:
  """A copy of an H.264 mp4 (one stts entry) whose sample durations and media header state days, not seconds.

  FFmpeg takes an mp4's duration from its sample table (mdhd alone is ignored), so both are patched: each of the 24
  frames lasts 2^31 ticks of 1/12288 s, about 48 days in all (FFmpeg then reports a stream duration of 0 and ~6e-6 fps).
  """
  data = bytearray(open(good_mp4, "rb").read())
  mdhd = data.find(b"mdhd")  # version 0: version/flags, created, modified, timescale, duration (32-bit each)
  stts = data.find(b"stts")  # version/flags, entry count, then (sample count, sample delta) pairs
  if mdhd < 0 or stts < 0 or data[mdhd + 4] != 0 or struct.unpack(">I", data[stts + 8:stts + 12])[0] != 1:
    raise ValueError(f"{good_mp4}: not an mp4 with a version-0 mdhd and one stts entry")
  data[mdhd + 20:mdhd + 24] = struct.pack(">I", 0xFFFFFFFF)
  data[stts + 16:stts + 20] = struct.pack(">I", 0x7FFFFFFF)
  with open(path, "wb") as f:
    f.write(data)
  return path


def write_broken(directory: str, num_frames: int = 24, fps: float = 12) -> dict[str, str]:
  """Files that cannot give a full clip: name -> path.

    corrupt     random bytes named .mp4                 text       a text file named .mp4
    empty       0 bytes named .mp4                      short      a 3-frame counting mp4
    truncated   the first half of a `num_frames` counting mp4 with its index (moov) first: the container promises
                every frame, decoding ends about halfway
    absurd      an mp4 whose container states an absurd duration (absurd_duration_mp4)
  """
  os.makedirs(directory, exist_ok=True)
  path = lambda name: os.path.join(directory, name)  # noqa: E731
  paths = {}
  with open(path("corrupt.mp4"), "wb") as f:
    f.write(np.random.default_rng(0).bytes(4096))
  paths["corrupt"] = path("corrupt.mp4")
  with open(path("notes.mp4"), "w", encoding="utf-8") as f:
    f.write("These are meeting notes, not a video.\n" * 20)
  paths["text"] = path("notes.mp4")
  open(path("empty.mp4"), "wb").close()
  paths["empty"] = path("empty.mp4")
  paths["short"] = write_video(path("short.mp4"), counting_frames(3), fps)
  whole = write_video(path(".whole.mp4"), counting_frames(num_frames, noise=6), fps, options={"crf": "12"},
                      container_options={"movflags": "faststart"})
  data = open(whole, "rb").read()
  with open(path("truncated.mp4"), "wb") as f:
    f.write(data[:len(data) // 2])
  paths["truncated"] = path("truncated.mp4")
  plain = write_video(path(".plain.mp4"), counting_frames(num_frames), fps)
  paths["absurd"] = absurd_duration_mp4(plain, path("absurd.mp4"))
  for hidden in (whole, plain):  # hidden files are not listed by a directory scan, but leave nothing behind
    os.remove(hidden)
  return paths


def write_odd_sized(directory: str, num_frames: int = 8, fps: float = 12) -> dict[str, str]:
  """Counting videos of 33x47 frames (odd sides: H.264 4:4:4 in mp4, ffv1 in mkv): name -> path."""
  os.makedirs(directory, exist_ok=True)
  frames = counting_frames(num_frames, 33, 47)
  return {"mp4": write_video(os.path.join(directory, "odd.mp4"), frames, fps, pix_fmt="yuv444p"),
          "mkv": write_video(os.path.join(directory, "odd.mkv"), frames, fps)}
