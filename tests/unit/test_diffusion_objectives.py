"""v-prediction conversions, the v/x loss identity, Min-SNR weights and the per-example training loss (flow: see
test_diffusion_flow.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen import diffusion

SCHEDULE = diffusion.LinearBetaSchedule(zero_terminal_snr=True)
SHAPE = (4, 3, 2, 5)  # [B, T, H, C]-like.


def _draws(seed=0):
  kx, ke, kv = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, SHAPE)
  eps = jax.random.normal(ke, SHAPE)
  v_hat = jax.random.normal(kv, SHAPE)
  t = jnp.array([0.02, 0.3, 0.7, 0.98])
  alpha, sigma = SCHEDULE.alpha_sigma(t)
  return x, eps, v_hat, t, alpha, sigma


def test_conversions_round_trip():
  x, eps, _, _, alpha, sigma = _draws()
  z = diffusion.add_noise(x, eps, alpha, sigma)
  np.testing.assert_allclose(z, alpha[:, None, None, None] * x + sigma[:, None, None, None] * eps, atol=1e-6)
  v = diffusion.v_from_x_eps(x, eps, alpha, sigma)
  np.testing.assert_allclose(diffusion.x_from_v(z, v, alpha, sigma), x, atol=1e-5)
  np.testing.assert_allclose(diffusion.eps_from_v(z, v, alpha, sigma), eps, atol=1e-5)
  np.testing.assert_allclose(diffusion.v_from_x(z, x, alpha, sigma), v, atol=1e-4)
  np.testing.assert_allclose(diffusion.v_from_eps(z, eps, alpha, sigma), v, atol=1e-4)
  np.testing.assert_allclose(diffusion.x_from_eps(z, eps, alpha, sigma), x, atol=1e-4)
  np.testing.assert_allclose(diffusion.eps_from_x(z, x, alpha, sigma), eps, atol=1e-4)
  # Scalars broadcast too.
  np.testing.assert_allclose(diffusion.x_from_v(z[0], v[0], alpha[0], sigma[0]), x[0], atol=1e-5)


def test_denoising_loss_is_snr_weighted_x_loss():
  """||v - v_hat||^2 = (1 + SNR) ||x - x_hat||^2 (and = (1 + 1/SNR) ||eps - eps_hat||^2)."""
  x, eps, v_hat, t, alpha, sigma = _draws(1)
  z = diffusion.add_noise(x, eps, alpha, sigma)
  v = diffusion.v_from_x_eps(x, eps, alpha, sigma)
  x_hat = diffusion.x_from_v(z, v_hat, alpha, sigma)
  eps_hat = diffusion.eps_from_v(z, v_hat, alpha, sigma)
  snr = jnp.exp(SCHEDULE.logsnr(t))
  sq = lambda a: jnp.sum(jnp.square(a), axis=(1, 2, 3))
  np.testing.assert_allclose(sq(v - v_hat), (1 + snr) * sq(x - x_hat), rtol=1e-4)
  np.testing.assert_allclose(sq(v - v_hat), (1 + 1 / snr) * sq(eps - eps_hat), rtol=1e-4)


def test_min_snr_weight():
  logsnr = jnp.linspace(-12.0, 12.0, 49)
  snr = np.exp(np.asarray(logsnr, np.float64))
  for gamma in (1.0, 5.0):
    np.testing.assert_allclose(diffusion.min_snr_weight(logsnr, gamma), np.minimum(snr, gamma) / (snr + 1), rtol=1e-5)
  # Default gamma = 5; peak gamma / (gamma + 1) at SNR = gamma; finite, zero, at SNR = 0 and SNR = inf.
  np.testing.assert_allclose(diffusion.min_snr_weight(jnp.log(5.0)), 5 / 6, rtol=1e-6)
  np.testing.assert_array_equal(diffusion.min_snr_weight(jnp.array([-jnp.inf, jnp.inf])), [0.0, 0.0])
  np.testing.assert_array_equal(diffusion.loss_weight(logsnr, "v_mse"), np.ones(49))
  np.testing.assert_allclose(diffusion.loss_weight(logsnr, "min_snr", 5.0), diffusion.min_snr_weight(logsnr, 5.0))
  with pytest.raises(ValueError, match="weighting must be one of"):
    diffusion.loss_weight(logsnr, "p2")


def _oracle(x_star, schedule=SCHEDULE, offset=0.0):
  """The exact v for data x* (known per example), plus a constant error `offset`."""

  def denoise_fn(z, t):
    alpha, sigma = schedule.alpha_sigma(t)
    return diffusion.v_from_x(z, x_star, alpha, sigma) + offset

  return denoise_fn


def test_denoising_loss_exact_denoiser_and_weights():
  x = jax.random.normal(jax.random.key(2), SHAPE)
  key = jax.random.key(3)
  t = jnp.array([0.05, 0.3, 0.6, 1.0])  # Includes t = 1 (alpha = 0) of the zero-terminal-SNR schedule.
  loss = diffusion.denoising_loss(_oracle(x), x, key, SCHEDULE, t=t)
  assert loss.shape == (4,) and loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, 0.0, atol=1e-8)
  # A constant error c gives c^2, times the weighting.
  loss = diffusion.denoising_loss(_oracle(x, offset=0.5), x, key, SCHEDULE, t=t)
  np.testing.assert_allclose(loss, 0.25, rtol=1e-4)
  loss = diffusion.denoising_loss(_oracle(x, offset=0.5), x, key, SCHEDULE, t=t, weighting="min_snr", gamma=5.0)
  np.testing.assert_allclose(loss, 0.25 * diffusion.min_snr_weight(SCHEDULE.logsnr(t), 5.0), rtol=1e-4)
  # Sampled t: uniform in [0, 1), one per example, and deterministic given the key.
  a = diffusion.denoising_loss(_oracle(x, offset=0.5), x, key, SCHEDULE, weighting="min_snr")
  b = diffusion.denoising_loss(_oracle(x, offset=0.5), x, key, SCHEDULE, weighting="min_snr")
  np.testing.assert_array_equal(a, b)
  assert np.all(np.asarray(a) <= 0.25 * 5 / 6 + 1e-6)
  t = diffusion.sample_t(jax.random.key(4), 1000)
  assert t.shape == (1000,) and float(t.min()) >= 0.0 and float(t.max()) < 1.0 and 0.45 < float(t.mean()) < 0.55


def test_denoising_loss_mask():
  """Masked-out elements (e.g. conditioning frames) do not count, and the loss is a mean over the kept ones."""
  x = jax.random.normal(jax.random.key(5), SHAPE)
  frame_mask = jnp.array([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])  # [B, T].
  # Error 3 on masked-out frames, 1 on kept ones.
  offset = 1.0 + 2.0 * (1.0 - frame_mask)[:, :, None, None]
  t = jnp.full((4,), 0.5)
  for mask in (frame_mask, frame_mask[:, :, None, None], jnp.broadcast_to(frame_mask[:, :, None, None], SHAPE)):
    loss = diffusion.denoising_loss(_oracle(x, offset=offset), x, jax.random.key(6), SCHEDULE, t=t, mask=mask)
    np.testing.assert_allclose(loss, [1.0, 1.0, 1.0, 0.0], rtol=1e-5)  # All-masked example: 0, not NaN.


def test_denoising_loss_trains_under_jit():
  """The loss is differentiable and jittable with a tiny linear denoiser; one SGD step lowers it."""
  x = jax.random.normal(jax.random.key(7), SHAPE)

  def loss_fn(w, key):
    denoise_fn = lambda z, t: w[0] * z + w[1] * t[:, None, None, None]
    return jnp.mean(diffusion.denoising_loss(denoise_fn, x, key, SCHEDULE, weighting="min_snr"))

  w = jnp.zeros(2)
  key = jax.random.key(8)
  loss, grad = jax.jit(jax.value_and_grad(loss_fn))(w, key)
  assert np.all(np.isfinite(grad))
  assert float(jax.jit(loss_fn)(w - 0.5 * grad, key)) < float(loss)


def test_denoising_loss_validation():
  x = jnp.zeros(SHAPE)
  with pytest.raises(ValueError, match="weighting must be one of"):
    diffusion.denoising_loss(_oracle(x), x, jax.random.key(0), SCHEDULE, weighting="snr")
  with pytest.raises(ValueError, match="t must have shape"):
    diffusion.denoising_loss(_oracle(x), x, jax.random.key(0), SCHEDULE, t=jnp.zeros((3,)))


def test_self_conditioned_feeds_the_stopped_first_estimate():
  """Training-time self-conditioning: the second pass sees the first pass's x-prediction where `use` is True and
  zeros elsewhere, and no gradient flows through the first pass."""
  x, _, _, t, alpha, sigma = _draws(3)
  z = x  # any z_t
  use = jnp.array([True, False, True, False])

  def model(w, u):
    return lambda z_t, t_, x_prev: w * z_t + u * x_prev

  def expected(w, u):
    first = w * z
    estimate = diffusion.x_from_v(z, first, alpha, sigma)
    return w * z + u * jnp.where(use[:, None, None, None], estimate, 0.0)

  out = diffusion.self_conditioned(model(0.3, 0.7), SCHEDULE, use)(z, t)
  np.testing.assert_allclose(out, expected(0.3, 0.7), rtol=1e-6, atol=1e-6)
  # d(sum out)/dw is sum(z) from the second pass alone; d/du is the sum of the (constant) estimates.
  grad_w, grad_u = jax.grad(lambda w, u: jnp.sum(diffusion.self_conditioned(model(w, u), SCHEDULE, use)(z, t)),
                            argnums=(0, 1))(0.3, 0.7)
  np.testing.assert_allclose(grad_w, jnp.sum(z), rtol=1e-5)
  np.testing.assert_allclose(grad_u, jnp.sum(expected(0.3, 1.0) - expected(0.3, 0.0)), rtol=1e-5)
