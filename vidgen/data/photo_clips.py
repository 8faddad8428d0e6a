"""Natural-image clips without a download: slow pans and zooms across the photographs that scikit-image ships in its
wheel, written as mp4 files with sidecar captions for the "files" source (`config.data.name = "files"`).

Each clip is a window of the clip's aspect ratio that moves at constant speed (a pan) or scales geometrically (a
zoom) across one photograph, resampled with subpixel accuracy (bicubic affine sampling at twice the output size, then
box-filtered down, from a photograph pre-shrunk with an antialiasing filter), so it looks like camera motion rather
than jumping pixels. Captions name the motion and the subject: "a slow pan to the left across a photograph of a cat".

Photographs are split, not clips: `HELD_OUT_PHOTOS` are never written to the training folder, so a model can be
evaluated on scenes it never saw. scikit-image is needed only here (`pip install scikit-image`).

  python -m vidgen.data.photo_clips DIR [--held-out] [--clips-per-photo N] [--frames N] [--size HxW]

writes DIR/train/ (and with --held-out DIR/held_out/).
"""

from __future__ import annotations

import argparse
import os
import zlib
from typing import Sequence

import numpy as np
from PIL import Image

# name -> (skimage.data function, subject, black and white). Only images bundled in the scikit-image wheel: others
# need the optional pooch download.
PHOTOS = {
    "astronaut": ("astronaut", "an astronaut", False),
    "coffee": ("coffee", "a cup of coffee", False),
    "rocket": ("rocket", "a rocket on its launch pad", False),
    "hubble": ("hubble_deep_field", "distant galaxies", False),
    "tissue": ("immunohistochemistry", "stained tissue under a microscope", False),
    "camera": ("camera", "a man with a camera", True),
    "moon": ("moon", "the surface of the moon", True),
    "coins": ("coins", "old coins", True),
    "brick": ("brick", "a brick wall", True),
    "grass": ("grass", "grass", True),
    "cat": ("chelsea", "a cat", False),
    "motorcycle": ("stereo_motorcycle", "a motorcycle", False),
    "retina": ("retina", "the back of an eye", False),
    "gravel": ("gravel", "gravel", True),
}
TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "hubble", "tissue", "camera", "moon", "coins", "brick", "grass")
HELD_OUT_PHOTOS = ("cat", "motorcycle", "retina", "gravel")  # never in a training folder
MOTIONS = ("pan left", "pan right", "pan up", "pan down", "zoom in", "zoom out")
SUPERSAMPLE = 2  # windows are sampled at this multiple of the output size, then box-filtered down


def load_photo(name: str) -> np.ndarray:
  """A photograph of PHOTOS as uint8 [H, W, 3] (black and white ones repeated over the channels)."""
  try:
    import skimage.data
  except ImportError as e:
    raise ImportError("vidgen.data.photo_clips reads the photographs of scikit-image: pip install scikit-image") from e
  if name not in PHOTOS:
    raise ValueError(f"unknown photograph {name!r}; known: {sorted(PHOTOS)}")
  image = getattr(skimage.data, PHOTOS[name][0])()
  if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
    image = image[0]
  image = np.asarray(image, np.uint8)
  return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]


def caption(name: str, motion: str) -> str:
  """The caption of a clip: the motion, then the subject."""
  _, subject, gray = PHOTOS[name]
  photo = f"a black and white photograph of {subject}" if gray else f"a photograph of {subject}"
  kind, direction = motion.split()
  if kind == "pan":
    where = {"left": "to the left", "right": "to the right", "up": "upwards", "down": "downwards"}[direction]
    return f"a slow pan {where} across {photo}"
  return f"a slow zoom in on {photo}" if direction == "in" else f"a slow zoom out from {photo}"


def windows(photo_hw: tuple[int, int], motion: str, num_frames: int, aspect: float,
            rng: np.random.Generator) -> np.ndarray:
  """Float [num_frames, 4] windows (centre x, centre y, width, height) in photograph pixels, inside the photograph.

  `aspect` is the output's width / height. Speeds are per frame, so a longer clip travels further, not faster: a pan
  moves 1-3% of the window's width a frame (slower where the photograph ends first) with a window of 45-70% of the
  largest that fits; a zoom scales the window by 1-2.5% a frame (at most 2.5x in all) around a fixed centre.
  """
  h, w = photo_hw
  full_w = min(w, h * aspect)  # the largest window of this aspect inside the photograph
  t = np.arange(num_frames, dtype=np.float64)
  kind, direction = motion.split()
  if kind == "pan":
    size = np.full(num_frames, rng.uniform(0.45, 0.7) * full_w)
    horizontal = direction in ("left", "right")
    room = (w - size[0]) if horizontal else (h - size[0] / aspect)  # travel of the window's near edge
    speed = min(rng.uniform(0.01, 0.03) * size[0], room / max(num_frames - 1, 1))
    travel = speed * (num_frames - 1)
    first = rng.uniform(0.0, max(room - travel, 0.0))
    along = first + speed * t if direction in ("right", "down") else first + travel - speed * t
    across_room = (h - size[0] / aspect) if horizontal else (w - size[0])
    across = np.full(num_frames, rng.uniform(0.0, across_room))
    left, top = (along, across) if horizontal else (across, along)
  else:
    rate = min(rng.uniform(1.01, 1.025), 2.5 ** (1 / max(num_frames - 1, 1)))
    large = rng.uniform(0.75, 1.0) * full_w
    steps = t if direction == "in" else (num_frames - 1) - t  # in: large -> small; out: small -> large
    size = large * rate ** -steps
    cx, cy = rng.uniform(large / 2, w - large / 2), rng.uniform(large / aspect / 2, h - large / aspect / 2)
    left, top = cx - size / 2, cy - size / aspect / 2
  return np.stack([left + size / 2, top + size / aspect / 2, size, size / aspect], axis=-1)


def render(photo: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [T, height, width, 3]: each window of `boxes` (from `windows`) resampled to the output size."""
  ph, pw = photo.shape[:2]
  out_w, out_h = SUPERSAMPLE * width, SUPERSAMPLE * height
  shrink = min(1.0, out_w / float(boxes[:, 2].max()))  # pre-shrink so no window is sampled below the output rate
  image = Image.fromarray(photo)
  if shrink < 1.0:
    image = image.resize((max(1, round(pw * shrink)), max(1, round(ph * shrink))), Image.LANCZOS)
  sx, sy = image.width / pw, image.height / ph
  frames = []
  for cx, cy, bw, bh in boxes:
    # Output pixel coordinate u maps to photograph coordinate left + u * bw / out_w (continuous, edges at integers).
    a, e = bw * sx / out_w, bh * sy / out_h
    c, f = (cx - bw / 2) * sx, (cy - bh / 2) * sy
    frame = image.transform((out_w, out_h), Image.AFFINE, (a, 0.0, c, 0.0, e, f), resample=Image.BICUBIC)
    frames.append(np.asarray(frame.resize((width, height), Image.BOX)))
  return np.stack(frames)


def photo_clip(name: str, motion: str, *, num_frames: int, height: int, width: int,
               rng: np.random.Generator, photo: np.ndarray | None = None) -> np.ndarray:
  """One clip of a photograph: uint8 [num_frames, height, width, 3]."""
  photo = load_photo(name) if photo is None else photo
  return render(photo, windows(photo.shape[:2], motion, num_frames, width / height, rng), height, width)


def write_photo_clips(directory: str, *, photos: Sequence[str] = TRAIN_PHOTOS, clips_per_photo: int = 6,
                      num_frames: int = 16, height: int = 64, width: int = 64, fps: int = 8,
                      seed: int = 0) -> list[str]:
  """Writes `clips_per_photo` clips of each photograph to DIRECTORY/NAME_KK.mp4 with a caption in NAME_KK.txt; returns
  the mp4 paths. A photograph's clips depend only on (seed, name, k), not on which other photographs are written.
  Odd sides are padded by one pixel (vidgen.media.write_video: H.264 needs even sides)."""
  from vidgen.media import write_video

  unknown = [p for p in photos if p not in PHOTOS]
  if unknown:
    raise ValueError(f"unknown photographs {unknown}; known: {sorted(PHOTOS)}")
  os.makedirs(directory, exist_ok=True)
  paths = []
  for name in photos:
    photo = load_photo(name)
    key = zlib.crc32(name.encode())
    first = int(np.random.default_rng([seed, key]).integers(len(MOTIONS)))  # motions cycle from a random one
    for k in range(clips_per_photo):
      motion = MOTIONS[(first + k) % len(MOTIONS)]
      clip = photo_clip(name, motion, num_frames=num_frames, height=height, width=width,
                        rng=np.random.default_rng([seed, key, k]), photo=photo)
      path = os.path.join(directory, f"{name}_{k:02d}.mp4")
      write_video(path, clip, fps=fps)
      with open(os.path.splitext(path)[0] + ".txt", "w", encoding="utf-8") as f:
        f.write(caption(name, motion) + "\n")
      paths.append(path)
  return paths


def _size(text: str) -> tuple[int, int]:
  try:
    h, w = (int(s) for s in text.lower().split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"--size must be HxW, e.g. 64x64, got {text!r}") from None
  if h < 1 or w < 1:
    raise argparse.ArgumentTypeError(f"--size must be positive, got {text!r}")
  return h, w


def main(argv: Sequence[str] | None = None) -> dict[str, list[str]]:
  parser = argparse.ArgumentParser(prog="python -m vidgen.data.photo_clips", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("directory", help="writes DIRECTORY/train/ (and DIRECTORY/held_out/ with --held-out)")
  parser.add_argument("--held-out", action="store_true", help="also write the held-out photographs' clips")
  parser.add_argument("--clips-per-photo", type=int, default=6)
  parser.add_argument("--frames", type=int, default=16)
  parser.add_argument("--size", type=_size, default=(64, 64), help="HxW of the frames")
  parser.add_argument("--fps", type=int, default=8)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.clips_per_photo < 1 or args.frames < 1 or args.fps < 1:
    parser.error("--clips-per-photo, --frames and --fps must be >= 1")
  splits = {"train": TRAIN_PHOTOS, **({"held_out": HELD_OUT_PHOTOS} if args.held_out else {})}
  written = {}
  for split, photos in splits.items():
    written[split] = write_photo_clips(os.path.join(args.directory, split), photos=photos,
                                       clips_per_photo=args.clips_per_photo, num_frames=args.frames,
                                       height=args.size[0], width=args.size[1], fps=args.fps, seed=args.seed)
    print(f"{len(written[split])} clips of {len(photos)} photographs in {os.path.join(args.directory, split)}")
  return written


__all__ = ["HELD_OUT_PHOTOS", "MOTIONS", "PHOTOS", "TRAIN_PHOTOS", "caption", "load_photo", "photo_clip",
           "write_photo_clips"]


if __name__ == "__main__":
  main()
