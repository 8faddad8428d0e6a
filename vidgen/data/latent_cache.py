"""Latent cache: a dataset pre-encoded by a frozen VAE, stored on disk and read by the DiT trainer.

Encoding every clip with the VAE at every DiT step would cost more than the DiT itself on small models, so clips are
encoded once. The cache keeps the posterior's mean and std (not a single sample), so every epoch can still draw a fresh
z = mean + std * eps, as training on the VAE's output distribution expects.

Layout of a cache directory (built in DIR.partial, one chunk file per process at a time, and renamed when complete,
so a crash mid-build never leaves a half cache that looks finished, and the next build resumes where it stopped):
  meta.json              fingerprint of the VAE and data that produced it, shapes, number of clips, shard list
  chunk_00000_000.npz    chunk 0 of process 0: mean float32 [n, T', H', W', C], std float32 [n, ...], label int32
                         [n], caption str [n]; with a frozen text encoder text float16 [n, L, D], text_mask bool [n, L];
                         a super-resolution stage's cache also low_mean, low_std float32 (the posterior of the
                         clips downsampled; vidgen.diffusion.cascade)
  ...
A cache is only used by a run whose fingerprint matches; any other is refused with the fields that differ.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Callable, Iterator

import numpy as np

from vidgen.data.packing import pack
from vidgen.errors import UserError
from vidgen.layers.embeddings import token_grid

META = "meta.json"
FORMAT_VERSION = 1


class CacheMismatchError(UserError, ValueError):
  """The cache on disk was built by another VAE or data config."""


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
  """Dotted paths where two JSON-like trees differ (for the mismatch message)."""
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    return out
  return [] if a == b else [f"{prefix[:-1] or '(root)'}: cache has {a!r}, run wants {b!r}"]


class LatentCache:
  """Random access to cached latents: `cache.batch(indices) -> {"mean", "std", "label", "caption"}`."""

  def __init__(self, directory: str, meta: dict, arrays: dict[str, np.ndarray]):
    self.directory, self.meta, self.arrays = directory, meta, arrays

  def __len__(self) -> int:
    return int(self.meta["num_clips"])

  @property
  def latent_shape(self) -> tuple[int, ...]:
    return tuple(self.meta["latent_shape"])

  def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[indices] for k, v in self.arrays.items()}

  # -- building and opening ------------------------------------------------------------------------------------------

  @classmethod
  def open(cls, directory: str, fingerprint: dict) -> "LatentCache":
    """Loads the cache in `directory` (all shards, into host memory) after checking its fingerprint."""
    path = os.path.join(directory, META)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{directory}: no latent cache here (missing {META}); build it with LatentCache.build")
    with open(path) as f:
      meta = json.load(f)
    wanted = json.loads(json.dumps(fingerprint))  # tuples -> lists, as stored
    if meta.get("version") != FORMAT_VERSION or meta.get("fingerprint") != wanted:
      differences = _diff(meta.get("fingerprint", {}), wanted)
      if meta.get("version") != FORMAT_VERSION:
        differences.insert(0, f"format version: cache has {meta.get('version')}, this vidgen reads {FORMAT_VERSION}")
      raise CacheMismatchError(
          f"the latent cache in {directory} was built by another VAE or data config; differences:\n  "
          + "\n  ".join(differences) + "\nDelete that directory (it is rebuilt automatically) or point the run at "
          "another cache directory.")
    parts: dict[str, list[np.ndarray]] = {}
    for name in meta["shards"]:
      with np.load(os.path.join(directory, name), allow_pickle=False) as shard:
        for k in shard.files:
          if not k.startswith("stream_"):  # the builder's resume bookkeeping
            parts.setdefault(k, []).append(shard[k])
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    return cls(directory, meta, arrays)

  @staticmethod
  def exists(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, META))

  @classmethod
  def build(cls, directory: str, *, fingerprint: dict, batches: Iterator[dict], num_batches: int,
            encode_fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
            text_fn: Callable[[list[str]], tuple[np.ndarray, np.ndarray]] | None = None,
            extra_fn: Callable[[dict], dict[str, np.ndarray]] | None = None, batches_per_chunk: int = 32,
            shard_index: int = 0, shard_count: int = 1, is_main: bool = True,
            barrier: Callable[[str], None] = lambda name: None,
            log: Callable[[str], None] = lambda message: None) -> None:
    """Encodes `num_batches` batches of every process's clip stream into `directory`; resumable, sharded.

    Each process encodes its shard's batches (`encode_fn` may be a collective over all processes, so every process
    calls it equally often) and writes its shard's chunk files (processes feeding the same shard write the same
    bytes) into `directory + ".partial"`, each with the stream's state after it. A build that stops (crash,
    preemption) resumes after the last chunk every process finished; the partial directory becomes `directory` (with
    meta.json) only when complete, so a half cache never looks finished.

    Args:
      batches: this process's clips, {"video": uint8 [n, T, H, W, 3], "label", "caption"}, with get_state /
        set_state (JSON) for resuming.
      encode_fn: this process's uint8 video -> (mean, std), each float [n, T', H', W', C].
      text_fn: captions -> (hidden [n, L, D], mask bool [n, L]) of a frozen text encoder, stored as "text" (float16:
        half the disk and memory; frozen encoders end in a norm, so their outputs are small) and "text_mask".
      extra_fn: clips -> more per-clip arrays `[n, ...]` to store (a super-resolution stage's low-resolution
        latents, `vidgen.diffusion.cascade`); a cache built without it holds only the arrays above.
      shard_index, shard_count: which of the stream's shards this process encodes.
      is_main: whether this process prepares the directory and publishes the finished cache (exactly one does).
      barrier: waits for every process (multi-host runs); log: progress lines.
    """
    if num_batches < 1:
      raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    partial = os.path.abspath(directory) + ".partial"
    stamp = os.path.join(partial, "fingerprint.json")
    wanted = json.dumps(fingerprint, sort_keys=True)
    if is_main:
      if os.path.exists(partial) and (not os.path.exists(stamp) or open(stamp).read() != wanted):
        shutil.rmtree(partial)  # left by a build for another VAE or data config: start over
      os.makedirs(partial, exist_ok=True)
      with open(stamp, "w") as f:
        f.write(wanted)
    barrier("latent cache: partial directory ready")
    os.makedirs(partial, exist_ok=True)
    num_chunks = -(-num_batches // batches_per_chunk)
    chunk_name = lambda c, p: f"chunk_{c:05d}_{p:03d}.npz"
    done = 0
    while done < num_chunks and all(os.path.exists(os.path.join(partial, chunk_name(done, p)))
                                    for p in range(shard_count)):
      done += 1
    barrier("latent cache: resume point found")
    if done:
      with np.load(os.path.join(partial, chunk_name(done - 1, shard_index)), allow_pickle=False) as last:
        batches.set_state(json.loads(str(last["stream_state"])))
      log(f"latent cache: resuming after {done} of {num_chunks} chunks in {partial}")
    for c in range(done, num_chunks):
      parts: dict[str, list[np.ndarray]] = {}
      for _ in range(min(batches_per_chunk, num_batches - c * batches_per_chunk)):
        clips = next(batches)
        mean, std = encode_fn(clips["video"])
        arrays = {"mean": np.asarray(mean, np.float32), "std": np.asarray(std, np.float32),
                  "label": np.asarray(clips["label"], np.int32), "caption": np.asarray(clips["caption"]).astype(str)}
        if text_fn is not None:
          hidden, mask = text_fn([str(x) for x in clips["caption"]])
          arrays.update(text=np.asarray(hidden, np.float16), text_mask=np.asarray(mask, bool))
        if extra_fn is not None:
          arrays.update(extra_fn(clips))
        for k, v in arrays.items():
          parts.setdefault(k, []).append(v)
      stats = getattr(batches, "stats", dict)()
      target = os.path.join(partial, chunk_name(c, shard_index))
      with open(target + ".tmp", "wb") as f:  # written whole, then renamed: a chunk file is complete or absent
        np.savez(f, **{k: np.concatenate(v) for k, v in parts.items()},
                 stream_state=np.asarray(json.dumps(batches.get_state())), stream_stats=np.asarray(json.dumps(stats)))
      os.replace(target + ".tmp", target)
      log(f"latent cache: chunk {c + 1}/{num_chunks} written" + (f" ({stats})" if stats else ""))
    barrier("latent cache: every chunk written")
    if is_main:
      shards = [chunk_name(c, p) for c in range(num_chunks) for p in range(shard_count)]
      with np.load(os.path.join(partial, shards[0]), allow_pickle=False) as first:
        latent_shape = [int(s) for s in first["mean"].shape[1:]]
      skipped = 0
      for p in range(shard_count):
        with np.load(os.path.join(partial, chunk_name(num_chunks - 1, p)), allow_pickle=False) as last:
          skipped += int(json.loads(str(last["stream_stats"])).get("data_skipped", 0))
      meta = {"version": FORMAT_VERSION, "fingerprint": fingerprint, "num_clips": cls._count(partial, shards),
              "latent_shape": latent_shape, "shards": shards, "skipped_records": skipped}
      with open(os.path.join(partial, META), "w") as f:
        json.dump(meta, f, indent=2)
      if os.path.exists(directory):  # left from a mismatch: replace it
        shutil.rmtree(directory)
      os.replace(partial, directory)
    barrier("latent cache: complete")

  @staticmethod
  def _count(directory: str, shards: list[str]) -> int:
    total = 0
    for name in shards:
      with np.load(os.path.join(directory, name), allow_pickle=False) as shard:
        total += len(shard["label"])
    return total


def is_image_batch(b: int, image_every: int, image_first: int = 0) -> bool:
  """Whether global batch b is images: the first `image_first` batches (an image phase, as video models commonly
  start), then every `image_every`-th (0 = never) for joint image + video training."""
  return b < image_first or (image_every > 0 and (b + 1) % image_every == 0)


class LatentIterator:
  """Batches of cached latents for one process; state {"next_batch": int} (JSON-serializable).

  Global batch b is a slice of a per-epoch permutation of the cache drawn from (seed, epoch), so the stream is a pure
  function of the batch number: resuming at `next_batch` continues it exactly, for any number of processes.
  Image batches (`is_image_batch`) hold latent frame 0 only, which for a causal VAE is exactly the latent of the first
  frame on its own, so images come from the same cache at no cost.
  """

  def __init__(self, cache: LatentCache, *, global_batch: int, seed: int, process_index: int = 0,
               process_count: int = 1, image_every: int = 0, image_first: int = 0,
               transform: Callable[[dict], dict] | None = None):
    if global_batch % process_count:
      raise ValueError(f"global batch {global_batch} must be divisible by the process count {process_count}")
    if global_batch > len(cache):
      raise ValueError(f"global batch {global_batch} is larger than the latent cache ({len(cache)} clips)")
    self.cache, self.global_batch, self.seed = cache, global_batch, seed
    self.local_batch = global_batch // process_count
    self.process_index, self.image_every, self.image_first = process_index, image_every, image_first
    self.transform = transform
    self.next_batch = 0
    self._perm_epoch, self._perm = -1, None

  def is_image_batch(self, b: int) -> bool:
    return is_image_batch(b, self.image_every, self.image_first)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def _indices(self, b: int) -> np.ndarray:
    per_epoch = len(self.cache) // self.global_batch
    epoch, pos = divmod(b, per_epoch)
    if epoch != self._perm_epoch:
      self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.cache))
      self._perm_epoch = epoch
    start = pos * self.global_batch + self.process_index * self.local_batch
    return self._perm[start:start + self.local_batch]

  def __next__(self) -> dict[str, np.ndarray]:
    b = self.next_batch
    self.next_batch += 1
    batch = self.cache.batch(self._indices(b))
    if self.is_image_batch(b):
      batch["mean"], batch["std"] = batch["mean"][:, :1], batch["std"][:, :1]
    return self.transform(batch) if self.transform else batch

  def get_state(self) -> dict[str, int]:
    return {"next_batch": int(self.next_batch)}

  def set_state(self, state: dict[str, int]) -> None:
    self.next_batch = int(state["next_batch"])


@dataclasses.dataclass
class BucketedCache:
  """The latent caches of a run with size buckets (`vidgen.data.buckets`), in bucket order, under `directory`."""

  directory: str
  caches: list[LatentCache]


class BucketedIterator:
  """Batches of several latent caches, one per size bucket (`vidgen.data.buckets`); state {"next_batch": int}.

  Global batch b comes from bucket `schedule(b)[0]`, as that bucket's own batch number `schedule(b)[1]` in its
  `LatentIterator`, so the stream is a pure function of b and resuming at `next_batch` continues every bucket exactly.
  """

  def __init__(self, caches: list[LatentCache], batches: list[int], schedule: Callable[[int], tuple[int, int]], *,
               seed: int, process_index: int = 0, process_count: int = 1,
               transform: Callable[[dict], dict] | None = None):
    self.schedule = schedule
    self.iterators = [LatentIterator(cache, global_batch=batch, seed=seed + k, process_index=process_index,
                                     process_count=process_count, transform=transform)
                      for k, (cache, batch) in enumerate(zip(caches, batches))]
    self.next_batch = 0

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    bucket, count = self.schedule(self.next_batch)
    self.next_batch += 1
    iterator = self.iterators[bucket]
    iterator.next_batch = count
    return next(iterator)

  def get_state(self) -> dict[str, int]:
    return {"next_batch": int(self.next_batch)}

  def set_state(self, state: dict[str, int]) -> None:
    self.next_batch = int(state["next_batch"])


class PackedIterator:
  """Packed rows (Patch n' Pack) of cached latents of several sizes, one cache per size bucket; state
  {"next_batch": int}.

  Row r of global batch b is filled from its own random stream (seed, b, r): clips are drawn (bucket by weight,
  then a clip of that bucket's cache, with replacement) and kept while they fit the row's tokens and clip slots,
  until `misses` draws in a row did not fit. Rows are independent of the process count and of each other, so each
  process builds only its own rows and a resumed run continues exactly.

  A batch holds per token `mean`, `std` `[rows, L, P, C]` and the layout (`segment_ids`, `positions`, `grids`), per
  clip slot `label` `[rows, S]` (-1 in empty slots), `caption` `[rows, S]` ("" in empty slots), the cache's other
  per-clip arrays (a frozen text encoder's `text`, `text_mask`; zeros in empty slots) and what `transform` adds.
  """

  def __init__(self, caches: list[LatentCache], weights: list[float], *, patch: tuple[int, int, int],
               row_length: int, slots: int, global_rows: int, seed: int, process_index: int = 0,
               process_count: int = 1, misses: int = 8, transform: Callable[[dict], dict] | None = None):
    if global_rows % process_count:
      raise ValueError(f"{global_rows} rows must be divisible by the process count {process_count}")
    self.caches, self.patch, self.row_length, self.slots = caches, tuple(patch), row_length, slots
    self.p = np.asarray(weights, np.float64) / np.sum(weights)
    self.grids = [token_grid(c.latent_shape[:3], self.patch) for c in caches]
    too_long = [c.directory for c, g in zip(caches, self.grids) if np.prod(g) > row_length]
    if too_long:
      raise ValueError(f"clips of {too_long[0]} have more tokens than a packed row ({row_length})")
    self.local_rows = global_rows // process_count
    self.first_row = process_index * self.local_rows
    self.seed, self.misses, self.transform = seed, misses, transform
    self.next_batch = 0

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def row_clips(self, b: int, r: int) -> list[tuple[int, int]]:
    """(bucket, clip index) of every clip in row r of global batch b."""
    rng = np.random.default_rng([self.seed, 104729, b, r])
    clips, used, missed = [], 0, 0
    while len(clips) < self.slots and missed < self.misses:
      k = int(rng.choice(len(self.p), p=self.p))
      i = int(rng.integers(len(self.caches[k])))
      tokens = int(np.prod(self.grids[k]))
      if used + tokens <= self.row_length:
        clips.append((k, i))
        used += tokens
        missed = 0
      else:
        missed += 1
    return clips

  def __next__(self) -> dict[str, np.ndarray]:
    b = self.next_batch
    self.next_batch += 1
    rows = []
    for r in range(self.first_row, self.first_row + self.local_rows):
      picked = [self.caches[k].batch(np.array([i])) for k, i in self.row_clips(b, r)]
      packed = pack([c["mean"][0] for c in picked], patch=self.patch, row_length=self.row_length, rows=1,
                    slots=self.slots)
      row = {"mean": packed.patches[0], "std": packed.pack_like([c["std"][0] for c in picked])[0],
             "segment_ids": packed.layout.segment_ids[0], "positions": packed.layout.positions[0],
             "grids": packed.layout.grids[0]}
      for key in picked[0]:  # per-clip fields: label, caption and, with a frozen text encoder, its embeddings
        if key not in ("mean", "std"):
          values = np.concatenate([c[key] for c in picked])
          fill = {"label": -1, "caption": ""}.get(key, 0)
          row[key] = packed.per_clip(values.astype(object) if key == "caption" else values, fill=fill)[0]
      rows.append(row)
    batch = {k: np.stack([row[k] for row in rows]) for k in rows[0]}
    return self.transform(batch) if self.transform else batch

  def get_state(self) -> dict[str, int]:
    return {"next_batch": int(self.next_batch)}

  def set_state(self, state: dict[str, int]) -> None:
    self.next_batch = int(state["next_batch"])
