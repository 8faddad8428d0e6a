"""Video and image files as a data source (`config.data.name = "files"`; see vidgen.data.sources).

`config.data.path` is a directory or a manifest (vidgen.data.records). Splits: "validation" is
`config.data.eval_path` when set, else the `config.data.eval_records` records whose path hashes lowest (a stable
choice as files are added), else the training records themselves; "train" is every other record. Clips are sampled
by the shared `ClipSpec` (vidgen.data.sampling) and read in grain workers by `vidgen.data.loader.ClipLoader`. With
`config.data.buckets`, every record goes to one bucket by its native size (vidgen.data.buckets.assign), and a
bucket's stream holds its records only.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Any, Mapping

import numpy as np
from absl import logging

from vidgen.config import require
from vidgen.data.buckets import Bucket, assign, parse_buckets
from vidgen.data.crops import random_crop
from vidgen.data.decode import probe, read_clip
from vidgen.data.common import FIXED_CLIPS, LoaderSettings, class_index, clip_overrides
from vidgen.data.loader import ClipLoader, LoadClip
from vidgen.data.records import Catalog, Record, scan
from vidgen.data.sampling import BadRecord, ClipSpec
from vidgen.errors import ConfigError
from vidgen.models.text import WordTokenizer

SPLITS = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class ReadFileClip:
  """A record -> {"video": uint8 [T, H, W, 3], "caption", "label"}: the sampled clip, then an optional lattice crop."""

  spec: ClipSpec
  crop_size: int = 0
  crop_grid: int = 1

  def __call__(self, record: Record, rng: np.random.Generator) -> dict[str, Any]:
    video = read_clip(record.path, self.spec, rng, start=record.start, end=record.end, fps=record.fps)
    if self.crop_size:
      video = random_crop(video, self.crop_size, grid=self.crop_grid, rng=rng)
    return {"video": video, "caption": record.caption, "label": record.label}


def record_path(record: Record) -> str:
  return record.path


@functools.lru_cache(maxsize=8)
def _scan_once(path: str, mtime_ns: int, field: str) -> Catalog:
  del mtime_ns  # part of the key: a listing that changed on disk is read again
  return scan(path, field=field)


def _cached_scan(path: str, field: str) -> Catalog:
  """One scan per listing and version (a run asks for its source several times; big folders take a while)."""
  try:
    mtime = os.stat(path).st_mtime_ns
  except OSError:
    mtime = -1
  return _scan_once(path, mtime, field)


def _path_hash(record: Record, root: str) -> str:
  """Hash of the path within the listing: the held-out choice survives moving the data elsewhere."""
  return hashlib.sha1(os.path.relpath(record.path, root).encode()).hexdigest()


class FilesSource:
  """Clips of the files `config.data.path` lists (see the module docstring)."""

  class_factors = ()

  def __init__(self, data: Mapping[str, Any]):
    self.data = data
    require(isinstance(data.get("path"), str) and data.get("path"), "data.path",
            "must name a directory of videos / images or a .csv / .jsonl manifest")
    self.spec = ClipSpec.from_config(data)
    self.spec.validate()
    self.loader = LoaderSettings.from_config(data)
    held = data.get("eval_records", 0)
    require(isinstance(held, int) and held >= 0, "data.eval_records", f"must be an integer >= 0, got {held!r}")
    self._bucket_of: dict[str, np.ndarray] = {}

  # -- records -------------------------------------------------------------------------------------------------------

  @functools.cached_property
  def catalog(self) -> Catalog:
    return _cached_scan(os.path.abspath(self.data.path), "data.path")

  @functools.cached_property
  def splits(self) -> dict[str, tuple[Record, ...]]:
    records = self.catalog.records
    if self.data.get("eval_path"):
      return {"train": records, "validation": _cached_scan(os.path.abspath(self.data.eval_path),
                                                           "data.eval_path").records}
    held = self.data.get("eval_records", 0)
    if not held:
      return {"train": records, "validation": records}
    if held >= len(records):
      raise ConfigError(f"config.data.eval_records={held} leaves no training record of the {len(records)} in "
                        f"{self.data.path}")
    path = os.path.abspath(self.data.path)
    root = path if os.path.isdir(path) else os.path.dirname(path)
    validation = set(sorted(records, key=lambda r: _path_hash(r, root))[:held])
    return {"train": tuple(r for r in records if r not in validation),
            "validation": tuple(r for r in records if r in validation)}

  def check(self) -> None:
    """Reads the listing now (refusing a path with no usable record, before anything compiles) and reports rows
    that were left out; with `data.buckets`, refuses a bucket no training record goes to."""
    for where, why in self.catalog.problems[:20]:
      logging.warning(f"data: left out {where}: {why}")
    self.splits  # noqa: B018 (the split is checked here)
    if self.buckets:
      assigned = self.bucket_of("train")
      for k, b in enumerate(self.buckets):
        count = int(np.sum(assigned == k))
        require(count > 0, f"data.buckets[{k}]",
                f"{b.name}: no training record of {self.data.path} goes to this bucket (each goes to the bucket of "
                "the nearest aspect ratio among those its duration fills); drop it or add such videos")
        logging.info(f"data: bucket {b.name} gets {count} of {len(assigned)} training records")

  @functools.cached_property
  def buckets(self) -> tuple[Bucket, ...]:
    return parse_buckets(self.data)

  def bucket_of(self, split: str) -> np.ndarray:
    """Per record of `split`: the bucket its native size goes to (`vidgen.data.buckets.assign`; duration counted in
    frames at the clip's rate), or -1 when it fits none or cannot be read. Read from the files' headers, once."""
    if split in self._bucket_of:
      return self._bucket_of[split]
    out = np.full(len(self._records(split)), -1, np.int64)
    for i, r in enumerate(self._records(split)):
      try:
        available, height, width, rate = probe(r.path, start=r.start, end=r.end, fps=r.fps)
      except BadRecord:
        continue  # reported when the loader reads it
      frames = 1 if rate is None else (available - 1) // max(int(round(self.spec.stride_for(rate))), 1) + 1
      bucket = assign(frames, height, width, self.buckets)
      out[i] = -1 if bucket is None else bucket
    self._bucket_of[split] = out
    return out

  @property
  def num_classes(self) -> int:
    return self.catalog.num_classes

  def _records(self, split: str) -> tuple[Record, ...]:
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return self.splits[split]

  # -- clips -------------------------------------------------------------------------------------------------------

  def _transform(self, **overrides: Any) -> LoadClip:
    spec, crop_size, crop_grid = clip_overrides(self.spec, **overrides)
    return LoadClip(ReadFileClip(spec, crop_size, crop_grid), record_path)

  def iterator(self, split: str, *, global_batch: int, shard_index: int = 0, shard_count: int = 1,
               **overrides: Any) -> ClipLoader:
    """Batches of this shard: `global_batch // shard_count` clips each; overrides: ClipSpec fields, crop_size,
    crop_grid. With `data.buckets`, a size override that is a bucket's size streams only the records that go to
    that bucket."""
    records = self._records(split)
    size = tuple(overrides.get(k) for k in ("num_frames", "height", "width"))
    names = [(b.frames, b.height, b.width) for b in self.buckets]
    if size in names:
      records = tuple(r for r, k in zip(records, self.bucket_of(split)) if k == names.index(size))
    return self.loader.stream(records, self._transform(**overrides), global_batch=global_batch,
                              shard_index=shard_index, shard_count=shard_count)

  def clips(self, split: str, count: int, **overrides: Any) -> dict[str, np.ndarray]:
    """The first `count` usable clips of `split` in listing order, centred and unflipped (evaluation)."""
    return self.loader.first_clips(self._records(split), self._transform(**{**FIXED_CLIPS, **overrides}), count,
                                   f"the {split} split of {self.data.path}")

  def fingerprint(self) -> dict:
    """Which clips the training stream yields: the listing (paths, sizes, captions, labels), sampling and seed."""
    h = hashlib.sha256()
    for r in self.splits["train"]:
      size = os.path.getsize(r.path) if os.path.exists(r.path) else -1
      h.update(repr((r.path, size, r.caption, r.label, r.start, r.end, r.fps)).encode())
    return {"name": "files", "path": os.path.abspath(self.data.path), "records": len(self.splits["train"]),
            "listing_sha256": h.hexdigest(), "spec": dataclasses.asdict(self.spec), "seed": self.loader.seed}

  # -- conditioning --------------------------------------------------------------------------------------------------

  def caption_tokenizer(self, max_length: int) -> WordTokenizer:
    """Every lower-case word of the training captions (for the small from-scratch text encoder)."""
    words = sorted({w for r in self.splits["train"] for w in r.caption.lower().split()})
    if not words:
      raise ConfigError(f"config.data.path: {self.data.path} has no captions; a text-conditioned run needs them "
                        "(sidecar NAME.txt files or a manifest caption column)")
    return WordTokenizer(words, max_length=max_length)

  def class_of(self, prompt: str) -> int:
    return class_index(prompt, self.catalog.class_names, self.num_classes, self.data.path)

  def validate_eval(self, config: Any) -> None:
    del config  # files have no source-specific evaluation; generic metrics come from the trainers

  def evaluate(self, pipe: Any, config: Any, workdir: str | None) -> dict[str, float]:
    del pipe, config, workdir
    return {}


__all__ = ["FilesSource", "ReadFileClip", "SPLITS", "record_path"]
