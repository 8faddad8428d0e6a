"""The `config.diffusion` block of a run: its fields, their validation, and the noise schedule they describe.

  schedule        "cosine" (logSNR cosine, `shift` added to logSNR) or "linear" (DDPM betas; `zero_terminal_snr`)
  weighting       "v_mse" or "min_snr" (with `min_snr_gamma`)
  guidance_dropout   probability that an example's class / caption is dropped (for classifier-free guidance)
  self_condition_prob   probability of self-conditioning a training example (read when `dit.self_condition` is on)

A field that does not apply to the chosen schedule is refused rather than ignored.
"""

from __future__ import annotations

from typing import Any, Mapping

from vidgen.config import require
from vidgen.diffusion.objectives import WEIGHTINGS
from vidgen.diffusion.schedules import CosineSchedule, LinearBetaSchedule, Schedule

SCHEDULES = ("cosine", "linear")
# Probability that a self-conditioned DiT sees its own first-pass estimate during training (W.A.L.T uses 0.9).
DEFAULT_SELF_CONDITION_PROB = 0.5
_FIELDS = {"schedule", "shift", "zero_terminal_snr", "weighting", "min_snr_gamma", "guidance_dropout",
           "self_condition_prob"}


def validate_diffusion_config(config: Mapping[str, Any], field: str = "diffusion") -> None:
  """Raises ConfigError naming `field`.<name> for unknown fields, bad values and fields the schedule would ignore."""
  unknown = sorted(set(config) - _FIELDS)
  require(not unknown, field, f"unknown fields {unknown}; allowed: {sorted(_FIELDS)}")
  schedule = config.get("schedule")
  require(schedule in SCHEDULES, f"{field}.schedule", f"must be one of {SCHEDULES}, got {schedule!r}")
  if schedule == "cosine":
    require(not config.get("zero_terminal_snr", False), f"{field}.zero_terminal_snr",
            "applies to the 'linear' schedule only; the cosine schedule's last step is fixed by its logsnr_min")
  if schedule == "linear":
    require(float(config.get("shift", 0.0)) == 0.0, f"{field}.shift",
            f"applies to the 'cosine' schedule only (a logSNR shift), got {config.get('shift')!r}")
  weighting = config.get("weighting", "v_mse")
  require(weighting in WEIGHTINGS, f"{field}.weighting", f"must be one of {WEIGHTINGS}, got {weighting!r}")
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
  return LinearBetaSchedule(zero_terminal_snr=bool(config.get("zero_terminal_snr", False)))
