"""Samplers and guidance: exact-oracle recovery, convergence on Gaussian data, jit, validation, CFG algebra."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen import diffusion

ZSNR = diffusion.LinearBetaSchedule(zero_terminal_snr=True)
PLAIN = diffusion.LinearBetaSchedule()
COSINE = diffusion.CosineSchedule(shift=diffusion.resolution_shift(64, 32))

X_STAR = jnp.linspace(-1.5, 1.5, 2 * 3 * 4).reshape(2, 3, 4)  # The single data point, [B=2, 3, 4].
MU, STD = 0.5, 0.5  # Gaussian data N(MU, STD^2) per element.


def _ab(schedule, t, ndim):
  alpha, sigma = schedule.alpha_sigma(t)
  shape = alpha.shape + (1,) * (ndim - 1)
  return alpha.reshape(shape), sigma.reshape(shape)


def point_oracle(schedule, x_star=X_STAR):
  """The exact denoiser for data that is always x*: eps = (z - alpha x*) / sigma, so
  v = alpha eps - sigma x* = (alpha z - (alpha^2 + sigma^2) x*) / sigma = (alpha z - x*) / sigma."""

  def denoise_fn(z, t):
    alpha, sigma = _ab(schedule, t, z.ndim)
    return (alpha * z - x_star) / sigma

  return denoise_fn


def gaussian_oracle(schedule):
  """The exact denoiser for x ~ N(MU, STD^2): E[x | z] = MU + alpha STD^2 (z - alpha MU) / (alpha^2 STD^2 + sigma^2)."""

  def denoise_fn(z, t):
    alpha, sigma = _ab(schedule, t, z.ndim)
    x_hat = MU + alpha * STD**2 * (z - alpha * MU) / (alpha**2 * STD**2 + sigma**2)
    return (alpha * z - x_hat) / sigma

  return denoise_fn


NOISE = jax.random.normal(jax.random.key(0), X_STAR.shape)

@pytest.mark.parametrize(
    "sampler, eta, num_steps",
    [(sampler, 0.0, n) for sampler in ("ddim", "dpmpp_2m") for n in (1, 2, 5, 50)]
    + [("ddpm", 0.0, 2), ("ddpm", 0.0, 50), ("ddim", 0.5, 5)])
def test_point_oracle_recovers_data(sampler, eta, num_steps):
  """An exact denoiser predicts x* from every z_t, so every sampler (deterministic or not) must return x*."""
  out = diffusion.sample(point_oracle(ZSNR), NOISE, schedule=ZSNR, sampler=sampler, num_steps=num_steps,
                         key=jax.random.key(1), eta=eta, timestep_spacing="trailing")
  assert out.shape == X_STAR.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(out, X_STAR, atol=1e-5)


@pytest.mark.parametrize(
    "schedule, spacing, sampler, eta",
    [(PLAIN, "leading", "ddim", 0.0), (PLAIN, "leading", "ddpm", 0.0), (PLAIN, "linspace", "dpmpp_2m", 0.0),
     (COSINE, "trailing", "ddim", 0.0), (COSINE, "trailing", "dpmpp_2m", 0.0),
     (COSINE, "linspace", "ddpm", 0.0)])
def test_point_oracle_other_schedules_and_spacings(schedule, spacing, sampler, eta):
  """Cosine's alpha(0) < 1, yet the last step targets exactly clean data, so x* is still recovered."""
  out = diffusion.sample(point_oracle(schedule), NOISE, schedule=schedule, sampler=sampler, num_steps=5,
                         key=jax.random.key(1), eta=eta, timestep_spacing=spacing)
  np.testing.assert_allclose(out, X_STAR, atol=1e-5)


def _pf_ode_endpoint(schedule, noise, num_steps):
  """For Gaussian data the probability-flow ODE is linear and keeps (z - alpha MU) / sqrt(alpha^2 STD^2 + sigma^2)."""
  t0 = diffusion.sampling_times(schedule, num_steps, "trailing")[0]
  alpha, sigma = schedule.alpha_sigma(jnp.float32(t0))
  return MU + STD * (noise - alpha * MU) / jnp.sqrt(alpha**2 * STD**2 + sigma**2)


def test_deterministic_samplers_converge_and_dpm_is_higher_order():
  noise = jax.random.normal(jax.random.key(2), (4, 64))
  errors = {}
  for sampler in ("ddim", "dpmpp_2m"):
    for n in (10, 50):
      out = diffusion.sample(gaussian_oracle(ZSNR), noise, schedule=ZSNR, sampler=sampler, num_steps=n)
      errors[sampler, n] = float(jnp.max(jnp.abs(out - _pf_ode_endpoint(ZSNR, noise, n))))
  for sampler in ("ddim", "dpmpp_2m"):
    assert errors[sampler, 10] > 2 * errors[sampler, 50], errors
  # Second order: DPM-Solver++(2M) is closer to the ODE solution than DDIM at 10 steps and ~50x closer at 50.
  assert errors["dpmpp_2m", 10] < errors["ddim", 10] / 1.2, errors
  assert errors["dpmpp_2m", 50] < errors["ddim", 50] / 10, errors
  assert errors["dpmpp_2m", 50] < 5e-3, errors


def test_partial_denoising_from_t_start():
  """SDEdit: from z_{t_start} the grid starts at t_start, an exact denoiser still returns its data, and for Gaussian
  data the deterministic samplers follow the probability-flow ODE from that point."""
  t_start = 0.4
  alpha, sigma = ZSNR.alpha_sigma(jnp.float32(t_start))
  z = alpha * X_STAR + sigma * NOISE
  for sampler in ("ddim", "dpmpp_2m", "ddpm"):
    out = diffusion.sample(point_oracle(ZSNR), z, schedule=ZSNR, sampler=sampler, num_steps=3, key=jax.random.key(1),
                           t_start=t_start)
    np.testing.assert_allclose(out, X_STAR, atol=1e-5)
  _, traj = diffusion.sample(point_oracle(ZSNR), z, schedule=ZSNR, num_steps=4, t_start=t_start,
                             return_trajectory=True)
  np.testing.assert_allclose(traj.t, diffusion.sampling_times(ZSNR, 4) * t_start, rtol=1e-6)
  noise = jax.random.normal(jax.random.key(2), (4, 64))
  out = diffusion.sample(gaussian_oracle(ZSNR), noise, schedule=ZSNR, sampler="dpmpp_2m", num_steps=50,
                         t_start=t_start)
  expected = MU + STD * (noise - alpha * MU) / jnp.sqrt(alpha**2 * STD**2 + sigma**2)
  np.testing.assert_allclose(out, expected, atol=5e-3)
  for bad in (0.0, 1.5, True):
    with pytest.raises(ValueError, match="t_start"):
      diffusion.sample(point_oracle(ZSNR), z, schedule=ZSNR, t_start=bad)


def test_ddpm_samples_the_data_distribution():
  """With many steps the ancestral sampler's output has the data's mean and std (its per-step noise is right)."""
  noise = jax.random.normal(jax.random.key(3), (4, 1024))
  out = diffusion.sample(gaussian_oracle(ZSNR), noise, schedule=ZSNR, sampler="ddpm", num_steps=1000,
                         key=jax.random.key(4))
  assert abs(float(out.mean()) - MU) < 0.02
  assert abs(float(out.std()) - STD) < 0.02


def test_ddim_eta_one_is_ddpm():
  """DDIM with eta = 1 is algebraically the DDPM ancestral step, and both draw the same per-step noise."""
  kw = dict(schedule=ZSNR, num_steps=7, key=jax.random.key(5))
  ddpm = diffusion.sample(gaussian_oracle(ZSNR), NOISE, sampler="ddpm", **kw)
  ddim = diffusion.sample(gaussian_oracle(ZSNR), NOISE, sampler="ddim", eta=1.0, **kw)
  np.testing.assert_allclose(ddim, ddpm, atol=1e-5)


def test_jit_matches_eager_and_trajectory():
  denoise_fn = gaussian_oracle(ZSNR)
  kw = dict(schedule=ZSNR, sampler="dpmpp_2m", num_steps=6, timestep_spacing="trailing")
  eager, traj = diffusion.sample(denoise_fn, NOISE, return_trajectory=True, **kw)
  jitted = jax.jit(lambda n: diffusion.sample(denoise_fn, n, **kw))(NOISE)
  np.testing.assert_allclose(jitted, eager, atol=1e-6)
  assert traj.t.shape == (7,) and traj.z.shape == (7,) + NOISE.shape and traj.x_hat.shape == (6,) + NOISE.shape
  np.testing.assert_allclose(traj.t, diffusion.sampling_times(ZSNR, 6, "trailing"), atol=1e-7)
  np.testing.assert_array_equal(traj.z[0], NOISE)
  np.testing.assert_array_equal(traj.z[-1], eager)
  # Stochastic sampler under jit: same key, same sample.
  kw = dict(schedule=ZSNR, sampler="ddpm", num_steps=4)
  eager = diffusion.sample(denoise_fn, NOISE, key=jax.random.key(6), **kw)
  jitted = jax.jit(lambda n, k: diffusion.sample(denoise_fn, n, key=k, **kw))(NOISE, jax.random.key(6))
  np.testing.assert_allclose(jitted, eager, atol=1e-6)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_self_condition_feeds_the_previous_estimate(sampler):
  """With self_condition=True the denoiser gets the previous step's x-prediction (zeros first): a denoiser that
  depends on it must produce x_hat_i = alpha_i z_i - sigma_i v(z_i, x_hat_{i-1}) along the whole trajectory."""

  def denoise_fn(z, t, x_prev):
    return 0.5 * x_prev - 0.1 * z + 0.01 * t[:, None, None]

  out, traj = diffusion.sample(denoise_fn, NOISE, schedule=ZSNR, sampler=sampler, num_steps=5, self_condition=True,
                               return_trajectory=True)
  alpha, sigma = ZSNR.alpha_sigma(traj.t[:-1])
  x_prev = jnp.zeros_like(NOISE)
  for i in range(5):
    v = denoise_fn(traj.z[i], jnp.full((2,), traj.t[i]), x_prev)
    np.testing.assert_allclose(traj.x_hat[i], alpha[i] * traj.z[i] - sigma[i] * v, atol=1e-5)
    x_prev = traj.x_hat[i]
  np.testing.assert_array_equal(out, traj.z[-1])
  # An exact denoiser that ignores the estimate still recovers the data, and two-argument calls are unchanged.
  oracle = point_oracle(ZSNR)
  out = diffusion.sample(lambda z, t, x_prev: oracle(z, t), NOISE, schedule=ZSNR, num_steps=4, self_condition=True)
  np.testing.assert_allclose(out, X_STAR, atol=1e-5)


def test_denoiser_sees_batched_float_times():
  seen = []

  def denoise_fn(z, t):
    seen.append((t.shape, t.dtype))
    return jnp.zeros_like(z)

  diffusion.sample(denoise_fn, NOISE, schedule=ZSNR, num_steps=3)
  assert seen == [((2,), jnp.float32)]  # Traced once inside scan.


def test_step_grids():
  np.testing.assert_array_equal(diffusion.discrete_timesteps(1000, 5, "trailing"), [999, 799, 599, 399, 199])
  np.testing.assert_array_equal(diffusion.discrete_timesteps(1000, 5, "leading"), [800, 600, 400, 200, 0])
  np.testing.assert_array_equal(diffusion.discrete_timesteps(1000, 4, "linspace"), [999, 666, 333, 0])
  np.testing.assert_array_equal(diffusion.discrete_timesteps(1000, 3, "trailing"), [999, 666, 332])
  times = diffusion.sampling_times(ZSNR, 5, "trailing")
  np.testing.assert_allclose(times, [1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
  for spacing in diffusion.TIMESTEP_SPACINGS:
    for n in (1, 7, 1000):
      t = diffusion.sampling_times(PLAIN, n, spacing)
      assert t.shape == (n + 1,) and t[-1] == 0.0 and np.all(np.diff(t) < 0) and t[0] <= 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sampler="heun"), "sampler must be one of"),
        (dict(prediction="x0"), "prediction must be one of"),
        (dict(timestep_spacing="uniform"), "timestep_spacing must be one of"),
        (dict(num_steps=0), "num_steps"),
        (dict(num_steps=1001), "num_steps"),
        (dict(num_steps=2.0), "num_steps"),
        (dict(eta=1.5), "eta"),
        (dict(eta=0.5, sampler="dpmpp_2m"), "eta"),
        (dict(sampler="ddpm"), "key is required"),
        (dict(eta=0.3), "key is required"),
        (dict(noise=jnp.zeros((2, 3), jnp.int32)), "noise must be a float array"),
        (dict(denoise_fn=lambda z, t: z[..., :1]), "denoise_fn must return its prediction"),
    ])
def test_sample_validation(kwargs, match):
  kwargs = dict(dict(denoise_fn=point_oracle(ZSNR), noise=NOISE), **kwargs)
  with pytest.raises(ValueError, match=match):
    diffusion.sample(kwargs.pop("denoise_fn"), kwargs.pop("noise"), schedule=ZSNR, **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# Guidance.


def _cond_model(calls=None):
  """v = z * t + cond["emb"] (mean over its feature axis) + 2 cond["label"]: depends on every input, per example."""

  def denoise_fn(z, t, cond):
    if calls is not None:
      calls.append(z.shape[0])
    emb = jnp.mean(cond["emb"], axis=-1).reshape(-1, 1, 1)
    return z * t.reshape(-1, 1, 1) + emb + 2.0 * cond["label"].reshape(-1, 1, 1)

  return denoise_fn


COND = {"emb": jnp.array([[1.0, 3.0], [-2.0, 0.0]]), "label": jnp.array([1.0, 2.0])}
UNCOND = {"emb": jnp.zeros((1, 2)), "label": jnp.zeros((2,))}  # emb has batch 1: broadcast.
T = jnp.array([0.3, 0.9])


def test_guidance_endpoints_and_single_batched_call():
  model = _cond_model()
  full_uncond = {"emb": jnp.zeros((2, 2)), "label": jnp.zeros((2,))}
  v_c, v_u = model(NOISE, T, COND), model(NOISE, T, full_uncond)
  calls = []
  g1 = diffusion.classifier_free_guidance(_cond_model(calls), COND, UNCOND, scale=1.0)
  np.testing.assert_allclose(g1(NOISE, T), v_c, atol=1e-6)
  assert calls == [4]  # One call on the doubled batch.
  g0 = diffusion.classifier_free_guidance(model, COND, UNCOND, scale=0.0)
  np.testing.assert_allclose(g0(NOISE, T), v_u, atol=1e-6)
  g = diffusion.classifier_free_guidance(model, COND, UNCOND, scale=4.0)
  np.testing.assert_allclose(g(NOISE, T), v_u + 4.0 * (v_c - v_u), atol=1e-5)
  # Per-example scale.
  gs = diffusion.classifier_free_guidance(model, COND, UNCOND, scale=jnp.array([1.0, 0.0]))
  np.testing.assert_allclose(gs(NOISE, T), jnp.stack([v_c[0], v_u[1]]), atol=1e-6)


def test_guidance_interval_guides_only_inside_it():
  """T = [0.3, 0.9]: an interval holding only 0.9 guides example 1 and leaves example 0 conditional-only."""
  model = _cond_model()
  full_uncond = {"emb": jnp.zeros((2, 2)), "label": jnp.zeros((2,))}
  v_c, v_u = model(NOISE, T, COND), model(NOISE, T, full_uncond)
  guided = v_u + 4.0 * (v_c - v_u)
  g = diffusion.classifier_free_guidance(model, COND, UNCOND, scale=4.0, interval=(0.5, 1.0))
  np.testing.assert_allclose(g(NOISE, T), jnp.stack([v_c[0], guided[1]]), atol=1e-5)
  # Closed at both ends, and with a per-example scale.
  g = diffusion.classifier_free_guidance(model, COND, UNCOND, scale=jnp.array([4.0, 0.0]), interval=(0.3, 0.3))
  np.testing.assert_allclose(g(NOISE, T), jnp.stack([guided[0], v_c[1]]), atol=1e-5)
  # Where every t is outside, only the conditional half runs: count executed calls (lax.cond traces both branches).
  runs = []

  def counted(z, t, c):
    jax.debug.callback(lambda n: runs.append(int(n)), jnp.int32(z.shape[0]))
    return model(z, t, c)

  g = diffusion.classifier_free_guidance(counted, COND, UNCOND, scale=4.0, interval=(0.95, 1.0))
  np.testing.assert_allclose(g(NOISE, T), v_c, atol=1e-6)
  g = diffusion.classifier_free_guidance(counted, COND, UNCOND, scale=4.0, interval=(0.5, 1.0))
  g(NOISE, T)
  assert runs == [2, 4]
  # The whole range is plain guidance.
  g = diffusion.classifier_free_guidance(model, COND, UNCOND, scale=4.0, interval=(0.0, 1.0))
  np.testing.assert_allclose(g(NOISE, T), guided, atol=1e-5)
  for bad in ((0.6, 0.4), (-0.1, 0.5), (0.2, 1.5)):
    with pytest.raises(ValueError, match="interval"):
      diffusion.classifier_free_guidance(model, COND, UNCOND, scale=4.0, interval=bad)


def test_guidance_rescale():
  rng = np.random.default_rng(0)
  v_c = jnp.asarray(rng.standard_normal((3, 4, 5)), jnp.float32)
  v_u = jnp.asarray(rng.standard_normal((3, 4, 5)), jnp.float32)
  guided = diffusion.guide(v_c, v_u, 7.0)
  # phi = 0 is the identity, whether given statically or as an array.
  np.testing.assert_allclose(diffusion.guide(v_c, v_u, 7.0, rescale=0.0), guided)
  np.testing.assert_allclose(diffusion.rescale_guidance(guided, v_c, jnp.float32(0.0)), guided, atol=1e-6)
  # phi = 1 matches the conditional prediction's per-example std exactly.
  full = diffusion.guide(v_c, v_u, 7.0, rescale=1.0)
  np.testing.assert_allclose(jnp.std(full, axis=(1, 2)), jnp.std(v_c, axis=(1, 2)), rtol=1e-5)
  # The diffusers formula (Lin et al. Alg. 2): cfg * (phi * std_c / std_cfg + 1 - phi); ddof cancels in the ratio.
  phi = 0.7
  factor = np.std(np.asarray(v_c), axis=(1, 2), ddof=1, keepdims=True) / np.std(
      np.asarray(guided), axis=(1, 2), ddof=1, keepdims=True)
  np.testing.assert_allclose(diffusion.guide(v_c, v_u, 7.0, rescale=phi), guided * (phi * factor + 1 - phi),
                             rtol=1e-5)
  # w = 1 with rescale: guided == v_c already, so rescaling changes nothing.
  np.testing.assert_allclose(diffusion.guide(v_c, v_u, 1.0, rescale=phi), v_c, atol=1e-5)


def test_guided_sampling_under_jit():
  """The combinator composes with the sampler inside jit; with w = 1 it samples exactly like the conditional model."""
  model = _cond_model()
  kw = dict(schedule=ZSNR, sampler="ddim", num_steps=4)
  guided = diffusion.classifier_free_guidance(model, COND, UNCOND, scale=1.0, rescale=0.7)
  out = jax.jit(lambda n: diffusion.sample(guided, n, **kw))(NOISE)
  ref = diffusion.sample(lambda z, t: model(z, t, COND), NOISE, **kw)
  np.testing.assert_allclose(out, ref, atol=1e-5)
