"""A low-variance validation loss: the training objective on fixed held-out latents, fixed noise and fixed times.

Training losses are noisy (fresh noise, fresh t, fresh clips every step), too noisy to rank models that differ by a
few percent, which is what a scaling study needs. Here every evaluation sees the same `eval.val_clips` clips of the
data source's validation split (encoded once by the run's VAE, stored beside the latent cache), the same noise per
(clip, time), and the same `eval.val_timesteps` times: the quantiles (k + 0.5) / K of the training time distribution,
so the mean is a stratified estimate of the expected training loss. The loss is the training objective's, weighting
included; its standard error is over clips (each clip's loss averaged over the times first).

Config (`config.eval`): val_clips (0 = off), val_timesteps, val_batch (divides val_clips), val_seed, val_ema
(also evaluate the EMA weights).

Public names:
  validation_times(objective, num_times): the fixed time grid.
  ValidationLoss: (params) -> (mean, standard error) on a validation set.
  validate_validation_config(config): the `config.eval.val_*` checks.
  without_validation_fields(config): the config a data source's own `validate_eval` sees.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from scipy import special

from vidgen.config import require
from vidgen.parallel import replicated

VALIDATION_DEFAULTS = dict(val_clips=0, val_timesteps=8, val_batch=32, val_seed=0, val_ema=False)


def validate_validation_config(config) -> None:
  """Raises ConfigError naming `eval.val_*` for counts that do not fit."""
  e = config.eval
  clips, times, batch = (e.get(k, VALIDATION_DEFAULTS[k]) for k in ("val_clips", "val_timesteps", "val_batch"))
  require(isinstance(clips, int) and clips >= 0, "eval.val_clips", f"must be an integer >= 0 (0 = off), got {clips!r}")
  if not clips:
    return
  require(isinstance(times, int) and times >= 1, "eval.val_timesteps", f"must be a positive integer, got {times!r}")
  require(isinstance(batch, int) and batch >= 1 and clips % batch == 0, "eval.val_batch",
          f"must be a positive integer dividing eval.val_clips={clips}, got {batch!r}")
  require(isinstance(e.get("val_ema", False), bool), "eval.val_ema", f"must be True or False, got {e.val_ema!r}")


def without_validation_fields(config):
  """A copy of `config` without the `eval.val_*` fields, for a data source that checks its own `config.eval`."""
  config = config.copy_and_resolve_references()
  if "eval" in config:
    with config.eval.unlocked():
      for name in VALIDATION_DEFAULTS:
        if name in config.eval:
          del config.eval[name]
  return config


def validation_times(objective, num_times: int) -> np.ndarray:
  """float32 [num_times]: the (k + 0.5) / K quantiles of the objective's training time distribution."""
  q = (np.arange(num_times) + 0.5) / num_times
  if objective.timesteps == "logit_normal":
    return special.expit(objective.logit_mean + objective.logit_std * special.ndtri(q)).astype(np.float32)
  return q.astype(np.float32)


class ValidationLoss:
  """The validation loss of a DiT's parameters on one validation set (module docstring).

  Args:
    x: normalized clean latents float32 [n, T', H', W', C] (the VAE posterior means, shifted and scaled).
    inputs: the conditioning host arrays, each [n, ...] ("label", or "ids" / "text" with "mask").
    loss_fn: (params, x [b, ...], t [b], eps [b, ...], inputs) -> per-example loss float32 [b]; traced under jit.
    objective: the run's `diffusion.Objective` (for the time grid).
    num_times, batch_size, seed: the grid size, clips per call and the noise seed.
    mesh: inputs are replicated over it; params keep the shardings they come with.
  """

  def __init__(self, x: np.ndarray, inputs: dict[str, np.ndarray], loss_fn: Callable, objective, *, num_times: int,
               batch_size: int, seed: int, mesh: jax.sharding.Mesh):
    self.x, self.inputs, self.batch_size, self.mesh = x, inputs, batch_size, mesh
    self.times = validation_times(objective, num_times)
    # One noise draw per (time, clip), from the seed alone: every evaluation of every run sees the same.
    rng = np.random.default_rng(seed)
    self.noise = rng.standard_normal((num_times, *x.shape), dtype=np.float32)
    self._fn = jax.jit(loss_fn)

  def _put(self, a: np.ndarray) -> jax.Array:
    return jax.make_array_from_process_local_data(replicated(self.mesh), np.ascontiguousarray(a))

  def __call__(self, params: Any) -> tuple[float, float]:
    """(mean loss, standard error over clips) of `params` (a pytree, possibly sharded)."""
    n, b = len(self.x), self.batch_size
    per_clip = np.zeros(n, np.float64)
    for k, t in enumerate(self.times):
      for start in range(0, n, b):
        rows = slice(start, start + b)
        inputs = {name: self._put(v[rows]) for name, v in self.inputs.items()}
        loss = self._fn(params, self._put(self.x[rows]), self._put(np.full(b, t, np.float32)),
                        self._put(self.noise[k, rows]), inputs)
        per_clip[rows] += np.asarray(jax.device_get(loss), np.float64) / len(self.times)
    se = float(per_clip.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return float(per_clip.mean()), se
