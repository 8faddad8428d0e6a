"""Latent cache: a dataset pre-encoded by a frozen VAE, stored on disk and read by the DiT trainer.

Encoding every clip with the VAE at every DiT step would cost more than the DiT itself on small models, so clips are
encoded once. The cache keeps the posterior's mean and std (not a single sample), so every epoch can still draw a fresh
z = mean + std * eps, as training on the VAE's output distribution expects.

Layout of a cache directory (written under a temporary name and renamed when complete, so a crash mid-build never
leaves a half cache that looks finished):
  meta.json           fingerprint of the VAE and data that produced it, shapes, number of clips, shard list
  shard_00000.npz     mean float32 [n, T', H', W', C], std float32 [n, ...], label int32 [n], caption str [n]
  ...
A cache is only used by a run whose fingerprint matches; any other is refused with the fields that differ.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator

import numpy as np

from vidgen.errors import UserError

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
          parts.setdefault(k, []).append(shard[k])
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    return cls(directory, meta, arrays)

  @staticmethod
  def exists(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, META))

  @classmethod
  def build(cls, directory: str, *, fingerprint: dict, num_clips: int, clips_fn: Callable[[int, int], dict],
            encode_fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], batch_size: int = 32,
            shard_size: int = 1024, write: bool = True) -> None:
    """Encodes clips [0, num_clips) and writes the cache atomically.

    Args:
      directory: final location; must not exist yet (a stale temporary build next to it is removed).
      fingerprint: JSON-able description of the VAE and data; `open` refuses a cache whose fingerprint differs.
      clips_fn: (start, n) -> {"video": uint8 [n, T, H, W, 3], "label": [n], "caption": [n]}.
      encode_fn: uint8 video [n, T, H, W, 3] -> (mean, std), each float [n, T', H', W', C]. Called on every process
        (it may run a sharded computation); only a process with `write=True` writes files.
      write: whether this process writes (process 0 in a multi-host run).
    """
    if num_clips < 1:
      raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    parent = os.path.dirname(os.path.abspath(directory))
    tmp = None
    if write:
      os.makedirs(parent, exist_ok=True)
      tmp = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".tmp-", dir=parent)
    shards, latent_shape, buffer = [], None, {}

    def flush():
      if not buffer or not write:
        buffer.clear()
        return
      name = f"shard_{len(shards):05d}.npz"
      np.savez(os.path.join(tmp, name), **{k: np.concatenate(v) for k, v in buffer.items()})
      shards.append(name)
      buffer.clear()

    try:
      for start in range(0, num_clips, batch_size):
        n = min(batch_size, num_clips - start)
        clips = clips_fn(start, n)
        mean, std = encode_fn(clips["video"])
        latent_shape = tuple(int(s) for s in mean.shape[1:])
        for k, v in (("mean", np.asarray(mean, np.float32)), ("std", np.asarray(std, np.float32)),
                     ("label", np.asarray(clips["label"], np.int32)),
                     ("caption", np.asarray(clips["caption"]).astype(str))):
          buffer.setdefault(k, []).append(v)
        if sum(len(v) for v in buffer["mean"]) >= shard_size:
          flush()
      flush()
      if write:
        meta = {"version": FORMAT_VERSION, "fingerprint": fingerprint, "num_clips": num_clips,
                "latent_shape": latent_shape, "shards": shards}
        with open(os.path.join(tmp, META), "w") as f:
          json.dump(meta, f, indent=2)
        if os.path.exists(directory):  # built concurrently by someone else, or left from a mismatch: replace it
          shutil.rmtree(directory)
        os.replace(tmp, directory)
        tmp = None
    finally:
      if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


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
