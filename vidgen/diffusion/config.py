"""The `config.diffusion` block of a run: its fields, their validation, and the schedule and objective they describe.

  objective       "v" (v-prediction, the default when absent), "flow" (rectified flow: the model predicts u = eps - x)
                  or "eps" (noise prediction, as DDPM and DiT; not with zero terminal SNR, where eps says nothing)
  schedule        "cosine" (logSNR cosine, `shift` added to logSNR), "linear" (DDPM betas; `zero_terminal_snr`) or
                  "flow" (z = (1 - s) x + s eps, `shift` added to logSNR); objective "flow" and schedule "flow" go
                  together
  timesteps       training-time distribution: "uniform" (the default) or "logit_normal" (with `logit_mean`,
                  `logit_std`: t = sigmoid(N(logit_mean, logit_std^2)))
  weighting       "v_mse" (the plain MSE of the prediction) or "min_snr" (with `min_snr_gamma`; objective "v" only)
  guidance_dropout   probability that an example's class / caption is dropped (for classifier-free guidance)
  self_condition_prob   probability of self-conditioning a training example (read when `dit.self_condition` is on)

A field that does not apply to the chosen schedule or objective is refused rather than ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax

from vidgen.config import require
from vidgen.diffusion.objectives import (
    PREDICTIONS,
    TIMESTEP_DISTRIBUTIONS,
    WEIGHTINGS,
    DenoiseFn,
    denoising_loss,
    sample_t,
)
from vidgen.diffusion.schedules import CosineSchedule, FlowSchedule, LinearBetaSchedule, Schedule

Array = jax.Array

SCHEDULES = ("cosine", "linear", "flow")
# Probability that a self-conditioned DiT sees its own first-pass estimate during training (W.A.L.T uses 0.9).
DEFAULT_SELF_CONDITION_PROB = 0.5
_FIELDS = {"objective", "schedule", "shift", "zero_terminal_snr", "timesteps", "logit_mean", "logit_std", "weighting",
           "min_snr_gamma", "guidance_dropout", "self_condition_prob"}


def validate_diffusion_config(config: Mapping[str, Any], field: str = "diffusion") -> None:
  """Raises ConfigError naming `field`.<name> for unknown fields, bad values and fields the schedule or objective
  would ignore."""
  unknown = sorted(set(config) - _FIELDS)
  require(not unknown, field, f"unknown fields {unknown}; allowed: {sorted(_FIELDS)}")
  objective = config.get("objective", "v")
  require(objective in PREDICTIONS, f"{field}.objective", f"must be one of {PREDICTIONS}, got {objective!r}")
  schedule = config.get("schedule")
  require(schedule in SCHEDULES, f"{field}.schedule", f"must be one of {SCHEDULES}, got {schedule!r}")
  # The flow conversions and the flow path belong together; the v conversions assume a variance-preserving schedule.
  if objective == "flow":
    require(schedule == "flow", f"{field}.schedule", f"must be 'flow' for objective 'flow', got {schedule!r}")
  else:
    require(schedule != "flow", f"{field}.objective",
            f"must be 'flow' for schedule 'flow' (v-prediction needs a variance-preserving schedule), got "
            f"{objective!r}")
  if objective == "eps":
    require(not config.get("zero_terminal_snr", False), f"{field}.zero_terminal_snr",
            "cannot go with objective 'eps': at SNR 0 the noise is the input, and x cannot be recovered from it")
  if schedule != "linear":
    require(not config.get("zero_terminal_snr", False), f"{field}.zero_terminal_snr",
            f"applies to the 'linear' schedule only; the {schedule!r} schedule fixes its own last step")
  if schedule == "linear":
    require(float(config.get("shift", 0.0)) == 0.0, f"{field}.shift",
            f"applies to the 'cosine' and 'flow' schedules only (a logSNR shift), got {config.get('shift')!r}")
  timesteps = config.get("timesteps", "uniform")
  require(timesteps in TIMESTEP_DISTRIBUTIONS, f"{field}.timesteps",
          f"must be one of {TIMESTEP_DISTRIBUTIONS}, got {timesteps!r}")
  for name in ("logit_mean", "logit_std"):
    require(timesteps == "logit_normal" or name not in config, f"{field}.{name}",
            f"applies to timesteps 'logit_normal' only, got timesteps {timesteps!r}")
  require(float(config.get("logit_std", 1.0)) > 0, f"{field}.logit_std",
          f"must be > 0, got {config.get('logit_std')!r}")
  weighting = config.get("weighting", "v_mse")
  require(weighting in WEIGHTINGS, f"{field}.weighting", f"must be one of {WEIGHTINGS}, got {weighting!r}")
  require(weighting != "min_snr" or objective == "v", f"{field}.weighting",
          f"'min_snr' is a weight for the v-prediction loss; objective {objective!r} needs 'v_mse'")
  require(float(config.get("min_snr_gamma", 5.0)) > 0, f"{field}.min_snr_gamma",
          f"must be > 0, got {config.get('min_snr_gamma')!r}")
  dropout = config.get("guidance_dropout", 0.0)
  require(0.0 <= dropout < 1.0, f"{field}.guidance_dropout", f"must be in [0, 1), got {dropout!r}")
  p_sc = config.get("self_condition_prob", DEFAULT_SELF_CONDITION_PROB)
  require(0.0 <= p_sc <= 1.0, f"{field}.self_condition_prob", f"must be in [0, 1], got {p_sc!r}")


def schedule_from_config(config: Mapping[str, Any]) -> Schedule:
  """`config.diffusion` -> its noise schedule (validated first)."""
  validate_diffusion_config(config)
  if config["schedule"] == "cosine":
    return CosineSchedule(shift=float(config.get("shift", 0.0)))
  if config["schedule"] == "flow":
    return FlowSchedule(shift=float(config.get("shift", 0.0)))
  return LinearBetaSchedule(zero_terminal_snr=bool(config.get("zero_terminal_snr", False)))


@dataclasses.dataclass(frozen=True)
class Objective:
  """What a DiT is trained on: the schedule, what the model predicts, how training times are drawn, the weighting.

  Frozen and hashable, so it can be closed over by a jitted step. Build it from a run with `objective_from_config`.

  Attributes:
    schedule: the noise schedule.
    prediction: one of PREDICTIONS ("v", "flow" or "eps"); also what `vidgen.diffusion.sample` must be told.
    timesteps: one of TIMESTEP_DISTRIBUTIONS, the training-time distribution.
    logit_mean, logit_std: of the "logit_normal" distribution's normal.
    weighting: one of WEIGHTINGS.
    gamma: the Min-SNR cap for weighting "min_snr".
  """

  schedule: Schedule
  prediction: str = "v"
  timesteps: str = "uniform"
  logit_mean: float = 0.0
  logit_std: float = 1.0
  weighting: str = "v_mse"
  gamma: float = 5.0

  def __post_init__(self):
    if self.prediction not in PREDICTIONS:
      raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
    if self.timesteps not in TIMESTEP_DISTRIBUTIONS:
      raise ValueError(f"timesteps must be one of {TIMESTEP_DISTRIBUTIONS}, got {self.timesteps!r}")
    if not self.logit_std > 0:
      raise ValueError(f"logit_std must be > 0, got {self.logit_std!r}")
    if self.weighting not in WEIGHTINGS or (self.weighting == "min_snr" and self.prediction != "v"):
      raise ValueError(f"weighting {self.weighting!r} is not one of {WEIGHTINGS} or does not apply to prediction "
                       f"{self.prediction!r} ('min_snr' is for 'v' only)")

  def sample_t(self, key: Array, n: int) -> Array:
    """n training times from this objective's distribution: float32 [n]."""
    return sample_t(key, n, self.timesteps, self.logit_mean, self.logit_std)

  def loss(self, denoise_fn: DenoiseFn, x: Array, key: Array, *, t: Array | None = None, eps: Array | None = None,
           mask: Array | None = None) -> Array:
    """Per-example loss float32 [B] of `denoise_fn` ((z_t [B, ...], t [B]) -> prediction [B, ...]) on x [B, ...].

    t (float [B]) is drawn with `sample_t` unless given, eps (x's shape) from `key` unless given; see
    `vidgen.diffusion.denoising_loss` for the mask and the rest.
    """
    if t is None:
      # The same split as denoising_loss's, so "uniform" draws exactly what denoising_loss would.
      t = self.sample_t(jax.random.split(key)[0], x.shape[0])
    return denoising_loss(denoise_fn, x, key, self.schedule, prediction=self.prediction, weighting=self.weighting,
                          gamma=self.gamma, mask=mask, t=t, eps=eps)


def objective_from_config(config: Mapping[str, Any]) -> Objective:
  """`config.diffusion` -> its training objective (validated first); a config without `objective` is a v run."""
  schedule = schedule_from_config(config)
  return Objective(schedule=schedule, prediction=config.get("objective", "v"),
                   timesteps=config.get("timesteps", "uniform"), logit_mean=float(config.get("logit_mean", 0.0)),
                   logit_std=float(config.get("logit_std", 1.0)), weighting=config.get("weighting", "v_mse"),
                   gamma=float(config.get("min_snr_gamma", 5.0)))
