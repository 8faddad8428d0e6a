"""Runs `vidgen train` (or a Python snippet) in subprocesses with fake CPU devices, for the scale-out and reliability
tests: a subprocess is the only way to pick the device count (XLA reads it once, at start-up) and to send it signals.

`--xla_backend_optimization_level=0` cuts the tiny VAE's compile time on CPU from ~12 s to ~2 s; every run of a
test uses the same flags, so comparisons between runs are unaffected.
"""

import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
CLI = [sys.executable, "-c", "from vidgen.cli import run; run()", "train",
       f"--config={REPO}/experiments/shapes_vae.py:runlocal"]
# A schedule that does not depend on total_steps (constant lr, no warm-up, the GAN never starts), so runs of different
# lengths take identical steps; a learning rate low enough that the first steps stay smooth (a jumpy loss would magnify
# the float round-off that differs between meshes); evaluation only at the end.
STEADY_FIELDS = {"loss.gan_start": 100000, "optimizer.schedule": "constant", "optimizer.warmup_steps": 0,
                 "optimizer.lr": 0.0002, "sample_every": 100000, "log_every": 1}


def flags(fields: dict) -> list[str]:
  """Dotted config fields -> `--config.FIELD=VALUE` flags (the same fields `tiny_train_config(**fields)` takes)."""
  return [f"--config.{k}={v}" for k, v in fields.items()]


STEADY = flags(STEADY_FIELDS)


# Runs of a session compile many identical programs (the same step on the same mesh, orbax's per-shard copies): a
# persistent compilation cache shared by all of them halves the time of a repeated run. Keyed by the program, the
# flags and the JAX version, so stale entries are never used.
CACHE_DIR = os.environ.get("VIDGEN_TEST_JAX_CACHE", os.path.join(tempfile.gettempdir(), "vidgen-tests-jax-cache"))
XLA_FAST_COMPILE = "--xla_backend_optimization_level=0"
CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": CACHE_DIR, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def env(devices: int = 1) -> dict:
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {XLA_FAST_COMPILE}",
              **CACHE_ENV)


def command(config: str | None, verb: str = "train") -> list[str]:
  """`vidgen VERB` with experiments/CONFIG (e.g. "video_vae.py:runlocal"); None: the shapes VAE smoke run."""
  return [*CLI[:3], verb, f"--config={REPO}/experiments/{config}" if config else CLI[-1]]


def train(workdir, *overrides: str, devices: int = 1, timeout: float = 300,
          config: str | None = None) -> subprocess.CompletedProcess:
  """A whole `vidgen train` run; returns the finished process (stdout and stderr merged into .stdout)."""
  return subprocess.run(command(config) + [f"--workdir={workdir}", *overrides], env=env(devices),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def python(code: str, *, devices: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs `code` with tests/ on the path (for conftest's config factory)."""
  prelude = f"import sys; sys.path.insert(0, {TESTS!r})\n"
  return subprocess.run([sys.executable, "-c", prelude + code], env=env(devices), stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True, timeout=timeout, cwd=REPO)


class Run:
  """A `vidgen train` (or `vidgen VERB`) process we can watch line by line and signal."""

  def __init__(self, workdir, *overrides: str, devices: int = 1, extra_env: dict | None = None,
               config: str | None = None, verb: str = "train"):
    self.proc = subprocess.Popen(command(config, verb) + [f"--workdir={workdir}", *overrides],
                                 env={**env(devices), **(extra_env or {})},
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    self.lines: list[str] = []
    self._queue: queue.Queue = queue.Queue()
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self) -> None:
    for line in self.proc.stdout:
      self._queue.put(line)
    self._queue.put(None)

  def wait_for(self, predicate, timeout: float = 120) -> str:
    """Returns the first (new) output line satisfying `predicate`; fails on timeout or if the process ends first."""
    deadline = time.monotonic() + timeout
    while True:
      try:
        line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
      except queue.Empty:
        self.proc.kill()
        raise AssertionError(f"timed out waiting; output so far:\n{self.output()[-3000:]}")
      if line is None:
        raise AssertionError(f"the process ended (rc {self.proc.wait()}) first; output:\n{self.output()[-3000:]}")
      self.lines.append(line)
      if predicate(line):
        return line

  def finish(self, timeout: float = 120) -> int:
    rc = self.proc.wait(timeout=timeout)
    while True:
      line = self._queue.get(timeout=10)
      if line is None:
        return rc
      self.lines.append(line)

  def output(self) -> str:
    return "".join(self.lines)


def records(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def losses(workdir) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in records(workdir)}


def checkpoint_steps(workdir) -> list[int]:
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
