"""Size buckets: config parsing, batch sizes under a token budget, which bucket a clip goes to, and a bucket schedule
and iterator that are pure functions of the batch number (so resuming continues every bucket exactly)."""

from __future__ import annotations

import numpy as np
import pytest

from vidgen.config import ConfigError
from vidgen.data import buckets as bk
from vidgen.data.latent_cache import BucketedIterator, LatentCache


def test_parse_refuses_bad_rows_by_index():
  assert bk.parse_buckets({}) == ()
  parsed = bk.parse_buckets({"buckets": [(17, 64, 64, 2.0), (1, 48, 96)]})
  assert parsed == (bk.Bucket(17, 64, 64, 2.0), bk.Bucket(1, 48, 96, 1.0))
  for rows, where in [([(17, 64)], r"buckets\[0\]"), ([(17, 64, 64), (9, 0, 64)], r"buckets\[1\]"),
                      ([(17, 64, 64, -1.0)], r"buckets\[0\]"), ([(17, 64, 64), (17, 64, 64, 3.0)], "twice")]:
    with pytest.raises(ConfigError, match=where):
      bk.parse_buckets({"buckets": rows})
  with pytest.raises(ConfigError, match="image_every"):
    bk.check_no_buckets_with({"buckets": [(1, 8, 8)], "image_every": 4})


def test_token_budget_gives_short_clips_bigger_batches():
  sizes = (bk.Bucket(17, 64, 64), bk.Bucket(9, 64, 64), bk.Bucket(1, 64, 64))
  planned = bk.plan_batches(sizes, [320, 192, 64], bucket_tokens=10240, max_batch=64, multiple=4)
  assert [b.batch for b in planned] == [32, 52, 64]  # 53 rounded down to whole shards; images capped at 64
  assert [b.batch for b in bk.plan_batches(sizes, [320, 192, 64], bucket_tokens=0, max_batch=8, multiple=4)] == [8] * 3
  with pytest.raises(ConfigError, match=r"bucket 0 \(17x64x64: 320 tokens each\)"):
    bk.plan_batches(sizes, [320, 192, 64], bucket_tokens=1000, max_batch=64, multiple=4)


def test_a_clip_goes_to_the_bucket_that_crops_it_least_and_fits_its_duration():
  sizes = (bk.Bucket(17, 64, 64), bk.Bucket(17, 48, 96), bk.Bucket(17, 96, 48), bk.Bucket(9, 64, 64),
           bk.Bucket(9, 48, 96), bk.Bucket(1, 64, 64), bk.Bucket(1, 48, 96))
  assert bk.assign(30, 720, 1280, sizes) == 1      # 16:9 -> the 2:1 bucket, full length
  assert bk.assign(30, 1280, 720, sizes) == 2      # portrait
  assert bk.assign(30, 500, 520, sizes) == 0       # near square
  assert bk.assign(12, 720, 1280, sizes) == 4      # too short for 17 frames: the 9-frame wide bucket
  assert bk.assign(1, 720, 1280, sizes) == 6       # an image: only 1-frame buckets
  assert bk.assign(5, 64, 64, sizes[:5]) is None   # shorter than every bucket
  assert bk.assign(5, 720, 1280, sizes) == 6       # ... unless images are buckets: then its first frame
  # Among buckets of the same shape and length, the largest one the clip needs no up-sampling for.
  assert bk.assign(17, 64, 64, (bk.Bucket(17, 128, 128), bk.Bucket(17, 64, 64), bk.Bucket(17, 32, 32))) == 1


def test_schedule_is_a_pure_function_of_the_batch_number():
  weights = [3.0, 1.0, 2.0]
  schedule = bk.BucketSchedule(weights, seed=5)
  n = bk._BLOCK + 300  # crosses a block boundary
  seen = np.zeros(3, int)
  picks = []
  for b in range(n):
    k, count = schedule(b)
    assert count == seen[k]  # batches of that bucket before b
    seen[k] += 1
    picks.append(k)
  fresh = bk.BucketSchedule(weights, seed=5)
  assert [fresh(b)[0] for b in (n - 1, 3, bk._BLOCK)] == [picks[n - 1], picks[3], picks[bk._BLOCK]]
  np.testing.assert_allclose(np.bincount(picks) / n, np.array(weights) / 6, atol=0.02)
  assert [bk.BucketSchedule(weights, seed=6)(b)[0] for b in range(50)] != picks[:50]


def _cache(name, clips, shape):
  rng = np.random.default_rng(len(name))
  arrays = {"mean": rng.standard_normal((clips, *shape)).astype(np.float32),
            "std": np.ones((clips, *shape), np.float32), "label": np.arange(clips, dtype=np.int32),
            "caption": np.array([f"{name} {i}" for i in range(clips)])}
  return LatentCache(name, {"num_clips": clips, "latent_shape": list(shape)}, arrays)


def test_bucketed_iterator_resumes_exactly_and_splits_rows_between_processes():
  caches = [_cache("a", 12, (2, 4, 4, 3)), _cache("b", 9, (1, 4, 4, 3))]
  schedule = bk.BucketSchedule([1.0, 1.0], seed=0)

  def run(start, steps, process=0, count=1):
    it = BucketedIterator(caches, [4, 2], schedule, seed=3, process_index=process, process_count=count)
    it.set_state({"next_batch": start})
    return [next(it) for _ in range(steps)]

  whole = run(0, 20)
  for b, batch in enumerate(whole):
    k = schedule(b)[0]
    assert batch["mean"].shape[:2] == ((4, 2) if k == 0 else (2, 1))
  for a, b in zip(run(13, 7), whole[13:]):
    assert list(a["caption"]) == list(b["caption"])
  halves = [run(0, 20, process=p, count=2) for p in range(2)]
  for b, batch in enumerate(whole):
    joined = list(halves[0][b]["caption"]) + list(halves[1][b]["caption"])
    assert joined == list(batch["caption"])
