"""TensorFlow Datasets videos and images as a data source (`config.data.name = "tfds"`; see vidgen.data.sources).

`config.data.tfds_name` names a dataset already prepared under `config.data.data_dir` in a random-access format
(`tfds build NAME --file_format=array_record`); nothing is downloaded. Records are example indices into
`tfds.data_source`, read by grain workers through `vidgen.data.loader.ClipLoader`; each worker opens the split itself
and decodes only the frames a clip takes (TFDS stores a video as one encoded image per frame). Clips are sampled by the
shared `ClipSpec` (vidgen.data.sampling). Splits: "train" is `config.data.split`, "validation" is
`config.data.eval_split` (default: the same split); TFDS slices such as "train[:90%]" work.

config.data fields (besides the ClipSpec fields, seed, num_workers, max_skip_fraction):
  tfds_name    "ucf101", "imagenette/160px-v2", ... (a config and version may follow the name)
  split, eval_split, data_dir
  video_key    the feature holding the frames: a Video, or an Image inside a Sequence (one clip per example)
  image_key    ... or an Image (a 1-frame clip per example); exactly one of the two
  label_key    a ClassLabel feature (label -1 without one); caption_key: a Text feature ("" without one)
  source_fps   the source frame rate, needed to sample at `config.data.fps` (TFDS stores none)
The datasets in KNOWN need no keys; set a field to "" to drop a known default (e.g. label_key="").
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from vidgen.config import require
from vidgen.data.common import FIXED_CLIPS, LoaderSettings, class_index, clip_overrides
from vidgen.data.crops import random_crop
from vidgen.data.loader import ClipLoader, LoadClip
from vidgen.data.sampling import BadRecord, ClipSpec, fit_frames, frame_indices
from vidgen.errors import ConfigError
from vidgen.models.text import WordTokenizer

SPLITS = ("train", "validation")

# Defaults by dataset name (without config / version): feature keys, the only split where there is no "train", and
# the frame rate the videos were extracted at (ffmpeg's native rate; UCF101 is 25 fps).
KNOWN: dict[str, dict[str, Any]] = {
    "ucf101": dict(video_key="video", label_key="label", source_fps=25.0),
    "bair_robot_pushing_small": dict(video_key="image_aux1"),
    "moving_mnist": dict(video_key="image_sequence", split="test"),
    "imagenette": dict(image_key="image", label_key="label"),
    "imagenet2012": dict(image_key="image", label_key="label"),
}


@dataclasses.dataclass(frozen=True)
class SplitRef:
  """One split of a prepared dataset: what a worker process needs to open it."""

  name: str
  split: str
  data_dir: str | None = None


@functools.lru_cache(maxsize=16)
def _open_split(ref: SplitRef) -> Any:
  """The split's random-access source of serialized examples (opened once per process)."""
  return tfds.data_source(ref.name, split=ref.split, data_dir=ref.data_dir, download=False,
                          deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)


def _lookup(features: Any, key: str) -> tuple[Any, bool]:
  """The leaf feature `key` ("a/b" for nested dicts) names, and whether it sits in a Sequence / Video (one value per
  frame); (None, False) when it names none."""
  feature, sequence = features, False
  for part in [*key.split("/"), None]:
    while isinstance(feature, tfds.features.Sequence):  # Video is a Sequence of Image
      feature, sequence = feature.feature, True
    if part is None:
      return feature, sequence
    if not isinstance(feature, tfds.features.FeaturesDict) or part not in feature:
      return None, False
    feature = feature[part]


def _feature_names(feature: Any, prefix: str = "", sequence: bool = False) -> list[str]:
  """Every leaf feature as "key (Type)", per-frame ones marked, for error messages."""
  while isinstance(feature, tfds.features.Sequence):
    feature, sequence = feature.feature, True
  if isinstance(feature, tfds.features.FeaturesDict):
    return [n for k, f in feature.items() for n in _feature_names(f, f"{prefix}{k}/", sequence)]
  return [f"{prefix[:-1]} ({'sequence of ' if sequence else ''}{type(feature).__name__})"]


@functools.lru_cache(maxsize=16)
def _image_feature(ref: SplitRef, key: str) -> Any:
  return _lookup(_open_split(ref).dataset_info.features, key)[0]


@dataclasses.dataclass(frozen=True)
class ReadTFDSClip:
  """An example index -> {"video": uint8 [T, H, W, 3], "caption", "label"}: decodes only the frames the clip samples,
  then an optional lattice crop. A video with several captions gives a random one."""

  ref: SplitRef
  frames_key: str
  spec: ClipSpec
  label_key: str | None = None
  caption_key: str | None = None
  source_fps: float = 0.0
  crop_size: int = 0
  crop_grid: int = 1

  def __call__(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
    try:
      example = tf_example_pb2.Example.FromString(_open_split(self.ref)[int(index)]).features.feature
    except Exception as e:  # a damaged record is skipped and counted like an unreadable file
      raise BadRecord(f"unreadable example: {type(e).__name__}: {e}") from e
    encoded = example[self.frames_key].bytes_list.value if self.frames_key in example else []
    picks = frame_indices(len(encoded), self.source_fps or None, self.spec, rng)
    image = _image_feature(self.ref, self.frames_key)
    try:
      decoded = {i: image.decode_example_np(encoded[i]) for i in np.unique(picks)}
      frames = np.stack([decoded[i] for i in picks])
    except Exception as e:
      raise BadRecord(f"cannot decode the frames of {self.frames_key!r}: {type(e).__name__}: {e}") from e
    video = fit_frames(frames, self.spec, rng)
    if self.crop_size:
      video = random_crop(video, self.crop_size, grid=self.crop_grid, rng=rng)
    return {"video": video, "caption": self._caption(example, rng), "label": self._label(example)}

  def _caption(self, example: Any, rng: np.random.Generator) -> str:
    values = example[self.caption_key].bytes_list.value if self.caption_key and self.caption_key in example else []
    if not values:
      return ""
    return values[int(rng.integers(len(values))) if len(values) > 1 else 0].decode("utf-8", errors="replace")

  def _label(self, example: Any) -> int:
    values = example[self.label_key].int64_list.value if self.label_key and self.label_key in example else []
    return int(values[0]) if values else -1

  def where(self, index: int) -> str:
    return f"{self.ref.name}[{self.ref.split}] example {index}"


class TFDSSource:
  """Clips of a prepared TensorFlow Datasets dataset (see the module docstring)."""

  def __init__(self, data: Mapping[str, Any]):
    self.data = data
    name = data.get("tfds_name")
    require(isinstance(name, str) and name.strip(), "data.tfds_name",
            f"must name a TensorFlow Datasets dataset, e.g. 'ucf101' or 'imagenette/160px-v2', got {name!r}")
    self.name = name.strip()
    known = KNOWN.get(self.name.split("/")[0].split(":")[0], {})

    def field(key: str) -> Any:  # a field set in the config (even to "": none), else the known default
      return (data[key] or None) if key in data else known.get(key)

    explicit = any(data.get(k) for k in ("video_key", "image_key"))
    video_key = (data.get("video_key") or None) if explicit else known.get("video_key")
    image_key = (data.get("image_key") or None) if explicit else known.get("image_key")
    require(not (video_key and image_key), "data.video_key", "set video_key or image_key, not both")
    require(bool(video_key or image_key), "data.video_key",
            f"{self.name!r} is not one of the datasets with known features ({sorted(KNOWN)}): set "
            "config.data.video_key (a video feature) or config.data.image_key (an image feature), and optionally "
            "label_key / caption_key")
    self.video_key, self.image_key = video_key, image_key
    self.label_key, self.caption_key = field("label_key"), field("caption_key")
    for key in ("video_key", "image_key", "label_key", "caption_key"):
      value = getattr(self, key)
      require(value is None or isinstance(value, str), f"data.{key}", f"must be a feature name, got {value!r}")
    self.split = field("split") or "train"
    self.eval_split = field("eval_split") or self.split
    for key, value in (("split", self.split), ("eval_split", self.eval_split)):
      require(isinstance(value, str), f"data.{key}", f"must be a TFDS split such as 'train', got {value!r}")
    data_dir = data.get("data_dir") or None
    require(data_dir is None or isinstance(data_dir, str), "data.data_dir", f"must be a path, got {data_dir!r}")
    self.data_dir = os.path.abspath(os.path.expanduser(data_dir)) if data_dir and "://" not in data_dir else data_dir
    source_fps = field("source_fps") or 0.0
    require(isinstance(source_fps, (int, float)) and source_fps >= 0, "data.source_fps",
            f"must be a frame rate >= 0 (0: unknown), got {source_fps!r}")
    self.source_fps = float(source_fps)

    self.spec = ClipSpec.from_config(data)
    self.spec.validate()
    require(not (self.video_key and self.spec.fps > 0 and not self.source_fps), "data.source_fps",
            f"config.data.fps={self.spec.fps:g} needs the frame rate of {self.name}'s videos, which TFDS does not "
            "store: set it (or sample with data.frame_stride and fps=0)")
    require(not (self.image_key and self.spec.num_frames > 1 and self.spec.short_clips != "pad"), "data.num_frames",
            f"{self.name} holds images ({self.image_key!r}): use num_frames=1, or short_clips='pad' for still clips")
    self.loader = LoaderSettings.from_config(data)
    self._checked = False

  # -- records -------------------------------------------------------------------------------------------------------

  @functools.cached_property
  def builder(self) -> Any:
    """The dataset's builder, prepared in a random-access format (ConfigError naming the field otherwise)."""
    where = self.data_dir or "the default data directory ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
    try:
      builder = tfds.builder(self.name, data_dir=self.data_dir)
    except Exception as e:  # DatasetNotFoundError, a bad config or version
      raise ConfigError(f"config.data.tfds_name: {self.name!r} is not a TensorFlow Datasets dataset: "
                        f"{str(e).splitlines()[0]}") from None
    build = f"`tfds build {self.name}{f' --data_dir={self.data_dir}' if self.data_dir else ''} " \
            "--file_format=array_record`"
    if not builder.is_prepared():
      manual = (" (it needs files downloaded by hand first; see its page in the TFDS catalog)"
                if builder.MANUAL_DOWNLOAD_INSTRUCTIONS else "")
      raise ConfigError(f"config.data.tfds_name / config.data.data_dir: {self.name!r} is not prepared in {where} "
                        f"(looked for {builder.data_dir}); prepare it once with {build}{manual}")
    random_access = tfds.core.file_adapters.FileFormat.with_random_access()
    if not builder.info.available_file_formats() & random_access:
      raise ConfigError(f"config.data.data_dir: {self.name!r} in {where} is stored as {builder.info.file_format.value}"
                        f", which has no random access; prepare it again with {build} (or another data_dir)")
    return builder

  @property
  def features(self) -> Any:
    return self.builder.info.features

  def check(self) -> None:
    """Opens the dataset's info and both splits now; ConfigError naming the field for a dataset that is not prepared,
    a key that is not a feature of the right kind, or a missing or empty split."""
    if self._checked:
      return
    names = _feature_names(self.features)
    for key, kinds in (("video_key", "a Video or a Sequence of Image"), ("image_key", "an Image"),
                       ("label_key", "a ClassLabel"), ("caption_key", "a Text")):
      value = getattr(self, key)
      if value is None:
        continue
      leaf, sequence = _lookup(self.features, value)
      ok = {"video_key": isinstance(leaf, tfds.features.Image) and sequence,
            "image_key": isinstance(leaf, tfds.features.Image) and not sequence,
            "label_key": isinstance(leaf, tfds.features.ClassLabel) and not sequence,
            "caption_key": isinstance(leaf, tfds.features.Text)}[key]
      what = "is not a feature" if leaf is None else "is not " + kinds
      require(ok, f"data.{key}", f"{value!r} {what} of {self.name}; its features: {names}")
    for field, split in (("split", self.split), ("eval_split", self.eval_split)):
      try:
        size = len(_open_split(self._ref(split)))
      except Exception as e:  # an unknown split, a bad slice
        raise ConfigError(f"config.data.{field}: {split!r} is not a split of {self.name} "
                          f"({list(self.builder.info.splits)}): {str(e).splitlines()[0]}") from None
      require(size > 0, f"data.{field}", f"the {split!r} split of {self.name} has no examples")
    self._checked = True

  def _ref(self, tfds_split: str) -> SplitRef:
    return SplitRef(self.name, tfds_split, self.data_dir)

  def _split(self, split: str) -> str:
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return self.split if split == "train" else self.eval_split

  def _records(self, split: str) -> range:
    self.check()
    return range(len(_open_split(self._ref(self._split(split)))))

  @property
  def num_classes(self) -> int:
    """The label feature's classes (0 without label_key)."""
    if not self.label_key:
      return 0
    self.check()
    return int(_lookup(self.features, self.label_key)[0].num_classes)

  @property
  def class_names(self) -> tuple[str, ...]:
    if not self.label_key:
      return ()
    self.check()
    return tuple(_lookup(self.features, self.label_key)[0].names)

  class_factors = ()

  # -- clips -------------------------------------------------------------------------------------------------------

  def _transform(self, split: str, **overrides: Any) -> LoadClip:
    spec, crop_size, crop_grid = clip_overrides(self.spec, **overrides)
    read = ReadTFDSClip(self._ref(self._split(split)), self.video_key or self.image_key, spec, self.label_key,
                        self.caption_key, self.source_fps, crop_size, crop_grid)
    return LoadClip(read, read.where)

  def iterator(self, split: str, *, global_batch: int, shard_index: int = 0, shard_count: int = 1,
               **overrides: Any) -> ClipLoader:
    """Batches of this shard: `global_batch // shard_count` clips each; overrides: ClipSpec fields, crop_size,
    crop_grid."""
    return self.loader.stream(self._records(split), self._transform(split, **overrides), global_batch=global_batch,
                              shard_index=shard_index, shard_count=shard_count)

  def clips(self, split: str, count: int, **overrides: Any) -> dict[str, np.ndarray]:
    """The first `count` usable clips of `split` in example order, centred and unflipped (evaluation)."""
    return self.loader.first_clips(self._records(split), self._transform(split, **{**FIXED_CLIPS, **overrides}),
                                   count, f"the {self._split(split)!r} split of {self.name}")

  def fingerprint(self) -> dict:
    """Which clips the training stream yields: the dataset (name, version, split, size), keys, sampling and seed."""
    return {"name": "tfds", "tfds_name": self.name, "full_name": self.builder.info.full_name, "split": self.split,
            "data_dir": self.data_dir, "examples": len(self._records("train")), "video_key": self.video_key,
            "image_key": self.image_key, "label_key": self.label_key, "caption_key": self.caption_key,
            "source_fps": self.source_fps, "spec": dataclasses.asdict(self.spec), "seed": self.loader.seed}

  # -- conditioning --------------------------------------------------------------------------------------------------

  @functools.cached_property
  def _caption_words(self) -> tuple[str, ...]:
    source, words = _open_split(self._ref(self.split)), set()
    for i in range(len(source)):
      example = tf_example_pb2.Example.FromString(source[i]).features.feature
      if self.caption_key in example:
        for text in example[self.caption_key].bytes_list.value:
          words.update(text.decode("utf-8", errors="replace").lower().split())
    return tuple(sorted(words))

  def caption_tokenizer(self, max_length: int) -> WordTokenizer:
    """Every lower-case word of the training split's captions (reads the split once). Without `caption_key` the
    clips have no captions, so a text-conditioned run is refused (class labels condition through `class_of`)."""
    if not self.caption_key:
      raise ConfigError(f"config.data.caption_key: not set for {self.name}, so its clips have no captions; a "
                        f"text-conditioned run needs a Text feature (features: {_feature_names(self.features)}), "
                        "or condition on classes instead")
    self.check()
    if not self._caption_words:
      raise ConfigError(f"config.data.caption_key: the {self.split!r} split of {self.name} has no caption words in "
                        f"{self.caption_key!r}")
    return WordTokenizer(self._caption_words, max_length=max_length)

  def class_of(self, prompt: str) -> int:
    return class_index(prompt, self.class_names, self.num_classes, self.name)

  def validate_eval(self, config: Any) -> None:
    del config  # TFDS datasets have no source-specific evaluation; generic metrics come from the trainers

  def evaluate(self, pipe: Any, config: Any, workdir: str | None) -> dict[str, float]:
    del pipe, config, workdir
    return {}


__all__ = ["KNOWN", "ReadTFDSClip", "SPLITS", "SplitRef", "TFDSSource"]
