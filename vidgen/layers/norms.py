"""Normalization that never pools statistics across time.

A video VAE must not normalise with statistics taken over frames: GroupNorm over T lets future frames change the
present one (breaking causality) and makes a chunked (streaming) pass differ from a whole-video pass. `FrameGroupNorm`
takes its statistics per frame, over height, width and a group of channels, so it is causal and streamable.
(A per-pixel RMS norm over channels, which would also allow spatial tiling, trained markedly slower on the shapes
data: 17 vs 19.5 dB after 300 steps, both far behind this norm with an MSE loss.)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from vidgen.parallel import logical


class FrameGroupNorm(nnx.Module):
  """GroupNorm over [B, T, H, W, C] with per-(example, frame, group) statistics; affine; float32 statistics."""

  def __init__(self, channels: int, *, groups: int = 8, eps: float = 1e-6, param_dtype=jnp.float32, rngs: nnx.Rngs):
    del rngs  # deterministic init; kept for a uniform constructor signature
    self.groups = math.gcd(groups, channels)
    self.eps = eps
    self.scale = nnx.Param(logical(nnx.initializers.ones, "conv_out")(jax.random.key(0), (channels,), param_dtype))
    self.bias = nnx.Param(logical(nnx.initializers.zeros, "conv_out")(jax.random.key(0), (channels,), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    *lead, h, w, c = x.shape
    x32 = x.astype(jnp.float32).reshape(*lead, h, w, self.groups, c // self.groups)
    axes = (-4, -3, -1)
    mean = jnp.mean(x32, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=axes, keepdims=True)
    y = ((x32 - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
    return (y * self.scale[...] + self.bias[...]).astype(x.dtype)
