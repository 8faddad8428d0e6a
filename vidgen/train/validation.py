"""A low-variance validation loss: the training objective on fixed held-out latents, fixed noise and fixed times.

Training losses are noisy (fresh noise, fresh t, fresh clips every step), too noisy to rank models that differ by a
few percent, which is what a scaling study needs. Here every evaluation sees the same `validation.clips` clips of the
data source's validation split (encoded once by the run's VAE, stored beside the latent cache), the same noise per
(clip, time), and the same `validation.timesteps` times: the quantiles (k + 0.5) / K of the training time distribution,
so the mean is a stratified estimate of the expected training loss. The loss is the training objective's, weighting
included; its standard error is over clips (each clip's loss averaged over the times first).

Config (`config.validation`, a block of the DiT run; absent = off): clips (0 = off), timesteps, batch (divides
clips), seed, ema (also evaluate the EMA weights).

Public names:
  validation_times(objective, num_times): the fixed time grid.
  ValidationLoss: (params) -> (mean, standard error) on a validation set.
  validation_settings(config): `config.validation` with its defaults filled in.
  validate_validation_config(config): its checks.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from scipy import special

from vidgen.config import require
from vidgen.parallel import replicated

VALIDATION_DEFAULTS = dict(clips=0, timesteps=8, batch=32, seed=0, ema=False)


def validation_settings(config) -> dict:
  """`config.validation` over VALIDATION_DEFAULTS (a run without the block has clips = 0: no validation loss)."""
  return {**VALIDATION_DEFAULTS, **dict(config.get("validation", None) or {})}


def validate_validation_config(config) -> None:
  """Raises ConfigError naming `validation.<field>` for unknown fields and counts that do not fit."""
  given = dict(config.get("validation", None) or {})
  unknown = sorted(set(given) - set(VALIDATION_DEFAULTS))
  require(not unknown, "validation", f"unknown fields {unknown}; allowed: {sorted(VALIDATION_DEFAULTS)}")
  v = validation_settings(config)
  require(isinstance(v["clips"], int) and v["clips"] >= 0, "validation.clips",
          f"must be an integer >= 0 (0 = off), got {v['clips']!r}")
  if not v["clips"]:
    return
  require(isinstance(v["timesteps"], int) and v["timesteps"] >= 1, "validation.timesteps",
          f"must be a positive integer, got {v['timesteps']!r}")
  require(isinstance(v["batch"], int) and v["batch"] >= 1 and v["clips"] % v["batch"] == 0, "validation.batch",
          f"must be a positive integer dividing validation.clips={v['clips']}, got {v['batch']!r}")
  require(isinstance(v["seed"], int), "validation.seed", f"must be an integer, got {v['seed']!r}")
  require(isinstance(v["ema"], bool), "validation.ema", f"must be True or False, got {v['ema']!r}")


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
