"""The embedded default dataset: captioned moving shapes, generated procedurally (no download).

Each clip shows one shape on a black background moving in a straight line: uint8 `[T, H, W, 3]`, caption
`"a {color} {shape} moving {direction}"` and a class id `(color, shape, direction)` flattened. Clip `i` of a split is a
pure function of `(seed, split, i)`, so any position of the stream can be regenerated: an iterator's whole state is
the index of its next example, which makes resumed runs continue the exact stream.

Shapes are drawn with a one-pixel anti-aliased edge (coverage from a signed distance), so motion by fractions of a
pixel is visible and the frames look like rendered video rather than aliased masks.

Extra colors (opt-in, for teaching a trained model a new concept): `extra_colors={"orange": (255, 128, 0)}` adds
colors to the palette (their names become caption words, appended to the tokenizer's vocabulary) and
`extra_color_fraction` sets the share of clips drawn with one of them (default: uniform over every combination).
Without them every clip, caption and class id is exactly what it was before they existed; extra-color clips have no
class (label -1): they are for captioned runs.

Splits:
  train       combinations not held out, seed stream 0
  validation  combinations not held out, seed stream 1 (unseen clips of seen combinations)
  held_out    only the held-out combinations, seed stream 2 (for generalization to unseen combinations)
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import numpy as np

from vidgen.data.crops import content_crop, crop_offsets

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {  # (dy, dx) in image coordinates
    "left": (0, -1),
    "right": (0, 1),
    "up": (-1, 0),
    "down": (1, 0),
}
COLOR_NAMES = tuple(COLORS)
DIRECTION_NAMES = tuple(DIRECTIONS)
NUM_CLASSES = len(COLORS) * len(SHAPES) * len(DIRECTIONS)
# The mixed-radix digits of a class id, most significant first (see class_id): dit.class_factors for a label
# embedding that sums one color, one shape and one direction row.
CLASS_FACTORS = (len(COLORS), len(SHAPES), len(DIRECTIONS))
SPLITS = ("train", "validation", "held_out")
# Optional `config.data` fields for the size and speed ranges (fractions of the frame); absent = the defaults below.
GEOMETRY_FIELDS = ("min_radius", "max_radius", "max_speed")
# Optional `config.data` fields that add colors to the palette (see the module docstring); absent = none.
EXTRA_COLOR_FIELDS = ("extra_colors", "extra_color_fraction")
_CROP_STREAM = 1  # appended to a clip's seed for the crop choice, keeping the clip's own random stream untouched


def class_id(color: str, shape: str, direction: str) -> int:
  return (COLOR_NAMES.index(color) * len(SHAPES) + SHAPES.index(shape)) * len(DIRECTIONS) + DIRECTION_NAMES.index(
      direction)


def class_attributes(cid: int) -> tuple[str, str, str]:
  if not 0 <= cid < NUM_CLASSES:
    raise ValueError(f"class id must be in [0, {NUM_CLASSES}), got {cid}")
  rest, d = divmod(cid, len(DIRECTIONS))
  c, s = divmod(rest, len(SHAPES))
  return COLOR_NAMES[c], SHAPES[s], DIRECTION_NAMES[d]


def caption(color: str, shape: str, direction: str) -> str:
  return f"a {color} {shape} moving {direction}"


def parse_combination(text: str, colors: Sequence[str] = COLOR_NAMES) -> tuple[str, str, str]:
  """'red circle left' or 'a red circle moving left' -> ('red', 'circle', 'left'); ValueError names bad words.
  `colors`: the allowed color names (the palette of a dataset with extra colors)."""
  words = [w for w in text.lower().split() if w not in ("a", "moving")]
  if len(words) != 3:
    raise ValueError(f"combination {text!r} must name a color, a shape and a direction, e.g. 'red circle left'")
  color, shape, direction = words
  for word, allowed, what in ((color, tuple(colors), "color"), (shape, SHAPES, "shape"),
                              (direction, DIRECTION_NAMES, "direction")):
    if word not in allowed:
      raise ValueError(f"combination {text!r}: unknown {what} {word!r}; allowed: {list(allowed)}")
  return color, shape, direction


def check_extra_colors(extra_colors) -> dict[str, tuple[int, int, int]]:
  """`{name: (r, g, b)}` (a mapping, or (name, rgb) pairs) -> a checked dict, in the given order. ValueError for a
  name that is not a new lower-case word (or clashes with a caption word) and for values that are not 3 levels in
  [0, 255] with one of them > 0 (the background is black)."""
  items = list(extra_colors.items()) if hasattr(extra_colors, "items") else list(extra_colors or ())
  taken = {"a", "moving", *COLOR_NAMES, *SHAPES, *DIRECTION_NAMES}
  out: dict[str, tuple[int, int, int]] = {}
  for name, rgb in items:
    if not isinstance(name, str) or not name or name != name.lower() or len(name.split()) != 1 or name != name.strip():
      raise ValueError(f"extra color name {name!r} must be one lower-case word")
    if name in taken or name in out:
      raise ValueError(f"extra color name {name!r} is already a caption word; pick a new one")
    levels = tuple(rgb) if isinstance(rgb, (tuple, list)) else ()
    if (len(levels) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255
                                    for v in levels) or max(levels) == 0):
      raise ValueError(f"extra color {name!r} must be 3 integer levels (r, g, b) in [0, 255], not all 0, got {rgb!r}")
    out[name] = tuple(int(v) for v in levels)
  return out


@dataclasses.dataclass(frozen=True)
class Clip:
  video: np.ndarray  # uint8 [T, H, W, 3]
  caption: str
  label: int
  color: str
  shape: str
  direction: str


def _coverage(shape: str, yy: np.ndarray, xx: np.ndarray, cy: np.ndarray, cx: np.ndarray, r: float) -> np.ndarray:
  """Anti-aliased coverage in [0, 1] of `shape` centred at (cy, cx) (arrays over frames) with size r, [T, H, W]."""
  dy = yy[None] - cy[:, None, None]
  dx = xx[None] - cx[:, None, None]
  if shape == "circle":
    sdf = np.sqrt(dy * dy + dx * dx) - r
  elif shape == "square":
    # Half-side r: the square is the circle's bounding square, its corners 0.41 r beyond the circle. A square inside
    # the circle's area (half-side 0.85 r) differs from the circle by about a pixel at 64x64, which an 8x VAE latent
    # cannot carry: trained models then drew rounded squares for both.
    sdf = np.maximum(np.abs(dy), np.abs(dx)) - r
  elif shape == "triangle":
    # Upward equilateral triangle with circumradius ~1.2 r: max over its three edge half-planes (inradius r_in).
    r_in = 0.6 * r
    normals = ((0.0, 1.0), (np.sqrt(3) / 2, -0.5), (-np.sqrt(3) / 2, -0.5))  # (nx, ny) with y pointing down
    sdf = np.max(np.stack([nx * dx + ny * dy for nx, ny in normals]), axis=0) - r_in
  else:
    raise ValueError(f"unknown shape {shape!r}; allowed: {list(SHAPES)}")
  return np.clip(0.5 - sdf, 0.0, 1.0)


def render(color: str, shape: str, direction: str, *, num_frames: int, height: int, width: int,
           radius: float, speed: float, start: tuple[float, float],
           palette: dict[str, tuple[int, int, int]] | None = None) -> np.ndarray:
  """Renders one clip, uint8 [T, H, W, 3]. radius/speed/start in pixels (start = (y, x) of the centre at frame 0);
  `palette`: color name -> (r, g, b), default COLORS."""
  dy, dx = DIRECTIONS[direction]
  t = np.arange(num_frames, dtype=np.float64)
  cy = start[0] + dy * speed * t
  cx = start[1] + dx * speed * t
  yy, xx = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
  cov = _coverage(shape, yy, xx, cy, cx, radius)
  rgb = np.asarray((COLORS if palette is None else palette)[color], np.float64)
  return np.round(cov[..., None] * rgb).astype(np.uint8)


class ShapesDataset:
  """Deterministic, random-access clips. `dataset[i]` is clip i of the split; `batch(start, n)` stacks n of them."""

  def __init__(self, *, split: str = "train", num_frames: int = 17, height: int = 64, width: int = 64,
               held_out: Sequence[str] = (), seed: int = 0, min_radius: float = 0.09, max_radius: float = 0.2,
               max_speed: float = 0.05, crop_size: int = 0, crop_grid: int = 8, extra_colors=None,
               extra_color_fraction: float | None = None):
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if num_frames < 1:
      raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if height < 8 or width < 8:
      raise ValueError(f"height and width must be >= 8 pixels, got {height}x{width}")
    if not 0 < min_radius <= max_radius < 0.5:
      raise ValueError(f"need 0 < min_radius <= max_radius < 0.5 (fractions of the frame), got {min_radius}, "
                       f"{max_radius}")
    if crop_size:
      crop_offsets(height, width, crop_size, crop_grid)  # raises on a size or grid that does not fit
    self.extra_colors = check_extra_colors(extra_colors)
    self.palette = {**COLORS, **self.extra_colors}
    if extra_color_fraction is not None and (not self.extra_colors or not 0.0 <= extra_color_fraction <= 1.0):
      raise ValueError(f"extra_color_fraction must be in [0, 1] and needs extra_colors, got {extra_color_fraction!r} "
                       f"with extra_colors={self.extra_colors}")
    held = {parse_combination(c, tuple(self.palette)) for c in held_out}
    every = list(itertools.product(tuple(self.palette), SHAPES, DIRECTION_NAMES))
    self.combinations = [c for c in every if (c in held) == (split == "held_out")]
    if not self.combinations:
      raise ValueError(f"split {split!r} has no combinations (held_out={list(held_out)})")
    # With a fraction, a clip draws the pool (extra colors or not) first, then a combination within it.
    self.pools = None
    if extra_color_fraction is not None:
      extra = [c for c in self.combinations if c[0] in self.extra_colors]
      base = [c for c in self.combinations if c[0] not in self.extra_colors]
      for pool, share in ((extra, extra_color_fraction), (base, 1.0 - extra_color_fraction)):
        if share > 0 and not pool:
          raise ValueError(f"split {split!r} has no combinations to draw {share:.0%} of its clips from "
                           f"(held_out={list(held_out)})")
      self.extra_color_fraction, self.pools = float(extra_color_fraction), (extra, base)
    self.split, self.seed = split, seed
    self.num_frames, self.height, self.width = num_frames, height, width
    self.min_radius, self.max_radius, self.max_speed = min_radius, max_radius, max_speed
    # crop_size > 0: each clip is rendered whole, then cut to a crop_size square window with content on a crop_grid
    # lattice (vidgen.data.crops), drawn from a random stream of its own so the pixels match the uncropped clip's.
    self.crop_size, self.crop_grid = crop_size, crop_grid

  @classmethod
  def from_config(cls, data, split: str, **overrides) -> "ShapesDataset":
    """The `split` of a `config.data` block (num_frames, height, width, held_out, seed and, where set, min_radius,
    max_radius, max_speed, extra_colors, extra_color_fraction); `overrides` replace fields or add constructor
    arguments (crop_size, ...)."""
    fields = dict(num_frames=data.num_frames, height=data.height, width=data.width, held_out=tuple(data.held_out),
                  seed=data.seed)
    for name in GEOMETRY_FIELDS + EXTRA_COLOR_FIELDS:
      if name in data and data[name] is not None:
        fields[name] = data[name]
    return cls(split=split, **{**fields, **overrides})

  def __getitem__(self, index: int) -> Clip:
    if index < 0:
      raise IndexError(f"clip index must be >= 0, got {index}")
    rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
    if self.pools is None:
      color, shape, direction = self.combinations[rng.integers(len(self.combinations))]
    else:
      pool = self.pools[0] if rng.random() < self.extra_color_fraction else self.pools[1]
      color, shape, direction = pool[rng.integers(len(pool))]
    side = min(self.height, self.width)
    radius = rng.uniform(self.min_radius, self.max_radius) * side
    # Leave room for the motion: the shape stays fully inside the frame for the whole clip.
    margin = radius * 1.25 + 1.0
    extent = self.width if DIRECTIONS[direction][1] else self.height
    travel_room = max(extent - 2 * margin, 0.0)
    steps = max(self.num_frames - 1, 1)
    speed = rng.uniform(0.3, 1.0) * min(self.max_speed * side, travel_room / steps)
    travel = speed * (self.num_frames - 1)
    ys = self._start_range(self.height, margin, travel if DIRECTIONS[direction][0] else 0.0,
                           DIRECTIONS[direction][0])
    xs = self._start_range(self.width, margin, travel if DIRECTIONS[direction][1] else 0.0,
                           DIRECTIONS[direction][1])
    start = (rng.uniform(*ys), rng.uniform(*xs))
    video = render(color, shape, direction, num_frames=self.num_frames, height=self.height, width=self.width,
                   radius=radius, speed=speed, start=start, palette=self.palette)
    if self.crop_size:
      crop_rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index, _CROP_STREAM])
      video = content_crop(video, self.crop_size, grid=self.crop_grid, rng=crop_rng)
    label = -1 if color in self.extra_colors else class_id(color, shape, direction)
    return Clip(video, caption(color, shape, direction), label, color, shape, direction)

  @staticmethod
  def _start_range(extent: int, margin: float, travel: float, sign: int) -> tuple[float, float]:
    lo, hi = margin, extent - margin
    if sign > 0:
      hi -= travel
    elif sign < 0:
      lo += travel
    if hi < lo:  # the frame is too small for the requested motion: centre it
      lo = hi = extent / 2
    return lo, hi

  def batch(self, start: int, size: int) -> dict[str, np.ndarray]:
    """Clips start .. start+size-1 as {"video": uint8 [n,T,H,W,3], "label": int32 [n], "caption": object [n]}."""
    clips = [self[start + i] for i in range(size)]
    return {
        "video": np.stack([c.video for c in clips]),
        "label": np.asarray([c.label for c in clips], np.int32),
        "caption": np.asarray([c.caption for c in clips], dtype=object),
    }
