"""Preemption: SIGTERM means "finish this step, checkpoint, exit"; every process must stop at the same step.

Schedulers announce an eviction with SIGTERM (Cloud TPU maintenance and spot preemption, GKE, SLURM `--signal=TERM@T`
or `scancel`, Kubernetes pod deletion) and kill the job some seconds later. A single process records the signal in a
Python handler and the loop checks it after each step. With `jax.distributed` running, JAX's preemption service owns
SIGTERM instead: a notice reaching any host is shared through the coordinator, and all hosts agree on one step to stop
at (`multihost_utils.reached_preemption_sync_point`), so they checkpoint the same state together.
"""

from __future__ import annotations

import signal
import threading

import jax

# The exit status of a run that saved a checkpoint and stopped on SIGTERM: EX_TEMPFAIL from sysexits.h ("temporary
# failure, the user is invited to retry"). Non-zero so that a job scheduler restarts the job rather than marking it
# done, and distinct from crashes so a wrapper script can tell "resume me" (e.g. `scontrol requeue`) from a bug.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
  """Raised by `train_and_evaluate` after it saved a checkpoint at `step` because of a preemption notice."""

  def __init__(self, step: int, reason: str):
    super().__init__(f"preempted ({reason}) at step {step}; checkpoint {step} saved; rerun the same command to resume")
    self.step = step
    self.reason = reason


class PreemptionWatcher:
  """Answers "stop after this step?" the same way on every process. Call `reached(step)` after every step."""

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
    self.reason: str | None = None
    self._previous: dict[int, object] = {}
    # `jax.distributed.initialize` starts the preemption service (and its SIGTERM handler) when this flag is on.
    self._synced = jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)
    if self._synced or threading.current_thread() is not threading.main_thread():
      return  # JAX's service handles SIGTERM; off the main thread Python cannot install handlers at all
    for sig in signals:
      self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame) -> None:
    del frame
    self.reason = signal.Signals(signum).name

  def reached(self, step: int) -> bool:
    if self._synced:
      from jax.experimental import multihost_utils

      if multihost_utils.reached_preemption_sync_point(step):
        self.reason = "preemption notice shared by jax.distributed"
        return True
      return False
    return self.reason is not None

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
