"""Size buckets: training on several clip sizes, aspect ratios and durations (Sora's native sizes, bucketed).

`config.data.buckets` lists `(frames, height, width, weight)` in pixels; each training batch is one bucket's size,
drawn with probability proportional to its weight. `config.data.bucket_tokens` is the latent-token budget of a batch:
a bucket whose clips have n tokens (after the VAE and the DiT's patches) gets `bucket_tokens // n` clips, capped at
`config.batch_size` and rounded down to a whole number of data shards, so batches of short low-resolution clips hold
more clips than batches of long high-resolution ones (Open-Sora style). Images are the 1-frame buckets.

Which bucket a global batch uses is a pure function of (seed, batch number), as is its position in that bucket's own
stream, so a resumed run continues every bucket exactly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from vidgen.config import ConfigError, require

_BLOCK = 4096  # batches drawn per random block (bucket_of is O(b / _BLOCK) in the batch number b)


@dataclasses.dataclass(frozen=True)
class Bucket:
  """One clip size in pixels, its sampling weight, and (once planned) its batch size."""

  frames: int
  height: int
  width: int
  weight: float = 1.0
  batch: int = 0

  @property
  def name(self) -> str:
    return f"{self.frames}x{self.height}x{self.width}"

  @property
  def aspect(self) -> float:
    return self.width / self.height


def parse_buckets(data: Mapping[str, Any]) -> tuple[Bucket, ...]:
  """`config.data.buckets` -> Buckets (without batch sizes); () when the run has one size. ConfigError on bad rows."""
  rows = data.get("buckets", ()) or ()
  buckets = []
  for i, row in enumerate(rows):
    ok = (isinstance(row, (tuple, list)) and len(row) in (3, 4)
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in row[:3])
          and (len(row) == 3 or (isinstance(row[3], (int, float)) and row[3] > 0)))
    require(ok, f"data.buckets[{i}]", f"must be (frames, height, width[, weight > 0]) with positive integer sizes, "
                                      f"got {row!r}")
    buckets.append(Bucket(*(int(v) for v in row[:3]), weight=float(row[3]) if len(row) == 4 else 1.0))
  names = [b.name for b in buckets]
  require(len(set(names)) == len(names), "data.buckets", f"lists a size twice: {names}")
  return tuple(buckets)


def plan_batches(buckets: Sequence[Bucket], tokens_per_clip: Sequence[int], *, bucket_tokens: int, max_batch: int,
                 multiple: int) -> tuple[Bucket, ...]:
  """Batch size of every bucket: `min(max_batch, bucket_tokens // tokens)` rounded down to a multiple of `multiple`
  (data shards x processes); `bucket_tokens = 0` gives every bucket `max_batch`. ConfigError when a bucket would get
  no clip."""
  out = []
  for i, (b, tokens) in enumerate(zip(buckets, tokens_per_clip)):
    batch = max_batch if bucket_tokens == 0 else min(max_batch, bucket_tokens // tokens)
    batch -= batch % multiple
    require(batch >= multiple, "data.bucket_tokens",
            f"{bucket_tokens} tokens hold {bucket_tokens // tokens} clips of bucket {i} ({b.name}: {tokens} tokens "
            f"each), fewer than the {multiple} a batch needs (one per data shard and process); raise it or drop the "
            f"bucket")
    out.append(dataclasses.replace(b, batch=batch))
  return tuple(out)


def assign(frames: int, height: int, width: int, buckets: Sequence[Bucket]) -> int | None:
  """The bucket a clip of native size (frames, height, width) goes to: among buckets with at most `frames` frames
  (images only go to 1-frame buckets, videos to them only when no video bucket fits), the one whose aspect ratio is
  closest (the least cropped); among equals, the longest, then the largest that needs no up-sampling. None when no
  bucket fits its duration."""
  fits = [i for i, b in enumerate(buckets) if b.frames <= frames and (frames > 1 or b.frames == 1)]
  if not fits:
    return None
  aspect = math.log(width / height)

  def cost(i):
    b = buckets[i]
    upsample = max(b.height / height, b.width / width) > 1.0
    still = frames > 1 and b.frames == 1  # a video kept as a still image loses its motion
    return (still, round(abs(math.log(b.aspect) - aspect), 6), -b.frames, upsample, -b.height * b.width)

  return min(fits, key=cost)


class BucketSchedule:
  """Which bucket each global batch uses, and how many batches of that bucket came before it."""

  def __init__(self, weights: Sequence[float], seed: int):
    p = np.asarray(weights, np.float64)
    if p.ndim != 1 or len(p) == 0 or (p <= 0).any():
      raise ValueError(f"bucket weights must be positive, got {list(weights)}")
    self.p = p / p.sum()
    self.seed = seed
    self._blocks: list[tuple[np.ndarray, np.ndarray]] = []

  def _block(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket of each batch in block `index`, batches of each bucket in all earlier blocks)."""
    while len(self._blocks) <= index:  # blocks are drawn in order: each needs its predecessors' counts
      n = len(self._blocks)
      before = np.zeros(len(self.p), np.int64)
      if n:
        draws, previous = self._blocks[n - 1]
        before = previous + np.bincount(draws, minlength=len(self.p))
      self._blocks.append((np.random.default_rng([self.seed, 7919, n]).choice(len(self.p), size=_BLOCK, p=self.p),
                           before))
    return self._blocks[index]

  def __call__(self, b: int) -> tuple[int, int]:
    """Global batch b -> (bucket index, batches of that bucket before b)."""
    index, offset = divmod(int(b), _BLOCK)
    draws, before = self._block(index)
    k = int(draws[offset])
    return k, int(before[k] + np.count_nonzero(draws[:offset] == k))


def check_no_buckets_with(data: Mapping[str, Any]) -> None:
  """Fields that mean something else with buckets are refused rather than ignored."""
  if not parse_buckets(data):
    return
  for field in ("image_every", "image_first"):
    if data.get(field, 0):
      raise ConfigError(f"config.data.{field}: must be 0 with data.buckets (images are the 1-frame buckets), got "
                        f"{data.get(field)}")
