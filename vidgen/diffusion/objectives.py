"""Training objective: v-prediction (arXiv 2202.00512), conversions between parameterizations, loss weightings.

With z_t = alpha_t x + sigma_t eps (variance preserving, alpha^2 + sigma^2 = 1):

  v = alpha eps - sigma x,   x = alpha z - sigma v,   eps = sigma z + alpha v,
  ||v - v_hat||^2 = (1 + SNR) ||x - x_hat||^2,   SNR = alpha^2 / sigma^2.

Every conversion takes `alpha`, `sigma` of shape [B] (or any leading prefix of the data shape, or scalars) and
broadcasts them over the trailing data axes, so per-example noise levels need no manual reshaping.

Public names:
  add_noise: z_t from x, eps.
  v_from_x_eps, x_from_v, eps_from_v, v_from_x, v_from_eps, x_from_eps, eps_from_x: parameterization conversions.
  min_snr_weight: min(SNR, gamma) / (SNR + 1), the Min-SNR-gamma weight for a v-prediction loss (arXiv 2303.09556).
  loss_weight: the per-example weight of a named weighting ("v_mse" or "min_snr").
  sample_t: uniform training times.
  self_conditioned: training-time self-conditioning of a denoiser that also takes its previous x estimate.
  v_loss: the per-example weighted v-prediction loss of a denoiser; what the DiT trainer calls.
  WEIGHTINGS: the allowed weighting names.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from vidgen.diffusion.schedules import Schedule

Array = jax.Array
DenoiseFn = Callable[[Array, Array], Array]
SelfCondDenoiseFn = Callable[[Array, Array, Array], Array]

WEIGHTINGS = ("v_mse", "min_snr")


def broadcast_per_example(a: Array, like: Array) -> Array:
  """Adds trailing unit axes to `a` ([B] or a leading prefix of like.shape) so it broadcasts against `like`."""
  a = jnp.asarray(a)
  return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))


def add_noise(x: Array, eps: Array, alpha: Array, sigma: Array) -> Array:
  """z_t = alpha x + sigma eps.  x, eps: [B, ...]; alpha, sigma: [B] (or broadcastable prefix); returns [B, ...]."""
  return broadcast_per_example(alpha, x) * x + broadcast_per_example(sigma, x) * eps


def v_from_x_eps(x: Array, eps: Array, alpha: Array, sigma: Array) -> Array:
  """The v-prediction target v = alpha eps - sigma x.  x, eps: [B, ...]; returns [B, ...]."""
  return broadcast_per_example(alpha, x) * eps - broadcast_per_example(sigma, x) * x


def x_from_v(z: Array, v: Array, alpha: Array, sigma: Array) -> Array:
  """x_hat = alpha z - sigma v.  z, v: [B, ...]; returns [B, ...]."""
  return broadcast_per_example(alpha, z) * z - broadcast_per_example(sigma, z) * v


def eps_from_v(z: Array, v: Array, alpha: Array, sigma: Array) -> Array:
  """eps_hat = sigma z + alpha v.  z, v: [B, ...]; returns [B, ...]."""
  return broadcast_per_example(sigma, z) * z + broadcast_per_example(alpha, z) * v


def v_from_x(z: Array, x: Array, alpha: Array, sigma: Array) -> Array:
  """v = (alpha z - x) / sigma (undefined at sigma = 0, t = 0).  z, x: [B, ...]; returns [B, ...]."""
  return (broadcast_per_example(alpha, z) * z - x) / broadcast_per_example(sigma, z)


def v_from_eps(z: Array, eps: Array, alpha: Array, sigma: Array) -> Array:
  """v = (eps - sigma z) / alpha (undefined at alpha = 0).  z, eps: [B, ...]; returns [B, ...]."""
  return (eps - broadcast_per_example(sigma, z) * z) / broadcast_per_example(alpha, z)


def x_from_eps(z: Array, eps: Array, alpha: Array, sigma: Array) -> Array:
  """x = (z - sigma eps) / alpha (undefined at alpha = 0).  z, eps: [B, ...]; returns [B, ...]."""
  return (z - broadcast_per_example(sigma, z) * eps) / broadcast_per_example(alpha, z)


def eps_from_x(z: Array, x: Array, alpha: Array, sigma: Array) -> Array:
  """eps = (z - alpha x) / sigma (undefined at sigma = 0).  z, x: [B, ...]; returns [B, ...]."""
  return (z - broadcast_per_example(alpha, z) * x) / broadcast_per_example(sigma, z)


def min_snr_weight(logsnr: Array, gamma: float = 5.0) -> Array:
  """min(SNR, gamma) / (SNR + 1): the v-loss weight that equals Min-SNR-gamma on x (arXiv 2303.09556).

  Written as min(sigmoid(logsnr), gamma sigmoid(-logsnr)), which is exact and finite for logsnr in [-inf, inf]
  (SNR / (SNR + 1) = sigmoid(logsnr), 1 / (SNR + 1) = sigmoid(-logsnr)).

  Args:
    logsnr: any shape.
    gamma: the SNR cap, > 0.

  Returns:
    weight, the shape of logsnr, in [0, gamma / (gamma + 1)].
  """
  return jnp.minimum(jax.nn.sigmoid(logsnr), gamma * jax.nn.sigmoid(-logsnr))


def loss_weight(logsnr: Array, weighting: str = "v_mse", gamma: float = 5.0) -> Array:
  """Per-example weight of the v-MSE at `logsnr` ([B]); "v_mse" is 1 everywhere, "min_snr" is `min_snr_weight`."""
  if weighting == "v_mse":
    return jnp.ones_like(logsnr)
  if weighting == "min_snr":
    return min_snr_weight(logsnr, gamma)
  raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def sample_t(key: Array, batch_size: int) -> Array:
  """Training times, uniform on [0, 1), one per example: float32 [batch_size]."""
  return jax.random.uniform(key, (batch_size,), jnp.float32)


def self_conditioned(denoise_fn: SelfCondDenoiseFn, schedule: Schedule, use: Array) -> DenoiseFn:
  """Training-time self-conditioning (arXiv 2208.04202, used by W.A.L.T): (z_t, t, x_prev) -> v becomes (z_t, t) -> v.

  A first pass sees no estimate (x_prev = 0) and its x-prediction, with the gradient stopped, is the estimate the
  second pass sees on the examples where `use` is True (zeros elsewhere, so the model also learns the first pass);
  the second pass's v is returned. At sampling time `sample(..., self_condition=True)` feeds the previous step's
  x-prediction instead. The first pass runs on every example, so the step costs one extra forward pass.

  Args:
    denoise_fn: (z_t [B, ...], t [B], x_prev [B, ...]) -> v_hat [B, ...].
    schedule: the noise schedule (to turn the first pass's v into x).
    use: bool [B], drawn per example with the self-conditioning probability.

  Returns:
    (z_t, t) -> v_hat, for `v_loss`.
  """

  def denoise(z_t: Array, t: Array) -> Array:
    alpha, sigma = schedule.alpha_sigma(t)
    first = denoise_fn(z_t, t, jnp.zeros_like(z_t))
    estimate = jax.lax.stop_gradient(x_from_v(z_t, first.astype(z_t.dtype), alpha, sigma))
    return denoise_fn(z_t, t, jnp.where(broadcast_per_example(use, z_t), estimate, 0.0).astype(z_t.dtype))

  return denoise


def v_loss(
    denoise_fn: DenoiseFn,
    x: Array,
    key: Array,
    schedule: Schedule,
    *,
    weighting: str = "v_mse",
    gamma: float = 5.0,
    mask: Array | None = None,
    t: Array | None = None,
    eps: Array | None = None,
) -> Array:
  """Per-example weighted v-prediction loss.

  Draws t ~ U[0, 1) per example (unless given) and eps ~ N(0, I), forms z_t = alpha_t x + sigma_t eps, and returns
  weight(t) * mean((v - denoise_fn(z_t, t))^2) over the non-batch axes. The trainer averages over the batch itself,
  which keeps this usable under any batch sharding.

  Args:
    denoise_fn: (z_t [B, ...], t float32 [B]) -> v_hat [B, ...]; close over params and conditioning.
    x: clean data (e.g. normalized latents) [B, ...].
    key: PRNG key; split for t and eps.
    schedule: the noise schedule.
    weighting: one of WEIGHTINGS: "v_mse" (plain) or "min_snr" (min(SNR, gamma) / (SNR + 1)).
    gamma: Min-SNR cap, used with weighting="min_snr".
    mask: optional per-element weights: the shape of x, a leading prefix of it (e.g. [B, T] per frame, with 0 on the
      conditioning frames in image-to-video) or anything broadcastable with x's rank (e.g. [B, T, 1, 1, 1]). The
      loss is then sum(mask * err^2) / sum(mask) per example (0 where the mask is all zero), so its scale does not
      depend on how many elements are masked.
    t: optional times float [B] to use instead of sampling them (evaluation at fixed noise levels).
    eps: optional noise of x's shape to use instead of drawing it (e.g. drawn once for a batch that is then split
      into micro-batches for gradient accumulation).

  Returns:
    loss: float32 [B].
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
  batch = x.shape[0]
  key_t, key_eps = jax.random.split(key)
  if t is None:
    t = sample_t(key_t, batch)
  t = jnp.asarray(t, jnp.float32)
  if t.shape != (batch,):
    raise ValueError(f"t must have shape (batch,) = {(batch,)}, got {t.shape}")
  if eps is None:
    eps = jax.random.normal(key_eps, x.shape, x.dtype)
  elif eps.shape != x.shape:
    raise ValueError(f"eps must have the shape of x {x.shape}, got {eps.shape}")
  alpha, sigma = schedule.alpha_sigma(t)
  z_t = add_noise(x, eps, alpha, sigma).astype(x.dtype)
  v = v_from_x_eps(x, eps, alpha, sigma)
  v_hat = denoise_fn(z_t, t)
  # The error is formed in float32 even when the model runs in bfloat16: it is a small difference of O(1) numbers.
  err = jnp.square(v.astype(jnp.float32) - v_hat.astype(jnp.float32))
  axes = tuple(range(1, x.ndim))
  if mask is None:
    per_example = jnp.mean(err, axis=axes)
  else:
    m = jnp.broadcast_to(broadcast_per_example(jnp.asarray(mask, jnp.float32), err), err.shape)
    total = jnp.sum(m, axis=axes)
    per_example = jnp.sum(m * err, axis=axes) / jnp.maximum(total, 1e-12)
  return loss_weight(schedule.logsnr(t), weighting, gamma) * per_example
