"""Normalization layers that never pool statistics across time (or space).

A video VAE must not normalise with statistics taken over frames: GroupNorm over T lets future frames change the
present one (breaking causality) and makes a chunked (streaming) pass differ from a whole-video pass. `ChannelRMSNorm`
normalises each pixel of each frame over its channels only, so it is causal, streamable and tileable by construction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vidgen.parallel import logical


class ChannelRMSNorm(nnx.Module):
  """RMS norm over the last (channel) axis with a learned scale; statistics in float32."""

  def __init__(self, channels: int, *, eps: float = 1e-6, param_dtype=jnp.float32, rngs: nnx.Rngs):
    del rngs  # deterministic init; kept for a uniform constructor signature
    self.eps = eps
    self.scale = nnx.Param(logical(nnx.initializers.ones, "conv_out")(jax.random.key(0), (channels,), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)
