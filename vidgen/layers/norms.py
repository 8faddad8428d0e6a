"""Normalization layers: RMS norm over features, and a GroupNorm that never pools statistics across time.

`RMSNorm` (no mean subtraction, no bias) is T5's layer norm and the DiT's qk-norm. A video VAE must not normalise with
statistics taken over frames: GroupNorm over T lets future frames change the present one (breaking causality) and
makes a chunked (streaming) pass differ from a whole-video pass. `FrameGroupNorm` takes its statistics per frame, over
height, width and a group of channels, so it is causal and streamable.

`make_norm("none" | "group", channels)` picks the VAE's norm: the shapes configs use "none" (on mostly black frames
per-frame statistics normalise poorly; see docs/results.md); GroupNorm is the usual choice for natural video.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from vidgen.parallel import logical


class RMSNorm(nnx.Module):
  """`x / rms(x) * scale` over the last axis, statistics in float32; the output keeps the input's dtype.

  `axis_name` is the logical axis of the scale: "embed" over the model width, "kv" over a head dim (qk-norm).
  """

  def __init__(self, dim: int, *, eps: float = 1e-6, param_dtype=jnp.float32, axis_name: str | None = "embed"):
    self.eps = eps
    self.scale = nnx.Param(logical(nnx.initializers.ones_init(), axis_name)(None, (dim,), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


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


class Identity(nnx.Module):
  """The "none" norm."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return x


NORMS = ("none", "group")


def make_norm(kind: str, channels: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.Module:
  if kind == "group":
    return FrameGroupNorm(channels, param_dtype=param_dtype, rngs=rngs)
  if kind == "none":
    return Identity()
  raise ValueError(f"unknown norm {kind!r}; allowed: {NORMS}")
