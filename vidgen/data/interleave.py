"""Joint image + video streams: every `every`-th batch comes from a second iterator.

Used by VAE training, where cheap 1-frame batches teach the spatial path many more distinct shapes per second than clips
do, while the clips teach the temporal compression. The state holds both iterators' states and the batch count, so a
resumed run continues both streams exactly.
"""

from __future__ import annotations

from typing import Any, Iterator


class Interleave:
  """Batches from `main`, except that batch b (0-based) comes from `other` when (b + 1) % every == 0."""

  def __init__(self, main: Iterator[dict], other: Iterator[dict], every: int):
    if every < 2:
      raise ValueError(f"every must be >= 2 (1 would never use the main stream), got {every}")
    self.main, self.other, self.every = main, other, every
    self.next_batch = 0

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    b = self.next_batch
    self.next_batch += 1
    return next(self.other if (b + 1) % self.every == 0 else self.main)

  def stats(self) -> dict[str, int]:
    """The streams' data counters, summed (a stream without counters adds nothing)."""
    out: dict[str, int] = {}
    for stream in (self.main, self.other):
      for k, v in getattr(stream, "stats", dict)().items():
        out[k] = out.get(k, 0) + v
    return out

  def close(self) -> None:
    for stream in (self.main, self.other):
      getattr(stream, "close", lambda: None)()

  def get_state(self) -> dict[str, Any]:
    return {"next_batch": self.next_batch, "main": self.main.get_state(), "other": self.other.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    self.next_batch = int(state["next_batch"])
    self.main.set_state(state["main"])
    self.other.set_state(state["other"])


__all__ = ["Interleave"]
