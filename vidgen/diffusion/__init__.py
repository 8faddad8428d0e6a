"""Diffusion: noise schedules, the v-prediction and rectified-flow objectives, samplers and classifier-free guidance.

Usage:
  from vidgen import diffusion
  schedule = diffusion.LinearBetaSchedule(zero_terminal_snr=True)     # W.A.L.T's schedule
  objective = diffusion.objective_from_config(config.diffusion)        # a run's schedule, prediction, t distribution
  loss = objective.loss(lambda z, t: model(z, t, cond), x, key)        # [B]
  loss = diffusion.denoising_loss(lambda z, t: model(z, t, cond), x, key, schedule, weighting="min_snr")   # v, [B]
  guided = diffusion.classifier_free_guidance(model, cond, null_cond, scale=4.0, rescale=0.7)
  x0 = diffusion.sample(guided, noise, schedule=objective.schedule, sampler="ddim", num_steps=50,
                        prediction=objective.prediction)
  # Rectified flow (SD3 / Wan): z_s = (1 - s) x + s eps, the model predicts u = eps - x.
  flow = diffusion.Objective(diffusion.FlowSchedule(shift=0.0), prediction="flow", timesteps="logit_normal")
  x0 = diffusion.sample(model_u, noise, schedule=flow.schedule, sampler="euler", num_steps=28, prediction="flow")

Time t is continuous in [0, 1] (0 clean, 1 noise) everywhere; see `schedules` for how discrete DDPM steps map onto it.
"""

from vidgen.diffusion.config import (
    DEFAULT_SELF_CONDITION_PROB,
    SCHEDULES,
    Objective,
    objective_from_config,
    schedule_from_config,
    validate_diffusion_config,
)
from vidgen.diffusion.guidance import check_interval, classifier_free_guidance, guide, rescale_guidance
from vidgen.diffusion.objectives import (
    PREDICTIONS,
    TIMESTEP_DISTRIBUTIONS,
    WEIGHTINGS,
    add_noise,
    denoising_loss,
    eps_from_prediction,
    eps_from_v,
    eps_from_x,
    loss_weight,
    min_snr_weight,
    prediction_target,
    sample_t,
    self_conditioned,
    v_from_eps,
    v_from_x,
    v_from_x_eps,
    x_from_eps,
    x_from_prediction,
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
from vidgen.diffusion.schedules import (
    CosineSchedule,
    FlowSchedule,
    LinearBetaSchedule,
    Schedule,
    flow_shift_from_sd3,
    resolution_shift,
)

__all__ = [
    "CosineSchedule",
    "DEFAULT_SELF_CONDITION_PROB",
    "FlowSchedule",
    "LinearBetaSchedule",
    "Objective",
    "PREDICTIONS",
    "SAMPLERS",
    "SCHEDULES",
    "Schedule",
    "TIMESTEP_DISTRIBUTIONS",
    "TIMESTEP_SPACINGS",
    "Trajectory",
    "WEIGHTINGS",
    "add_noise",
    "check_interval",
    "classifier_free_guidance",
    "denoising_loss",
    "discrete_timesteps",
    "eps_from_prediction",
    "eps_from_v",
    "eps_from_x",
    "flow_shift_from_sd3",
    "guide",
    "loss_weight",
    "min_snr_weight",
    "objective_from_config",
    "prediction_target",
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
    "validate_diffusion_config",
    "x_from_eps",
    "x_from_prediction",
    "x_from_v",
]
