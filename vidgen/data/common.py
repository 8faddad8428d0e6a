"""What every real-data source (files, tfds) shares around `ClipLoader`: the loader fields of `config.data`, the
per-call clip overrides, the fixed evaluation clips and how a prompt names a class."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from vidgen.config import require
from vidgen.data.loader import ClipLoader, LoadClip
from vidgen.data.sampling import ClipSpec
from vidgen.errors import ConfigError, InputError

# Evaluation clips are the same on every call and process: centred in time and space, never flipped.
FIXED_CLIPS = dict(offset="center", crop="center", flip=False)


@dataclasses.dataclass(frozen=True)
class LoaderSettings:
  """`config.data.seed`, `num_workers` and `max_skip_fraction`, validated; builds the loaders of a source."""

  seed: int = 0
  num_workers: int = 0
  max_skip_fraction: float = 0.1

  @classmethod
  def from_config(cls, data: Mapping[str, Any]) -> "LoaderSettings":
    seed, workers = data.get("seed", 0), data.get("num_workers", 0)
    skip = data.get("max_skip_fraction", 0.1)
    require(isinstance(seed, int) and not isinstance(seed, bool), "data.seed", f"must be an integer, got {seed!r}")
    require(isinstance(workers, int) and workers >= 0, "data.num_workers", f"must be an integer >= 0, got {workers!r}")
    require(isinstance(skip, (int, float)) and 0 <= skip < 1, "data.max_skip_fraction",
            f"must be in [0, 1), got {skip!r}")
    return cls(int(seed), int(workers), float(skip))

  def stream(self, records: Sequence[Any], transform: LoadClip, *, global_batch: int, shard_index: int = 0,
             shard_count: int = 1) -> ClipLoader:
    """Training batches of shard `shard_index` of `shard_count`: `global_batch // shard_count` clips each."""
    return ClipLoader(records, transform, batch_size=global_batch // shard_count, seed=self.seed,
                      shard_index=shard_index, shard_count=shard_count, num_workers=self.num_workers,
                      max_skip_fraction=self.max_skip_fraction)

  def first_clips(self, records: Sequence[Any], transform: LoadClip, count: int, what: str) -> dict[str, np.ndarray]:
    """The first `count` usable clips of `records` in order (unusable ones are passed over), stacked; ConfigError
    saying `what` was read when there are fewer."""
    loader = ClipLoader(records, transform, batch_size=1, seed=self.seed, shuffle=False, repeat=False,
                        max_skip_fraction=1.0)
    batches = []
    try:
      for batch in loader:
        batches.append(batch)
        if len(batches) == count:
          return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    finally:
      loader.close()
    raise ConfigError(f"config.data: {what} has only {len(batches)} usable clips, {count} are wanted")


def clip_overrides(spec: ClipSpec, crop_size: int = 0, crop_grid: int = 1,
                   **spec_fields: Any) -> tuple[ClipSpec, int, int]:
  """Per-call overrides of a source's clips -> (the spec with ClipSpec fields replaced, crop_size, crop_grid)."""
  unknown = sorted(set(spec_fields) - {f.name for f in dataclasses.fields(ClipSpec)})
  if unknown:
    raise TypeError(f"unknown clip overrides {unknown}; allowed: ClipSpec fields, crop_size, crop_grid")
  return dataclasses.replace(spec, **spec_fields), int(crop_size), int(crop_grid)


def class_index(prompt: str, names: Sequence[str], num_classes: int, where: str) -> int:
  """The class a prompt names: a class name (exact, then ignoring case), an id "N" or "class N"; InputError naming
  `where` (the dataset) otherwise."""
  text = prompt.strip()
  if text in names:
    return list(names).index(text)
  lowered = [n.lower() for n in names]
  if text.lower() in lowered:
    return lowered.index(text.lower())
  digits = text[len("class"):].strip() if text.lower().startswith("class") else text
  if digits.isdigit() and int(digits) < num_classes:
    return int(digits)
  if num_classes < 1:
    raise InputError(f"prompt {prompt!r}: {where} has no classes (no label feature)")
  listed = list(names)[:20] if names else f"0 .. {num_classes - 1}"
  more = f" (and {len(names) - 20} more)" if len(names) > 20 else ""
  raise InputError(f"prompt {prompt!r} names no class of {where}; classes: {listed}{more}")


__all__ = ["FIXED_CLIPS", "LoaderSettings", "class_index", "clip_overrides"]
