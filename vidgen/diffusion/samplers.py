"""Samplers for v-, eps- and flow-prediction denoisers: DDPM ancestral, DDIM (with eta), DPM-Solver++(2M), Euler.

The denoiser's output (v, eps, or u = eps - x with prediction="flow") is turned into x_hat and eps_hat
(`vidgen.diffusion.objectives`), and every update is written in (alpha, sigma, logsnr) of a general schedule
z_t = alpha_t x + sigma_t eps, so all samplers hold for variance-preserving and flow schedules alike: DDIM and DDPM
through the Gaussian posterior q(z_n | z_c, x), whose variance sigma_n^2 (1 - SNR_c / SNR_n) and mean need no
alpha^2 + sigma^2 = 1, and DPM-Solver++ through lambda = log(alpha / sigma). "euler" is the deterministic first-order
step z_n = alpha_n x_hat + sigma_n eps_hat (DDIM with eta = 0); on the flow schedule (alpha = 1 - s, sigma = s) it is
exactly z_n = z_c + (s_n - s_c) u_hat, Euler's method on dz/ds = u, the sampler of SD3 / Wan / HunyuanVideo.

All samplers walk a static grid of times 1 >= t_0 > t_1 > ... > t_{n-1} > t_n = 0 with `jax.lax.scan`, calling the
denoiser once per step, and return the clean sample. The last step always targets exactly clean data (alpha = 1,
sigma = 0), even for schedules whose alpha(0) is slightly below 1, so the output is the final x-prediction and an
exact denoiser recovers its data exactly.

Step grid. Evaluation times come from integer timesteps k on the schedule's N = `num_train_steps` grid, mapped to
t = (k + 1) / N, as diffusers places them (`timestep_spacing`):
  "trailing": k_i = round(N - i N / n) - 1, starting at t = 1 (needed with zero terminal SNR, arXiv 2305.08891);
  "leading":  k_i = (n - 1 - i) * (N // n), ending at k = 0;
  "linspace": k_i = round((n - 1 - i) (N - 1) / (n - 1)), from N - 1 down to 0 (k = 0 alone for n = 1).
Each step goes from one evaluation time to the next one and the last to t = 0. Against diffusers:
  - DDPMScheduler: the same grid and steps.
  - DDIMScheduler: always steps to k - N // n; that is the next grid point whenever n divides N ("trailing",
    "linspace") and always for "leading"; otherwise diffusers lands between grid points and vidgen does not.
  - DPMSolverMultistepScheduler: same "trailing" grid; its "leading" / "linspace" use n + 1 points and drop the lowest.
    With zero terminal SNR it clamps the last alpha_bar to 2^-24; vidgen keeps alpha = 0 there exactly.
  - FlowMatchEulerDiscreteScheduler (against FlowSchedule(shift=-2 ln k) and "euler"): unshifted (k = 1) its default
    grid linspace(1, 1 / N, n) is "linspace" whenever n - 1 divides N - 1 (n = 4, 10, 28, ...); for k != 1 it ends at
    a twice-shifted sigma and matches no vidgen grid. Given vidgen's unshifted times, `set_timesteps(sigmas=t[:-1])`
    with shift=k, its sigmas and steps are those of "euler" on any grid.
On the flow schedule "trailing" gives sigma_i = 1 - i / n (shift 0): evenly spaced from pure noise.

Partial denoising (SDEdit, arXiv 2108.01073). With `t_start` < 1 the grid above is scaled by t_start, so the
sampler starts from z_{t_start} = alpha(t_start) x + sigma(t_start) eps (a given clip, partly noised) and takes
`num_steps` steps down to t = 0: small t_start keeps the layout and redraws details, t_start = 1 ignores the clip.

Self-conditioning. With `self_condition=True` the denoiser is called as denoise_fn(z_t, t, x_prev), x_prev being the
x-prediction of the previous evaluation (zeros at the first): the sampling-time half of
`vidgen.diffusion.self_conditioned`.

Noise. DDPM and DDIM with eta > 0 draw their step-i noise as `jax.random.normal(jax.random.fold_in(key, i), shape)`,
so a sample is reproducible from (key, num_steps) alone.

Public names:
  sample: the single entry point, `sample(denoise_fn, noise, *, schedule, sampler, num_steps, ...) -> x0`.
  sampling_times: the static time grid [n + 1] a sampler walks.
  discrete_timesteps: the integer timesteps [n] behind it (diffusers' `scheduler.timesteps`).
  Trajectory: the intermediate states `sample(..., return_trajectory=True)` also returns.
  SAMPLERS, TIMESTEP_SPACINGS: the allowed names.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vidgen.diffusion.objectives import PREDICTIONS, eps_from_prediction, x_from_prediction
from vidgen.diffusion.schedules import Schedule

Array = jax.Array
DenoiseFn = Callable[[Array, Array], Array]

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "euler")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


class Trajectory(NamedTuple):
  """Intermediate states of a sampling run with n steps.

  Attributes:
    t: the time grid, [n + 1], from t_0 down to t_n = 0.
    z: the latents, [n + 1, B, ...]; z[0] is the input noise and z[n] the returned sample.
    x_hat: the denoiser's x-prediction at each evaluated time, [n, B, ...].
  """

  t: Array
  z: Array
  x_hat: Array


def _check_steps(num_steps: int, num_train_steps: int) -> None:
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
    raise ValueError(f"num_steps must be a Python int (it is static), got {num_steps!r}")
  if not 1 <= num_steps <= num_train_steps:
    raise ValueError(f"num_steps must be in [1, num_train_steps={num_train_steps}], got {num_steps}")


def discrete_timesteps(num_train_steps: int, num_steps: int, timestep_spacing: str = "trailing") -> np.ndarray:
  """The integer timesteps of the n evaluations, decreasing: int64 numpy [num_steps].

  Same values as diffusers' `DDIMScheduler.set_timesteps` / `DDPMScheduler.set_timesteps` (steps_offset = 0).
  """
  _check_steps(num_steps, num_train_steps)
  n, big_n = int(num_steps), int(num_train_steps)
  if timestep_spacing == "trailing":
    # Same float expression as diffusers' np.arange(N, 0, -N / n), but exactly n entries.
    k = np.round(big_n - np.arange(n) * (big_n / n)).astype(np.int64) - 1
  elif timestep_spacing == "leading":
    k = (np.arange(n) * (big_n // n))[::-1].astype(np.int64)
  elif timestep_spacing == "linspace":
    k = np.linspace(0, big_n - 1, n).round()[::-1].astype(np.int64)
  else:
    raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}")
  return k.copy()


def sampling_times(schedule: Schedule, num_steps: int, timestep_spacing: str = "trailing") -> np.ndarray:
  """The time grid a sampler walks: float64 numpy [num_steps + 1], t_i = (k_i + 1) / N, then t_n = 0."""
  k = discrete_timesteps(schedule.num_train_steps, num_steps, timestep_spacing)
  return np.concatenate([(k + 1) / schedule.num_train_steps, [0.0]])


def _grid_coefficients(schedule: Schedule, times: np.ndarray, dtype) -> tuple[Array, Array, Array, Array]:
  """(t, alpha, sigma, logsnr) on the grid, each [n + 1], with the last point forced to exactly clean data."""
  t = jnp.asarray(times, dtype)
  alpha, sigma = schedule.alpha_sigma(t)
  logsnr = schedule.logsnr(t)
  alpha = alpha.astype(dtype).at[-1].set(1.0)
  sigma = sigma.astype(dtype).at[-1].set(0.0)
  logsnr = logsnr.astype(dtype).at[-1].set(jnp.inf)
  return t, alpha, sigma, logsnr


def sample(
    denoise_fn: DenoiseFn,
    noise: Array,
    *,
    schedule: Schedule,
    sampler: str = "ddim",
    num_steps: int = 50,
    prediction: str = "v",
    key: Array | None = None,
    eta: float = 0.0,
    timestep_spacing: str = "trailing",
    return_trajectory: bool = False,
    self_condition: bool = False,
    t_start: float = 1.0,
) -> Array | tuple[Array, Trajectory]:
  """Runs a sampler from `noise` at t_0 down to clean data.

  Pure and traceable: call it inside `jax.jit` with `denoise_fn` closed over; `schedule`, `sampler`, `num_steps`,
  `prediction`, `eta`, `timestep_spacing` and `return_trajectory` are static (Python values).

  Args:
    denoise_fn: (z_t [B, ...], t [B] float) -> prediction [B, ...], the model (v_hat, or u_hat for
      prediction="flow"). Wrap it with `vidgen.diffusion.guidance.classifier_free_guidance` for guided sampling.
    noise: the starting latent z_{t_0}, [B, ...] float: standard normal, or a partly noised clip with t_start < 1.
    schedule: the noise schedule the model was trained with.
    sampler: one of SAMPLERS: "ddpm" (ancestral, posterior variance), "ddim" (eta = 0 deterministic, eta = 1 equals
      DDPM's update), "dpmpp_2m" (DPM-Solver++(2M), data prediction, first order on the first and last step),
      "euler" (deterministic first order: DDIM with eta = 0, which is Euler's method on the flow schedule).
    num_steps: n, the number of denoiser evaluations, in [1, schedule.num_train_steps].
    prediction: one of `vidgen.diffusion.PREDICTIONS`, what denoise_fn outputs: "v", "flow" (u = eps - x) or "eps"
      (not from a time where alpha = 0: eps-prediction cannot start from pure noise).
    key: PRNG key, required by "ddpm" and by "ddim" with eta > 0.
    eta: DDIM stochasticity in [0, 1]; only for sampler="ddim".
    timestep_spacing: one of TIMESTEP_SPACINGS (see the module docstring).
    return_trajectory: also return the `Trajectory` of all intermediate latents and x-predictions.
    self_condition: call denoise_fn(z_t, t, x_prev) with the previous step's x-prediction (zeros at the first step),
      for models trained with `vidgen.diffusion.self_conditioned`.
    t_start: in (0, 1], static: scales the time grid so sampling starts at t_0 = t_start (see the module docstring).

  Returns:
    x0: the clean sample, [B, ...], dtype of noise (float32 at least); and the Trajectory if requested.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
  if prediction not in PREDICTIONS:
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
  if timestep_spacing not in TIMESTEP_SPACINGS:
    raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}")
  if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not 0.0 <= eta <= 1.0:
    raise ValueError(f"eta must be a Python float in [0, 1] (it is static), got {eta!r}")
  if eta != 0.0 and sampler != "ddim":
    raise ValueError(f"eta is only used by sampler='ddim'; got eta={eta} with sampler={sampler!r}")
  if jnp.ndim(noise) < 1 or not jnp.issubdtype(jnp.result_type(noise), jnp.floating):
    raise ValueError(f"noise must be a float array [B, ...], got {jnp.result_type(noise)} of shape {jnp.shape(noise)}")
  if isinstance(t_start, bool) or not isinstance(t_start, (int, float)) or not 0.0 < t_start <= 1.0:
    raise ValueError(f"t_start must be a Python float in (0, 1] (it is static), got {t_start!r}")
  stochastic = sampler == "ddpm" or eta > 0.0
  if stochastic and key is None:
    raise ValueError(f"key is required for sampler={sampler!r} with eta={eta} (it draws noise)")

  times = sampling_times(schedule, num_steps, timestep_spacing) * float(t_start)
  if prediction == "eps":
    with jax.ensure_compile_time_eval():  # a constant even when sample() is traced inside a caller's jit
      alpha_start = float(schedule.alpha_sigma(jnp.float32(times[0]))[0])
  if prediction == "eps" and not alpha_start > 0.0:
    raise ValueError(f"prediction='eps' cannot start at t={times[0]}, where alpha = 0 (zero terminal SNR): x cannot "
                     "be recovered from a noise prediction there; use a schedule without zero terminal SNR")
  # One XLA program for the coefficients and the loop: run eagerly, every small op on the [n + 1] grid would otherwise
  # be compiled on its own for each new n. Inside a caller's jit this inner jit is simply inlined.
  run = functools.partial(
      _run, denoise_fn, schedule=schedule, sampler=sampler, prediction=prediction, times=times, eta=float(eta),
      stochastic=stochastic,
      return_trajectory=return_trajectory, self_condition=bool(self_condition))
  return jax.jit(run)(noise, key)


def _run(
    denoise_fn: DenoiseFn,
    noise: Array,
    key: Array | None,
    *,
    schedule: Schedule,
    sampler: str,
    prediction: str,
    times: np.ndarray,
    eta: float,
    stochastic: bool,
    return_trajectory: bool,
    self_condition: bool,
) -> Array | tuple[Array, Trajectory]:
  """The body of `sample` for validated arguments; `times` is the static grid [n + 1]."""
  num_steps = len(times) - 1
  dtype = jnp.result_type(noise.dtype, jnp.float32)
  z0 = jnp.asarray(noise, dtype)
  batch = z0.shape[0]
  t, alpha, sigma, logsnr = _grid_coefficients(schedule, times, dtype)
  a_c, s_c, l_c = alpha[:-1], sigma[:-1], logsnr[:-1]  # Current (noisier) point of each step, [n].
  a_n, s_n, l_n = alpha[1:], sigma[1:], logsnr[1:]  # Next (cleaner) point, [n].
  # 1 - SNR_c / SNR_n: the fraction of sigma_n^2 that the DDPM posterior q(z_n | z_c, x) leaves as variance. It is 1
  # for the first step from pure noise (SNR_c = 0) and for the last step to clean data (SNR_n = inf, variance 0).
  c_post = -jnp.expm1(l_c - l_n)
  post_var = c_post * jnp.square(s_n)

  if sampler in ("ddim", "euler"):
    # z_n = alpha_n x_hat + sqrt(sigma_n^2 - std^2) eps_hat + std * noise, std = eta * posterior std ("euler": eta 0).
    std = eta * jnp.sqrt(post_var)
    coefs = dict(x=a_n, eps=jnp.sqrt(jnp.maximum(jnp.square(s_n) - jnp.square(std), 0.0)), std=std)
  elif sampler == "ddpm":
    # Posterior mean alpha_n c_post x_hat + (alpha_c / alpha_n)(sigma_n^2 / sigma_c^2) z_c; alpha_n > 0 and sigma_c > 0
    # on every step, so this is finite even when alpha_c = 0 (zero terminal SNR).
    coefs = dict(x=a_n * c_post, z=(a_c / a_n) * jnp.square(s_n) / jnp.square(s_c), std=jnp.sqrt(post_var))
  else:
    # DPM-Solver++(2M): z_n = (sigma_n / sigma_c) z_c - alpha_n expm1(-h) (D0 + r D1-term), h = lambda_n - lambda_c,
    # lambda = logsnr / 2. h is +inf on a step from pure noise or to clean data; expm1(-inf) = -1 keeps it exact.
    h = 0.5 * (l_n - l_c)
    n = num_steps
    second = np.zeros(n, bool)
    second[1:n - 1] = True  # First order on the first step (no history) and the last (diffusers' lower_order_final).
    h_prev = jnp.concatenate([jnp.ones((1,), dtype), h[:-1]])
    # x-extrapolation weight 0.5 h / h_prev; 0 after a step from pure noise (h_prev = inf), as the limit says.
    r = jnp.where(second, 0.5 * h / h_prev, 0.0)
    coefs = dict(z=s_n / s_c, x=-a_n * jnp.expm1(-h), r=r)

  def step(carry, xs):
    z, x_prev = carry
    i, t_i, alpha_i, sigma_i, co = xs
    t_batch = jnp.full((batch,), t_i, dtype)
    pred = denoise_fn(z, t_batch, x_prev) if self_condition else denoise_fn(z, t_batch)
    if pred.shape != z.shape:
      raise ValueError(f"denoise_fn must return its prediction with the latent's shape {z.shape}, got {pred.shape}")
    pred = pred.astype(dtype)
    x_hat = x_from_prediction(z, pred, alpha_i, sigma_i, prediction)
    if sampler in ("ddim", "euler"):
      eps_hat = eps_from_prediction(z, pred, alpha_i, sigma_i, prediction)
      z_next = co["x"] * x_hat + co["eps"] * eps_hat
    elif sampler == "ddpm":
      z_next = co["x"] * x_hat + co["z"] * z
    else:
      z_next = co["z"] * z + co["x"] * (x_hat + co["r"] * (x_hat - x_prev))
    if stochastic:
      step_noise = jax.random.normal(jax.random.fold_in(key, i), z.shape, dtype)
      z_next = z_next + co["std"] * step_noise
    return (z_next, x_hat), ((z_next, x_hat) if return_trajectory else None)

  xs = (jnp.arange(num_steps), t[:-1], a_c, s_c, coefs)
  (x0, _), traj = jax.lax.scan(step, (z0, jnp.zeros_like(z0)), xs)
  if not return_trajectory:
    return x0
  zs, x_hats = traj
  return x0, Trajectory(t=t, z=jnp.concatenate([z0[None], zs], axis=0), x_hat=x_hats)
