"""Training objectives: v-prediction (arXiv 2202.00512) and rectified flow (arXiv 2209.03003), conversions between
parameterizations, loss weightings, training-time distributions.

With z_t = alpha_t x + sigma_t eps, a denoiser predicts one of PREDICTIONS:

  "v"     v = alpha eps - sigma x      (variance preserving schedules, alpha^2 + sigma^2 = 1):
          x = alpha z - sigma v,   eps = sigma z + alpha v,   ||v - v_hat||^2 = (1 + SNR) ||x - x_hat||^2;
  "flow"  u = eps - x                  (FlowSchedule, alpha + sigma = 1, where u = dz/ds is the straight path's
          velocity): x = z - sigma u,   eps = z + alpha u,   ||u - u_hat||^2 = ||x - x_hat||^2 / sigma^2;
  "eps"   eps (DDPM, DiT; any schedule whose alpha stays above 0): x = (z - sigma eps) / alpha.

The "flow" conversions are implemented as x = (z - sigma u) / (alpha + sigma), eps = (z + alpha u) / (alpha + sigma),
which is exact for any schedule and equals the lines above when alpha + sigma = 1; the "v" ones assume alpha^2 +
sigma^2 = 1, which every schedule they are used with satisfies (`vidgen.diffusion.config` pairs objective and schedule).

Every conversion takes `alpha`, `sigma` of shape [B] (or any leading prefix of the data shape, or scalars) and
broadcasts them over the trailing data axes, so per-example noise levels need no manual reshaping.

Public names:
  add_noise: z_t from x, eps.
  prediction_target, x_from_prediction, eps_from_prediction: the target of a named prediction and its conversions.
  v_from_x_eps, x_from_v, eps_from_v, v_from_x, v_from_eps, x_from_eps, eps_from_x: v-parameterization conversions.
  min_snr_weight: min(SNR, gamma) / (SNR + 1), the Min-SNR-gamma weight for a v-prediction loss (arXiv 2303.09556).
  loss_weight: the per-example weight of a named weighting ("v_mse" or "min_snr").
  sample_t: training times, uniform or logit-normal (arXiv 2403.03206).
  self_conditioned: training-time self-conditioning of a denoiser that also takes its previous x estimate.
  denoising_loss: the per-example weighted prediction loss of a denoiser; what the DiT trainer calls (through
    `vidgen.diffusion.Objective`).
  PREDICTIONS, WEIGHTINGS, TIMESTEP_DISTRIBUTIONS: the allowed names.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from vidgen.diffusion.schedules import Schedule

Array = jax.Array
DenoiseFn = Callable[[Array, Array], Array]
SelfCondDenoiseFn = Callable[[Array, Array, Array], Array]

PREDICTIONS = ("v", "flow", "eps")
WEIGHTINGS = ("v_mse", "min_snr")
TIMESTEP_DISTRIBUTIONS = ("uniform", "logit_normal")


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


def _check_prediction(prediction: str) -> None:
  if prediction not in PREDICTIONS:
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def prediction_target(x: Array, eps: Array, alpha: Array, sigma: Array, prediction: str = "v") -> Array:
  """What a denoiser of `prediction` is trained to output: v = alpha eps - sigma x, u = eps - x for "flow", or eps.

  Args:
    x, eps: clean data and noise, [B, ...].
    alpha, sigma: [B] (or a broadcastable prefix, or scalars).
    prediction: one of PREDICTIONS.

  Returns:
    The target, [B, ...].
  """
  _check_prediction(prediction)
  if prediction == "v":
    return v_from_x_eps(x, eps, alpha, sigma)
  if prediction == "eps":
    return eps
  return eps - x


def x_from_prediction(z: Array, pred: Array, alpha: Array, sigma: Array, prediction: str = "v") -> Array:
  """x_hat from a denoiser's output: alpha z - sigma v, (z - sigma u) / (alpha + sigma) (= z - sigma u on a flow
  schedule) for "flow", (z - sigma eps) / alpha for "eps".  z, pred: [B, ...]; alpha, sigma: [B] (or a prefix, or
  scalars); returns [B, ...]."""
  _check_prediction(prediction)
  if prediction == "v":
    return x_from_v(z, pred, alpha, sigma)
  if prediction == "eps":
    return x_from_eps(z, pred, alpha, sigma)
  a, s = broadcast_per_example(alpha, z), broadcast_per_example(sigma, z)
  return (z - s * pred) / (a + s)


def eps_from_prediction(z: Array, pred: Array, alpha: Array, sigma: Array, prediction: str = "v") -> Array:
  """eps_hat from a denoiser's output: sigma z + alpha v, (z + alpha u) / (alpha + sigma) (= z + alpha u on a flow
  schedule) for "flow", eps itself for "eps".  z, pred: [B, ...]; alpha, sigma: [B] (or a prefix, or scalars);
  returns [B, ...]."""
  _check_prediction(prediction)
  if prediction == "v":
    return eps_from_v(z, pred, alpha, sigma)
  if prediction == "eps":
    return pred
  a, s = broadcast_per_example(alpha, z), broadcast_per_example(sigma, z)
  return (z + a * pred) / (a + s)


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
  """Per-example weight of the prediction MSE at `logsnr` ([B]): "v_mse" is 1 everywhere (the plain MSE of whichever
  prediction is trained: v or u), "min_snr" is `min_snr_weight` (a weight for the v-MSE only)."""
  if weighting == "v_mse":
    return jnp.ones_like(logsnr)
  if weighting == "min_snr":
    return min_snr_weight(logsnr, gamma)
  raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def sample_t(key: Array, batch_size: int, distribution: str = "uniform", mean: float = 0.0,
             std: float = 1.0) -> Array:
  """Training times, one per example: float32 [batch_size].

  Args:
    key: PRNG key.
    batch_size: B.
    distribution: one of TIMESTEP_DISTRIBUTIONS: "uniform" on [0, 1), or "logit_normal", t = sigmoid(n) with
      n ~ N(mean, std^2) (SD3, arXiv 2403.03206: more weight on the middle times; its median is sigmoid(mean)).
    mean, std: of the logit-normal's normal; std > 0. Unused by "uniform".

  Returns:
    t: float32 [batch_size], in [0, 1).
  """
  if distribution == "uniform":
    return jax.random.uniform(key, (batch_size,), jnp.float32)
  if distribution == "logit_normal":
    if not std > 0:
      raise ValueError(f"std must be > 0, got {std!r}")
    return jax.nn.sigmoid(mean + std * jax.random.normal(key, (batch_size,), jnp.float32))
  raise ValueError(f"distribution must be one of {TIMESTEP_DISTRIBUTIONS}, got {distribution!r}")


def self_conditioned(denoise_fn: SelfCondDenoiseFn, schedule: Schedule, use: Array,
                     prediction: str = "v") -> DenoiseFn:
  """Training-time self-conditioning (arXiv 2208.04202, used by W.A.L.T): (z_t, t, x_prev) -> pred becomes
  (z_t, t) -> pred.

  A first pass sees no estimate (x_prev = 0) and its x-prediction, with the gradient stopped, is the estimate the
  second pass sees on the examples where `use` is True (zeros elsewhere, so the model also learns the first pass);
  the second pass's prediction is returned. At sampling time `sample(..., self_condition=True)` feeds the previous
  step's x-prediction instead. The first pass runs on every example, so the step costs one extra forward pass.

  Args:
    denoise_fn: (z_t [B, ...], t [B], x_prev [B, ...]) -> prediction [B, ...].
    schedule: the noise schedule (to turn the first pass's prediction into x).
    use: bool [B], drawn per example with the self-conditioning probability.
    prediction: one of PREDICTIONS, what denoise_fn outputs.

  Returns:
    (z_t, t) -> prediction, for `denoising_loss`.
  """
  _check_prediction(prediction)

  def denoise(z_t: Array, t: Array) -> Array:
    alpha, sigma = schedule.alpha_sigma(t)
    first = denoise_fn(z_t, t, jnp.zeros_like(z_t))
    estimate = jax.lax.stop_gradient(x_from_prediction(z_t, first.astype(z_t.dtype), alpha, sigma, prediction))
    return denoise_fn(z_t, t, jnp.where(broadcast_per_example(use, z_t), estimate, 0.0).astype(z_t.dtype))

  return denoise


def denoising_loss(
    denoise_fn: DenoiseFn,
    x: Array,
    key: Array,
    schedule: Schedule,
    *,
    prediction: str = "v",
    weighting: str = "v_mse",
    gamma: float = 5.0,
    mask: Array | None = None,
    t: Array | None = None,
    eps: Array | None = None,
) -> Array:
  """Per-example weighted prediction loss (v-prediction or rectified flow).

  Draws t ~ U[0, 1) per example (unless given; `vidgen.diffusion.Objective.loss` passes its own distribution's t) and
  eps ~ N(0, I), forms z_t = alpha_t x + sigma_t eps, and returns weight(t) * mean((target - denoise_fn(z_t, t))^2)
  over the non-batch axes, target = `prediction_target(x, eps, alpha, sigma, prediction)`. The trainer averages over
  the batch itself, which keeps this usable under any batch sharding.

  Args:
    denoise_fn: (z_t [B, ...], t float32 [B]) -> prediction [B, ...]; close over params and conditioning.
    x: clean data (e.g. normalized latents) [B, ...].
    key: PRNG key; split for t and eps.
    schedule: the noise schedule.
    prediction: one of PREDICTIONS: "v" (v = alpha eps - sigma x) or "flow" (u = eps - x).
    weighting: one of WEIGHTINGS: "v_mse" (the plain MSE of the prediction) or "min_snr" (min(SNR, gamma) /
      (SNR + 1), for prediction "v" only: it is the v-MSE weight that equals Min-SNR-gamma on x).
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
  _check_prediction(prediction)
  if weighting not in WEIGHTINGS:
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
  if weighting == "min_snr" and prediction != "v":
    raise ValueError(f"weighting='min_snr' is a weight for the v-MSE; prediction={prediction!r} needs 'v_mse'")
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
  target = prediction_target(x, eps, alpha, sigma, prediction)
  pred = denoise_fn(z_t, t)
  # The error is formed in float32 even when the model runs in bfloat16: it is a small difference of O(1) numbers.
  err = jnp.square(target.astype(jnp.float32) - pred.astype(jnp.float32))
  axes = tuple(range(1, x.ndim))
  if mask is None:
    per_example = jnp.mean(err, axis=axes)
  else:
    m = jnp.broadcast_to(broadcast_per_example(jnp.asarray(mask, jnp.float32), err), err.shape)
    total = jnp.sum(m, axis=axes)
    per_example = jnp.sum(m * err, axis=axes) / jnp.maximum(total, 1e-12)
  return loss_weight(schedule.logsnr(t), weighting, gamma) * per_example
