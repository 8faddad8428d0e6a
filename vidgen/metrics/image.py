"""Reconstruction metrics on videos or images in [-1, 1] (or any range given by `data_range`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def psnr(x: jax.Array, y: jax.Array, *, data_range: float = 2.0, eps: float = 1e-10) -> jax.Array:
  """Peak signal-to-noise ratio per example, in dB: x, y [B, ...] -> [B]. data_range 2 for [-1, 1] inputs."""
  mse = jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=tuple(range(1, x.ndim)))
  return 10.0 * jnp.log10(data_range ** 2 / (mse + eps))


def ssim(x: jax.Array, y: jax.Array, *, data_range: float = 2.0, window: int = 7) -> jax.Array:
  """Structural similarity per example (uniform window, the usual constants K1=0.01, K2=0.03): [B, ..., H, W, C] -> [B].

  Frames are compared independently (leading axes after batch are folded into the frame axis), channels averaged.
  """
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  batch = x.shape[0]
  h, w, c = x.shape[-3:]
  x = x.reshape(-1, h, w, c)
  y = y.reshape(-1, h, w, c)
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

  def blur(a):
    return jax.lax.reduce_window(a, 0.0, jax.lax.add, (1, window, window, 1), (1, 1, 1, 1), "VALID") / window ** 2

  mx, my = blur(x), blur(y)
  sxx = blur(x * x) - mx * mx
  syy = blur(y * y) - my * my
  sxy = blur(x * y) - mx * my
  s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
  return jnp.mean(s.reshape(batch, -1), axis=1)
