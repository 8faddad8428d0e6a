"""Where a run reports: TensorBoard (clu metric writers), `metrics.jsonl`, and a console progress line.

`metrics.jsonl` holds one JSON object per logged step with at least `step` and `loss`. When a run resumes from a
checkpoint at step s, lines for steps > s (written by the interrupted run after its last checkpoint) are dropped, so the
file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Mapping

import jax
import numpy as np
from clu import metric_writers


def _plain(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


class RunWriter:
  """Writes scalars to TensorBoard and metrics.jsonl (process 0 only) and prints progress with steps/s and ETA."""

  def __init__(self, workdir: str, *, total_steps: int, start_step: int = 0, is_main: bool | None = None):
    self.is_main = jax.process_index() == 0 if is_main is None else is_main
    self.total_steps = total_steps
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._last_time = time.perf_counter()
    self._last_step = start_step
    self.tb = metric_writers.create_default_writer(
        os.path.join(workdir, "tensorboard"), just_logging=not self.is_main, asynchronous=True)
    if self.is_main:
      _truncate_after(self.jsonl_path, start_step)

  def write(self, step: int, metrics: Mapping[str, float]) -> dict:
    """Logs `metrics` for `step` (adds steps_per_sec since the previous call) and prints a progress line."""
    now = time.perf_counter()
    steps_per_sec = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_time, self._last_step = now, step
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}, "steps_per_sec": steps_per_sec}
    scalars = {k: v for k, v in record.items() if k != "step" and np.ndim(v) == 0}
    self.tb.write_scalars(step, scalars)
    if self.is_main:
      with open(self.jsonl_path, "a") as f:
        f.write(json.dumps(record) + "\n")
      remaining = (self.total_steps - step) / steps_per_sec if steps_per_sec > 0 else math.inf
      shown = " | ".join(f"{k} {v:.4g}" for k, v in scalars.items() if k != "steps_per_sec")
      print(f"step {step}/{self.total_steps} | {shown} | {steps_per_sec:.2f} steps/s | ETA {_duration(remaining)}",
            flush=True)
    return record

  def reset_timer(self, step: int) -> None:
    """Restarts the steps/s clock (after a compile, an evaluation or a checkpoint that should not count as steps)."""
    self._last_time, self._last_step = time.perf_counter(), step

  def close(self) -> None:
    self.tb.flush()
    self.tb.close()


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _truncate_after(path: str, step: int) -> None:
  """Drops metrics.jsonl lines with step > `step` (atomically), keeping everything up to the resumed checkpoint."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
    except (ValueError, KeyError):
      continue  # a torn last line from a killed run
  if len(kept) != len(lines):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, path)


def read_metrics(workdir: str) -> list[dict]:
  """All records of a run's metrics.jsonl, in order."""
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def log(message: str) -> None:
  """A console line from process 0 (messages from every host would interleave)."""
  if jax.process_index() == 0:
    print(message, file=sys.stdout, flush=True)
