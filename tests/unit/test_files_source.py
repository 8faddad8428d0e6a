"""The "files" data source on media written by tests/media_files.py: every container and image mode, broken files
skipped with a reason or handled by policy, manifests, clip sampling (segments, fps, stride, offsets, crops, flips),
class folders, sharding, resumable and deterministic streams, and the scikit-image photo clips."""

import itertools
import json
import os
import re
import shutil
import sys

import media_files as mf
import numpy as np
import pytest
from ml_collections import ConfigDict

from vidgen.data.decode import read_clip
from vidgen.data.loader import DataError
from vidgen.data.records import scan
from vidgen.data.sampling import BadRecord, ClipSpec, to_rgb
from vidgen.data.sources import get_source
from vidgen.errors import ConfigError, InputError

FPS, FRAMES = 12, 24  # every counting video: 24 frames at 12 fps (the GIF at 10 fps)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
  """Test media written once: good/ (a counting video per container, captioned), images/, broken/, odd/."""
  root = tmp_path_factory.mktemp("media")
  good = mf.write_good_videos(str(root / "good"), FRAMES, FPS)
  for ext, path in good.items():
    mf.write_caption(path, f"a counting {ext} video")
  return {"root": str(root), "good": good, "images": mf.write_images(str(root / "images")),
          "broken": mf.write_broken(str(root / "broken"), FRAMES, FPS), "odd": mf.write_odd_sized(str(root / "odd"))}


def files_source(path, **data):
  defaults = dict(name="files", path=str(path), num_frames=5, height=32, width=32, seed=0)
  return get_source(ConfigDict({**defaults, **data}))


def read(path, rng=0, *, start=None, end=None, **spec):
  """read_clip of the [start, end) s segment with a 5-frame 32x32 spec from the first frame unless `spec` says
  otherwise."""
  spec = ClipSpec(**{**dict(num_frames=5, height=32, width=32, offset="start"), **spec})
  return read_clip(path, spec, np.random.default_rng(rng), start=start, end=end)


def copy_tree(paths, directory):
  """Copies files (and their sidecar captions) into a fresh directory: each listing test scans a path of its own."""
  os.makedirs(directory)
  for path in paths:
    shutil.copy(path, directory)
    caption = os.path.splitext(path)[0] + ".txt"
    if os.path.exists(caption):
      shutil.copy(caption, directory)
  return str(directory)


def take(loader, n):
  return [next(loader) for _ in range(n)]


def assert_batches_equal(a, b):
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x["video"], y["video"])
    assert list(x["caption"]) == list(y["caption"]) and list(x["label"]) == list(y["label"])


# -- decoding: containers, image modes, broken files ------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["mp4", "webm", "mov", "avi", "mkv", "gif"])
def test_every_container_gives_the_sampled_frames(media, ext):
  path = media["good"][ext]
  clip = read(path)
  assert clip.shape == (5, 32, 32, 3) and clip.dtype == np.uint8
  np.testing.assert_array_equal(mf.frame_numbers(clip), [0, 1, 2, 3, 4])
  # The centred clip of 24 frames: room 24 - 5 = 19 frames, first frame floor(9.5). Seeks past key frames.
  np.testing.assert_array_equal(mf.frame_numbers(read(path, offset="center")), [9, 10, 11, 12, 13])
  # The whole video, last frame included (Matroska / WebM store durations rounded to milliseconds).
  np.testing.assert_array_equal(mf.frame_numbers(read(path, num_frames=FRAMES)), np.arange(FRAMES))


@pytest.mark.parametrize("ext", ["mkv", "webm", "mp4"])
def test_a_longer_audio_track_does_not_lengthen_the_video(tmp_path, ext):
  path = mf.write_video_with_audio(str(tmp_path / f"talk.{ext}"), mf.counting_frames(FRAMES), FPS, audio_seconds=3.0)
  for seed in range(10):  # random offsets near the end: only the 24 video frames exist, not 36
    numbers = mf.frame_numbers(read(path, seed, offset="random"))
    assert 0 <= numbers[0] <= FRAMES - 5 and (np.diff(numbers) == 1).all()
  np.testing.assert_array_equal(mf.frame_numbers(read(path, num_frames=FRAMES)), np.arange(FRAMES))


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_odd_frame_sizes(media, ext):
  clip = read(media["odd"][ext], num_frames=8)  # 33x47 frames: resized to cover 32x32, then centre-cropped
  assert clip.shape == (8, 32, 32, 3)
  np.testing.assert_array_equal(mf.frame_numbers(clip), np.arange(8))


def test_image_modes_become_rgb_uint8(media):
  images = media["images"]
  clips = {name: read(path, num_frames=1)[0] for name, path in images.items()}
  for name, frame in clips.items():
    assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8, name
  assert (clips["gray"] == 100).all()
  assert (clips["gray16"] == round(40000 / 65535 * 255)).all()
  np.testing.assert_array_equal(clips["rgba"][:, :15], np.broadcast_to(mf.RGBA_COLOR, (32, 15, 3)))
  assert (clips["rgba"][:, 17:] == 0).all()  # transparent: black, whatever colour lies under it
  np.testing.assert_array_equal(clips["palette"][:, :15], np.broadcast_to(mf.PALETTE_COLORS[0], (32, 15, 3)))
  np.testing.assert_array_equal(clips["palette"][:, 17:], np.broadcast_to(mf.PALETTE_COLORS[1], (32, 15, 3)))
  assert (clips["tiny"] == mf.TINY_COLOR).all()  # a 1x1 image is stretched to the whole frame
  for lossy in ("jpg", "webp"):
    assert np.abs(clips[lossy].astype(int) - clips["png"]).max() <= 12, lossy
  assert clips["odd"].shape == (32, 32, 3)


def test_an_image_is_a_clip_only_when_one_frame_or_padded(media):
  with pytest.raises(BadRecord, match="too short: 1 frames"):
    read(media["images"]["png"])
  clip = read(media["images"]["png"], short_clips="pad")
  assert clip.shape == (5, 32, 32, 3) and (clip == clip[:1]).all()


def test_to_rgb_never_gives_nan_or_out_of_range_values():
  gray = np.array([[[np.nan, np.inf], [-np.inf, 0.5]], [[2.0, -1.0], [1.0, 0.0]]], np.float32)  # [T=2, H=2, W=2]
  rgb = to_rgb(gray)
  assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 2, 3)
  np.testing.assert_array_equal(rgb[..., 0], [[[0, 0], [0, 128]], [[255, 0], [255, 0]]])
  assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
  luminance_alpha = np.stack([np.full((1, 2, 2), 1.0), np.array([[[np.nan, 0.5], [1.0, np.inf]]])], -1)
  np.testing.assert_array_equal(to_rgb(luminance_alpha.astype(np.float32))[0, ..., 0], [[0, 128], [255, 0]])
  np.testing.assert_array_equal(to_rgb(np.full((1, 1, 1), 65535, np.uint16)), np.full((1, 1, 1, 3), 255))
  with pytest.raises(BadRecord, match="shape"):
    to_rgb(np.zeros((1, 2, 2, 5), np.float32))


@pytest.mark.parametrize("name, skip_reason, padded", [
    ("corrupt", "unreadable video", None),
    ("text", "unreadable video", None),
    ("empty", "empty file", None),
    ("absurd", "stated duration", None),
    ("short", "too short: 3 frames at 12 fps", [0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]),
    ("truncated", "truncated: the container promises 24 frames", "prefix"),
])
def test_broken_files_are_skipped_with_a_reason_or_padded(media, name, skip_reason, padded):
  path = media["broken"][name]
  with pytest.raises(BadRecord, match=skip_reason):
    read(path, num_frames=12)
  if padded is None:
    with pytest.raises(BadRecord, match=skip_reason):
      read(path, num_frames=12, short_clips="pad")
    return
  numbers = mf.frame_numbers(read(path, num_frames=12, short_clips="pad"))
  if padded == "prefix":  # the frames before the cut, then the last of them repeated
    decoded = int(numbers.max()) + 1
    assert 3 <= decoded < 12
    np.testing.assert_array_equal(numbers, np.minimum(np.arange(12), decoded - 1))
  else:
    np.testing.assert_array_equal(numbers, padded)


# -- sampling: segments, fps, stride, offsets, crops, flips -----------------------------------------------------------


def test_segments_fps_and_stride_select_frames(media):
  mp4 = media["good"]["mp4"]
  np.testing.assert_array_equal(mf.frame_numbers(read(mp4, start=0.5, end=1.5)), [6, 7, 8, 9, 10])
  # [0.25, 1) s is frames 3..11; centred: room 9 - 5 = 4, so segment frames 2..6.
  np.testing.assert_array_equal(mf.frame_numbers(read(mp4, offset="center", start=0.25, end=1.0)), [5, 6, 7, 8, 9])
  np.testing.assert_array_equal(mf.frame_numbers(read(mp4, fps=6)), [0, 2, 4, 6, 8])  # 12 -> 6 fps: stride 2
  np.testing.assert_array_equal(mf.frame_numbers(read(mp4, fps=8)), [0, 1, 3, 4, 6])  # stride 1.5, floored
  np.testing.assert_array_equal(mf.frame_numbers(read(mp4, frame_stride=3)), [0, 3, 6, 9, 12])
  np.testing.assert_array_equal(mf.frame_numbers(read(media["good"]["gif"], fps=5)), [0, 2, 4, 6, 8])  # 10 fps GIF
  with pytest.raises(BadRecord, match="too short"):
    read(mp4, frame_stride=6)  # 4 strides of 6 need 25 frames


def test_random_offsets_are_consecutive_and_vary(media):
  starts = set()
  for seed in range(8):
    numbers = mf.frame_numbers(read(media["good"]["mp4"], seed, offset="random"))
    np.testing.assert_array_equal(np.diff(numbers), 1)
    assert 0 <= numbers[0] <= FRAMES - 5
    starts.add(int(numbers[0]))
  assert len(starts) >= 4


def test_centre_and_random_crops_and_flips(media):
  png = media["images"]["png"]  # 32x64, red = 4 * column: no resize, only the crop's column offset differs
  column = lambda clip: int(clip[0, 0, 0, 0]) // 4  # noqa: E731
  assert column(read(png, num_frames=1)) == 16
  offsets = {column(read(png, seed, num_frames=1, crop="random")) for seed in range(8)}
  assert len(offsets) >= 4 and all(0 <= o <= 32 for o in offsets)
  flipped = 0
  for seed in range(8):
    red = read(png, seed, num_frames=1, flip=True)[0, 0, :, 0].astype(int)
    assert (np.diff(red) == 4).all() or (np.diff(red) == -4).all()
    flipped += int(red[0] > red[-1])
    assert (np.diff(read(png, seed, num_frames=1)[0, 0, :, 0].astype(int)) == 4).all()  # no flip unless asked
  assert 0 < flipped < 8


# -- listings: directories, manifests, classes ---------------------------------------------------------------------


def test_nothing_usable_is_refused_by_check_naming_the_path(media, tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ConfigError, match=re.escape(f"config.data.path: {empty} holds no usable")):
    files_source(empty).check()
  notes = tmp_path / "notes"
  notes.mkdir()
  (notes / "readme.txt").write_text("no media here")
  with pytest.raises(ConfigError, match=re.escape(str(notes))):
    files_source(notes).check()
  manifest = tmp_path / "bad.jsonl"
  manifest.write_text('{"path": "missing.mp4"}\n{"caption": "no path"}\n')
  refused = re.escape(str(manifest)) + " holds no usable .*left out: .*missing.mp4: file not found"
  with pytest.raises(ConfigError, match=refused):
    files_source(manifest).check()
  with pytest.raises(ConfigError, match="does not exist"):
    files_source(tmp_path / "nowhere").check()


def test_csv_manifest_problems_relative_paths_segments_and_labels(media, tmp_path):
  good = media["good"]
  manifests = tmp_path / "manifests"
  manifests.mkdir()
  rel = lambda p: os.path.relpath(p, manifests)  # noqa: E731
  rows = [
      "path,caption,start,end,fps,label",
      f"{rel(good['mp4'])},a counting video,0.25,1.0,,cat",
      ",no path,,,,",
      f"{rel(os.path.join(media['root'], 'good', 'missing.mp4'))},gone,,,,",
      f"{rel(good['mkv'])},bad start,abc,,,",
      f"{rel(good['webm'])},negative,-1,,,",
      f"{rel(good['avi'])},backwards,1.0,0.5,,",
      f"{rel(good['mov'])},infinite fps,,,inf,",
      f"{rel(media['images']['gray'])},  a   gray image ,,,,dog",
  ]
  manifest = manifests / "list.csv"
  manifest.write_text("\n".join(rows) + "\n")
  catalog = scan(str(manifest))
  assert [r.path for r in catalog.records] == [good["mp4"], media["images"]["gray"]]  # resolved from the manifest
  assert [r.caption for r in catalog.records] == ["a counting video", "a gray image"]
  assert (catalog.records[0].start, catalog.records[0].end) == (0.25, 1.0)
  assert catalog.class_names == ("cat", "dog") and [r.label for r in catalog.records] == [0, 1]
  problems = dict(catalog.problems)
  assert list(problems) == [f"{manifest}:{line}" for line in (3, 4, 5, 6, 7, 8)]
  assert problems[f"{manifest}:3"] == "no path"
  assert problems[f"{manifest}:4"].endswith("missing.mp4: file not found")
  assert "could not convert" in problems[f"{manifest}:5"]
  assert "start='-1' must be a finite number >= 0" in problems[f"{manifest}:6"]
  assert "end=0.5 is not after start=1" in problems[f"{manifest}:7"]
  assert "fps='inf'" in problems[f"{manifest}:8"]
  # Through the source: the segment's frames 3..11, centred (eval clips), and the labels.
  batch = files_source(manifest).clips("train", 2, short_clips="pad")
  np.testing.assert_array_equal(mf.frame_numbers(batch["video"][0]), [5, 6, 7, 8, 9])
  assert list(batch["label"]) == [0, 1] and list(batch["caption"]) == ["a counting video", "a gray image"]


def test_jsonl_manifest(media, tmp_path):
  lines = [json.dumps({"path": media["good"]["mp4"], "caption": "absolute", "label": 3, "fps": 24}), "",
           "not json", json.dumps([1, 2]), json.dumps({"path": os.path.relpath(media["good"]["gif"], tmp_path),
                                                        "start": 0.2, "label": "1"})]
  manifest = tmp_path / "list.jsonl"
  manifest.write_text("\n".join(lines) + "\n")
  catalog = scan(str(manifest))
  assert [r.path for r in catalog.records] == [media["good"]["mp4"], media["good"]["gif"]]
  assert catalog.records[0].fps == 24 and catalog.records[1].start == 0.2
  assert catalog.class_names == () and catalog.num_classes == 4 and [r.label for r in catalog.records] == [3, 1]
  assert [why.split(" (")[0] for _, why in catalog.problems] == ["not JSON", "not a JSON object"]
  assert [where for where, _ in catalog.problems] == [f"{manifest}:3", f"{manifest}:4"]


def test_imagenet_layout_labels_and_class_of(media, tmp_path):
  images = media["images"]
  root = tmp_path / "classes"
  copy_tree([images["gray"], images["png"]], root / "zebra")
  copy_tree([images["tiny"]], root / "ant")
  source = files_source(root, num_frames=1)
  source.check()
  assert source.catalog.class_names == ("ant", "zebra") and source.num_classes == 2
  by_file = {os.path.basename(r.path): r.label for r in source.catalog.records}
  assert by_file == {"tiny.png": 0, "gradient.png": 1, "gray.png": 1}
  assert list(source.clips("train", 3)["label"]) == [0, 1, 1]  # listing order: sorted paths
  assert source.class_of("zebra") == 1 and source.class_of("0") == 0
  with pytest.raises(InputError, match="names no class"):
    source.class_of("giraffe")


# -- the loader: skips, sharding, resuming, evaluation clips ---------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_dir(media, tmp_path_factory):
  """8 good videos (6 containers, 2 odd-sized) and the 6 broken files; 5 of them are skipped for 5-frame clips."""
  root = tmp_path_factory.mktemp("mixed") / "mixed"
  return copy_tree([*media["good"].values(), *media["odd"].values(), *media["broken"].values()], root)


def test_bad_records_are_warned_about_counted_and_bounded(mixed_dir, caplog):
  loader = files_source(mixed_dir, max_skip_fraction=0.6, offset="start").iterator("train", global_batch=2)
  batches = take(loader, 10)  # 20 good clips: more than two passes over the 14 records
  assert all(b["video"].shape == (2, 5, 32, 32, 3) for b in batches)
  stats = loader.stats()
  assert stats["data_read"] - stats["data_skipped"] == 20 and stats["data_skipped"] >= 10
  warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data: skipped")]
  reasons = {"corrupt.mp4": "unreadable video", "notes.mp4": "unreadable video", "empty.mp4": "empty file",
             "short.mp4": "too short", "absurd.mp4": "stated duration"}
  assert len(warnings) == len(reasons)  # once per record, however often it is read
  for name, reason in reasons.items():
    assert any(f"{os.path.join(mixed_dir, name)}: {reason}" in w for w in warnings), name
  assert len(loader.examples) == 5 and all(e.startswith(mixed_dir) for e in loader.examples)
  # Padding short clips: the 3-frame video is used, the truncated one when the clip starts before the cut.
  caplog.clear()
  loader = files_source(mixed_dir, max_skip_fraction=0.6, short_clips="pad").iterator("train", global_batch=1)
  take(loader, 20)
  warned = {os.path.basename(r.getMessage().split(": ")[1]) for r in caplog.records
            if r.getMessage().startswith("data: skipped")}
  always = {"corrupt.mp4", "notes.mp4", "empty.mp4", "absurd.mp4"}
  assert always <= warned <= always | {"truncated.mp4"}


def test_too_many_skips_stop_with_a_data_error_listing_examples(mixed_dir, media, tmp_path):
  loader = files_source(mixed_dir, max_skip_fraction=0.2, offset="start").iterator("train", global_batch=1)
  with pytest.raises(DataError, match=r"of the \d+ records read were skipped, more than config.data.max_skip_"
                     r"fraction=0.2; for example:\n  .*(corrupt|notes|empty|short|absurd)\.mp4: "):
    take(loader, 20)
  broken_only = copy_tree(media["broken"].values(), tmp_path / "broken_only")
  source = files_source(broken_only, offset="center")  # the centre of the truncated video lies past its cut
  source.check()  # the listing is fine; the files are not
  with pytest.raises(DataError, match="6 of the 6 records read were skipped"):
    next(source.iterator("train", global_batch=1))


def test_shards_are_disjoint_and_cover_the_records(media, tmp_path):
  root = tmp_path / "shards"
  root.mkdir()
  for i in range(7):
    path = shutil.copy(media["good"]["mp4"], root / f"clip{i}.mp4")
    mf.write_caption(str(path), f"clip {i}")
  source = files_source(root)
  seen = []
  for shard in range(2):
    loader = source.iterator("train", global_batch=2, shard_index=shard, shard_count=2)
    seen.append({str(b["caption"][0]) for b in take(loader, loader.shard_size)})
  assert [len(s) for s in seen] == [4, 3] and not seen[0] & seen[1]
  assert seen[0] | seen[1] == {f"clip {i}" for i in range(7)}


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_continues_the_same_stream(mixed_dir, num_workers):
  config = dict(max_skip_fraction=0.9, crop="random", flip=True, num_workers=num_workers)
  loader = files_source(mixed_dir, **config).iterator("train", global_batch=2)
  first = take(loader, 3)
  state = json.loads(json.dumps(loader.get_state()))  # what a checkpoint stores
  expected = take(loader, 4)
  loader.close()
  resumed = files_source(mixed_dir, **config).iterator("train", global_batch=2)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 4), expected)
  assert resumed.stats() == loader.stats()
  position = resumed.get_state()  # rewinding a live iterator (the train loop peeks at one batch to compile)
  peeked = take(resumed, 2)
  resumed.set_state(position)
  assert_batches_equal(take(resumed, 2), peeked)
  resumed.close()
  other = files_source(mixed_dir, **{**config, "num_workers": 1 - num_workers}).iterator("train", global_batch=2)
  with pytest.raises(DataError, match=f"saved with config.data.num_workers={num_workers}, this run has "):
    other.set_state(state)
  if num_workers:  # decoding in worker processes yields the in-process stream
    assert_batches_equal(take(other, 7), first + expected)
  other.close()


def test_eval_clips_are_deterministic(media):
  config = dict(crop="random", flip=True, offset="random", eval_records=3)
  good = os.path.dirname(media["good"]["mp4"])
  source = files_source(good, **config)
  clips = source.clips("validation", 3)
  again = files_source(good, **config).clips("validation", 3)
  assert_batches_equal([clips], [again])
  assert clips["video"].shape == (3, 5, 32, 32, 3) and all(c.startswith("a counting ") for c in clips["caption"])
  assert len(source.splits["validation"]) == 3 and not set(source.splits["validation"]) & set(source.splits["train"])
  with pytest.raises(ConfigError, match="has only"):
    source.clips("validation", 4)


# -- photo clips ------------------------------------------------------------------------------------------------------


def test_photo_clips_read_through_the_files_source(tmp_path):
  pytest.importorskip("skimage")
  from vidgen.data import photo_clips
  from vidgen.media import read_video

  assert not set(photo_clips.TRAIN_PHOTOS) & set(photo_clips.HELD_OUT_PHOTOS)
  assert set(photo_clips.TRAIN_PHOTOS) | set(photo_clips.HELD_OUT_PHOTOS) == set(photo_clips.PHOTOS)
  paths = photo_clips.write_photo_clips(str(tmp_path / "train"), photos=("astronaut", "camera"), clips_per_photo=3,
                                        num_frames=8, height=32, width=48, seed=1)
  assert len(paths) == 6 and all(os.path.isfile(os.path.splitext(p)[0] + ".txt") for p in paths)
  batch = files_source(tmp_path / "train", num_frames=8, height=32, width=48).clips("train", 6)
  video = batch["video"].astype(np.float32)
  assert video.shape == (6, 8, 32, 48, 3)
  subjects = [c.split(" photograph of ")[-1] for c in batch["caption"]]
  assert subjects == ["an astronaut"] * 3 + ["a man with a camera"] * 3
  assert all(c.startswith("a slow ") for c in batch["caption"])
  assert np.abs(video[3:, ..., 0] - video[3:, ..., 2]).max() <= 6  # the black and white photograph stays gray
  step = np.abs(np.diff(video, axis=1)).mean(axis=(2, 3, 4))  # [clip, frame]
  whole = np.abs(video[:, -1] - video[:, 0]).mean(axis=(1, 2, 3))
  assert (step > 0.5).all() and (step.max(axis=1) < whole).all()  # every frame moves, and the motion is continuous
  # Written clips depend only on (seed, photograph, clip): again with another photograph list, the same clip. Compared
  # decoded, within H.264's rounding (encoders may differ in the last bits between runs); another clip is far off.
  again = photo_clips.write_photo_clips(str(tmp_path / "again"), photos=("camera",), clips_per_photo=1, num_frames=8,
                                        height=32, width=48, seed=1)
  same = np.abs(read_video(again[0]).astype(np.float32) - read_video(paths[3])).mean()
  other = np.abs(read_video(paths[4]).astype(np.float32) - read_video(paths[3])).mean()
  assert same < 1.5 and other > 8 * same + 4, (same, other)
  written = photo_clips.main([str(tmp_path / "cli"), "--held-out", "--clips-per-photo", "1", "--frames", "2",
                              "--size", "16x16"])
  assert {os.path.basename(p).split("_")[0] for p in written["held_out"]} == set(photo_clips.HELD_OUT_PHOTOS)
  assert sorted(os.listdir(tmp_path / "cli")) == ["held_out", "train"]


def test_photo_windows_stay_inside_the_photograph_and_move_steadily():
  from vidgen.data.photo_clips import MOTIONS, windows

  for (h, w), aspect, motion, frames, seed in itertools.product([(300, 451), (512, 512), (191, 384)], [0.5, 1, 1.5, 3],
                                                                MOTIONS, [1, 2, 16, 64], range(3)):
    boxes = windows((h, w), motion, frames, aspect, np.random.default_rng(seed))
    cx, cy, bw, bh = boxes.T
    assert boxes.shape == (frames, 4) and np.allclose(bw / bh, aspect)
    eps = 1e-6 * max(h, w)
    assert (cx - bw / 2 >= -eps).all() and (cx + bw / 2 <= w + eps).all(), (motion, frames, aspect)
    assert (cy - bh / 2 >= -eps).all() and (cy + bh / 2 <= h + eps).all(), (motion, frames, aspect)
    if frames > 2 and motion.startswith("pan"):
      np.testing.assert_allclose(np.diff(cx if motion in ("pan left", "pan right") else cy, n=2), 0, atol=1e-9)
    elif frames > 2:
      np.testing.assert_allclose(np.diff(np.log(bw), n=2), 0, atol=1e-9)  # a steady zoom: constant ratio per frame


def test_photo_clips_without_scikit_image_say_how_to_install_it(monkeypatch):
  from vidgen.data import photo_clips

  monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage.data now raises ImportError
  monkeypatch.setitem(sys.modules, "skimage.data", None)
  with pytest.raises(ImportError, match="pip install scikit-image"):
    photo_clips.load_photo("cat")


def test_buckets_take_each_file_at_its_native_aspect_ratio_and_duration(tmp_path):
  """With data.buckets every file goes to the bucket of the nearest aspect ratio among those its duration fills
  (images to the 1-frame bucket), and a bucket's stream holds only its files."""
  from PIL import Image

  from vidgen.media import write_video

  rng = np.random.default_rng(0)
  videos = {"wide_long": (20, 32, 64), "wide_short": (6, 32, 64), "tall_long": (20, 64, 32), "square": (20, 48, 48)}
  for name, (t, h, w) in videos.items():
    write_video(tmp_path / f"{name}.mp4", rng.integers(0, 255, (t, h, w, 3), dtype=np.uint8))
    (tmp_path / f"{name}.txt").write_text(name)
  Image.fromarray(rng.integers(0, 255, (40, 80, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
  (tmp_path / "photo.txt").write_text("photo")
  buckets = ((9, 16, 32), (9, 32, 16), (5, 32, 32), (1, 16, 32))
  source = files_source(tmp_path, buckets=buckets)
  source.check()
  names = [os.path.basename(r.path).split(".")[0] for r in source._records("train")]
  # wide_short (6 frames) cannot fill 9 frames: the square 5-frame bucket is the only one its duration fills.
  expected = {"wide_long": 0, "tall_long": 1, "square": 2, "wide_short": 2, "photo": 3}
  assert dict(zip(names, source.bucket_of("train").tolist())) == expected
  for k, (t, h, w) in enumerate(buckets):
    batch = next(iter(source.iterator("train", global_batch=1, num_frames=t, height=h, width=w)))
    assert batch["video"].shape == (1, t, h, w, 3)
    assert {str(c) for c in batch["caption"]} <= {n for n, b in expected.items() if b == k}
  with pytest.raises(ConfigError, match=r"data\.buckets\[0\]: 33x16x32: no training record"):  # no file lasts 33
    files_source(tmp_path, buckets=((33, 16, 32), (9, 32, 16), (5, 32, 32), (1, 16, 32))).check()
