"""Transformer MLP: Linear -> tanh-GELU -> Linear, with logical axis names on weights and the hidden activation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vidgen.parallel.sharding import constrain, logical


class Mlp(nnx.Module):
  """`[..., N, width]` -> `[..., N, width]` through a `hidden`-wide layer (DiT: hidden = 4 x width, tanh-GELU)."""

  def __init__(self, width: int, hidden: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    self.fc1 = nnx.Linear(
        width, hidden, dtype=dtype, param_dtype=param_dtype,
        kernel_init=logical(nnx.initializers.xavier_uniform(), "embed", "mlp"),
        bias_init=logical(nnx.initializers.zeros_init(), "mlp"), rngs=rngs)
    self.fc2 = nnx.Linear(
        hidden, width, dtype=dtype, param_dtype=param_dtype,
        kernel_init=logical(nnx.initializers.xavier_uniform(), "mlp", "embed"),
        bias_init=logical(nnx.initializers.zeros_init(), "embed"), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: `[B, N, width]` -> `[B, N, width]` in the compute dtype."""
    h = self.fc1(x.astype(self.dtype))
    h = jax.nn.gelu(h, approximate=True)
    h = constrain(h, ("act_batch", "act_len", "act_mlp"))
    return self.fc2(h)
