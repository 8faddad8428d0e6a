"""Prompt-following reader: ground-truth clips read back exactly, degraded and tilted ones nearly so, edge cases,
aggregation."""

import importlib

import numpy as np
import pytest
from scipy import ndimage

from vidgen.data.shapes import COLORS, DIRECTIONS, SHAPES, ShapesDataset, caption, render
from vidgen.data.shapes.reader import ClipAttributes, analyze_clip, prompt_following

pf = importlib.import_module("vidgen.data.shapes.reader")  # the module (the package exports the function)

# held_out needs at least one combination; the same list keeps train/validation/held_out disjoint.
HELD_OUT = ("red circle left", "blue square up", "white triangle right", "cyan circle down", "yellow square left")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def _clips(split, n, **kwargs):
  dataset = ShapesDataset(split=split, held_out=HELD_OUT, **kwargs)
  return [dataset[i] for i in range(n)]


def _degrade(video, rng):
  """What a VAE + sampler might do: blur (sigma 1 px), 15% toward gray, 0.7 brightness, noise std 8 levels."""
  v = ndimage.gaussian_filter(video.astype(np.float64), sigma=(0, 1.0, 1.0, 0))
  v = 0.85 * v + 0.15 * v.mean(axis=-1, keepdims=True)
  v = 0.7 * v + rng.normal(0.0, 8.0, v.shape)
  return np.clip(np.round(v), 0, 255).astype(np.uint8)


def _score(clips, transform=lambda v: v):
  return prompt_following([transform(c.video) for c in clips], [c.caption for c in clips])


@pytest.mark.parametrize("size,frames,per_split", [(64, 17, 100), (32, 9, 100), (32, 5, 100)])
def test_ground_truth_clips_read_back(size, frames, per_split):
  clips = [c for split in ("train", "validation", "held_out")
           for c in _clips(split, per_split, num_frames=frames, height=size, width=size)]
  result = _score(clips)
  assert result["count"] == 3 * per_split
  # Every attribute value occurs, so a reader stuck on one answer cannot pass.
  assert {c.shape for c in clips} == set(SHAPES) and {c.color for c in clips} == set(COLORS)
  assert {c.direction for c in clips} == set(DIRECTIONS)
  wrong = [e for e in result["examples"] if not e["correct"]["all"]]
  for key in ("color", "shape", "direction", "all"):
    assert result[key] >= 0.99, (key, result[key], wrong[:5])


@pytest.mark.parametrize("size,frames", [(64, 17), (32, 9)])
def test_degraded_clips_still_read_back(size, frames):
  rng = np.random.default_rng(0)
  clips = [c for split in ("train", "held_out") for c in _clips(split, 80, num_frames=frames, height=size, width=size)]
  result = _score(clips, lambda v: _degrade(v, rng))
  wrong = [e for e in result["examples"] if not e["correct"]["all"]]
  for key in ("color", "shape", "direction", "all"):
    assert result[key] >= 0.95, (key, result[key], wrong[:5])


def test_black_and_noise_only_videos_read_nothing_and_count_as_wrong():
  black = np.zeros((9, 64, 64, 3), np.uint8)
  rng = np.random.default_rng(0)
  # Strong noise (std 24 levels) has peaks over the fixed contrast floor; only the noise-relative test rejects it.
  noisy = [np.clip(rng.normal(0.0, std, black.shape), 0, 255).astype(np.uint8) for std in (8.0, 24.0)]
  for video in (black, *noisy):
    assert analyze_clip(video) == ClipAttributes("none", "none", "none")
  result = prompt_following(np.stack([black, *noisy]), ["a red circle moving left", "a white square moving up",
                                                         "green triangle down"])
  assert result["color"] == result["shape"] == result["direction"] == result["all"] == 0.0


@pytest.mark.parametrize("shape", SHAPES)
def test_reversed_clip_flips_direction(shape):
  for direction in DIRECTIONS:
    video = render("magenta", shape, direction, num_frames=9, height=64, width=64, radius=9.0, speed=2.0,
                   start=(32.0 - 8 * DIRECTIONS[direction][0], 32.0 - 8 * DIRECTIONS[direction][1]))
    forward, backward = analyze_clip(video), analyze_clip(video[::-1])
    assert forward == ClipAttributes("magenta", shape, direction)
    assert backward == ClipAttributes("magenta", shape, OPPOSITE[direction])


def _warp(video, degrees, stretch=1.0):
  """Every frame rotated by `degrees` and stretched along x by `stretch`, about the frame centre."""
  a = np.deg2rad(degrees)
  matrix = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.diag([1.0, 1.0 / stretch])
  centre = (np.asarray(video.shape[1:3]) - 1) / 2
  offset = centre - matrix @ centre
  out = [[ndimage.affine_transform(frame[..., c].astype(np.float64), matrix, offset=offset, order=1)
          for c in range(3)] for frame in video]
  return np.clip(np.round(np.moveaxis(np.asarray(out), 1, -1)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("degrees", [-35.0, -20.0, 10.0, 25.0])
def test_tilted_and_stretched_shapes_keep_their_names(degrees):
  rng = np.random.default_rng(int(degrees) + 100)
  for shape in SHAPES:
    video = render("yellow", shape, "right", num_frames=9, height=64, width=64, radius=10.0, speed=1.5,
                   start=(32.0, 26.0))
    for warped in (_warp(video, degrees), _degrade(_warp(video, degrees), rng)):
      assert analyze_clip(warped) == ClipAttributes("yellow", shape, "right"), (shape, degrees)
    if shape == "square":  # tilted, a square no longer fills its box: only its four-fold symmetry tells it apart
      fills = [r.fill for r in map(pf._read_frame, _warp(video, degrees)) if r is not None]
      assert np.median(fills) < pf._SQUARE_MIN_FILL
  # A circle drawn 15% wider than high, at any tilt, is still a circle, not a square.
  circle = render("yellow", "circle", "right", num_frames=9, height=64, width=64, radius=10.0, speed=1.5,
                  start=(32.0, 26.0))
  assert analyze_clip(_warp(circle, degrees, stretch=1.15)).shape == "circle"


def test_static_and_single_frame_clips_have_no_direction():
  clip = _clips("train", 1, num_frames=17)[0]
  static = np.repeat(clip.video[:1], 17, axis=0)
  noisy_static = _degrade(static, np.random.default_rng(1))  # fresh noise per frame jitters the centroid
  for video in (static, noisy_static, clip.video[:1]):
    assert analyze_clip(video) == ClipAttributes(clip.color, clip.shape, "none")


def test_fading_frames_are_skipped():
  clips = _clips("validation", 24, num_frames=17)
  fade = np.ones(17)
  fade[[0, 5, 6, 11]] = 0.0  # gone
  fade[[2, 9, 15]] = 0.15  # barely there
  faded = lambda v: np.round(v * fade[:, None, None, None]).astype(np.uint8)  # noqa: E731
  assert _score(clips, faded)["all"] == 1.0


def test_colors_survive_dimming_and_a_tint():
  for color in COLORS:
    video = render(color, "circle", "right", num_frames=5, height=32, width=32, radius=5.0, speed=1.5,
                   start=(16.0, 10.0)).astype(np.float64)
    tinted = np.clip(video * 0.45 * np.asarray([1.0, 0.85, 0.9]) + 10.0, 0, 255).astype(np.uint8)
    assert analyze_clip(tinted).color == color


def test_bad_inputs_name_the_problem():
  with pytest.raises(ValueError, match="float32"):
    analyze_clip(np.zeros((4, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match=r"\(8, 8, 3\)"):
    analyze_clip(np.zeros((8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match=r"\(2, 8, 8, 4\)"):
    analyze_clip(np.zeros((2, 8, 8, 4), np.uint8))
  with pytest.raises(ValueError, match=r"\(0, 8, 8, 3\)"):
    analyze_clip(np.zeros((0, 8, 8, 3), np.uint8))
  video = np.zeros((1, 2, 8, 8, 3), np.uint8)
  with pytest.raises(ValueError, match="1 videos but 2 prompts"):
    prompt_following(video, ["red circle left", "red circle up"])
  with pytest.raises(ValueError, match="'purple'"):
    prompt_following(video, ["a purple circle moving left"])
  with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\].*\(2, 8, 8, 3\)"):
    prompt_following(video[0], ["red circle left", "red circle up"])
  with pytest.raises(ValueError, match="at least one"):
    prompt_following([], [])


def test_aggregation_over_a_mix_of_right_and_wrong():
  def clip(color, shape, direction):
    dy, dx = DIRECTIONS[direction]
    return render(color, shape, direction, num_frames=9, height=64, width=64, radius=10.0, speed=2.0,
                  start=(32.0 - 8 * dy, 32.0 - 8 * dx))

  videos = [clip("red", "circle", "left"), clip("green", "square", "up"), clip("blue", "triangle", "down"),
            clip("yellow", "circle", "right"), np.zeros((9, 64, 64, 3), np.uint8)]
  prompts = [caption("red", "circle", "left"),  # all right
             caption("green", "square", "down"),  # direction wrong
             caption("white", "circle", "down"),  # color and shape wrong
             "yellow circle right",  # all right, short form
             caption("cyan", "square", "up")]  # black video: all wrong
  expected = {"color": 3 / 5, "shape": 3 / 5, "direction": 3 / 5, "all": 2 / 5}
  for given in (np.stack(videos), videos):
    result = prompt_following(given, prompts)
    assert result["count"] == 5
    for key, value in expected.items():
      assert result[key] == pytest.approx(value), key
    assert [e["correct"]["all"] for e in result["examples"]] == [True, False, False, True, False]
    assert result["examples"][1]["correct"] == {"color": True, "shape": True, "direction": False, "all": False}
    assert result["examples"][2]["predicted"] == {"color": "blue", "shape": "triangle", "direction": "down"}
    assert result["examples"][4]["predicted"] == {"color": "none", "shape": "none", "direction": "none"}
    assert result["examples"][3]["prompt"] == "yellow circle right"
