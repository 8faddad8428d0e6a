"""Batches of real data through grain: sharded by process, shuffled per epoch, decoded in worker processes,
resumable from the state that every checkpoint stores.

The element stream of shard s is fixed by (seed, records, s): records[s::count], shuffled anew each epoch, each
decoded with a random generator that grain derives from the seed and the element's position. A record that cannot
give a clip comes out as a skip marker instead of a clip, so the stream's positions (and the iterator state) do not
depend on which files are bad; batches are filled in this process from the good clips in stream order. The state
is grain's (JSON) plus the skip counters, so a resumed run continues with exactly the batches an uninterrupted one
would have seen.

Skips are warned about with the file and the reason, counted (`stats()` -> metrics.jsonl) and bounded: once more
than `max_skip_fraction` of the records read were skipped, the run stops with `DataError` listing examples.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Any, Callable, Sequence

import grain
import numpy as np
from absl import flags, logging

from vidgen.data.sampling import BadRecord
from vidgen.errors import UserError

MIN_READ_FOR_SKIP_CHECK = 32  # the skip fraction is judged once this many records were read (or the whole shard)
MAX_WARNINGS = 20  # records warned about (once each); skips of other records are only counted


class DataError(UserError, RuntimeError):
  """Too much of the data cannot be read; the message lists examples of what was skipped and why."""


@dataclasses.dataclass(frozen=True)
class LoadClip:
  """Element transform: a record -> {"video", "caption", "label"}, or a skip marker {"skip": why, "where": name}.

  `load(record, rng)` raises BadRecord for a record without a clip; `name(record)` says which record it was.
  """

  load: Callable[[Any, np.random.Generator], dict[str, Any]]
  name: Callable[[Any], str]

  def __call__(self, record: Any, rng: np.random.Generator) -> dict[str, Any]:
    try:
      return self.load(record, rng)
    except BadRecord as e:
      return {"skip": str(e), "where": self.name(record)}


def die_with_parent(worker_index: int, worker_count: int) -> None:
  """grain worker start-up: the worker exits once the training process is gone, even after a SIGKILL (orphaned
  decoders would otherwise live on, holding memory and the parent's output pipes). Polls the parent's pid: the
  kernel's parent-death signal would fire when the spawning *thread* ends, which grain's do."""
  del worker_index, worker_count
  parent = os.getppid()

  def watch() -> None:
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(1)

  threading.Thread(target=watch, daemon=True, name="vidgen-parent-watch").start()


def _grain_flags_ready() -> None:
  """grain reads absl flags in its worker machinery; a library caller may never have parsed them."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class ClipLoader:
  """Infinite batches {"video": uint8 [n, T, H, W, 3], "caption": [n], "label": int32 [n]} of one shard's records.

  Args:
    records: a random-access sequence of records (paths, TFDS indices, ...), the same on every process.
    transform: `LoadClip` turning one record into one clip.
    batch_size: clips per batch of this shard.
    seed: the stream's seed (shuffle order and per-clip sampling).
    shard_index, shard_count: which of the `shard_count` disjoint slices of `records` this process reads.
    num_workers: decoding processes (0: decode in this process).
    max_skip_fraction: the largest fraction of records read that may be skipped before `DataError`.
    shuffle: shuffle each epoch (False: stream order, for deterministic passes).
  """

  def __init__(self, records: Sequence[Any], transform: LoadClip, *, batch_size: int, seed: int, shard_index: int = 0,
               shard_count: int = 1, num_workers: int = 0, max_skip_fraction: float = 0.1, shuffle: bool = True,
               repeat: bool = True):
    if len(records) < shard_count:
      raise DataError(f"{len(records)} records cannot be split over {shard_count} shards (processes); every shard "
                      "needs at least one")
    _grain_flags_ready()
    dataset = grain.MapDataset.source(records).seed(seed)[shard_index::shard_count]
    self.shard_size = len(dataset)
    if shuffle:
      dataset = dataset.shuffle()
    if repeat:
      dataset = dataset.repeat()
    dataset = dataset.random_map(transform).to_iter_dataset()
    if num_workers > 0:
      dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2),
                                    worker_init_fn=die_with_parent)
    self._iterator = iter(dataset)
    self.batch_size, self.max_skip_fraction, self.num_workers = batch_size, max_skip_fraction, num_workers
    self.read = self.skipped = 0
    self.examples: list[str] = []
    self._warned: set[str] = set()

  def __iter__(self) -> "ClipLoader":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    clips = []
    while len(clips) < self.batch_size:
      element = next(self._iterator)  # StopIteration ends a non-repeating pass
      self.read += 1
      if "skip" in element:
        self._skip(element)
      else:
        clips.append(element)
    return {"video": np.stack([c["video"] for c in clips]),
            "caption": np.asarray([c["caption"] for c in clips], dtype=object),
            "label": np.asarray([c["label"] for c in clips], np.int32)}

  def _skip(self, element: dict) -> None:
    self.skipped += 1
    note = f"{element['where']}: {element['skip']}"
    if len(self.examples) < 5:
      self.examples.append(note)
    if element["where"] not in self._warned and len(self._warned) < MAX_WARNINGS:  # once per record
      self._warned.add(element["where"])
      last = len(self._warned) == MAX_WARNINGS
      logging.warning(f"data: skipped {note}" + (" (further skipped records are only counted)" if last else ""))
    if self.read >= min(MIN_READ_FOR_SKIP_CHECK, self.shard_size) and (
        self.skipped > self.max_skip_fraction * self.read):
      raise DataError(f"{self.skipped} of the {self.read} records read were skipped, more than "
                      f"config.data.max_skip_fraction={self.max_skip_fraction}; for example:\n  "
                      + "\n  ".join(self.examples))

  def stats(self) -> dict[str, int]:
    return {"data_read": self.read, "data_skipped": self.skipped}

  def get_state(self) -> dict[str, Any]:
    return {"grain": self._iterator.get_state(), "read": self.read, "skipped": self.skipped,
            "num_workers": self.num_workers}

  def set_state(self, state: dict[str, Any]) -> None:
    saved = state.get("num_workers", self.num_workers)
    if saved != self.num_workers:  # grain's state of a multiprocess iterator has one entry per worker
      raise DataError(f"the data stream was saved with config.data.num_workers={saved}, this run has "
                      f"{self.num_workers}; its position can only be restored with num_workers={saved}")
    self._iterator.set_state(state["grain"])
    self.read, self.skipped = int(state["read"]), int(state["skipped"])

  def close(self) -> None:
    close = getattr(self._iterator, "close", None)
    if close is not None:
      close()


__all__ = ["ClipLoader", "DataError", "LoadClip", "MAX_WARNINGS"]
