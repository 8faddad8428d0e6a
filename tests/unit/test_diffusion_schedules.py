"""Noise schedules: variance preservation, endpoints, zero terminal SNR, the t <-> step mapping, the cosine shift."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen import diffusion

SCHEDULES = [
    diffusion.LinearBetaSchedule(),
    diffusion.LinearBetaSchedule(zero_terminal_snr=True),
    diffusion.LinearBetaSchedule(num_train_steps=50, beta_start=1e-3, beta_end=0.05),
    diffusion.CosineSchedule(),
    diffusion.CosineSchedule(shift=diffusion.resolution_shift((5, 16, 16), (5, 8, 8))),
]
# Endpoints, grid points of the 1000-step grid, and points in between.
T = jnp.asarray(np.concatenate([[0.0, 1e-4, 1e-3, 1.5e-3], np.linspace(0, 1, 41), [0.9995, 0.9999, 1.0]]), jnp.float32)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_variance_preserving_and_monotone(schedule):
  alpha, sigma = schedule.alpha_sigma(T)
  lam = schedule.logsnr(T)
  assert not np.any(np.isnan(alpha)) and not np.any(np.isnan(sigma)) and not np.any(np.isnan(lam))
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
  assert np.all((alpha >= 0) & (alpha <= 1) & (sigma >= 0) & (sigma <= 1))
  # alpha = sqrt(sigmoid(logsnr)), sigma = sqrt(sigmoid(-logsnr)), whatever the subclass computes them from.
  np.testing.assert_allclose(alpha, jnp.sqrt(jax.nn.sigmoid(lam)), atol=1e-6)
  np.testing.assert_allclose(sigma, jnp.sqrt(jax.nn.sigmoid(-lam)), atol=1e-6)
  order = np.argsort(np.asarray(T), kind="stable")
  lam_sorted = np.asarray(lam)[order]
  assert np.all(lam_sorted[1:] <= lam_sorted[:-1])  # Not np.diff: inf - inf would be NaN.


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_broadcasts_over_any_shape_and_promotes_bfloat16(schedule):
  t = jnp.linspace(0.1, 0.9, 6).reshape(2, 3)
  alpha, sigma = schedule.alpha_sigma(t)
  assert alpha.shape == sigma.shape == schedule.logsnr(t).shape == (2, 3)
  assert schedule.logsnr(jnp.float32(0.5)).shape == ()
  assert schedule.logsnr(t.astype(jnp.bfloat16)).dtype == jnp.float32


def test_schedules_are_hashable_static_jit_arguments():
  f = jax.jit(lambda t, schedule: schedule.logsnr(t), static_argnums=1)
  a = f(jnp.float32(0.3), diffusion.LinearBetaSchedule())
  b = f(jnp.float32(0.3), diffusion.LinearBetaSchedule(zero_terminal_snr=True))
  assert hash(diffusion.LinearBetaSchedule()) == hash(diffusion.LinearBetaSchedule())
  assert float(a) != float(b)


def test_linear_beta_matches_ddpm_on_grid():
  schedule = diffusion.LinearBetaSchedule()
  betas = np.linspace(1e-4, 0.02, 1000)
  alpha_bar = np.cumprod(1 - betas)
  np.testing.assert_allclose(schedule.alphas_cumprod(), alpha_bar, rtol=1e-12)
  k = np.array([0, 1, 17, 500, 998, 999])
  t = schedule.from_discrete(k)
  np.testing.assert_allclose(schedule.to_discrete(t), k, atol=1e-3)
  alpha, sigma = schedule.alpha_sigma(t)
  np.testing.assert_allclose(alpha, np.sqrt(alpha_bar[k]), rtol=1e-6)
  np.testing.assert_allclose(sigma, np.sqrt(1 - alpha_bar[k]), rtol=1e-5)
  np.testing.assert_allclose(schedule.logsnr(t), np.log(alpha_bar[k] / (1 - alpha_bar[k])), rtol=1e-5, atol=1e-5)
  # t = 0 is the clean point "step -1"; interpolation in between stays between neighbours.
  assert float(schedule.logsnr(0.0)) == np.inf
  assert tuple(map(float, schedule.alpha_sigma(0.0))) == (1.0, 0.0)
  mid = float(schedule.alpha_sigma(jnp.float32(0.0105))[0]) ** 2  # Between steps 9 and 10.
  assert alpha_bar[10] < mid < alpha_bar[9]


def test_zero_terminal_snr():
  plain = diffusion.LinearBetaSchedule()
  zsnr = diffusion.LinearBetaSchedule(zero_terminal_snr=True)
  # Last step: SNR exactly 0 (logsnr = -inf), alpha = 0, sigma = 1, no NaNs.
  assert float(zsnr.logsnr(1.0)) == -np.inf
  assert float(jnp.exp(zsnr.logsnr(1.0))) == 0.0
  assert tuple(map(float, zsnr.alpha_sigma(1.0))) == (0.0, 1.0)
  assert zsnr.alphas_cumprod()[-1] == 0.0
  # First step unchanged.
  np.testing.assert_allclose(zsnr.alphas_cumprod()[0], plain.alphas_cumprod()[0], rtol=1e-14)
  np.testing.assert_allclose(zsnr.alpha_sigma(zsnr.from_discrete(0)), plain.alpha_sigma(plain.from_discrete(0)),
                             rtol=1e-7)
  # The rescale is affine in sqrt(alpha_bar): sqrt(ab_zsnr) = a sqrt(ab) + b.
  s_plain, s_z = np.sqrt(plain.alphas_cumprod()), np.sqrt(zsnr.alphas_cumprod())
  a, b = np.polyfit(s_plain, s_z, 1)
  np.testing.assert_allclose(a * s_plain + b, s_z, atol=1e-12)
  # The plain schedule's terminal SNR is small but not zero (the flaw zero terminal SNR fixes).
  assert -10.5 < float(plain.logsnr(1.0)) < -9.5


def test_cosine_schedule_formula_and_range():
  for shift in (0.0, -2 * math.log(2)):
    schedule = diffusion.CosineSchedule(shift=shift)
    np.testing.assert_allclose(schedule.logsnr(0.0), 15.0 + shift, atol=1e-4)
    np.testing.assert_allclose(schedule.logsnr(1.0), -15.0 + shift, atol=1e-4)
    np.testing.assert_allclose(schedule.logsnr(0.5), shift, atol=1e-5)
    # Interior: -2 log tan(pi u / 2) + shift, with u the linear map of t onto [t_min, t_max].
    t = np.linspace(0.05, 0.95, 7)
    t_min, t_max = (2 / math.pi * math.atan(math.exp(-0.5 * v)) for v in (15.0, -15.0))
    ref = -2 * np.log(np.tan(np.pi / 2 * (t_min + t * (t_max - t_min)))) + shift
    np.testing.assert_allclose(schedule.logsnr(jnp.asarray(t, jnp.float32)), ref, rtol=1e-5, atol=1e-5)
    # The remap barely moves the curve inside (its slope is 1 - 2 t_min = 0.9993): within 0.02 of the paper's formula.
    np.testing.assert_allclose(ref, -2 * np.log(np.tan(np.pi * t / 2)) + shift, atol=2e-2)


def test_resolution_shift():
  np.testing.assert_allclose(diffusion.resolution_shift(64, 32), -2 * math.log(2))
  np.testing.assert_allclose(diffusion.resolution_shift(16, 64), 2 * math.log(4))
  assert diffusion.resolution_shift((64, 64), (32, 32)) == pytest.approx(diffusion.resolution_shift(64, 32))
  # Length-aware: twice the frames at the same resolution shifts by -log 2.
  assert diffusion.resolution_shift((10, 16, 16), (5, 16, 16)) == pytest.approx(-math.log(2))
  with pytest.raises(ValueError, match="same length"):
    diffusion.resolution_shift((5, 16, 16), (16, 16))
  with pytest.raises(ValueError, match="both be scalars or both sequences"):
    diffusion.resolution_shift(64, (32, 32))
  with pytest.raises(ValueError, match="positive"):
    diffusion.resolution_shift(0, 32)


def test_validation():
  with pytest.raises(ValueError, match="num_train_steps"):
    diffusion.LinearBetaSchedule(num_train_steps=0)
  with pytest.raises(ValueError, match="beta_start"):
    diffusion.LinearBetaSchedule(beta_start=0.1, beta_end=0.01)
  with pytest.raises(ValueError, match="logsnr_min < logsnr_max"):
    diffusion.CosineSchedule(logsnr_min=5.0, logsnr_max=-5.0)


def test_schedule_from_config_builds_and_refuses_fields_it_would_ignore():
  from vidgen.config import ConfigError

  cosine = diffusion.schedule_from_config({"schedule": "cosine", "shift": -1.0})
  assert isinstance(cosine, diffusion.CosineSchedule) and cosine.shift == -1.0
  linear = diffusion.schedule_from_config({"schedule": "linear", "zero_terminal_snr": True})
  assert isinstance(linear, diffusion.LinearBetaSchedule) and linear.zero_terminal_snr
  for config, field in (({"schedule": "cosine", "zero_terminal_snr": True}, "diffusion.zero_terminal_snr"),
                        ({"schedule": "linear", "shift": 0.5}, "diffusion.shift"),
                        ({"schedule": "sigmoid"}, "diffusion.schedule"),
                        ({"schedule": "cosine", "weighting": "snr"}, "diffusion.weighting"),
                        ({"schedule": "cosine", "guidance_dropout": 1.0}, "diffusion.guidance_dropout"),
                        ({"schedule": "cosine", "shfit": 1.0}, "unknown fields \\['shfit'\\]")):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
      diffusion.schedule_from_config(config)
