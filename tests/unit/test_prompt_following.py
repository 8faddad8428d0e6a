"""Prompt-following reader and evaluation: ground-truth clips read back, clean and degraded; clips that are not dataset
clips (other outlines, two shapes, changing color or size, other motions) read "none" and count as wrong; aggregation,
the evaluated combinations, intervals and the eval config's checks."""

import itertools

import numpy as np
import pytest

from vidgen.config import load_config_file
from vidgen.data.shapes import COLORS, DIRECTIONS, SHAPES, ShapesDataset, calibrate, caption, evaluation, render
from vidgen.data.shapes.reader import ClipAttributes, analyze_clip, prompt_following
from vidgen.errors import ConfigError
from vidgen.metrics.intervals import wilson_interval

# held_out needs at least one combination; the same list keeps train/validation/held_out disjoint.
HELD_OUT = ("red circle left", "blue square up", "white triangle right", "cyan circle down", "yellow square left")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
SHAPE_IMPOSTORS = [name for name, attribute in calibrate.IMPOSTORS.items() if attribute == "shape"]
MOTION_IMPOSTORS = [name for name, attribute in calibrate.IMPOSTORS.items() if attribute == "direction"]


def _clips(split, n, geometry, seed=0):
  dataset = ShapesDataset(split=split, held_out=HELD_OUT, seed=seed, **geometry)
  return [dataset[i] for i in range(n)]


def _score(clips, transform=lambda v: v):
  return prompt_following([transform(c.video) for c in clips], [c.caption for c in clips])


def _moving(color, shape, direction, size=64, frames=9, radius=10.0, speed=2.0):
  dy, dx = DIRECTIONS[direction]
  half = speed * (frames - 1) / 2
  return render(color, shape, direction, num_frames=frames, height=size, width=size, radius=radius, speed=speed,
                start=(size / 2 - half * dy, size / 2 - half * dx))


# Seeds other than the calibration's (0), so these clips are not the ones the thresholds were set on.
@pytest.mark.parametrize("geometry", list(calibrate.GEOMETRIES))
def test_ground_truth_clips_read_back(geometry):
  clips = [c for split in ("train", "validation", "held_out")
           for c in _clips(split, 50, calibrate.GEOMETRIES[geometry], seed=7)]
  result = _score(clips)
  assert result["count"] == 150
  # Every attribute value occurs, so a reader stuck on one answer cannot pass.
  assert {c.shape for c in clips} == set(SHAPES) and {c.color for c in clips} == set(COLORS)
  assert {c.direction for c in clips} == set(DIRECTIONS)
  wrong = [e for e in result["examples"] if not e["correct"]["all"]]
  # The calibration reads all 2,400 of its clean and degraded clips right; 1 miss in 100 is left for other seeds.
  for key in ("color", "shape", "direction", "all"):
    assert result[key] >= 0.99, (key, result[key], wrong[:5])
  assert result["abstained"]["any"] <= 1


@pytest.mark.parametrize("geometry", list(calibrate.GEOMETRIES))
def test_degraded_clips_still_read_back(geometry):
  """Blur, noise, color shift, dimming, rotation, shear, stretch, path tilt and jitter together (calibrate's "all")."""
  rng = np.random.default_rng(11)
  clips = [c for split in ("train", "held_out") for c in _clips(split, 75, calibrate.GEOMETRIES[geometry], seed=8)]
  result = _score(clips, lambda v: calibrate.degrade(v, "all", rng))
  wrong = [e for e in result["examples"] if not e["correct"]["all"]]
  for key in ("color", "shape", "direction", "all"):
    assert result[key] >= 0.97, (key, result[key], wrong[:5])


@pytest.mark.parametrize("shape", SHAPES)
def test_reversed_clip_flips_direction(shape):
  for direction in DIRECTIONS:
    video = _moving("magenta", shape, direction)
    forward, backward = analyze_clip(video), analyze_clip(video[::-1])
    assert forward == ClipAttributes("magenta", shape, direction)
    assert backward == ClipAttributes("magenta", shape, OPPOSITE[direction])


@pytest.mark.parametrize("angle", [-35.0, -20.0, 10.0, 25.0, 45.0])
def test_rotated_sheared_and_stretched_shapes_keep_their_names(angle):
  """The outline is matched at any rotation, after whitening that undoes shear and stretch."""
  rng = np.random.default_rng(int(angle) + 100)
  for shape in SHAPES:
    video = _moving("yellow", shape, "right", radius=11.0, speed=1.5)
    for warped in (calibrate.warp(video, angle=angle), calibrate.warp(video, angle=angle, shear=0.1, stretch=1.1),
                   calibrate.degrade(calibrate.warp(video, angle=angle, shear=-0.1, stretch=0.9), "noise", rng)):
      assert analyze_clip(warped) == ClipAttributes("yellow", shape, "right"), (shape, angle)


def test_static_and_single_frame_clips_have_no_direction():
  clip = _clips("train", 1, calibrate.GEOMETRIES["64x64x17 r0.14-0.25"])[0]
  static = np.repeat(clip.video[:1], 17, axis=0)
  rng = np.random.default_rng(1)
  for video in (static, calibrate.degrade(static, "all", rng), clip.video[:1]):
    assert analyze_clip(video) == ClipAttributes(clip.color, clip.shape, "none")


def test_fading_frames_are_skipped():
  clips = _clips("validation", 24, calibrate.GEOMETRIES["64x64x17 r0.14-0.25"])
  fade = np.ones(17)
  fade[[0, 5, 6, 11]] = 0.0  # gone
  fade[[2, 9, 15]] = 0.15  # barely there
  faded = lambda v: np.round(v * fade[:, None, None, None]).astype(np.uint8)  # noqa: E731
  assert _score(clips, faded)["all"] == 1.0
  # A shape in fewer than half the frames is not read as a shape, nor as moving.
  mostly_gone = np.where(np.arange(17)[:, None, None, None] < 9, 0, clips[0].video).astype(np.uint8)
  assert analyze_clip(mostly_gone) == ClipAttributes(clips[0].color, "none", "none")


def test_colors_survive_dimming_and_a_tint():
  for color in COLORS:
    video = _moving(color, "circle", "right").astype(np.float64)
    tinted = np.clip(video * 0.45 * np.asarray([1.0, 0.85, 0.9]) + 10.0, 0, 255).astype(np.uint8)
    assert analyze_clip(tinted) == ClipAttributes(color, "circle", "right")


# -- clips that are not dataset clips -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SHAPE_IMPOSTORS)
def test_outlines_that_are_not_dataset_shapes_read_none(name):
  """Ellipses, a plus, a hexagon, a star, two discs apart or touching, a lumpy disc and a disc that grows: at two sizes,
  clean, blurred and fully degraded, none reads as a circle, square or triangle, so every caption counts it wrong."""
  rng = np.random.default_rng(5)
  videos = [calibrate.degrade(calibrate.impostor(name, size=size), condition, rng)
            for size in (9.0, 12.0) for condition in ("clean", "blur", "all")]
  readings = [analyze_clip(v) for v in videos]
  assert [r.shape for r in readings] == ["none"] * len(videos), readings
  prompts = [caption("yellow", shape, "right") for shape in SHAPES]
  result = prompt_following([v for v in videos for _ in prompts], prompts * len(videos))
  assert result["shape"] == result["all"] == 0.0
  assert result["abstained"]["shape"] == result["count"]


def test_a_shape_that_changes_color_is_wrong_for_every_color():
  rng = np.random.default_rng(3)
  sudden = calibrate.impostor("circle turning from red to blue")
  # A gradual drift from red through orange to yellow: no single color holds over the clip.
  gradual = _moving("red", "circle", "right", frames=17, speed=1.0).astype(np.float64)
  gradual[..., 1] = gradual[..., 0] * np.linspace(0.0, 1.0, 17)[:, None, None]
  gradual = gradual.astype(np.uint8)
  for video in (sudden, calibrate.degrade(sudden, "all", rng), gradual):
    assert analyze_clip(video).color == "none"
    prompts = [caption(color, "circle", "right") for color in COLORS]
    result = prompt_following([video] * len(prompts), prompts)
    assert result["color"] == result["all"] == 0.0


@pytest.mark.parametrize("name", MOTION_IMPOSTORS)
def test_motions_that_are_not_dataset_motions_have_no_direction(name):
  """Standing still, moving diagonally, going there and back, accelerating: no direction, so the clip is wrong."""
  rng = np.random.default_rng(4)
  for size in (9.0, 12.0):
    for condition in ("clean", "blur", "all"):
      reading = analyze_clip(calibrate.degrade(calibrate.impostor(name, size=size), condition, rng))
      assert reading.direction == "none", (size, condition, reading)
      assert reading.shape == "circle"  # the outline is fine; only the motion is not a dataset motion


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
  assert result["abstained"] == {"color": 3, "shape": 3, "direction": 3, "any": 3}


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
  videos = [_moving("red", "circle", "left"), _moving("green", "square", "up"), _moving("blue", "triangle", "down"),
            _moving("yellow", "circle", "right"), np.zeros((9, 64, 64, 3), np.uint8)]
  prompts = [caption("red", "circle", "left"),  # all right
             caption("green", "square", "down"),  # direction wrong
             caption("white", "circle", "down"),  # color and shape wrong
             "yellow circle right",  # all right, short form
             caption("cyan", "square", "up")]  # black video: all wrong, abstained
  expected = {"color": 3 / 5, "shape": 3 / 5, "direction": 3 / 5, "all": 2 / 5}
  for given in (np.stack(videos), videos):
    result = prompt_following(given, prompts)
    assert result["count"] == 5
    for key, value in expected.items():
      assert result[key] == pytest.approx(value), key
      assert result["correct"][key] == round(5 * value)
    assert result["abstained"] == {"color": 1, "shape": 1, "direction": 1, "any": 1}
    assert [e["correct"]["all"] for e in result["examples"]] == [True, False, False, True, False]
    assert result["examples"][1]["correct"] == {"color": True, "shape": True, "direction": False, "all": False}
    assert result["examples"][2]["predicted"] == {"color": "blue", "shape": "triangle", "direction": "down"}
    assert result["examples"][4]["predicted"] == {"color": "none", "shape": "none", "direction": "none"}
    assert result["examples"][3]["prompt"] == "yellow circle right"


# -- the evaluation ---------------------------------------------------------------------------------------------------

def test_the_eval_covers_every_combination():
  config = load_config_file("experiments/shapes_t2v.py")
  evaluation.validate_eval_config(config)
  prompts = evaluation.eval_prompts(config)
  held = {caption(*c.split()) for c in config.data.held_out}
  every = {caption(*c) for c in itertools.product(COLORS, SHAPES, DIRECTIONS)}
  assert set(prompts["seen"]) | set(prompts["held_out"]) == every and set(prompts["held_out"]) == held
  assert len(prompts["seen"]) == len(every - held) * config.eval.samples_per_combination
  assert len(prompts["held_out"]) == len(held) * config.eval.held_out_samples_per_combination
  assert len(set(prompts["seen"])) == 77 and len(set(prompts["held_out"])) == 7
  small = load_config_file("experiments/shapes_t2v.py", "runlocal")
  evaluation.validate_eval_config(small)
  assert [len(p) for p in evaluation.eval_prompts(small).values()] == [2, 7]


def _eval_config(**eval_fields):
  config = load_config_file("experiments/shapes_t2v.py")
  config.eval.update(eval_fields)
  return config


def test_eval_config_refuses_fields_it_would_ignore_and_bad_values():
  bad = load_config_file("experiments/shapes_t2v.py")
  bad.eval.seen_combinations = 14
  with pytest.raises(ConfigError, match="config.eval.seen_combinations: no longer used"):
    evaluation.validate_eval_config(bad)
  bad = load_config_file("experiments/shapes_t2v.py")
  bad.eval.samples = 3
  with pytest.raises(ConfigError, match="config.eval.samples: is not an eval setting"):
    evaluation.validate_eval_config(bad)
  for field, value, message in [("samples_per_combination", 0, "integer >= 1"), ("batch_size", 0, "integer >= 1"),
                                ("combinations", ("red circle left", "red circle left"), "twice"),
                                ("combinations", ("red blob left",), "unknown shape 'blob'")]:
    with pytest.raises(ConfigError, match=f"config.eval.{field}.*{message}"):
      evaluation.validate_eval_config(_eval_config(**{field: value}))


class _Oracle:
  """A pipeline stand-in that draws exactly the asked-for clip (or moving the opposite way), placed by its seed and
  index, with the run's sampling settings as a VideoPipeline has them."""

  def __init__(self, config, flip=False):
    self.config, self.flip = config, flip

  def sampling_defaults(self):
    return dict(num_frames=self.config.data.num_frames, steps=50)

  def __call__(self, prompts, *, seed, num_frames, **unused):
    videos = []
    for i, prompt in enumerate(prompts):
      color, shape, direction = prompt.split()[1], prompt.split()[2], prompt.split()[-1]
      rng = np.random.default_rng([seed, i])
      video = _moving(color, shape, direction, frames=num_frames, radius=rng.uniform(9, 14), speed=rng.uniform(1, 2))
      videos.append(video[::-1] if self.flip else video)
    return np.stack(videos)


def test_evaluation_of_a_perfect_and_a_backwards_generator():
  config = _eval_config(samples_per_combination=1, held_out_samples_per_combination=2, batch_size=13)
  config.data.num_frames = 9
  results = evaluation.prompt_following_results(_Oracle(config), config)
  seen, held = results["seen"], results["held_out"]
  assert (seen["count"], seen["combinations"], held["count"], held["combinations"]) == (77, 77, 14, 7)
  for r in (seen, held):
    assert r["all"] == 1.0 and r["abstained"]["any"] == 0
    low, high = r["interval"]["all"]
    assert high == 1.0 and 0.75 < low < 1.0
  ids = [(e["seed"], e["index"]) for r in (seen, held) for e in r["examples"]]
  assert len(set(ids)) == 91 and ids[13] == (config.eval.seed + 13, 0)
  assert evaluation.prompt_following_results(_Oracle(config), config) == results  # deterministic given eval.seed

  backwards = evaluation.prompt_following_results(_Oracle(config, flip=True), config)
  for r in (backwards["seen"], backwards["held_out"]):
    assert r["color"] == r["shape"] == 1.0 and r["direction"] == r["all"] == 0.0
    assert r["interval"]["direction"][0] == 0.0 and 0.0 < r["interval"]["direction"][1] < 0.3

  results = dict(backwards, vae_psnr=30.0)
  flat = evaluation.summary(results)
  assert flat["seen_all"] == 0.0 and flat["held_out_count"] == 14 and flat["vae_psnr"] == 30.0
  assert flat["seen_color_low"] < flat["seen_color"] == flat["seen_color_high"] == 1.0
  table = evaluation.format_table(results)
  low = wilson_interval(77, 77)[0]
  assert f"| seen | 77 | 100.0% ({low:.1%}-100.0%) | 100.0% ({low:.1%}-100.0%) | 0.0% (0.0%-" in table
  # A backwards clip has a direction, the wrong one: wrong, but not an abstention.
  assert "| held-out | 14 |" in table and table.splitlines()[2].endswith("| 0 |")


def test_failed_checks_say_why_a_clip_is_not_a_dataset_clip():
  from vidgen.data.shapes.reader import clip_features, failed_checks

  assert failed_checks(clip_features(_moving("red", "square", "left", frames=17))) == []
  assert "size change" in failed_checks(clip_features(calibrate.impostor("growing circle")))
  assert "more than one blob" in failed_checks(clip_features(calibrate.impostor("two discs")))
  static = failed_checks(clip_features(calibrate.impostor("static circle")))
  assert "travel" in static and not {"outline residual", "size change", "shape disagreement"} & set(static)
  assert failed_checks(clip_features(np.zeros((5, 32, 32, 3), np.uint8))) == ["no foreground"]
  clips = [_moving("red", "square", "left", frames=17), calibrate.impostor("growing circle")]
  result = prompt_following(clips, ["a red square moving left", "a red circle moving right"])
  assert result["failed_checks"]["size change"] == 1 and result["examples"][0]["failed_checks"] == []
