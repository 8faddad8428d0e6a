"""The "tfds" data source on tiny datasets prepared offline: the real builders of moving_mnist, imagenette and
bair_robot_pushing_small with generated examples in place of their downloads, plus an unregistered captioned one.

Frame t of moving_mnist example i is filled with the value 20 * i + t, so a clip says which example and frames it
took."""

import dataclasses

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import registered

from vidgen.data.sources import get_source
from vidgen.errors import ConfigError, InputError

tfds.disable_progress_bar()


def prepare(builder_cls, data_dir, splits, file_format="array_record", **kwargs):
  """Prepares `builder_cls` (a real builder: its name, version, features) in data_dir from `splits` ({split: examples})
  instead of its download."""
  with registered.skip_registration():

    class Generated(builder_cls):
      name = builder_cls.name

      def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in splits}

      def _generate_examples(self, split):
        yield from enumerate(splits[split])

  Generated(data_dir=str(data_dir), file_format=file_format, **kwargs).download_and_prepare()


with registered.skip_registration():

  class CaptionedClips(tfds.core.GeneratorBasedBuilder):
    """Unregistered: `tfds.builder("captioned_clips", data_dir=...)` reads it from its files alone."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "frames": tfds.features.Video(shape=(None, 8, 8, 3)), "caption": tfds.features.Text(),
          "label": tfds.features.ClassLabel(names=["Up", "Down"])}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, length in enumerate((6, 2, 6, 6)):  # example 1 is too short for a 4-frame clip
        yield i, {"frames": np.full((length, 8, 8, 3), 40 * i, np.uint8), "caption": f"A square moving {i}",
                  "label": i % 2}


MNIST_EXAMPLES = 8


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  frames = lambda i: np.broadcast_to((20 * i + np.arange(20, dtype=np.uint8))[:, None, None, None], (20, 64, 64, 1))
  mnist = [{"image_sequence": np.array(frames(i))} for i in range(MNIST_EXAMPLES)]
  prepare(tfds.builder_cls("moving_mnist"), root, {"test": mnist})
  rng = np.random.default_rng(0)
  images = lambda n, offset: [{"image": np.full((20 + i, 24, 3), 20 * i, np.uint8), "label": (i + offset) % 10}
                              for i in range(n)]
  prepare(tfds.builder_cls("imagenette"), root, {"train": images(12, 0), "validation": images(3, 5)})
  step = lambda t: {"action": np.zeros(4, np.float32), "endeffector_pos": np.zeros(3, np.float32),
                    "image_aux1": np.full((64, 64, 3), 5 * t, np.uint8),
                    "image_main": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)}
  prepare(tfds.builder_cls("bair_robot_pushing_small"), root, {"train": [[step(t) for t in range(30)]] * 2})
  CaptionedClips(data_dir=str(root), file_format="array_record").download_and_prepare()
  return str(root)


def config(data_dir, tfds_name="moving_mnist", **fields):
  return ml_collections.ConfigDict({**dict(name="tfds", tfds_name=tfds_name, data_dir=data_dir, num_frames=4,
                                           height=16, width=16, seed=0), **fields})


def example_ids(video):
  """moving_mnist clips [n, T, H, W, 3] -> the example each came from."""
  return video[:, 0, 0, 0, 0] // 20


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x["video"], y["video"])
    np.testing.assert_array_equal(x["label"], y["label"])
    assert list(x["caption"]) == list(y["caption"])


def test_grayscale_video_batches(data_dir):
  source = get_source(config(data_dir, frame_stride=2))
  source.check()
  batch = next(source.iterator("train", global_batch=3))
  assert batch["video"].shape == (3, 4, 16, 16, 3) and batch["video"].dtype == np.uint8
  v = batch["video"].astype(int)
  assert (v == v[..., :1]).all()  # the 1-channel frames, repeated over RGB
  np.testing.assert_array_equal(np.diff(v[:, :, 0, 0, 0], axis=1), 2)  # frames 2 apart, of one example
  assert list(batch["label"]) == [-1] * 3 and list(batch["caption"]) == [""] * 3
  assert source.num_classes == 0 and source.class_factors == ()


def test_image_classification_batches_and_classes(data_dir):
  source = get_source(config(data_dir, "imagenette", num_frames=1, height=8, width=8, flip=True, crop="random"))
  batch = next(source.iterator("train", global_batch=5))
  assert batch["video"].shape == (5, 1, 8, 8, 3) and batch["video"].dtype == np.uint8
  assert batch["label"].dtype == np.int32 and ((0 <= batch["label"]) & (batch["label"] < 10)).all()
  assert source.num_classes == 10
  first = source.class_names[0]
  assert source.class_of(first) == 0 and source.class_of(first.upper()) == 0
  assert source.class_of("3") == 3 and source.class_of("class 7") == 7
  with pytest.raises(InputError, match="'zebra' names no class of imagenette"):
    source.class_of("zebra")
  with pytest.raises(ConfigError, match="caption_key"):
    source.caption_tokenizer(8)


def test_eval_clips_are_fixed_and_read_the_eval_split(data_dir):
  source = get_source(config(data_dir, "imagenette", num_frames=1, eval_split="validation", flip=True))
  clips = source.clips("validation", 3)
  stored = tfds.data_source("imagenette", split="validation", data_dir=data_dir, download=False)
  np.testing.assert_array_equal(clips["label"], [e["label"] for e in stored])  # the validation examples, in order
  assert_same_batches([clips], [source.clips("validation", 3)])
  assert source.clips("train", 2)["video"].shape == (2, 1, 16, 16, 3)
  with pytest.raises(ConfigError, match="has only 3 usable clips, 4 are wanted"):
    source.clips("validation", 4)


def test_process_shards_are_disjoint_and_cover_the_split(data_dir):
  shards = [get_source(config(data_dir, num_frames=1)).iterator("train", global_batch=8, shard_index=i, shard_count=2)
            for i in range(2)]
  ids = [set(example_ids(next(it)["video"]).tolist()) for it in shards]  # one batch = one epoch of a shard
  assert ids[0].isdisjoint(ids[1]) and ids[0] | ids[1] == set(range(MNIST_EXAMPLES))


def test_resumed_iterator_continues_the_exact_stream(data_dir):
  source = get_source(config(data_dir, crop="random", flip=True))
  it = source.iterator("train", global_batch=3)
  take(it, 2)
  state = it.get_state()
  expected = take(it, 3)
  resumed = get_source(config(data_dir, crop="random", flip=True)).iterator("train", global_batch=3)
  resumed.set_state(state)
  assert_same_batches(take(resumed, 3), expected)


def test_worker_processes_give_the_same_batches(data_dir):
  in_process = get_source(config(data_dir)).iterator("train", global_batch=3)
  workers = get_source(config(data_dir, num_workers=1)).iterator("train", global_batch=3)
  try:
    assert_same_batches(take(workers, 4), take(in_process, 4))
  finally:
    workers.close()


def test_crop_overrides_and_sequence_features(data_dir):
  source = get_source(config(data_dir, "bair_robot_pushing_small"))  # image_aux1: an Image inside a Sequence
  batch = next(source.iterator("train", global_batch=2, crop_size=8, crop_grid=4, num_frames=3))
  assert batch["video"].shape == (2, 3, 8, 8, 3)
  assert (np.diff(batch["video"][:, :, 0, 0, 0].astype(int), axis=1) == 5).all()
  with pytest.raises(TypeError, match="unknown clip overrides"):
    source.iterator("train", global_batch=2, num_frame=3)


def test_captions_labels_and_skipped_short_videos(data_dir):
  source = get_source(config(data_dir, "captioned_clips", video_key="frames", caption_key="caption",
                             label_key="label", offset="start", max_skip_fraction=0.5))
  assert source.num_classes == 2 and source.class_of("up") == 0
  stored = [e for e in tfds.data_source("captioned_clips", split="train", data_dir=data_dir, download=False)
            if len(e["frames"]) >= 4]  # example 1 is too short and passed over
  clips = source.clips("train", 3)
  assert list(clips["caption"]) == [e["caption"].decode() for e in stored]
  np.testing.assert_array_equal(clips["label"], [e["label"] for e in stored])
  np.testing.assert_array_equal(clips["video"][:, 0, 0, 0, 0], [e["frames"][0][0, 0, 0] for e in stored])
  tokenizer = source.caption_tokenizer(6)
  assert set(tokenizer.vocab) == {"a", "square", "moving", "0", "1", "2", "3"}
  it = source.iterator("train", global_batch=2)
  take(it, 3)
  assert it.stats()["data_skipped"] >= 1


def test_fingerprint_follows_what_decides_the_stream(data_dir):
  base = get_source(config(data_dir)).fingerprint()
  assert base == get_source(config(data_dir)).fingerprint()
  assert base["examples"] == MNIST_EXAMPLES and base["full_name"] == "moving_mnist/1.0.0"
  for change in (dict(seed=1), dict(frame_stride=2), dict(video_key="image_sequence", split="test[:4]")):
    assert get_source(config(data_dir, **change)).fingerprint() != base


def test_config_errors_name_the_field(data_dir):
  with pytest.raises(ConfigError, match=r"config\.data\.video_key: 'kinetics_xyz' is not one of the datasets"):
    get_source(config(data_dir, "kinetics_xyz"))
  with pytest.raises(ConfigError, match=r"config\.data\.video_key: set video_key or image_key, not both"):
    get_source(config(data_dir, video_key="a", image_key="b"))
  with pytest.raises(ConfigError, match=r"config\.data\.source_fps"):
    get_source(config(data_dir, fps=8.0))
  assert get_source(config(data_dir, "ucf101", fps=8.0)).source_fps == 25.0
  with pytest.raises(ConfigError, match=r"config\.data\.num_frames: imagenette holds images"):
    get_source(config(data_dir, "imagenette"))
  with pytest.raises(ConfigError, match=r"config\.data\.max_skip_fraction"):
    get_source(config(data_dir, max_skip_fraction=1.5))


def test_check_refuses_unusable_datasets(data_dir, tmp_path):
  missing = get_source(config(str(tmp_path / "empty")))
  with pytest.raises(ConfigError, match=r"config\.data\.tfds_name / config\.data\.data_dir: 'moving_mnist' is not "
                                        r"prepared in .*tfds build moving_mnist"):
    missing.check()
  with pytest.raises(ConfigError, match=r"config\.data\.tfds_name: 'no_such_dataset_xyz' is not a TensorFlow"):
    get_source(config(data_dir, "no_such_dataset_xyz", video_key="video")).check()
  with pytest.raises(ConfigError, match=r"config\.data\.video_key: 'frames' is not a feature of moving_mnist; its "
                                        r"features: \['image_sequence \(sequence of Image\)'\]"):
    get_source(config(data_dir, video_key="frames")).check()
  with pytest.raises(ConfigError, match=r"config\.data\.image_key: 'image_sequence' is not an Image"):
    get_source(config(data_dir, image_key="image_sequence", num_frames=1)).check()
  with pytest.raises(ConfigError, match=r"config\.data\.label_key: 'image' is not a ClassLabel"):
    get_source(config(data_dir, "imagenette", num_frames=1, label_key="image")).check()
  with pytest.raises(ConfigError, match=r"config\.data\.eval_split: 'validation' is not a split of moving_mnist "
                                        r"\(\['test'\]\)"):
    get_source(config(data_dir, eval_split="validation")).check()


def test_check_refuses_a_dataset_without_random_access(tmp_path):
  blank = {"image_sequence": np.zeros((20, 64, 64, 1), np.uint8)}
  prepare(tfds.builder_cls("moving_mnist"), tmp_path, {"test": [blank]}, file_format="tfrecord")
  with pytest.raises(ConfigError, match=r"config\.data\.data_dir: 'moving_mnist' .* is stored as tfrecord, which has "
                                        r"no random access; prepare it again with `tfds build moving_mnist"):
    get_source(config(str(tmp_path))).check()


def test_transform_pickles_for_worker_processes(data_dir):
  import pickle

  source = get_source(config(data_dir))
  transform = source._transform("train", crop_size=8)
  clone = pickle.loads(pickle.dumps(transform))
  assert dataclasses.asdict(clone.load) == dataclasses.asdict(transform.load)
  rng = lambda: np.random.default_rng(3)
  np.testing.assert_array_equal(clone(2, rng())["video"], transform(2, rng())["video"])
