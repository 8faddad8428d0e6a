"""Extra colors of the embedded shapes data (opt-in, for teaching a trained model a new concept): rendering, the mix,
captions and vocabulary, the reader's extended palette on degraded ground truth, the evaluation's "extra" split; and
that every existing config is unchanged."""

import itertools

import numpy as np
import pytest

from vidgen.config import load_config_file
from vidgen.data.shapes import (
    COLORS,
    DIRECTIONS,
    SHAPES,
    ShapesDataset,
    calibrate,
    class_id,
    evaluation,
    shapes_tokenizer,
)
from vidgen.data.shapes.reader import analyze_clip, color_patterns, prompt_following
from vidgen.data.shapes.source import ShapesSource
from vidgen.errors import ConfigError

ORANGE = {"orange": (255, 128, 0)}
GEOMETRY = calibrate.GEOMETRIES["64x64x17 r0.14-0.25"]


def test_without_extra_colors_nothing_changes():
  plain = ShapesDataset(split="train", seed=3, **GEOMETRY)
  empty = ShapesDataset(split="train", seed=3, extra_colors={}, **GEOMETRY)
  for i in range(20):
    a, b = plain[i], empty[i]
    np.testing.assert_array_equal(a.video, b.video)
    assert (a.caption, a.label) == (b.caption, b.label)
  # The stream of a default dataset, drawn as it always was: clip i's combination is the first draw of its own
  # generator (seed, split, i) over the 84 combinations in palette order.
  every = list(itertools.product(COLORS, SHAPES, DIRECTIONS))
  for i in range(20):
    color, shape, direction = every[np.random.default_rng([3, 0, i]).integers(len(every))]
    assert (plain[i].color, plain[i].shape, plain[i].direction) == (color, shape, direction)
    assert plain[i].label == class_id(color, shape, direction)
  assert shapes_tokenizer().vocab == ("a", "moving", "red", "green", "blue", "yellow", "magenta", "cyan", "white",
                                      "circle", "square", "triangle", "left", "right", "up", "down")
  config = load_config_file("experiments/shapes_t2v.py", "runlocal")
  source = ShapesSource(config.data)
  assert "extra_colors" not in source.fingerprint() and source.caption_tokenizer(8) == shapes_tokenizer(8)
  assert list(evaluation.eval_prompts(config)) == ["seen", "held_out"]


def test_extra_colors_render_caption_and_mix():
  dataset = ShapesDataset(split="train", seed=0, extra_colors=ORANGE, extra_color_fraction=0.5, **GEOMETRY)
  clips = [dataset[i] for i in range(400)]
  orange = [c for c in clips if c.color == "orange"]
  assert 0.42 < len(orange) / len(clips) < 0.58  # half of the clips, drawn per clip
  assert {c.color for c in clips} == {*COLORS, "orange"}
  for c in orange[:5]:
    assert c.label == -1 and c.caption.startswith("a orange ")
    brightest = c.video.reshape(-1, 3)[np.argmax(c.video.reshape(-1, 3).sum(axis=1))]
    np.testing.assert_array_equal(brightest, (255, 128, 0))
  assert all(c.label >= 0 for c in clips if c.color != "orange")
  every = ShapesDataset(split="train", seed=0, extra_colors=ORANGE, **GEOMETRY)
  assert len(every.combinations) == 8 * 3 * 4  # no fraction: uniform over every combination
  only = ShapesDataset(split="train", seed=0, extra_colors=ORANGE, extra_color_fraction=1.0, **GEOMETRY)
  assert {only[i].color for i in range(30)} == {"orange"}
  held = ShapesDataset(split="held_out", seed=0, extra_colors=ORANGE, held_out=("orange circle up",), **GEOMETRY)
  assert held.combinations == [("orange", "circle", "up")]

  tokenizer = ShapesSource(dict(name="shapes", num_frames=17, height=64, width=64, held_out=(), seed=0,
                                extra_colors=ORANGE)).caption_tokenizer(8)
  assert tokenizer.vocab == (*shapes_tokenizer().vocab, "orange")  # old ids unchanged, the new word last
  ids, _ = tokenizer(["a orange circle moving up"])
  assert ids[0, 1] == tokenizer.vocab_size - 1


@pytest.mark.parametrize("bad, message", [
    (dict(extra_colors={"red": (200, 0, 0)}), "already a caption word"),
    (dict(extra_colors={"Orange": (255, 128, 0)}), "one lower-case word"),
    (dict(extra_colors={"orange": (255, 128)}), r"3 integer levels"),
    (dict(extra_colors={"orange": (0, 0, 0)}), "not all 0"),
    (dict(extra_color_fraction=0.5), "needs extra_colors"),
    (dict(extra_colors=ORANGE, extra_color_fraction=1.5), r"must be in \[0, 1\]"),
])
def test_bad_extra_colors_are_refused(bad, message):
  with pytest.raises(ValueError, match=message):
    ShapesDataset(split="train", **bad)


def test_the_extended_palette_reads_degraded_ground_truth():
  """Every calibration condition, on rendered clips of the old colors and the new one: the palette's thresholds are
  the ground-truth calibrated ones, and orange (half-way between red and yellow) stays apart from both."""
  palette = {**COLORS, **ORANGE}
  dataset = ShapesDataset(split="train", seed=5, extra_colors=ORANGE, extra_color_fraction=0.5, **GEOMETRY)
  clips = [dataset[i] for i in range(24)]
  assert {c.color for c in clips} >= {"orange", "red", "yellow"}
  for condition in calibrate.CONDITIONS:
    rng = np.random.default_rng(17)
    videos = [calibrate.degrade(c.video, condition, rng) for c in clips]
    result = prompt_following(videos, [c.caption for c in clips], palette)
    wrong = [e["predicted"] for e in result["examples"] if not e["correct"]["color"]]
    assert result["color"] == 1.0, (condition, wrong)
  # Without the palette an orange clip is none of the 7 colors; with it, a red clip is still red.
  orange = next(c for c in clips if c.color == "orange")
  red = next(c for c in clips if c.color == "red")
  assert analyze_clip(orange.video).color == "none" and analyze_clip(orange.video, palette).color == "orange"
  assert analyze_clip(red.video, palette).color == "red"
  with pytest.raises(ValueError, match="'yellow' and 'amber' differ by 0.25"):
    color_patterns({**COLORS, "amber": (255, 191, 0)})
  with pytest.raises(ValueError, match="unknown color 'orange'"):
    prompt_following([orange.video], [orange.caption])


def test_the_evaluation_reads_extra_colors_as_their_own_split():
  config = load_config_file("experiments/shapes_t2v.py")
  config.data.extra_colors = ORANGE
  config.eval.update(samples_per_combination=2)
  evaluation.validate_eval_config(config)
  prompts = evaluation.eval_prompts(config)
  assert len(set(prompts["extra"])) == 12 and len(prompts["extra"]) == 24
  assert all("orange" in p for p in prompts["extra"]) and not any("orange" in p for p in prompts["seen"])
  assert len(set(prompts["seen"])) == 77 and len(set(prompts["held_out"])) == 7
  config.eval.combinations = ("orange circle left", "red circle right")
  evaluation.validate_eval_config(config)
  assert evaluation.eval_prompts(config)["extra"] == ["a orange circle moving left"] * 2
  config.conditioning = "class"
  with pytest.raises(ConfigError, match="config.data.extra_colors: extra colors have no class ids"):
    evaluation.validate_eval_config(config)
  config.conditioning = "text"
  config.data.extra_colors = {"amber": (255, 191, 0)}
  with pytest.raises(ConfigError, match="config.data.extra_colors: palette colors"):
    evaluation.validate_eval_config(config)
