"""The embedded moving-shapes dataset: determinism, attributes matching captions, held-out combinations, resume."""

import itertools

import numpy as np
import pytest

from vidgen.data import ClipIterator, to_model_range, to_uint8
from vidgen.data.shapes import ShapesDataset
from vidgen.data.shapes import COLORS, NUM_CLASSES, class_attributes, class_id, parse_combination


def test_clips_are_deterministic_and_splits_differ():
  a, b = ShapesDataset(), ShapesDataset()
  for i in (0, 7, 123456):
    np.testing.assert_array_equal(a[i].video, b[i].video)
    assert a[i].caption == b[i].caption
  val = ShapesDataset(split="validation")
  assert any(not np.array_equal(a[i].video, val[i].video) for i in range(4))
  assert ShapesDataset(seed=1)[0].caption != a[0].caption or not np.array_equal(ShapesDataset(seed=1)[0].video,
                                                                                  a[0].video)


def test_video_format_and_image_clips():
  clip = ShapesDataset(num_frames=17, height=64, width=48)[3]
  assert clip.video.shape == (17, 64, 48, 3) and clip.video.dtype == np.uint8
  image = ShapesDataset(num_frames=1)[3]
  assert image.video.shape == (1, 64, 64, 3)


@pytest.mark.parametrize("index", range(12))
def test_caption_matches_pixels(index):
  clip = ShapesDataset(num_frames=9)[index]
  assert clip.caption == f"a {clip.color} {clip.shape} moving {clip.direction}"
  assert class_attributes(clip.label) == (clip.color, clip.shape, clip.direction)
  video = clip.video.astype(np.float64)
  # The fully covered pixels carry exactly the saturated RGB corner of the color; the background is black.
  full = np.all(video == np.asarray(COLORS[clip.color]), axis=-1)
  assert full[0].sum() > 20
  mask = video.max(-1) > 0
  assert np.all(video[~mask] == 0)
  # The centroid moves in the captioned direction and not across it.
  ys, xs = np.mgrid[:video.shape[1], :video.shape[2]]
  weight = video.sum(-1)
  cy = (weight * ys).sum((1, 2)) / weight.sum((1, 2))
  cx = (weight * xs).sum((1, 2)) / weight.sum((1, 2))
  dy, dx = cy[-1] - cy[0], cx[-1] - cx[0]
  expected = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}[clip.direction]
  along = dy * expected[0] + dx * expected[1]
  across = abs(dx) if expected[0] else abs(dy)
  assert along > 1.0 and across < 0.05, (clip.caption, dy, dx)


def test_shapes_are_distinguishable_by_fill_ratio():
  ratios = {}
  ds = ShapesDataset(num_frames=1)
  for i in range(60):
    clip = ds[i]
    mask = clip.video[0].max(-1) > 127
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    ratios.setdefault(clip.shape, []).append(mask.sum() / box)
  assert np.mean(ratios["square"]) > 0.9 > np.mean(ratios["circle"]) > 0.7 > np.mean(ratios["triangle"])


def test_held_out_combinations():
  held = ("red circle left", "a blue square moving up")
  train = ShapesDataset(held_out=held)
  seen = {(c.color, c.shape, c.direction) for c in (train[i] for i in range(400))}
  assert ("red", "circle", "left") not in seen and ("blue", "square", "up") not in seen
  assert len(seen) > 60
  held_split = ShapesDataset(split="held_out", held_out=held)
  assert {(c.color, c.shape, c.direction) for c in (held_split[i] for i in range(30))} == {
      ("red", "circle", "left"), ("blue", "square", "up")}


def test_class_ids_cover_all_combinations():
  ids = [class_id(*combo) for combo in itertools.product(COLORS, ("circle", "square", "triangle"),
                                                         ("left", "right", "up", "down"))]
  assert sorted(ids) == list(range(NUM_CLASSES)) and NUM_CLASSES == 84


def test_bad_arguments_are_reported():
  with pytest.raises(ValueError, match="unknown color 'purple'"):
    parse_combination("purple circle left")
  with pytest.raises(ValueError, match="split must be one of"):
    ShapesDataset(split="test")
  with pytest.raises(ValueError, match="no combinations"):
    ShapesDataset(split="held_out")
  with pytest.raises(ValueError, match="class id"):
    class_attributes(84)


def test_iterator_resumes_the_exact_stream():
  ds = ShapesDataset(num_frames=5, height=16, width=16)
  it = ClipIterator(ds, global_batch=3)
  first = [next(it) for _ in range(2)]
  state = it.get_state()
  expected = [next(it)["video"] for _ in range(2)]
  resumed = ClipIterator(ds, global_batch=3)
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["video"], want)
  assert state == {"next_index": 6} and first[0]["video"].shape == (3, 5, 16, 16, 3)


def test_process_shards_reassemble_the_global_batch():
  ds = ShapesDataset(num_frames=1, height=16, width=16)
  whole = next(ClipIterator(ds, global_batch=4))
  parts = [next(ClipIterator(ds, global_batch=4, process_index=p, process_count=2)) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([p["video"] for p in parts]), whole["video"])
  np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), whole["label"])
  with pytest.raises(ValueError, match="divisible"):
    ClipIterator(ds, global_batch=3, process_count=2)


def test_value_range_conversions():
  v = np.array([0, 127, 128, 255], np.uint8)
  x = to_model_range(v)
  assert x.min() == -1.0 and x.max() == 1.0
  np.testing.assert_array_equal(to_uint8(x), v)


def test_crops_are_windows_of_the_whole_clip_with_content_on_the_latent_grid():
  whole = ShapesDataset(num_frames=5)
  cropped = ShapesDataset(num_frames=5, crop_size=32, crop_grid=8)
  offsets = set()
  for i in range(40):
    full, crop = whole[i], cropped[i]
    assert crop.video.shape == (5, 32, 32, 3) and crop.caption == full.caption
    # The crop is one of the grid-aligned windows of the very same clip, and it shows part of the shape.
    matches = [(y, x) for y in range(0, 33, 8) for x in range(0, 33, 8)
               if np.array_equal(full.video[:, y:y + 32, x:x + 32], crop.video)]
    assert matches and crop.video.max() > 0, i
    offsets.update(matches)
    np.testing.assert_array_equal(cropped[i].video, crop.video)  # deterministic
  assert len(offsets) > 5  # the window moves from clip to clip


def test_content_crop_falls_back_to_any_window_and_rejects_bad_sizes():
  from vidgen.data.crops import content_crop
  blank = np.zeros((2, 16, 16, 3), np.uint8)
  assert content_crop(blank, 8, grid=8, rng=np.random.default_rng(0)).shape == (2, 8, 8, 3)
  with pytest.raises(ValueError, match=r"crop size must be in \[1, 16\]"):
    content_crop(blank, 24, grid=8, rng=np.random.default_rng(0))
  with pytest.raises(ValueError, match="crop size"):
    ShapesDataset(height=32, width=32, crop_size=40)


def test_interleaved_image_batches_follow_the_schedule_and_resume_exactly():
  from vidgen.data.interleave import Interleave
  make = lambda: Interleave(ClipIterator(ShapesDataset(num_frames=5, height=16, width=16), global_batch=2),
                            ClipIterator(ShapesDataset(num_frames=1, height=16, width=16), global_batch=3), 3)
  it = make()
  shapes = [next(it)["video"].shape[:2] for _ in range(6)]
  assert shapes == [(2, 5), (2, 5), (3, 1)] * 2
  state = it.get_state()
  expected = [next(it)["video"] for _ in range(4)]
  resumed = make()
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["video"], want)
  assert state == {"next_batch": 6, "main": {"next_index": 8}, "other": {"next_index": 6}}
  with pytest.raises(ValueError, match="every must be >= 2"):
    Interleave(it.main, it.other, 1)


def test_from_config_reads_the_size_range_and_overrides():
  import ml_collections
  data = ml_collections.ConfigDict(dict(num_frames=5, height=64, width=64, held_out=(), seed=3))
  default = ShapesDataset.from_config(data, "train")
  np.testing.assert_array_equal(default[2].video, ShapesDataset(num_frames=5, seed=3)[2].video)
  # Without the optional fields a config means the constructor's defaults; with them, shapes are as large as asked.
  data.min_radius, data.max_radius = 0.3, 0.32
  big = ShapesDataset.from_config(data, "train", num_frames=1)
  small = ShapesDataset.from_config(data.copy_and_resolve_references(), "train", num_frames=1, max_radius=0.31)
  assert big[0].video.shape == (1, 64, 64, 3) and small.max_radius == 0.31
  areas = [(ds[i].video[0].max(-1) > 127).sum() for ds in (big, default) for i in range(8)]
  assert min(areas[:8]) > 1.5 * max(areas[8:])   # radius >= 0.3 of the side against <= 0.2
  data.min_radius = 0.6
  with pytest.raises(ValueError, match="min_radius"):
    ShapesDataset.from_config(data, "train")


def test_data_sources_by_name():
  from vidgen.config import ConfigError
  from vidgen.data.sources import get_source
  from vidgen.errors import InputError

  import ml_collections

  data = ml_collections.ConfigDict(dict(name="shapes", num_frames=5, height=16, width=16, held_out=("red circle left",),
                                        seed=3))
  source = get_source(data)
  assert source.num_classes == NUM_CLASSES and source.class_of("a red circle moving left") == class_id(
      "red", "circle", "left")
  batch = source.dataset("held_out").batch(0, 2)
  assert batch["video"].shape == (2, 5, 16, 16, 3) and set(batch["caption"]) == {"a red circle moving left"}
  tokenizer = source.caption_tokenizer(8)
  assert tokenizer.vocab_size > len(COLORS)
  with pytest.raises(InputError, match="'purple'"):
    source.class_of("a purple circle moving left")
  with pytest.raises(ConfigError, match=r"config\.data\.name: unknown data source 'kinetics'"):
    get_source(ml_collections.ConfigDict({**data, "name": "kinetics"}))
