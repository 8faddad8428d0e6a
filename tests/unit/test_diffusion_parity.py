"""Step-for-step parity of vidgen.diffusion samplers with diffusers' schedulers (the reference implementation).

Both sides are fed the same fake model, v_i = 0.5 z + r_i with fixed random r_i per step (so the result depends on the
latent as well as on the step), and the same step noise; every intermediate latent, every x-prediction, the discrete
timesteps and the alphas are compared. The diffusers schedulers get float64 alphas_cumprod (their float32 tables would
dominate the error); vidgen runs in float32, and once in float64 to show the match is exact, not merely close.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from diffusers.schedulers import scheduling_ddpm  # noqa: E402
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr  # noqa: E402

from vidgen import diffusion  # noqa: E402

SHAPE = (2, 3, 4, 4)
N = 1000


def _fake_model(times: np.ndarray, r: np.ndarray):
  """v = 0.5 z + r[i] where i is the step whose time is t (found by nearest grid time, so it works under tracing)."""
  grid = times[:-1]

  def denoise_fn(z, t):
    i = jnp.argmin(jnp.abs(jnp.asarray(grid, t.dtype) - t[0]))
    return 0.5 * z + jnp.asarray(r, z.dtype)[i]

  return denoise_fn


def _float64_alphas_cumprod(zero_terminal_snr: bool) -> torch.Tensor:
  betas = torch.linspace(1e-4, 0.02, N, dtype=torch.float64)
  if zero_terminal_snr:
    betas = rescale_zero_terminal_snr(betas)
  return torch.cumprod(1.0 - betas, dim=0)


def _inputs(n: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal(SHAPE), rng.standard_normal((n,) + SHAPE)


def _step_noise(key, n: int, dtype=jnp.float32) -> np.ndarray:
  """The noise vidgen's stochastic samplers draw at each step (documented in samplers.py)."""
  draw = lambda i: jax.random.normal(jax.random.fold_in(key, i), SHAPE, dtype)
  return np.asarray(jax.vmap(draw)(jnp.arange(n)))


def _run_vidgen(sampler, schedule, n, spacing, noise, r, *, eta=0.0, key=None, dtype=jnp.float32):
  times = diffusion.sampling_times(schedule, n, spacing)
  _, traj = diffusion.sample(
      _fake_model(times, r), jnp.asarray(noise, dtype), schedule=schedule, sampler=sampler, num_steps=n, key=key,
      eta=eta, timestep_spacing=spacing, return_trajectory=True)
  return np.asarray(traj.z, np.float64), np.asarray(traj.x_hat, np.float64)


@pytest.mark.parametrize(
    "zero_snr, spacing, n, eta",
    [
        (True, "trailing", 50, 0.0),  # W.A.L.T's setting.
        (True, "trailing", 10, 0.7),
        (True, "trailing", 1, 0.0),
        (False, "leading", 7, 0.0),  # "leading" steps to k - N // n, which is the next grid point for any n.
    ])
def test_ddim_matches_diffusers(zero_snr, spacing, n, eta):
  sched = diffusers.DDIMScheduler(
      num_train_timesteps=N, beta_schedule="linear", prediction_type="v_prediction", rescale_betas_zero_snr=zero_snr,
      timestep_spacing=spacing, clip_sample=False, set_alpha_to_one=True)
  schedule = diffusion.LinearBetaSchedule(zero_terminal_snr=zero_snr)
  # The schedule itself: vidgen's float64 table against diffusers' own (float32) construction.
  np.testing.assert_allclose(schedule.alphas_cumprod(), sched.alphas_cumprod.numpy(), rtol=2e-5, atol=1e-7)
  sched.alphas_cumprod = _float64_alphas_cumprod(zero_snr)
  sched.set_timesteps(n)
  ks = diffusion.discrete_timesteps(N, n, spacing)
  np.testing.assert_array_equal(ks, sched.timesteps.numpy())
  times = diffusion.sampling_times(schedule, n, spacing)
  alpha, sigma = schedule.alpha_sigma(jnp.asarray(times[:-1], jnp.float32))
  ac = sched.alphas_cumprod.numpy()[ks]
  np.testing.assert_allclose(np.asarray(alpha), np.sqrt(ac), atol=1e-6)
  np.testing.assert_allclose(np.asarray(sigma), np.sqrt(1 - ac), atol=1e-6)

  noise, r = _inputs(n)
  key = jax.random.key(3)
  step_noise = _step_noise(key, n) if eta > 0 else None
  zs, x_hats = _run_vidgen("ddim", schedule, n, spacing, noise, r, eta=eta, key=key if eta > 0 else None)

  z = torch.tensor(noise)
  for i, k in enumerate(sched.timesteps):
    kw = dict(variance_noise=torch.tensor(step_noise[i], dtype=torch.float64)) if eta > 0 else {}
    out = sched.step(0.5 * z + torch.tensor(r[i]), k, z, eta=eta, **kw)
    np.testing.assert_allclose(x_hats[i], out.pred_original_sample.numpy(), atol=1e-5, err_msg=f"x_hat, step {i}")
    z = out.prev_sample
    np.testing.assert_allclose(zs[i + 1], z.numpy(), atol=1e-5, err_msg=f"z, step {i}")


def test_ddim_float64_is_exact():
  """In float64 the only difference left is rounding: the algorithms agree, they are not merely close."""
  n = 25
  sched = diffusers.DDIMScheduler(
      beta_schedule="linear", prediction_type="v_prediction", rescale_betas_zero_snr=True,
      timestep_spacing="trailing", clip_sample=False)
  sched.alphas_cumprod = _float64_alphas_cumprod(True)
  sched.set_timesteps(n)
  noise, r = _inputs(n, seed=1)
  with jax.enable_x64(True):
    zs, _ = _run_vidgen("ddim", diffusion.LinearBetaSchedule(zero_terminal_snr=True), n, "trailing", noise, r,
                        dtype=jnp.float64)
  z = torch.tensor(noise)
  for i, k in enumerate(sched.timesteps):
    z = sched.step(0.5 * z + torch.tensor(r[i]), k, z).prev_sample
    np.testing.assert_allclose(zs[i + 1], z.numpy(), atol=1e-12, rtol=0, err_msg=f"step {i}")


@pytest.mark.parametrize(
    "zero_snr, spacing, n",
    [(True, "trailing", 50), (False, "linspace", 4), (True, "trailing", 3)])
def test_ddpm_matches_diffusers(zero_snr, spacing, n, monkeypatch):
  sched = diffusers.DDPMScheduler(
      num_train_timesteps=N, beta_schedule="linear", prediction_type="v_prediction", rescale_betas_zero_snr=zero_snr,
      timestep_spacing=spacing, clip_sample=False, variance_type="fixed_small")
  sched.alphas_cumprod = _float64_alphas_cumprod(zero_snr)
  sched.one = torch.tensor(1.0, dtype=torch.float64)
  sched.set_timesteps(n)
  np.testing.assert_array_equal(diffusion.discrete_timesteps(N, n, spacing), sched.timesteps.numpy())

  schedule = diffusion.LinearBetaSchedule(zero_terminal_snr=zero_snr)
  noise, r = _inputs(n, seed=2)
  key = jax.random.key(5)
  step_noise = _step_noise(key, n)
  zs, x_hats = _run_vidgen("ddpm", schedule, n, spacing, noise, r, key=key)

  # diffusers draws its step noise with randn_tensor; hand it vidgen's noise of the current step instead.
  current = [0]
  monkeypatch.setattr(
      scheduling_ddpm, "randn_tensor",
      lambda shape, **kw: torch.tensor(step_noise[current[0]], dtype=kw.get("dtype") or torch.float64))
  z = torch.tensor(noise)
  for i, k in enumerate(sched.timesteps):
    current[0] = i
    out = sched.step(0.5 * z + torch.tensor(r[i]), k, z)
    np.testing.assert_allclose(x_hats[i], out.pred_original_sample.numpy(), atol=1e-5, err_msg=f"x_hat, step {i}")
    z = out.prev_sample
    np.testing.assert_allclose(zs[i + 1], z.numpy(), atol=1e-5, err_msg=f"z, step {i}")


# diffusers calls np.array on a torch tensor in set_timesteps; harmless, and not ours to fix.
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
@pytest.mark.parametrize("spacing, n", [("trailing", 20), ("trailing", 2), ("linspace", 15), ("leading", 6)])
def test_dpmpp_2m_matches_diffusers(spacing, n):
  sched = diffusers.DPMSolverMultistepScheduler(
      num_train_timesteps=N, beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=2,
      prediction_type="v_prediction", timestep_spacing=spacing)
  sched.alphas_cumprod = _float64_alphas_cumprod(False)
  ks = diffusion.discrete_timesteps(N, n, spacing)
  if spacing == "trailing":
    sched.set_timesteps(n)
    np.testing.assert_array_equal(ks, sched.timesteps.numpy())
  else:
    # diffusers' DPM-Solver defines "leading"/"linspace" on n + 1 points (see samplers.py); compare the solver itself
    # on vidgen's grid.
    sched.set_timesteps(timesteps=ks.tolist())
  schedule = diffusion.LinearBetaSchedule()
  times = diffusion.sampling_times(schedule, n, spacing)
  alpha, sigma = schedule.alpha_sigma(jnp.asarray(times[:-1], jnp.float32))
  ref_sigma = sched.sigmas.numpy()[:-1].astype(np.float64)  # diffusers' sigma is sigma_t / alpha_t.
  np.testing.assert_allclose(np.asarray(alpha), 1 / np.sqrt(ref_sigma**2 + 1), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(sigma / alpha), ref_sigma, rtol=1e-6)

  noise, r = _inputs(n, seed=4)
  zs, _ = _run_vidgen("dpmpp_2m", schedule, n, spacing, noise, r)
  z = torch.tensor(noise, dtype=torch.float32)
  for i, k in enumerate(sched.timesteps):
    z = sched.step(0.5 * z + torch.tensor(r[i], dtype=torch.float32), k, z).prev_sample
    np.testing.assert_allclose(zs[i + 1], z.numpy(), atol=1e-5, err_msg=f"z, step {i}")


def test_guidance_rescale_matches_diffusers():
  """guide(..., rescale=phi) is diffusers' CFG followed by `rescale_noise_cfg`, applied to the v-prediction."""
  from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

  rng = np.random.default_rng(7)
  v_c, v_u = rng.standard_normal((2,) + SHAPE)
  w, phi = 6.0, 0.7
  ref_cfg = torch.tensor(v_u) + w * (torch.tensor(v_c) - torch.tensor(v_u))
  ref = rescale_noise_cfg(ref_cfg, torch.tensor(v_c), guidance_rescale=phi).numpy()
  out = diffusion.guide(jnp.asarray(v_c, jnp.float32), jnp.asarray(v_u, jnp.float32), w, rescale=phi)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
