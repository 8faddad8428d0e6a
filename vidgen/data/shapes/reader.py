"""Prompt-following accuracy on the shapes data: read color, shape and direction back from a generated clip, or say
that the clip shows none of the dataset's.

A text-to-video model trained on `vidgen.data.shapes` is judged by generating a clip per caption and checking that the
clip shows the asked-for color, shape and motion. The reader is deterministic image analysis, not a learned classifier,
so the score needs no weights and cannot inherit a classifier's blind spots. It reads an attribute only where the clip
looks like a dataset clip in that respect and reads "none" (always wrong) otherwise: one shape, of constant size,
outline and color, whose outline matches an ideal circle, square or triangle, moving in a straight line along one axis
at constant speed. Every threshold comes from rendered ground truth, clean and degraded the way a VAE and a sampler
degrade clips (blur, noise, dimming, color shift, slight rotation, shear and stretch, jitter): `python -m
vidgen.data.shapes.calibrate` renders those sets and prints the features' ranges and the thresholds below.

Per frame: the brightness (max over channels) is lightly smoothed; background and noise are estimated robustly
(median, MAD); the foreground is what lies above half-way from background to peak (the 50% level of a blurred edge stays
where the edge was); frames without a clear foreground are skipped. On the largest foreground component:
  blobs       components with at least an eighth of its area; a dataset frame has one.
  anisotropy  sqrt of the ratio of the eigenvalues of the second-moment matrix, minus 1: 0 for a circle, a square and
              an equilateral triangle at any rotation, 1 for a 2:1 ellipse.
  outline     the radial profile r(phi): the outermost 50% crossing along 90 rays from the centroid, in coordinates
              whitened by the second moments (which undoes any shear or stretch of these three shapes exactly), and
              for each shape the RMS of log r(phi) - log ideal(phi - theta) at the best rotation theta, the scale
              removed: the residual to the best-fitting ideal circle, square or triangle.
  radius      sqrt(area / pi) of that outline.
  color       brightness-weighted mean color above the per-channel background, normalized by its largest channel.
Over the clip (frames with a foreground):
  shape       the ideal with the smallest median residual, if that residual is below its threshold, every frame's own
              best ideal is the same, every frame has one blob (and at least half the frames a foreground), the
              median anisotropy is low and the radius constant; else "none".
  color       the nearest of the 7 on/off channel patterns to the mean color, if close enough and every frame's own
              nearest pattern is the same; else "none". A dataset with extra colors passes its `palette`: each
              color's pattern is its (r, g, b) over its largest level, and must stand further than the deviation
              threshold from every other pattern (brightness is not read: gains and dimming would change it).
  direction   a least-squares line through the centroids: the axis and sign of its slope, if the clip travels far
              enough, little across that axis, and the centroids stay on the line (constant velocity); else "none".
The calibration covers the experiments' 64x64 clips with shapes of 0.09-0.25 of the frame (radius 5.8-16 pixels);
much smaller shapes (such as the 32x32 smoke-test runs draw) are outside it, and blurred, they may read "none".
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np
from scipy import ndimage

from vidgen.data.shapes.dataset import COLORS, SHAPES, parse_combination

NONE = "none"  # the reading where nothing can be read, or what is there is not one of the dataset's values

# Brightness is smoothed with this Gaussian (pixels) before anything else: it halves pixel noise and keeps edges.
_SMOOTH_SIGMA = 0.5
# A frame holds a shape when its peak rises above the background by at least this many uint8 levels and by this many
# noise standard deviations; the peak is the 3rd brightest pixel so a single hot pixel cannot fake a shape.
_MIN_CONTRAST = 16.0
_MIN_CONTRAST_SIGMAS = 5.0
_PEAK_RANK = 3
_FOREGROUND_LEVEL = 0.5
# Moments and color weights are taken over the largest component grown by this many pixels (its blurred rim).
_SUPPORT_GROW = 2
# A second component counts as a second shape from this fraction of the largest one's area (smaller specks are
# sampler noise, not objects).
_MIN_BLOB_FRACTION = 0.125
_PROFILE_ANGLES = 90
_PROFILE_STEP = 0.25  # pixels (whitened) between samples along a ray
# Shape and direction need a foreground in at least this fraction of the frames (frames that fade out are skipped).
_MIN_READ_FRACTION = 0.5

# Thresholds: twice the worst value on rendered, degraded ground truth; `python -m vidgen.data.shapes.calibrate`.
MAX_ANISOTROPY = 0.3
MAX_RESIDUAL = {"circle": 0.024, "square": 0.065, "triangle": 0.14}
MAX_SHAPE_DISAGREEMENT = 0.0  # fraction of frames whose best ideal is another shape
MAX_SIZE_CHANGE = 0.066  # largest / smallest radius over the clip, minus 1
MAX_COLOR_DEVIATION = 0.4  # largest channel difference of the normalized mean color from its pattern
MAX_COLOR_DISAGREEMENT = 0.0  # fraction of frames whose own nearest color is another one
MIN_TRAVEL = 0.055  # motion along the axis over the whole clip, fraction of the frame's shorter side
MAX_OFF_AXIS = 0.25  # speed across the axis / speed along it
MAX_WOBBLE = 1.1  # RMS distance of the centroids from the fitted line, pixels

_COLOR_NAMES = tuple(COLORS)
_COLOR_PATTERNS = np.asarray([COLORS[c] for c in _COLOR_NAMES], np.float64) / 255.0  # [7, 3] of 0/1
_PHI = 2 * np.pi * np.arange(_PROFILE_ANGLES) / _PROFILE_ANGLES


def color_patterns(palette: dict[str, tuple[int, int, int]] | None = None) -> tuple[tuple[str, ...], np.ndarray]:
  """(names, patterns [n, 3]) the color reading compares with: the dataset's 7 on/off patterns, or those of `palette`
  (name -> (r, g, b)), each divided by its largest level. ValueError for patterns closer than MAX_COLOR_DEVIATION to
  each other (the reader could not tell them apart)."""
  if palette is None:
    return _COLOR_NAMES, _COLOR_PATTERNS
  names = tuple(palette)
  levels = np.asarray([palette[c] for c in names], np.float64)
  if levels.ndim != 2 or levels.shape[1] != 3 or np.any(levels.max(axis=1) <= 0):
    raise ValueError(f"palette must map names to (r, g, b) levels, not all 0, got {palette}")
  patterns = levels / levels.max(axis=1, keepdims=True)
  for i in range(len(names)):
    for j in range(i):
      gap = float(np.max(np.abs(patterns[i] - patterns[j])))
      if gap <= MAX_COLOR_DEVIATION:
        raise ValueError(f"palette colors {names[j]!r} and {names[i]!r} differ by {gap:.2f} in their largest channel "
                         f"(as fractions of their brightest one); the reader tells colors apart only from "
                         f"{MAX_COLOR_DEVIATION}")
  return names, patterns


def _ideal_log_profiles() -> dict[str, np.ndarray]:
  """log r(phi) of each ideal shape at each rotation (1 degree steps over its symmetry period): [rotations, angles]."""
  square_theta = np.deg2rad(np.arange(90.0))[:, None]
  d = _PHI[None] - square_theta
  square = -np.log(np.maximum(np.abs(np.cos(d)), np.abs(np.sin(d))))
  triangle_theta = np.deg2rad(np.arange(120.0))[:, None]
  edge_normals = [np.cos(_PHI[None] - triangle_theta - 2 * np.pi * k / 3) for k in range(3)]
  triangle = -np.log(np.max(np.stack(edge_normals), axis=0))
  return {"circle": np.zeros((1, _PROFILE_ANGLES)), "square": square, "triangle": triangle}


_IDEALS = _ideal_log_profiles()


@dataclasses.dataclass(frozen=True)
class ClipAttributes:
  """What a clip shows; each field is one of the dataset's names, or "none" where nothing can be read."""
  color: str
  shape: str
  direction: str


@dataclasses.dataclass(frozen=True)
class FrameFeatures:
  centroid: tuple[float, float]  # (y, x) in pixels, foreground-weighted
  blobs: int  # foreground components of at least _MIN_BLOB_FRACTION of the largest one's area
  anisotropy: float  # sqrt(largest / smallest second-moment eigenvalue) - 1
  radius: float  # sqrt(area / pi) of the outline, pixels
  residual: dict[str, float]  # per shape: RMS log-ratio of the outline to the best-fitting ideal (inf: no outline)
  color_sum: np.ndarray  # [3] brightness-weighted sum of color above the per-channel background
  weight: float  # the sum of the weights in color_sum


@dataclasses.dataclass(frozen=True)
class ClipFeatures:
  """The clip-level measurements the decision reads (see the module docstring); `calibrate` prints their ranges."""
  num_frames: int
  read_fraction: float  # fraction of frames with a foreground
  blobs: int  # most blobs in any frame
  anisotropy: float  # median over frames
  residual: dict[str, float]  # median over frames, per shape
  best_shape: str  # smallest median residual
  shape_disagreement: float  # fraction of frames whose own smallest residual is another shape
  size_change: float  # max / min radius - 1
  color: str  # nearest pattern to the clip's mean color
  color_deviation: float  # largest channel difference from that pattern
  color_disagreement: float  # fraction of frames whose own nearest pattern is another color
  travel: float  # along the main axis over the clip, fraction of the shorter side
  axis: int  # 0: y (up / down), 1: x (left / right)
  sign: int  # +1: down / right
  off_axis: float  # |speed across| / |speed along|
  wobble: float  # RMS distance of the centroids from the fitted line, pixels


def _profile(field: np.ndarray, centre: np.ndarray, whiten_inverse: np.ndarray, reach: float) -> np.ndarray | None:
  """Outermost zero crossing of `field` (positive inside) along _PROFILE_ANGLES rays from `centre` (y, x) in
  whitened coordinates (a ray of whitened length rho reaches centre + whiten_inverse @ (x, y) * rho): [angles] radii,
  or None when the centre itself lies outside (no star-shaped outline around it)."""
  rho = np.arange(0.0, reach, _PROFILE_STEP)
  dirs = whiten_inverse @ np.stack([np.cos(_PHI), np.sin(_PHI)])  # [2 (x, y), angles]
  xs = centre[1] + dirs[0][:, None] * rho[None]
  ys = centre[0] + dirs[1][:, None] * rho[None]
  f = ndimage.map_coordinates(field, [ys.ravel(), xs.ravel()], order=1, mode="constant", cval=-1.0)
  f = f.reshape(_PROFILE_ANGLES, rho.size)
  inside = f > 0
  if not inside[:, 0].all():
    return None
  last = rho.size - 1 - np.argmax(inside[:, ::-1], axis=1)
  nxt = np.minimum(last + 1, rho.size - 1)
  rows = np.arange(_PROFILE_ANGLES)
  f0, f1 = f[rows, last], f[rows, nxt]
  frac = np.where(nxt > last, f0 / np.maximum(f0 - f1, 1e-12), 0.0)
  return rho[last] + frac * _PROFILE_STEP


def frame_features(frame: np.ndarray) -> FrameFeatures | None:
  """One uint8 [H, W, 3] frame -> its foreground's measurements, or None when no shape stands out."""
  rgb = frame.astype(np.float64)
  channel_background = np.median(rgb.reshape(-1, 3), axis=0)
  value = ndimage.gaussian_filter(rgb.max(axis=-1), _SMOOTH_SIGMA)
  background = np.median(value)
  noise = 1.4826 * np.median(np.abs(value - background))
  flat = value.ravel()
  peak = np.partition(flat, flat.size - _PEAK_RANK)[flat.size - _PEAK_RANK] if flat.size >= _PEAK_RANK else flat.max()
  contrast = peak - background
  if contrast < max(_MIN_CONTRAST, _MIN_CONTRAST_SIGMAS * noise):
    return None
  level = background + _FOREGROUND_LEVEL * contrast
  # 8-connectivity keeps a thin apex attached to its body.
  labels, count = ndimage.label(value > level, structure=np.ones((3, 3), bool))
  if count == 0:
    return None
  areas = np.bincount(labels.ravel())[1:]
  main = 1 + int(np.argmax(areas))
  blobs = int(np.sum(areas >= _MIN_BLOB_FRACTION * areas.max()))
  # Everything below runs on a window around the component and its rim, with coordinates of the whole frame.
  pad = _SUPPORT_GROW + 2
  rows, cols = ndimage.find_objects(labels)[main - 1]
  window = (slice(max(rows.start - pad, 0), rows.stop + pad), slice(max(cols.start - pad, 0), cols.stop + pad))
  origin = np.array([window[0].start, window[1].start], np.float64)
  value, rgb = value[window], rgb[window]
  blob = labels[window] == main
  support = ndimage.binary_dilation(blob, iterations=_SUPPORT_GROW)
  weights = np.where(support, np.clip((value - background) / contrast, 0.0, 1.0), 0.0)
  p = weights / weights.sum()
  yy, xx = np.indices(weights.shape, dtype=np.float64)
  cy, cx = float((p * yy).sum()), float((p * xx).sum())
  dy, dx = yy - cy, xx - cx
  cov = np.array([[(p * dx * dx).sum(), (p * dx * dy).sum()], [(p * dx * dy).sum(), (p * dy * dy).sum()]])
  eigval, eigvec = np.linalg.eigh(cov)
  eigval = np.maximum(eigval, 1e-6)
  anisotropy = float(np.sqrt(eigval[1] / eigval[0]) - 1.0)
  # Whitening with unit determinant keeps areas: radii in whitened units give the outline's true area.
  root = eigvec @ np.diag(np.sqrt(eigval)) @ eigvec.T / np.prod(eigval) ** 0.25

  # Inside the component (and its rim) the field is the brightness above the 50% level; elsewhere below zero, so a
  # neighbouring blob cannot extend the outline.
  field = np.where(support, value - level, -contrast)
  reach = 4.0 * np.sqrt(eigval[1]) + 4.0
  radii = _profile(field, np.array([cy, cx]), root, reach)
  if radii is None or np.any(radii <= 0):
    residual = {s: float("inf") for s in SHAPES}
    radius = float(np.sqrt(blob.sum() / np.pi))
  else:
    log_r = np.log(radii)
    residual = {s: float(np.min(np.std(log_r[None] - ideal, axis=1))) for s, ideal in _IDEALS.items()}
    radius = float(np.sqrt(np.mean(radii ** 2)))

  # Color from the component only (not its rim), weighted by brightness, so the saturated interior dominates.
  color_weights = np.where(blob, weights, 0.0)
  color_sum = np.tensordot(color_weights, rgb - channel_background, axes=([0, 1], [0, 1]))
  return FrameFeatures((cy + origin[0], cx + origin[1]), blobs, anisotropy, radius, residual, color_sum,
                       float(color_weights.sum()))


def _check_video(video) -> np.ndarray:
  video = np.asarray(video)
  if video.dtype != np.uint8:
    raise ValueError(f"video must be uint8 [T, H, W, 3] (convert model outputs in [-1, 1] with vidgen.data.to_uint8), "
                     f"got dtype {video.dtype} with shape {video.shape}")
  if video.ndim != 4 or video.shape[-1] != 3 or 0 in video.shape:
    raise ValueError(f"video must be uint8 [T, H, W, 3] with T, H, W >= 1, got shape {video.shape}")
  return video


def _nearest_color(color_sum: np.ndarray, weight: float, colors: tuple[tuple[str, ...], np.ndarray] | None = None
                   ) -> tuple[str, float]:
  """(nearest pattern, largest channel difference from it) of a normalized mean color; (none, inf) for no color.
  `colors`: (names, patterns) from `color_patterns` (default: the dataset's 7)."""
  names, patterns = (_COLOR_NAMES, _COLOR_PATTERNS) if colors is None else colors
  mean = color_sum / max(weight, 1e-12)
  if weight <= 0 or mean.max() <= 0:
    return NONE, float("inf")
  chroma = np.clip(mean / mean.max(), 0.0, 1.0)
  deviation = np.max(np.abs(patterns - chroma), axis=1)
  best = int(np.argmin(deviation))
  return names[best], float(deviation[best])


def _motion(times: np.ndarray, centroids: np.ndarray, num_frames: int, side: int) -> tuple[float, int, int, float,
                                                                                          float]:
  """(travel, axis, sign, off_axis, wobble) of a least-squares line through the centroids (see ClipFeatures)."""
  if len(times) < 2:
    return 0.0, 0, 0, float("inf"), float("inf")
  t = times - times.mean()
  centred = centroids - centroids.mean(axis=0)
  slopes = t @ centred / (t @ t)  # [2]: (dy, dx) per frame
  axis = int(np.argmax(np.abs(slopes)))
  along, across = abs(slopes[axis]), abs(slopes[1 - axis])
  residual = centred - t[:, None] * slopes[None]
  wobble = float(np.sqrt(np.mean(np.sum(residual ** 2, axis=1))))
  off_axis = across / along if along > 0 else float("inf")
  return float(along * (num_frames - 1) / side), axis, int(np.sign(slopes[axis])), float(off_axis), wobble


def clip_features(video: np.ndarray, palette: dict[str, tuple[int, int, int]] | None = None) -> ClipFeatures | None:
  """The measurements of one uint8 [T, H, W, 3] clip, or None when no frame has a foreground. `palette`: the colors
  to read (name -> (r, g, b)); default the dataset's 7."""
  video = _check_video(video)
  colors = color_patterns(palette)
  num_frames, height, width, _ = video.shape
  frames, times = [], []
  for t in range(num_frames):
    features = frame_features(video[t])
    if features is not None:
      frames.append(features)
      times.append(t)
  if not frames:
    return None
  residual = {s: float(np.median([f.residual[s] for f in frames])) for s in SHAPES}
  best_shape = min(SHAPES, key=lambda s: residual[s])
  frame_best = [min(SHAPES, key=lambda s: f.residual[s]) for f in frames]
  radii = np.asarray([f.radius for f in frames])
  color, deviation = _nearest_color(sum(f.color_sum for f in frames), sum(f.weight for f in frames), colors)
  frame_colors = [_nearest_color(f.color_sum, f.weight, colors)[0] for f in frames]
  travel, axis, sign, off_axis, wobble = _motion(np.asarray(times, np.float64),
                                                 np.asarray([f.centroid for f in frames]), num_frames,
                                                 min(height, width))
  return ClipFeatures(
      num_frames=num_frames, read_fraction=len(frames) / num_frames, blobs=max(f.blobs for f in frames),
      anisotropy=float(np.median([f.anisotropy for f in frames])), residual=residual, best_shape=best_shape,
      shape_disagreement=float(np.mean([b != best_shape for b in frame_best])),
      size_change=float(radii.max() / max(radii.min(), 1e-12) - 1.0), color=color, color_deviation=deviation,
      color_disagreement=float(np.mean([c != color for c in frame_colors])), travel=travel, axis=axis, sign=sign,
      off_axis=off_axis, wobble=wobble)


# Which failed checks make each attribute "none" (the names `failed_checks` returns).
_SHAPE_CHECKS = frozenset({"shape in too few frames", "more than one blob", "anisotropy", "outline residual",
                           "shape disagreement", "size change"})
_COLOR_CHECKS = frozenset({"color deviation", "color disagreement"})
_DIRECTION_CHECKS = frozenset({"shape in too few frames", "more than one blob", "travel", "off-axis", "wobble"})


def failed_checks(features: ClipFeatures | None) -> list[str]:
  """The names of the checks a clip fails, each a way in which it is not a dataset clip ([] for a dataset clip)."""
  if features is None:
    return ["no foreground"]
  f = features
  checks = {
      "shape in too few frames": f.read_fraction < _MIN_READ_FRACTION,
      "more than one blob": f.blobs != 1,
      "anisotropy": f.anisotropy > MAX_ANISOTROPY,
      "outline residual": f.residual[f.best_shape] > MAX_RESIDUAL[f.best_shape],
      "shape disagreement": f.shape_disagreement > MAX_SHAPE_DISAGREEMENT,
      "size change": f.size_change > MAX_SIZE_CHANGE,
      "color deviation": f.color_deviation > MAX_COLOR_DEVIATION,
      "color disagreement": f.color_disagreement > MAX_COLOR_DISAGREEMENT,
      "travel": f.travel < MIN_TRAVEL,
      "off-axis": f.off_axis > MAX_OFF_AXIS,
      "wobble": f.wobble > MAX_WOBBLE,
  }
  return [name for name, failed in checks.items() if failed]


def decide(features: ClipFeatures | None) -> ClipAttributes:
  """The reading of a clip's measurements: each attribute, or "none" where the clip is not a dataset clip in it."""
  if features is None:
    return ClipAttributes(NONE, NONE, NONE)
  f, failed = features, set(failed_checks(features))
  color = NONE if failed & _COLOR_CHECKS else f.color
  shape = NONE if failed & _SHAPE_CHECKS else f.best_shape
  direction = NONE
  if not failed & _DIRECTION_CHECKS:
    direction = ("down" if f.sign > 0 else "up") if f.axis == 0 else ("right" if f.sign > 0 else "left")
  return ClipAttributes(color, shape, direction)


def analyze_clip(video: np.ndarray, palette: dict[str, tuple[int, int, int]] | None = None) -> ClipAttributes:
  """Reads color, shape and direction from one clip, uint8 [T, H, W, 3] (T == 1 gives direction "none"); `palette`:
  as `clip_features`."""
  return decide(clip_features(video, palette))


def prompt_following(videos, prompts: Sequence[str], palette: dict[str, tuple[int, int, int]] | None = None) -> dict:
  """Accuracy of generated clips against their captions.

  Args:
    videos: uint8 [B, T, H, W, 3], or a list of B uint8 [T, H, W, 3] (clips may differ in size).
    prompts: B captions, "a red circle moving left" (or "red circle left"; see `parse_combination`).
    palette: the colors prompts may name and clips are read against (name -> (r, g, b)); default the dataset's 7.

  Returns:
    {"count": B, "color", "shape", "direction", "all": fraction of clips with that attribute (all three) right,
     "correct": the same as counts, "abstained": {"color", "shape", "direction", "any"}: clips read as "none" there,
     "failed_checks": {check: clips failing it} (why clips abstained, most frequent first),
     "examples": per clip {"prompt", "predicted": {"color", "shape", "direction"}, "correct": {"color", "shape",
     "direction", "all"} (bools), "failed_checks": [names]}}. A "none" reading is always wrong.
  """
  if isinstance(videos, np.ndarray) and videos.ndim != 5:
    raise ValueError(f"videos must be uint8 [B, T, H, W, 3] or a list of [T, H, W, 3], got shape {videos.shape}")
  videos = list(videos)
  prompts = list(prompts)
  if len(videos) != len(prompts):
    raise ValueError(f"got {len(videos)} videos but {len(prompts)} prompts; need one prompt per video")
  if not videos:
    raise ValueError("need at least one video and prompt to measure prompt following, got none")
  keys = ("color", "shape", "direction")
  examples = []
  names = color_patterns(palette)[0]
  for video, prompt in zip(videos, prompts):
    expected = dict(zip(keys, parse_combination(prompt, names)))
    features = clip_features(video, palette)
    predicted = dataclasses.asdict(decide(features))
    correct = {k: predicted[k] == expected[k] for k in keys}
    correct["all"] = all(correct.values())
    examples.append({"prompt": prompt, "predicted": predicted, "correct": correct,
                     "failed_checks": failed_checks(features)})
  counts = {k: int(sum(e["correct"][k] for e in examples)) for k in (*keys, "all")}
  abstained = {k: int(sum(e["predicted"][k] == NONE for e in examples)) for k in keys}
  abstained["any"] = int(sum(NONE in e["predicted"].values() for e in examples))
  failed = collections.Counter(name for e in examples for name in e["failed_checks"])
  result: dict = {k: counts[k] / len(examples) for k in (*keys, "all")}
  result.update(count=len(examples), correct=counts, abstained=abstained, failed_checks=dict(failed.most_common()),
                examples=examples)
  return result
