"""Rectified flow: FlowSchedule and its SD3 shift, the flow conversions and loss, logit-normal times, every sampler on
the flow schedule (exact-oracle recovery, Euler's update, convergence), the Objective and its config, and parity of
"euler" with diffusers' FlowMatchEulerDiscreteScheduler."""

from __future__ import annotations

import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_diffusion_samplers import MU, STD, X_STAR, _ab  # the same data point, Gaussian data and coefficients
from vidgen import diffusion
from vidgen.config import ConfigError

FLOW = diffusion.FlowSchedule()
SHIFTED = diffusion.FlowSchedule(shift=diffusion.resolution_shift((5, 16, 16), (5, 8, 8)))  # A 2x larger clip.
SD3 = diffusion.FlowSchedule(shift=diffusion.flow_shift_from_sd3(3.0))
SCHEDULES = {"plain": FLOW, "shifted": SHIFTED, "sd3": SD3}

NOISE = jax.random.normal(jax.random.key(0), X_STAR.shape)


def point_oracle(schedule, x_star=X_STAR):
  """The exact u for data that is always x*: eps = (z - alpha x*) / sigma, so u = eps - x* = (z - x*) / sigma when
  alpha + sigma = 1."""

  def denoise_fn(z, t):
    _, sigma = _ab(schedule, t, z.ndim)
    return (z - x_star) / sigma

  return denoise_fn


def gaussian_oracle(schedule):
  """The exact u for x ~ N(MU, STD^2): x_hat = E[x | z], eps_hat = (z - alpha x_hat) / sigma, u = eps_hat - x_hat."""

  def denoise_fn(z, t):
    alpha, sigma = _ab(schedule, t, z.ndim)
    x_hat = MU + alpha * STD**2 * (z - alpha * MU) / (alpha**2 * STD**2 + sigma**2)
    return (z - alpha * x_hat) / sigma - x_hat

  return denoise_fn


# -- schedule ------------------------------------------------------------------------------------------------------


def test_flow_schedule_is_the_straight_path():
  t = jnp.linspace(0.0, 1.0, 101)
  alpha, sigma = FLOW.alpha_sigma(t)
  np.testing.assert_array_equal(alpha, 1.0 - t)
  np.testing.assert_array_equal(sigma, t)
  for schedule in SCHEDULES.values():
    alpha, sigma = schedule.alpha_sigma(t)
    logsnr = schedule.logsnr(t)
    assert np.all(np.isfinite(alpha)) and np.all(np.isfinite(sigma)) and not np.any(np.isnan(logsnr))
    np.testing.assert_allclose(alpha + sigma, 1.0, atol=1e-6)  # Not variance preserving: alpha + sigma = 1.
    # Exactly clean data and pure noise at the ends; logsnr = 2 log(alpha / sigma) in between, decreasing.
    np.testing.assert_array_equal([alpha[0], sigma[0], alpha[-1], sigma[-1]], [1.0, 0.0, 0.0, 1.0])
    assert logsnr[0] == np.inf and logsnr[-1] == -np.inf and np.all(np.diff(logsnr) < 0)
    np.testing.assert_allclose(logsnr[1:-1], 2 * np.log(alpha[1:-1] / sigma[1:-1]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logsnr[1:-1], 2 * np.log((1 - t[1:-1]) / t[1:-1]) + schedule.shift, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("k", [0.5, 1.0, 3.0, 6.0])
def test_sd3_time_shift_is_a_logsnr_shift(k):
  """SD3's s' = k s / (1 + (k - 1) s) is FlowSchedule(shift=-2 ln k), and shifting is adding to logSNR."""
  assert diffusion.flow_shift_from_sd3(k) == pytest.approx(-2 * math.log(k))
  t = np.linspace(0.0, 1.0, 41)
  schedule = diffusion.FlowSchedule(shift=diffusion.flow_shift_from_sd3(k))
  np.testing.assert_allclose(schedule.alpha_sigma(jnp.asarray(t))[1], k * t / (1 + (k - 1) * t), atol=1e-6)
  inner = t[1:-1]
  np.testing.assert_allclose(schedule.logsnr(jnp.asarray(inner)), FLOW.logsnr(jnp.asarray(inner)) - 2 * math.log(k),
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="shift factor"):
    diffusion.flow_shift_from_sd3(0.0)


# -- conversions, loss, times ----------------------------------------------------------------------------------------


def test_flow_conversions_round_trip_and_loss_identity():
  kx, ke, ku = jax.random.split(jax.random.key(1), 3)
  x, eps, u_hat = (jax.random.normal(k, (4, 3, 5)) for k in (kx, ke, ku))
  t = jnp.array([0.02, 0.3, 0.7, 1.0])
  for schedule in SCHEDULES.values():
    alpha, sigma = schedule.alpha_sigma(t)
    z = diffusion.add_noise(x, eps, alpha, sigma)
    u = diffusion.prediction_target(x, eps, alpha, sigma, "flow")
    np.testing.assert_allclose(u, eps - x, atol=1e-6)
    np.testing.assert_allclose(diffusion.x_from_prediction(z, u, alpha, sigma, "flow"), x, atol=1e-5)
    np.testing.assert_allclose(diffusion.eps_from_prediction(z, u, alpha, sigma, "flow"), eps, atol=1e-5)
    # ||u - u_hat||^2 = ||x - x_hat||^2 / sigma^2.
    x_hat = diffusion.x_from_prediction(z, u_hat, alpha, sigma, "flow")
    sq = lambda a: jnp.sum(jnp.square(a), axis=(1, 2))
    np.testing.assert_allclose(sq(u - u_hat) * sigma**2, sq(x - x_hat), rtol=1e-4)
  # "v" goes through the v conversions.
  alpha, sigma = diffusion.CosineSchedule().alpha_sigma(t)
  z = diffusion.add_noise(x, eps, alpha, sigma)
  v = diffusion.prediction_target(x, eps, alpha, sigma, "v")
  np.testing.assert_array_equal(v, diffusion.v_from_x_eps(x, eps, alpha, sigma))
  np.testing.assert_array_equal(diffusion.x_from_prediction(z, v, alpha, sigma), diffusion.x_from_v(z, v, alpha, sigma))
  np.testing.assert_array_equal(diffusion.eps_from_prediction(z, v, alpha, sigma, "v"),
                                diffusion.eps_from_v(z, v, alpha, sigma))
  # "eps" (DDPM, DiT) predicts the noise itself: x = (z - sigma eps) / alpha.
  x_hat = diffusion.x_from_prediction(z, eps, alpha, sigma, "eps")
  np.testing.assert_allclose(alpha[:, None, None] * x_hat, alpha[:, None, None] * x, atol=1e-5)
  np.testing.assert_array_equal(diffusion.eps_from_prediction(z, eps, alpha, sigma, "eps"), eps)
  np.testing.assert_array_equal(diffusion.prediction_target(x, eps, alpha, sigma, "eps"), eps)
  with pytest.raises(ValueError, match="prediction must be one of"):
    diffusion.x_from_prediction(z, v, alpha, sigma, "x0")


def test_flow_loss_of_an_exact_oracle_is_zero():
  x = jax.random.normal(jax.random.key(2), (4, 3, 2, 5))
  key = jax.random.key(3)
  t = jnp.array([0.05, 0.3, 0.6, 1.0])
  for schedule in SCHEDULES.values():
    loss = diffusion.denoising_loss(point_oracle(schedule, x), x, key, schedule, prediction="flow", t=t)
    assert loss.shape == (4,) and loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, 0.0, atol=1e-9)
    # A constant error c gives c^2 ("v_mse" is the plain MSE of u).
    off = lambda z, t_: point_oracle(schedule, x)(z, t_) + 0.5
    np.testing.assert_allclose(diffusion.denoising_loss(off, x, key, schedule, prediction="flow", t=t), 0.25,
                               rtol=1e-4)
  with pytest.raises(ValueError, match="min_snr"):
    diffusion.denoising_loss(point_oracle(FLOW, x), x, key, FLOW, prediction="flow", weighting="min_snr")


def test_logit_normal_times_have_the_right_quantiles():
  mean, std = 0.5, 1.2
  t = np.asarray(diffusion.sample_t(jax.random.key(4), 200_000, "logit_normal", mean, std))
  assert t.dtype == np.float32 and t.min() > 0.0 and t.max() < 1.0
  normal = statistics.NormalDist()
  for q in (0.05, 0.25, 0.5, 0.75, 0.95):
    expected = 1.0 / (1.0 + math.exp(-(mean + std * normal.inv_cdf(q))))
    assert abs(np.quantile(t, q) - expected) < 0.005, (q, np.quantile(t, q), expected)
  np.testing.assert_array_equal(diffusion.sample_t(jax.random.key(5), 8),
                                jax.random.uniform(jax.random.key(5), (8,)))  # "uniform" is unchanged.
  with pytest.raises(ValueError, match="distribution must be one of"):
    diffusion.sample_t(jax.random.key(0), 4, "beta")
  with pytest.raises(ValueError, match="std must be > 0"):
    diffusion.sample_t(jax.random.key(0), 4, "logit_normal", std=0.0)


def test_self_conditioned_flow_feeds_the_flow_x_estimate():
  z = jax.random.normal(jax.random.key(6), (2, 3))
  t = jnp.array([0.3, 0.8])
  use = jnp.array([True, False])
  model = lambda z_t, t_, x_prev: 0.3 * z_t + 0.7 * x_prev
  alpha, sigma = FLOW.alpha_sigma(t)
  estimate = z - sigma[:, None] * (0.3 * z)  # x = z - sigma u from the first pass.
  out = diffusion.self_conditioned(model, FLOW, use, prediction="flow")(z, t)
  np.testing.assert_allclose(out, 0.3 * z + 0.7 * jnp.where(use[:, None], estimate, 0.0), rtol=1e-6, atol=1e-6)


# -- samplers --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize(
    "sampler, eta, num_steps, spacing",
    [(s, 0.0, n, "trailing") for s in ("euler", "ddim", "dpmpp_2m") for n in (1, 2, 5, 50)]
    + [("ddpm", 0.0, 2, "trailing"), ("ddpm", 0.0, 50, "trailing"), ("ddim", 0.5, 5, "trailing"),
       ("euler", 0.0, 5, "leading"), ("dpmpp_2m", 0.0, 5, "linspace"), ("ddpm", 0.0, 5, "leading")])
def test_point_oracle_recovers_data_under_flow(name, sampler, eta, num_steps, spacing):
  """An exact u-predictor gives x* from every z_t, so every sampler must return x*."""
  schedule = SCHEDULES[name]
  out = diffusion.sample(point_oracle(schedule), NOISE, schedule=schedule, sampler=sampler, num_steps=num_steps,
                         prediction="flow", key=jax.random.key(1), eta=eta, timestep_spacing=spacing)
  assert out.shape == X_STAR.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(out, X_STAR, atol=1e-5)


def _step_model(times, r):
  """u = 0.5 z + r[i], i the step whose time is t: depends on the latent and on the step."""
  grid = times[:-1]

  def denoise_fn(z, t):
    i = jnp.argmin(jnp.abs(jnp.asarray(grid, t.dtype) - t[0]))
    return 0.5 * z + jnp.asarray(r, z.dtype)[i]

  return denoise_fn


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_euler_is_z_plus_sigma_step_times_u(name):
  """On the flow schedule the "euler" (= DDIM eta 0) update is z_n = z_c + (s_n - s_c) u: Euler on dz/ds = u."""
  schedule, n = SCHEDULES[name], 6
  times = diffusion.sampling_times(schedule, n)
  r = np.random.default_rng(0).standard_normal((n,) + X_STAR.shape)
  model = _step_model(times, r)
  out, traj = diffusion.sample(model, NOISE, schedule=schedule, sampler="euler", num_steps=n, prediction="flow",
                               return_trajectory=True)
  sigmas = np.asarray(schedule.alpha_sigma(jnp.asarray(times, jnp.float32))[1], np.float64)
  z = np.asarray(NOISE, np.float64)
  for i in range(n):
    z_next = z + (sigmas[i + 1] - sigmas[i]) * (0.5 * z + r[i])
    np.testing.assert_allclose(traj.z[i + 1], z_next, rtol=1e-5, atol=1e-5)
    z = np.asarray(traj.z[i + 1], np.float64)
  ddim = diffusion.sample(model, NOISE, schedule=schedule, sampler="ddim", num_steps=n, prediction="flow")
  np.testing.assert_allclose(out, ddim, rtol=1e-6, atol=1e-6)  # The same update (compiled apart: rounding may differ).


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_flow_samplers_converge_on_gaussian_data(name):
  """For Gaussian data the ODE keeps (z - alpha MU) / sqrt(alpha^2 STD^2 + sigma^2), so from t_0 = 1 it ends at
  MU + STD z_0. Euler converges at first order, DPM-Solver++(2M) (derived for any alpha, sigma through
  lambda = log(alpha / sigma)) at second order on the flow schedule too."""
  schedule = SCHEDULES[name]
  noise = jax.random.normal(jax.random.key(2), (4, 64))
  errors = {}
  for sampler in ("euler", "dpmpp_2m"):
    for n in (50, 200):
      out = diffusion.sample(gaussian_oracle(schedule), noise, schedule=schedule, sampler=sampler, num_steps=n,
                             prediction="flow")
      errors[sampler, n] = float(jnp.max(jnp.abs(out - (MU + STD * noise))))
  assert 3 < errors["euler", 50] / errors["euler", 200] < 5, errors  # 4x the steps, 1/4 the error.
  assert errors["dpmpp_2m", 50] / errors["dpmpp_2m", 200] > 4.5, errors
  assert errors["dpmpp_2m", 200] < errors["euler", 200] / 5, errors


def test_ddpm_samples_the_data_distribution_under_flow():
  noise = jax.random.normal(jax.random.key(3), (4096, 8))
  out = diffusion.sample(gaussian_oracle(FLOW), noise, schedule=FLOW, sampler="ddpm", num_steps=100,
                         prediction="flow", key=jax.random.key(4))
  assert abs(float(out.mean()) - MU) < 0.02 and abs(float(out.std()) - STD) < 0.02


def test_ddim_eta_one_is_ddpm_under_flow():
  """The DDPM posterior q(z_n | z_c, x) does not need alpha^2 + sigma^2 = 1: DDIM's eta = 1 is still DDPM."""
  model = gaussian_oracle(SHIFTED)
  kw = dict(schedule=SHIFTED, num_steps=7, prediction="flow", key=jax.random.key(5))
  np.testing.assert_allclose(diffusion.sample(model, NOISE, sampler="ddim", eta=1.0, **kw),
                             diffusion.sample(model, NOISE, sampler="ddpm", **kw), atol=1e-5)


# -- objective and config --------------------------------------------------------------------------------------------


def test_objective_from_config_and_its_loss():
  flow = diffusion.objective_from_config({"objective": "flow", "schedule": "flow", "shift": -1.0,
                                          "timesteps": "logit_normal", "logit_mean": 0.2, "logit_std": 0.8})
  assert flow == diffusion.Objective(diffusion.FlowSchedule(shift=-1.0), prediction="flow", timesteps="logit_normal",
                                     logit_mean=0.2, logit_std=0.8)
  np.testing.assert_array_equal(flow.sample_t(jax.random.key(0), 5),
                                diffusion.sample_t(jax.random.key(0), 5, "logit_normal", 0.2, 0.8))
  # A v run's config without the new fields (a config.json written before them) is what it was.
  v = diffusion.objective_from_config({"schedule": "cosine", "weighting": "min_snr", "min_snr_gamma": 3.0})
  assert v == diffusion.Objective(diffusion.CosineSchedule(), weighting="min_snr", gamma=3.0)
  x = jax.random.normal(jax.random.key(1), (4, 6))
  model = lambda z, t: 0.3 * z
  key = jax.random.key(2)
  np.testing.assert_array_equal(v.loss(model, x, key),
                                diffusion.denoising_loss(model, x, key, v.schedule, weighting="min_snr", gamma=3.0))
  t = jnp.array([0.1, 0.4, 0.6, 0.9])
  np.testing.assert_array_equal(flow.loss(model, x, key, t=t),
                                diffusion.denoising_loss(model, x, key, flow.schedule, prediction="flow", t=t))
  # Without t the objective's own distribution is used (not the uniform default of denoising_loss).
  drawn = flow.sample_t(jax.random.split(key)[0], 4)
  np.testing.assert_array_equal(flow.loss(model, x, key), flow.loss(model, x, key, t=drawn))
  with pytest.raises(ValueError, match="min_snr"):
    diffusion.Objective(diffusion.FlowSchedule(), prediction="flow", weighting="min_snr")


@pytest.mark.parametrize("config, field", [
    ({"objective": "flow", "schedule": "cosine"}, "diffusion.schedule"),
    ({"objective": "flow", "schedule": "linear"}, "diffusion.schedule"),
    ({"schedule": "flow"}, "diffusion.objective"),
    ({"objective": "v", "schedule": "flow"}, "diffusion.objective"),
    ({"objective": "eps", "schedule": "flow"}, "diffusion.objective"),
    ({"objective": "eps", "schedule": "linear", "zero_terminal_snr": True}, "diffusion.zero_terminal_snr"),
    ({"objective": "x0", "schedule": "linear"}, "diffusion.objective"),
    ({"objective": "flow", "schedule": "flow", "zero_terminal_snr": True}, "diffusion.zero_terminal_snr"),
    ({"objective": "flow", "schedule": "flow", "weighting": "min_snr"}, "diffusion.weighting"),
    ({"schedule": "cosine", "timesteps": "beta"}, "diffusion.timesteps"),
    ({"schedule": "cosine", "logit_mean": 0.5}, "diffusion.logit_mean"),
    ({"objective": "flow", "schedule": "flow", "timesteps": "uniform", "logit_std": 1.0}, "diffusion.logit_std"),
    ({"objective": "flow", "schedule": "flow", "timesteps": "logit_normal", "logit_std": 0.0}, "diffusion.logit_std"),
    ({"schedule": "linear", "shift": 1.0}, "diffusion.shift"),
])
def test_config_refuses_mismatches_by_name(config, field):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    diffusion.objective_from_config(config)


def test_cli_offers_every_sampler():
  from absl import flags

  import vidgen.cli  # noqa: F401  (defines the flags)

  assert sorted(flags.FLAGS["sampler"].parser.enum_values) == sorted(diffusion.SAMPLERS)


# -- parity with diffusers -------------------------------------------------------------------------------------------


def _diffusers_euler(scheduler, noise, r):
  torch = pytest.importorskip("torch")
  z = torch.from_numpy(np.asarray(noise, np.float32))
  latents = [z.numpy()]
  for i, timestep in enumerate(scheduler.timesteps):
    u = 0.5 * z + torch.from_numpy(r[i].astype(np.float32))
    z = scheduler.step(u, timestep, z).prev_sample
    latents.append(z.numpy())
  return np.stack(latents)


@pytest.mark.parametrize("k, num_steps, spacing", [(1.0, 10, "trailing"), (3.0, 28, "trailing"),
                                                   (3.0, 7, "leading"), (1.0, 28, "linspace")])
def test_euler_matches_diffusers_flow_match_euler(k, num_steps, spacing):
  """vidgen's unshifted grid passed as `sigmas=` to FlowMatchEulerDiscreteScheduler(shift=k), which applies SD3's
  shift itself: its sigmas equal FlowSchedule(shift=-2 ln k)'s, and every latent of the Euler loop matches."""
  pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  schedule = diffusion.FlowSchedule(shift=diffusion.flow_shift_from_sd3(k))
  times = diffusion.sampling_times(schedule, num_steps, spacing)
  scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=k)
  scheduler.set_timesteps(sigmas=list(times[:-1]))
  sigmas = np.asarray(schedule.alpha_sigma(jnp.asarray(times, jnp.float32))[1])
  np.testing.assert_allclose(scheduler.sigmas.numpy(), sigmas, rtol=1e-6, atol=1e-7)
  rng = np.random.default_rng(1)
  noise, r = rng.standard_normal(X_STAR.shape), rng.standard_normal((num_steps,) + X_STAR.shape)
  _, traj = diffusion.sample(_step_model(times, r), jnp.asarray(noise, jnp.float32), schedule=schedule,
                             sampler="euler", num_steps=num_steps, prediction="flow", timestep_spacing=spacing,
                             return_trajectory=True)
  np.testing.assert_allclose(traj.z, _diffusers_euler(scheduler, noise, r), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_steps", [4, 10, 28])
def test_linspace_grid_is_diffusers_default_flow_grid(num_steps):
  """Unshifted, diffusers' default grid linspace(1, 1/N, n) is vidgen's "linspace" spacing whenever n - 1 divides
  N - 1 = 999 (4, 10, 28 = SD3's default steps, ...). With shift k != 1 diffusers shifts an endpoint that is already
  shifted (sigma_min = shift(1 / N)), so no vidgen grid equals it; pass `sigmas=` as above instead."""
  diffusers = pytest.importorskip("diffusers")
  scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
  scheduler.set_timesteps(num_steps)
  np.testing.assert_allclose(scheduler.sigmas.numpy(), diffusion.sampling_times(FLOW, num_steps, "linspace"),
                             rtol=1e-6, atol=1e-7)
