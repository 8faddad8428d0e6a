"""Diffusion: noise schedules, the v-prediction objective, samplers and classifier-free guidance.

Usage:
  from vidgen import diffusion
  schedule = diffusion.LinearBetaSchedule(zero_terminal_snr=True)     # W.A.L.T's schedule
  schedule = diffusion.schedule_from_config(config.diffusion)          # a run's schedule
  loss = diffusion.v_loss(lambda z, t: model(z, t, cond), x, key, schedule, weighting="min_snr")   # [B]
  guided = diffusion.classifier_free_guidance(model, cond, null_cond, scale=4.0, rescale=0.7)
  x0 = diffusion.sample(guided, noise, schedule=schedule, sampler="ddim", num_steps=50)

Time t is continuous in [0, 1] (0 clean, 1 noise) everywhere; see `schedules` for how discrete DDPM steps map onto it.
"""

from vidgen.diffusion.config import (
    DEFAULT_SELF_CONDITION_PROB,
    SCHEDULES,
    schedule_from_config,
    validate_diffusion_config,
)
from vidgen.diffusion.guidance import check_interval, classifier_free_guidance, guide, rescale_guidance
from vidgen.diffusion.objectives import (
    WEIGHTINGS,
    add_noise,
    eps_from_v,
    eps_from_x,
    loss_weight,
    min_snr_weight,
    sample_t,
    self_conditioned,
    v_from_eps,
    v_from_x,
    v_from_x_eps,
    v_loss,
    x_from_eps,
    x_from_v,
)
from vidgen.diffusion.samplers import (
    SAMPLERS,
    TIMESTEP_SPACINGS,
    Trajectory,
    discrete_timesteps,
    sample,
    sampling_times,
)
from vidgen.diffusion.schedules import CosineSchedule, LinearBetaSchedule, Schedule, resolution_shift

__all__ = [
    "CosineSchedule",
    "DEFAULT_SELF_CONDITION_PROB",
    "LinearBetaSchedule",
    "SAMPLERS",
    "SCHEDULES",
    "Schedule",
    "TIMESTEP_SPACINGS",
    "Trajectory",
    "WEIGHTINGS",
    "add_noise",
    "check_interval",
    "classifier_free_guidance",
    "discrete_timesteps",
    "eps_from_v",
    "eps_from_x",
    "guide",
    "loss_weight",
    "min_snr_weight",
    "resolution_shift",
    "rescale_guidance",
    "sample",
    "sample_t",
    "sampling_times",
    "schedule_from_config",
    "self_conditioned",
    "v_from_eps",
    "v_from_x",
    "v_from_x_eps",
    "v_loss",
    "validate_diffusion_config",
    "x_from_eps",
    "x_from_v",
]
