"""Noise schedules in continuous time, expressed through the log signal-to-noise ratio.

Time t runs over [0, 1]: t = 0 is clean data, t = 1 is (almost) pure noise. A schedule gives

  z_t = alpha_t x + sigma_t eps,   logsnr(t) = log(alpha_t^2 / sigma_t^2),

with logsnr decreasing monotonically in t. Two families:
  variance preserving (LinearBetaSchedule, CosineSchedule): alpha_t^2 + sigma_t^2 = 1, so alpha_t = sqrt(sigmoid(
    logsnr)) and sigma_t = sqrt(sigmoid(-logsnr)) and the schedule is fully described by its logsnr(t) (the base
    class's `alpha_sigma`);
  rectified flow (FlowSchedule): alpha_t + sigma_t = 1, z_t a straight line between x and eps, so alpha_t =
    sigmoid(logsnr / 2) and sigma_t = sigmoid(-logsnr / 2).
Samplers and losses only use (alpha, sigma, logsnr), so they work with either family. Schedules are small frozen
(hashable) dataclasses, so they can be closed over or passed as static arguments to `jax.jit`.

Public names:
  Schedule: the base class; subclasses implement `logsnr(t)` and may override `alpha_sigma(t)` (which by default
    assumes variance preservation).
  LinearBetaSchedule: DDPM's discrete linear-beta schedule (optionally rescaled to zero terminal SNR), continued to
    continuous t by interpolation; step k of the N discrete steps sits at t = (k + 1) / N.
  CosineSchedule: the cosine schedule written in logSNR, with an additive shift for resolution / length.
  FlowSchedule: rectified flow, z_s = (1 - s) x + s eps, with the same additive logSNR shift.
  resolution_shift: the logSNR shift that keeps the noise "seen" by a larger image or video equal to that at a base
    size.
  flow_shift_from_sd3: the logSNR shift equal to SD3's time-shift factor k.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _float_dtype(t) -> jnp.dtype:
  """Schedule math runs in at least float32 (bfloat16 times are promoted; float64 is kept when x64 is enabled)."""
  return jnp.result_type(jnp.asarray(t).dtype, jnp.float32)


class Schedule(abc.ABC):
  """A noise schedule over continuous time t in [0, 1]: z_t = alpha_t x + sigma_t eps.

  Subclasses are frozen dataclasses. `num_train_steps` is the resolution of the integer timestep grid on which the
  samplers place their steps (see `vidgen.diffusion.samplers.sampling_times`); training samples continuous t.
  """

  num_train_steps: int = 1000

  @abc.abstractmethod
  def logsnr(self, t: Array) -> Array:
    """log(alpha_t^2 / sigma_t^2).

    Args:
      t: float array of any shape, values in [0, 1].

    Returns:
      logsnr: same shape as t; may be +inf at t = 0 or -inf at t = 1 for schedules that reach clean data / pure noise.
    """

  def alpha_sigma(self, t: Array) -> tuple[Array, Array]:
    """(alpha_t, sigma_t), each the shape of t; this default is variance preserving, alpha^2 + sigma^2 = 1.

    Computed through log-sigmoid so that logsnr = +-inf gives exactly (1, 0) / (0, 1) without NaNs.
    """
    lam = self.logsnr(t)
    alpha = jnp.exp(0.5 * jax.nn.log_sigmoid(lam))
    sigma = jnp.exp(0.5 * jax.nn.log_sigmoid(-lam))
    return alpha, sigma


# --------------------------------------------------------------------------------------------------------------------
# Discrete linear-beta schedule (DDPM), continued to continuous time.


@functools.lru_cache(maxsize=16)
def _linear_beta_tables(
    num_train_steps: int, beta_start: float, beta_end: float, zero_terminal_snr: bool
) -> tuple[np.ndarray, np.ndarray]:
  """alpha_bar and 1 - alpha_bar on the grid t_j = j / N, j = 0..N, in float64.

  Entry j = 0 is the clean point (alpha_bar = 1, what diffusers calls `final_alpha_cumprod` with set_alpha_to_one);
  entry j = k + 1 is discrete step k. Both tables are kept because 1 - alpha_bar near t = 0 (~1e-4) would lose most of
  its digits if formed in float32 from alpha_bar; interpolating both with the same weights keeps their sum at 1.
  """
  betas = np.linspace(beta_start, beta_end, num_train_steps, dtype=np.float64)
  alpha_bar = np.cumprod(1.0 - betas)
  if zero_terminal_snr:
    # arXiv 2305.08891, Alg. 1: shift sqrt(alpha_bar) so its last value is 0, then scale so its first is unchanged.
    sqrt_ab = np.sqrt(alpha_bar)
    first, last = sqrt_ab[0], sqrt_ab[-1]
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    sqrt_ab[-1] = 0.0  # Exactly zero terminal SNR, whatever the rounding above did.
    alpha_bar = sqrt_ab**2
    one_minus = 1.0 - alpha_bar
  else:
    # 1 - prod(1 - beta) without cancellation.
    one_minus = -np.expm1(np.cumsum(np.log1p(-betas)))
  alpha_bar = np.concatenate([[1.0], alpha_bar])
  one_minus = np.concatenate([[0.0], one_minus])
  alpha_bar.setflags(write=False)
  one_minus.setflags(write=False)
  return alpha_bar, one_minus


@dataclasses.dataclass(frozen=True)
class LinearBetaSchedule(Schedule):
  """DDPM's linear beta schedule, betas = linspace(beta_start, beta_end, N) (diffusers' "linear").

  Continuous time: discrete step k in 0..N-1 (alpha_bar_k = prod_{i<=k} (1 - beta_i)) sits at t = (k + 1) / N, and
  t = 0 is the clean point alpha_bar = 1 (the "step -1" that diffusers steps to at the end of sampling). Between grid
  points alpha_bar and 1 - alpha_bar are interpolated linearly in t. With this mapping the samplers evaluated at grid
  points reproduce diffusers' DDPM / DDIM / DPM-Solver schedulers exactly.

  With `zero_terminal_snr` (arXiv 2305.08891) sqrt(alpha_bar) is rescaled linearly so that step N-1 (t = 1) has
  alpha = 0 (logsnr = -inf, SNR = 0) and step 0 is unchanged. Such a schedule needs v-prediction (the model cannot
  predict eps from pure noise) and samplers that start at t = 1 ("trailing" spacing).

  Attributes:
    num_train_steps: N, the number of discrete training steps.
    beta_start: beta of step 0.
    beta_end: beta of step N-1 (before any zero-terminal-SNR rescaling).
    zero_terminal_snr: rescale so that the last step has SNR exactly 0.
  """

  num_train_steps: int = 1000
  beta_start: float = 1e-4
  beta_end: float = 0.02
  zero_terminal_snr: bool = False

  def __post_init__(self):
    if self.num_train_steps < 1:
      raise ValueError(f"num_train_steps must be >= 1, got {self.num_train_steps}")
    if not 0.0 < self.beta_start <= self.beta_end < 1.0:
      raise ValueError(
          f"betas must satisfy 0 < beta_start <= beta_end < 1, got beta_start={self.beta_start}, "
          f"beta_end={self.beta_end}")

  def _tables(self, dtype) -> tuple[Array, Array, Array]:
    ab, om = _linear_beta_tables(self.num_train_steps, self.beta_start, self.beta_end, self.zero_terminal_snr)
    grid = np.arange(self.num_train_steps + 1, dtype=np.float64) / self.num_train_steps
    return jnp.asarray(grid, dtype), jnp.asarray(ab, dtype), jnp.asarray(om, dtype)

  def _interp(self, t: Array) -> tuple[Array, Array]:
    """(alpha_bar(t), 1 - alpha_bar(t)), each the shape of t."""
    dtype = _float_dtype(t)
    t = jnp.clip(jnp.asarray(t, dtype), 0.0, 1.0)
    grid, ab, om = self._tables(dtype)
    return jnp.interp(t, grid, ab), jnp.interp(t, grid, om)

  def logsnr(self, t: Array) -> Array:
    """log(alpha_bar / (1 - alpha_bar)); +inf at t = 0, -inf at t = 1 with zero terminal SNR, else about -10.1."""
    ab, om = self._interp(t)
    return jnp.log(ab) - jnp.log(om)

  def alpha_sigma(self, t: Array) -> tuple[Array, Array]:
    """Square roots of the interpolated tables: exact on the grid, exactly (0, 1) at t = 1 with zero terminal SNR."""
    ab, om = self._interp(t)
    return jnp.sqrt(ab), jnp.sqrt(om)

  def to_discrete(self, t: Array) -> Array:
    """The (fractional) discrete timestep k = N t - 1 of continuous time t; for models trained on integer steps."""
    return jnp.asarray(t) * self.num_train_steps - 1

  def from_discrete(self, k: Array) -> Array:
    """Continuous time t = (k + 1) / N of discrete timestep k (k = -1 is the clean point t = 0)."""
    return (jnp.asarray(k, jnp.float32) + 1) / self.num_train_steps

  def alphas_cumprod(self) -> np.ndarray:
    """alpha_bar of the N discrete steps, float64 numpy [N] (diffusers' `alphas_cumprod`), for inspection and tests."""
    return _linear_beta_tables(self.num_train_steps, self.beta_start, self.beta_end, self.zero_terminal_snr)[0][1:]


# --------------------------------------------------------------------------------------------------------------------
# Cosine schedule in logSNR.


def resolution_shift(size: float | Sequence[float], base: float | Sequence[float]) -> float:
  """The logSNR shift for a sample of `size` relative to a schedule tuned at `base` (arXiv 2301.11093).

  A larger image averages noise over more pixels, so at equal logSNR it looks less noisy; shifting logSNR by
  2 log(base / size) (negative for size > base) keeps the effective noise level. A scalar is the side of a square image,
  giving the paper's 2 log(base / size). Sequences are per-axis sizes, e.g. (T, H, W) latent shapes, and give
  log(prod(base) / prod(size)), which equals the scalar formula for (d, d) and extends it to video length (a video
  twice as long is shifted by -log 2).

  Args:
    size: side length of the sample, or its per-axis sizes.
    base: the same for the size the unshifted schedule was designed for.

  Returns:
    The shift, a Python float, for `CosineSchedule(shift=...)`.
  """
  if isinstance(size, (int, float)) != isinstance(base, (int, float)):
    raise ValueError(f"size and base must both be scalars or both sequences, got size={size!r}, base={base!r}")
  if isinstance(size, (int, float)):
    size, base = (size, size), (base, base)
  if len(size) != len(base):
    raise ValueError(f"size and base must have the same length, got size={tuple(size)}, base={tuple(base)}")
  if min(*size, *base) <= 0:
    raise ValueError(f"sizes must be positive, got size={tuple(size)}, base={tuple(base)}")
  return float(sum(math.log(b) - math.log(s) for s, b in zip(size, base)))


@dataclasses.dataclass(frozen=True)
class CosineSchedule(Schedule):
  """The cosine schedule in logSNR: logsnr(t) = -2 log tan(pi t / 2) + shift (arXiv 2301.11093).

  -2 log tan(pi t / 2) is infinite at t = 0 and t = 1, so t is first mapped linearly onto [t_min, t_max], the times at
  which the unshifted curve equals logsnr_max and logsnr_min. The result is continuous and strictly decreasing, with
  logsnr(0) = logsnr_max + shift and logsnr(1) = logsnr_min + shift; with the defaults (+-15) sigma(0) = 5.5e-4 and
  alpha(1) = 5.5e-4 (before the shift). Samplers still end at exactly clean data: their last step targets sigma = 0.

  Attributes:
    shift: added to logSNR; see `resolution_shift`. 0 is the plain cosine schedule.
    logsnr_min: unshifted logSNR at t = 1.
    logsnr_max: unshifted logSNR at t = 0.
    num_train_steps: resolution of the integer grid on which samplers place steps ("leading" / "linspace" spacing).
  """

  shift: float = 0.0
  logsnr_min: float = -15.0
  logsnr_max: float = 15.0
  num_train_steps: int = 1000

  def __post_init__(self):
    if not self.logsnr_min < self.logsnr_max:
      raise ValueError(f"need logsnr_min < logsnr_max, got {self.logsnr_min} >= {self.logsnr_max}")
    if self.num_train_steps < 1:
      raise ValueError(f"num_train_steps must be >= 1, got {self.num_train_steps}")

  def logsnr(self, t: Array) -> Array:
    dtype = _float_dtype(t)
    t = jnp.clip(jnp.asarray(t, dtype), 0.0, 1.0)
    # Inverse of logsnr = -2 log tan(pi t / 2): t = (2 / pi) atan(exp(-logsnr / 2)).
    t_min = 2.0 / math.pi * math.atan(math.exp(-0.5 * self.logsnr_max))
    t_max = 2.0 / math.pi * math.atan(math.exp(-0.5 * self.logsnr_min))
    u = t_min + t * (t_max - t_min)
    return -2.0 * jnp.log(jnp.tan(0.5 * math.pi * u)) + jnp.asarray(self.shift, dtype)


# --------------------------------------------------------------------------------------------------------------------
# Rectified flow.


def flow_shift_from_sd3(k: float) -> float:
  """The FlowSchedule shift equal to SD3's time shift s' = k s / (1 + (k - 1) s) (arXiv 2403.03206): -2 ln k.

  SD3's map multiplies sigma / alpha = s / (1 - s) by k, i.e. adds -2 ln k to logsnr = 2 log(alpha / sigma). k > 1
  (SD3 uses 3 at 1024^2) moves every t towards noise, as `resolution_shift` does for a larger sample.

  Args:
    k: SD3's shift factor, > 0; 1 is no shift.

  Returns:
    The shift, a Python float, for `FlowSchedule(shift=...)`.
  """
  if not k > 0:
    raise ValueError(f"the SD3 shift factor must be > 0, got {k!r}")
  return -2.0 * math.log(k)


@dataclasses.dataclass(frozen=True)
class FlowSchedule(Schedule):
  """Rectified flow (arXiv 2209.03003, 2403.03206): z_s = (1 - s) x + s eps, alpha + sigma = 1, not variance
  preserving.

  logsnr(t) = 2 log((1 - t) / t) + shift, so alpha = sigmoid(logsnr / 2) and sigma = sigmoid(-logsnr / 2); with
  shift = 0 that is sigma = t, alpha = 1 - t. The shift has the meaning of `CosineSchedule.shift` (pass
  `resolution_shift(...)` for a larger sample); SD3's time-shift factor k is shift = -2 ln k (`flow_shift_from_sd3`):
  sigma(t) = t / (t + (1 - t) e^{shift / 2}). The schedule reaches clean data (logsnr = +inf) at t = 0 and pure noise
  (logsnr = -inf) at t = 1 exactly, so it pairs with the flow prediction u = eps - x and "trailing" sampling grids.

  Attributes:
    shift: added to logSNR; 0 is the plain linear interpolation.
    num_train_steps: resolution of the integer grid on which samplers place steps ("leading" / "linspace" spacing).
  """

  shift: float = 0.0
  num_train_steps: int = 1000

  def __post_init__(self):
    if not math.isfinite(self.shift):
      raise ValueError(f"shift must be finite, got {self.shift}")
    if self.num_train_steps < 1:
      raise ValueError(f"num_train_steps must be >= 1, got {self.num_train_steps}")

  def logsnr(self, t: Array) -> Array:
    """2 log((1 - t) / t) + shift: +inf at t = 0, -inf at t = 1."""
    dtype = _float_dtype(t)
    t = jnp.clip(jnp.asarray(t, dtype), 0.0, 1.0)
    return 2.0 * (jnp.log1p(-t) - jnp.log(t)) + jnp.asarray(self.shift, dtype)

  def alpha_sigma(self, t: Array) -> tuple[Array, Array]:
    """(alpha, sigma) = ((1 - t) c, t) / (t + (1 - t) c) with c = e^{shift / 2}: sigmoid(+-logsnr / 2) written
    without logs, so it is exactly (1, 0) at t = 0 and (0, 1) at t = 1, and exactly (1 - t, t) for shift = 0."""
    dtype = _float_dtype(t)
    t = jnp.clip(jnp.asarray(t, dtype), 0.0, 1.0)
    if self.shift == 0.0:
      return 1.0 - t, t
    c = jnp.asarray(math.exp(0.5 * self.shift), dtype)
    a = (1.0 - t) * c
    denom = a + t
    return a / denom, t / denom
