"""Calibrates the prompt-following reader's thresholds on rendered ground truth, never on model samples.

  python -m vidgen.data.shapes.calibrate [--clips 200] [--seed 0]

Renders dataset clips at the sizes the experiments train on, degrades them the ways a VAE and a sampler degrade clips,
measures every clip with `reader.clip_features`, and prints each feature's range per true shape and condition. Each
threshold is MARGIN = 2 x the worst ground-truth value of its feature (travel: the slowest clip / 2), so every rendered
clip passes with room to spare; the printed thresholds are the constants in `vidgen.data.shapes.reader`. The last table
measures clips that are not dataset clips (ellipses, a plus, a hexagon, a star, two discs, a lumpy disc, clips that
change color or size, static and diagonal motion) against those thresholds: they check the thresholds and set none.

Conditions (each clip drawn once per condition, severities uniform in the ranges):
  clean    the dataset's renders
  blur     Gaussian blur, sigma 1.2 pixels
  noise    Gaussian noise, std 8 levels
  color    25% toward gray, brightness x0.6, per-channel gain 0.9-1, background +12 levels
  warp     each shape rotated up to 15 degrees, sheared up to 0.1 and stretched up to 10% about its centre, its path
           tilted up to 5 degrees, and every frame jittered by 0.25 pixels (std)
  all      warp, blur sigma 0.5-1.2, 0-25% toward gray, brightness x0.6-1, gains 0.9-1, background +0-12, noise 2-8
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Callable

import numpy as np
from scipy import ndimage

from vidgen.data.shapes import reader
from vidgen.data.shapes.dataset import COLORS, DIRECTIONS, SHAPES, ShapesDataset

# The clip sizes the experiments train on: experiments/shapes_t2v.py (the README's main job) and shapes_vae.py.
GEOMETRIES = {
    "64x64x17 r0.14-0.25": dict(height=64, width=64, num_frames=17, min_radius=0.14, max_radius=0.25),
    "64x64x9 r0.09-0.20": dict(height=64, width=64, num_frames=9, min_radius=0.09, max_radius=0.2),
}
CONDITIONS = ("clean", "blur", "noise", "color", "warp", "all")
MARGIN = 2.0


def _centres(video: np.ndarray) -> np.ndarray:
  """Per-frame brightness centroid (y, x) of a clean clip: the centre of a circle, square or triangle. [T, 2]"""
  value = video.max(axis=-1).astype(np.float64)
  yy, xx = np.indices(value.shape[1:], dtype=np.float64)
  total = value.sum(axis=(1, 2))
  return np.stack([(value * yy).sum(axis=(1, 2)) / total, (value * xx).sum(axis=(1, 2)) / total], axis=1)


def warp(video: np.ndarray, *, angle: float = 0.0, shear: float = 0.0, stretch: float = 1.0, tilt: float = 0.0,
         jitter: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
  """Each frame's shape rotated by `angle` degrees, sheared and stretched along x about its own centre, the path tilted
  by `tilt` degrees and each frame shifted by Gaussian `jitter` pixels (drawn from `rng`): uint8 [T, H, W, 3]."""
  a = np.deg2rad(angle)
  rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
  forward = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([1.0, stretch])  # acts on (y, x)
  inverse = np.linalg.inv(forward)
  centres = _centres(video)
  moved = centres - centres[0]
  along = np.argmax(np.abs(moved[-1])) if len(moved) > 1 else 1
  shift = np.zeros_like(centres)
  shift[:, 1 - along] = np.tan(np.deg2rad(tilt)) * moved[:, along]
  if jitter:
    shift += rng.normal(0.0, jitter, shift.shape)
  out = np.empty(video.shape, np.float64)
  for t, frame in enumerate(video.astype(np.float64)):
    offset = centres[t] - inverse @ (centres[t] + shift[t])
    for c in range(3):
      out[t, ..., c] = ndimage.affine_transform(frame[..., c], inverse, offset=offset, order=1)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def random_warp(video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """The "warp" condition: rotation up to 15 degrees, shear up to 0.1, stretch up to 10%, path tilt up to 5 degrees,
  jitter 0.25 pixels."""
  return warp(video, angle=rng.uniform(-15.0, 15.0), shear=rng.uniform(-0.1, 0.1), stretch=rng.uniform(0.9, 1.1),
              tilt=rng.uniform(-5.0, 5.0), jitter=0.25, rng=rng)


def blur(video: np.ndarray, sigma: float) -> np.ndarray:
  return ndimage.gaussian_filter(video.astype(np.float64), sigma=(0, sigma, sigma, 0))


def recolor(video: np.ndarray, rng: np.random.Generator, *, gray: float, gain: float, background: float) -> np.ndarray:
  """`gray` of the way toward each pixel's gray level, brightness x `gain`, per-channel gains 0.9-1, + background."""
  v = video.astype(np.float64)
  v = (1.0 - gray) * v + gray * v.mean(axis=-1, keepdims=True)
  return v * gain * rng.uniform(0.9, 1.0, 3) + background


def to_uint8(video: np.ndarray) -> np.ndarray:
  return np.clip(np.round(video), 0, 255).astype(np.uint8)


def degrade(video: np.ndarray, condition: str, rng: np.random.Generator) -> np.ndarray:
  """One of CONDITIONS applied to a clean uint8 [T, H, W, 3] clip (see the module docstring)."""
  if condition == "clean":
    return video
  if condition == "blur":
    return to_uint8(blur(video, 1.2))
  if condition == "noise":
    return to_uint8(video + rng.normal(0.0, 8.0, video.shape))
  if condition == "color":
    return to_uint8(recolor(video, rng, gray=0.25, gain=0.6, background=12.0))
  if condition == "warp":
    return random_warp(video, rng)
  if condition == "all":
    v = blur(random_warp(video, rng), rng.uniform(0.5, 1.2))
    v = recolor(v, rng, gray=rng.uniform(0.0, 0.25), gain=rng.uniform(0.6, 1.0), background=rng.uniform(0.0, 12.0))
    return to_uint8(v + rng.normal(0.0, rng.uniform(2.0, 8.0), v.shape))
  raise ValueError(f"unknown condition {condition!r}; allowed: {CONDITIONS}")


def ground_truth(geometry: dict, count: int, seed: int) -> list:
  """The first `count` dataset clips of one geometry, drawn from every combination (nothing held out)."""
  dataset = ShapesDataset(split="train", seed=seed, **geometry)
  return [dataset[i] for i in range(count)]


# -- clips that are not dataset clips ------------------------------------------------------------------------------

def _in_polygon(y: np.ndarray, x: np.ndarray, vertices: np.ndarray) -> np.ndarray:
  """Even-odd rule: which points (y, x) lie inside the polygon of `vertices` [n, 2] (y, x)."""
  inside = np.zeros(y.shape, bool)
  for (y0, x0), (y1, x1) in zip(vertices, np.roll(vertices, -1, axis=0)):
    crosses = (y0 > y) != (y1 > y)
    x_at = x0 + (y - y0) * (x1 - x0) / np.where(y1 == y0, 1.0, y1 - y0)
    inside ^= crosses & (x < x_at)
  return inside


def _regular_polygon(radii: tuple[float, ...], count: int, angle: float = 0.0) -> np.ndarray:
  """Vertices (y, x) of a polygon alternating between `radii` around the origin, count * len(radii) in all."""
  n = count * len(radii)
  phi = angle + 2 * np.pi * np.arange(n) / n - np.pi / 2
  r = np.asarray([radii[i % len(radii)] for i in range(n)])
  return np.stack([r * np.sin(phi), r * np.cos(phi)], axis=1)


def _outline(name: str, r: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
  """inside(dy, dx) of an impostor outline of size r (pixels) centred at the origin."""
  if name.startswith("ellipse"):
    ratio = float(name.split()[1].split(":")[0])
    a, b = r * np.sqrt(ratio), r / np.sqrt(ratio)
    return lambda dy, dx: (dx / a) ** 2 + (dy / b) ** 2 <= 1.0
  if name == "plus":
    arm, half_width = 1.3 * r, 0.4 * r
    return lambda dy, dx: ((np.abs(dx) <= arm) & (np.abs(dy) <= half_width)) | (
        (np.abs(dy) <= arm) & (np.abs(dx) <= half_width))
  if name == "hexagon":
    vertices = _regular_polygon((1.05 * r,), 6)
    return lambda dy, dx: _in_polygon(dy, dx, vertices)
  if name == "star":
    vertices = _regular_polygon((1.4 * r, 0.55 * r), 5)
    return lambda dy, dx: _in_polygon(dy, dx, vertices)
  if name == "two discs":
    return lambda dy, dx: (np.hypot(dy, dx + 1.3 * r) <= 0.65 * r) | (np.hypot(dy, dx - 1.3 * r) <= 0.65 * r)
  if name == "touching discs":
    return lambda dy, dx: (np.hypot(dy, dx + 0.65 * r) <= 0.65 * r) | (np.hypot(dy, dx - 0.65 * r) <= 0.65 * r)
  if name == "lumpy disc":
    return lambda dy, dx: np.hypot(dy, dx) <= r * (1.0 + 0.1 * np.sin(5 * np.arctan2(dy, dx)))
  if name == "circle":
    return lambda dy, dx: np.hypot(dy, dx) <= r
  raise ValueError(f"unknown outline {name!r}")


def draw(outlines: list, centres: np.ndarray, colors: np.ndarray, height: int, width: int,
         supersample: int = 4) -> np.ndarray:
  """Frame t shows outlines[t] (an inside(dy, dx) function) at centres[t] (y, x) in colors[t] (RGB 0-255) on black,
  anti-aliased by supersampling: uint8 [T, H, W, 3]."""
  offsets = (np.arange(supersample) + 0.5) / supersample
  yy = (np.arange(height)[:, None] + offsets[None]).reshape(-1)
  xx = (np.arange(width)[:, None] + offsets[None]).reshape(-1)
  grid_y, grid_x = np.meshgrid(yy, xx, indexing="ij")
  frames = []
  for inside, (cy, cx), color in zip(outlines, centres, colors):
    mask = inside(grid_y - cy, grid_x - cx).astype(np.float64)
    coverage = mask.reshape(height, supersample, width, supersample).mean(axis=(1, 3))
    frames.append(coverage[..., None] * np.asarray(color, np.float64))
  return to_uint8(np.stack(frames))


# Each impostor and the attribute that must read "none" on it.
IMPOSTORS = {
    "ellipse 2:1": "shape", "ellipse 3:1": "shape", "plus": "shape", "hexagon": "shape", "star": "shape",
    "two discs": "shape", "touching discs": "shape", "lumpy disc": "shape", "growing circle": "shape",
    "circle turning from red to blue": "color", "static circle": "direction", "diagonal circle": "direction",
    "circle going there and back": "direction", "accelerating circle": "direction",
}


def impostor(name: str, *, size: float = 11.0, num_frames: int = 17, height: int = 64, width: int = 64,
             color: str = "yellow") -> np.ndarray:
  """A clip that is not a dataset clip (see IMPOSTORS), size `size` pixels, moving right at 1 pixel per frame unless
  its name says otherwise: uint8 [T, H, W, 3]."""
  t = np.arange(num_frames, dtype=np.float64)
  progress = t / max(num_frames - 1, 1)
  span = min(num_frames - 1, width - 3 * size)
  centres = np.stack([np.full_like(t, height / 2), width / 2 + (progress - 0.5) * span], axis=1)
  colors = np.tile(np.asarray(COLORS[color], np.float64), (num_frames, 1))
  shape = "circle"
  outlines = None
  if name == "growing circle":
    outlines = [_outline("circle", size * (0.75 + 0.5 * p)) for p in progress]
  elif name == "circle turning from red to blue":
    colors = np.where(progress[:, None] < 0.5, np.asarray(COLORS["red"]), np.asarray(COLORS["blue"]))
  elif name == "static circle":
    centres[:, 1] = width / 2
  elif name == "diagonal circle":
    centres[:, 0] = height / 2 + (progress - 0.5) * span
  elif name == "circle going there and back":
    centres[:, 1] = width / 2 + (0.5 - np.abs(progress - 0.5)) * span - span / 4
  elif name == "accelerating circle":
    centres[:, 1] = width / 2 + (progress ** 3 - 0.5) * span
  elif name in IMPOSTORS:
    shape = name
  else:
    raise ValueError(f"unknown impostor {name!r}; allowed: {list(IMPOSTORS)}")
  if outlines is None:
    outlines = [_outline(shape, size)] * num_frames
  return draw(outlines, centres, colors, height, width)


# -- measurement and thresholds ------------------------------------------------------------------------------------

def _up(x: float) -> float:
  """x rounded up to two significant digits (a threshold never below what it was computed from)."""
  if x <= 0 or not np.isfinite(x):
    return float(x)
  unit = 10.0 ** (np.floor(np.log10(x)) - 1)
  return round(float(np.ceil(x / unit - 1e-9) * unit), 12)


def _down(x: float) -> float:
  if x <= 0 or not np.isfinite(x):
    return float(x)
  unit = 10.0 ** (np.floor(np.log10(x)) - 1)
  return round(float(np.floor(x / unit + 1e-9) * unit), 12)


# (reader constant, what it bounds, the per-clip value, "max" or "min"): the features that thresholds are set on.
_FEATURES = (
    ("MAX_ANISOTROPY", "anisotropy", lambda f, clip: f.anisotropy, "max"),
    ("MAX_RESIDUAL", "outline residual to its own ideal", lambda f, clip: f.residual[clip.shape], "max"),
    ("MAX_SHAPE_DISAGREEMENT", "frames whose best ideal is another shape", lambda f, clip: f.shape_disagreement,
     "max"),
    ("MAX_SIZE_CHANGE", "largest / smallest radius - 1", lambda f, clip: f.size_change, "max"),
    ("MAX_COLOR_DEVIATION", "mean color's largest channel difference from its pattern",
     lambda f, clip: f.color_deviation, "max"),
    ("MAX_COLOR_DISAGREEMENT", "frames whose own nearest color is another one", lambda f, clip: f.color_disagreement,
     "max"),
    ("MIN_TRAVEL", "travel along the axis, fraction of the shorter side", lambda f, clip: f.travel, "min"),
    ("MAX_OFF_AXIS", "speed across the axis / along it", lambda f, clip: f.off_axis, "max"),
    ("MAX_WOBBLE", "RMS distance of the centroids from the fitted line, pixels", lambda f, clip: f.wobble, "max"),
)


@dataclasses.dataclass
class Measurements:
  """Features of every ground-truth clip: moving[(geometry, condition)] = [(clip, features)], and static[...] the
  travel of the same clips frozen at their first frame."""
  moving: dict
  static: dict


def measure(clips_per_set: int, seed: int) -> Measurements:
  moving, static = {}, {}
  for g, (geometry_name, geometry) in enumerate(GEOMETRIES.items()):
    clips = ground_truth(geometry, clips_per_set, seed)
    for c, condition in enumerate(CONDITIONS):
      rows, frozen = [], []
      for i, clip in enumerate(clips):
        rng = np.random.default_rng([seed, g, c, i])
        rows.append((clip, reader.clip_features(degrade(clip.video, condition, rng))))
        if i % 2 == 0:  # half as many static clips: they only bound the travel of a shape that does not move
          still = np.repeat(clip.video[:1], len(clip.video), axis=0)
          frozen.append(reader.clip_features(degrade(still, condition, rng)).travel)
      moving[geometry_name, condition] = rows
      static[geometry_name, condition] = frozen
  return Measurements(moving, static)


def thresholds(m: Measurements) -> dict[str, float | dict[str, float]]:
  """Each reader constant: MARGIN x the worst ground-truth value (MIN_TRAVEL: the slowest clip / MARGIN)."""
  out: dict = {}
  for constant, _, value, kind in _FEATURES:
    if constant == "MAX_RESIDUAL":
      out[constant] = {s: _up(MARGIN * max(value(f, clip) for rows in m.moving.values() for clip, f in rows
                                           if clip.shape == s)) for s in SHAPES}
    elif kind == "max":
      out[constant] = _up(MARGIN * max(value(f, clip) for rows in m.moving.values() for clip, f in rows))
    else:
      out[constant] = _down(min(value(f, clip) for rows in m.moving.values() for clip, f in rows) / MARGIN)
  return out


def _range(values) -> str:
  values = list(values)
  return f"{min(values):.4f}-{max(values):.4f}" if values else "-"


def rejections(f: reader.ClipFeatures | None, t: dict) -> list[str]:
  """Which thresholds `t` a clip's features fail (what makes the reader say "none" somewhere)."""
  if f is None:
    return ["no foreground"]
  out = []
  if f.blobs > 1:
    out.append(f"{f.blobs} blobs")
  if f.read_fraction < reader._MIN_READ_FRACTION:
    out.append(f"shape in {f.read_fraction:.0%} of frames")
  checks = [("anisotropy", f.anisotropy, t["MAX_ANISOTROPY"]),
            (f"{f.best_shape} residual", f.residual[f.best_shape], t["MAX_RESIDUAL"][f.best_shape]),
            ("shape disagreement", f.shape_disagreement, t["MAX_SHAPE_DISAGREEMENT"]),
            ("size change", f.size_change, t["MAX_SIZE_CHANGE"]),
            ("color deviation", f.color_deviation, t["MAX_COLOR_DEVIATION"]),
            ("color disagreement", f.color_disagreement, t["MAX_COLOR_DISAGREEMENT"]),
            ("off-axis", f.off_axis, t["MAX_OFF_AXIS"]), ("wobble", f.wobble, t["MAX_WOBBLE"])]
  out += [f"{name} {v:.3f} > {limit:g}" for name, v, limit in checks if v > limit]
  if f.travel < t["MIN_TRAVEL"]:
    out.append(f"travel {f.travel:.3f} < {t['MIN_TRAVEL']:g}")
  return out


def reader_thresholds() -> dict:
  return {constant: getattr(reader, constant) for constant, *_ in _FEATURES}


def report(m: Measurements, chosen: dict, clips_per_set: int, seed: int) -> None:
  print(f"Ground truth: {clips_per_set} dataset clips per geometry and condition (seed {seed}), every combination; "
        f"ranges per true shape (min-max).")
  width = max(len(k) for k in GEOMETRIES) + 2
  for constant, label, value, kind in _FEATURES:
    print(f"\n{constant}: {label}")
    print(f"  {'geometry':{width}s}{'condition':10s}" + "".join(f"{s:17s}" for s in SHAPES))
    for (geometry, condition), rows in m.moving.items():
      cells = [_range(value(f, clip) for clip, f in rows if clip.shape == s) for s in SHAPES]
      print(f"  {geometry:{width}s}{condition:10s}" + "".join(f"{cell:17s}" for cell in cells))
    if constant == "MAX_RESIDUAL":
      for s in SHAPES:
        worst = max(value(f, clip) for rows in m.moving.values() for clip, f in rows if clip.shape == s)
        nearest = min(min(f.residual[o] for o in SHAPES if o != s)
                      for rows in m.moving.values() for clip, f in rows if clip.shape == s)
        print(f"  {s}: worst {worst:.4f} -> threshold {chosen[constant][s]:g}; the nearest other ideal's residual "
              f"on these clips is >= {nearest:.4f}")
    elif kind == "max":
      worst = max(value(f, clip) for rows in m.moving.values() for clip, f in rows)
      print(f"  worst {worst:.4f} -> threshold {chosen[constant]:g}")
    else:
      worst = min(value(f, clip) for rows in m.moving.values() for clip, f in rows)
      still = max(v for values in m.static.values() for v in values)
      print(f"  slowest clip {worst:.4f} -> threshold {chosen[constant]:g}; the same clips frozen (no motion) "
            f"travel <= {still:.4f}, {chosen[constant] / max(still, 1e-12):.1f}x below the threshold")
  every = [(clip, f) for rows in m.moving.values() for clip, f in rows]
  print(f"\nOn all {len(every)} clips: blobs per frame {_range(f.blobs for _, f in every)}, frames read "
        f"{_range(f.read_fraction for _, f in every)}; smallest residual on the true shape "
        f"{sum(f.best_shape == clip.shape for clip, f in every)}/{len(every)}, nearest color the true one "
        f"{sum(f.color == clip.color for clip, f in every)}/{len(every)}.")


def report_readings(m: Measurements, t: dict) -> None:
  """Accuracy of the reader, with thresholds `t`, on the measured ground truth."""
  print("\nReadings with these thresholds (all three attributes right):")
  for (geometry, condition), rows in m.moving.items():
    right = sum(not rejections(f, t) and f.best_shape == clip.shape and f.color == clip.color
                and DIRECTIONS[clip.direction][f.axis] == f.sign for clip, f in rows)
    print(f"  {geometry:24s}{condition:10s}{right}/{len(rows)}")


def report_impostors(t: dict, seed: int) -> None:
  print("\nNot dataset clips (64x64, 17 frames; size = radius of the circle of comparison, pixels): what fails")
  for name, attribute in IMPOSTORS.items():
    for size in (9.0, 12.0):
      for c, condition in enumerate(("clean", "blur", "all")):
        rng = np.random.default_rng([seed, c, int(size)])
        f = reader.clip_features(degrade(impostor(name, size=size), condition, rng))
        failed = rejections(f, t)
        print(f"  {name:32s}{size:4.0f} {condition:6s} must fail {attribute:9s}: {'; '.join(failed) or 'NOTHING'}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--clips", type=int, default=200, help="clips per geometry and condition")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  m = measure(args.clips, args.seed)
  chosen = thresholds(m)
  report(m, chosen, args.clips, args.seed)
  report_readings(m, chosen)
  report_impostors(chosen, args.seed)
  print("\nThresholds (vidgen/data/shapes/reader.py):")
  current = reader_thresholds()
  for constant, value in chosen.items():
    note = "" if current[constant] == value else f"   <- reader.py has {current[constant]}"
    print(f"  {constant} = {value}{note}")


if __name__ == "__main__":
  main()
