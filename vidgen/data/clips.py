"""Batches of a random-access clip dataset for one process of a multi-host run, resumable from a JSON state."""

from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np


class ClipDataset(Protocol):
  """Random access to the clips of one split."""

  def batch(self, start: int, size: int) -> dict[str, np.ndarray]:
    """Clips start .. start + size - 1: {"video": uint8 [n, T, H, W, 3], "label": int32 [n], "caption": [n]}."""


class ClipIterator:
  """Infinite stream of batches of a random-access dataset for one process; state {"next_index": int} (JSON).

  The global batch at step s is clips [s * global_batch, (s + 1) * global_batch); process p of P takes its contiguous
  slice, so the global stream is independent of the number of processes.
  """

  def __init__(self, dataset: ClipDataset, *, global_batch: int, process_index: int = 0, process_count: int = 1,
               next_index: int = 0):
    if global_batch % process_count:
      raise ValueError(f"global batch {global_batch} must be divisible by the process count {process_count}")
    self.dataset = dataset
    self.global_batch = global_batch
    self.local_batch = global_batch // process_count
    self.process_index = process_index
    self.next_index = next_index

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    start = self.next_index + self.process_index * self.local_batch
    self.next_index += self.global_batch
    return self.dataset.batch(start, self.local_batch)

  def get_state(self) -> dict[str, int]:
    return {"next_index": int(self.next_index)}

  def set_state(self, state: dict[str, int]) -> None:
    self.next_index = int(state["next_index"])
