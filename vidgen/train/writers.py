"""Where a run reports: TensorBoard (clu metric writers), `metrics.jsonl`, and a console progress line.

`metrics.jsonl` holds one JSON object per logged step with at least `step` and `loss`. When a run resumes from a
checkpoint at step s, lines for steps > s (written by the interrupted run after its last checkpoint) are dropped, so the
file reads as one uninterrupted run.

Throughput fields of every record: `steps_per_sec` and `step_time_s` (the mean over the steps since the previous record;
the loop restarts the clock after compiles, evaluations and checkpoints, so they are pure step time),
`model_flops_per_step` (the mean FLOPs of those steps, over all devices: image and video steps differ),
`tflops_per_device` (achieved) and `mfu` (achieved / peak, only when the peak is known: `config.peak_tflops_per_device`
or the table below; never on CPU).
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

# Dense bf16 peak TFLOP/s per chip / GPU, by lower-case substrings of `jax.devices()[0].device_kind` (first match wins,
# so the "lite" / "e" parts are listed before the full chips of the same generation).
PEAK_BF16_TFLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("tpu v4",), 275.0),
    (("tpu v5 lite", "tpu v5e"), 197.0),
    (("tpu v5p", "tpu v5"), 459.0),
    (("tpu v6 lite", "tpu v6e"), 918.0),
    (("h100",), 989.0),
    (("h200",), 989.0),
)
# Kept off the console line (still in metrics.jsonl and TensorBoard): long numbers that add nothing to a glance.
_QUIET = ("steps_per_sec", "step_time_s", "model_flops_per_step")


def peak_tflops_per_device(configured: float | None = None, device_kind: str | None = None) -> float | None:
  """`configured` if given (> 0), else the table's value for the device kind; None when unknown (CPUs)."""
  if configured:
    return float(configured)
  kind = (jax.devices()[0].device_kind if device_kind is None else device_kind).lower()
  for names, peak in PEAK_BF16_TFLOPS:
    if any(n in kind for n in names):
      return peak
  return None


def _plain(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


class RunWriter:
  """Writes scalars to TensorBoard and metrics.jsonl (process 0 only) and prints progress with steps/s and ETA."""

  def __init__(self, workdir: str, *, total_steps: int, start_step: int = 0, is_main: bool | None = None,
               num_devices: int | None = None, peak_tflops_per_device: float | None = None):
    self.is_main = jax.process_index() == 0 if is_main is None else is_main
    self.total_steps = total_steps
    self.num_devices = jax.device_count() if num_devices is None else num_devices
    self.peak_tflops_per_device = peak_tflops_per_device
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._last_time = time.perf_counter()
    self._last_step = start_step
    self._lap: float | None = None
    self.tb = metric_writers.create_default_writer(
        os.path.join(workdir, "tensorboard"), just_logging=not self.is_main, asynchronous=True)
    if self.is_main:
      _truncate_after(self.jsonl_path, start_step)

  def write(self, step: int, metrics: Mapping[str, float], *, model_flops_per_step: float | None = None) -> dict:
    """Logs `metrics` for `step` with the throughput fields (see the module docstring); prints a progress line.

    The interval ends at the last `lap()` if one was taken since the previous record, else now.
    """
    now = time.perf_counter() if self._lap is None else self._lap
    self._lap = None
    steps = max(step - self._last_step, 1)
    step_time = max(now - self._last_time, 1e-9) / steps
    steps_per_sec = 1.0 / step_time
    self._last_time, self._last_step = now, step
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}, "steps_per_sec": steps_per_sec,
              "step_time_s": step_time}
    if model_flops_per_step:
      record["model_flops_per_step"] = float(model_flops_per_step)
      record["tflops_per_device"] = model_flops_per_step / step_time / self.num_devices / 1e12
      if self.peak_tflops_per_device:
        record["mfu"] = record["tflops_per_device"] / self.peak_tflops_per_device
    scalars = {k: v for k, v in record.items() if k != "step" and np.ndim(v) == 0}
    self.tb.write_scalars(step, scalars)
    if self.is_main:
      with open(self.jsonl_path, "a") as f:
        f.write(json.dumps(record) + "\n")
      remaining = (self.total_steps - step) / steps_per_sec if steps_per_sec > 0 else math.inf
      shown = " | ".join(f"{k} {v:.4g}" for k, v in scalars.items() if k not in _QUIET)
      print(f"step {step}/{self.total_steps} | {shown} | {steps_per_sec:.2f} steps/s | ETA {_duration(remaining)}",
            flush=True)
    return record

  def lap(self) -> None:
    """Ends the timed interval now (once the step's results are on the host), before an evaluation that is logged
    with the same record and must not count as step time."""
    self._lap = time.perf_counter()

  def reset_timer(self, step: int) -> None:
    """Restarts the steps/s clock (after a compile, an evaluation or a checkpoint that should not count as steps)."""
    self._last_time, self._last_step, self._lap = time.perf_counter(), step, None

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
