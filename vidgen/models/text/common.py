"""Pieces every text encoder shares: input checks, the float32 LayerNorm, dense layers, Hugging Face activations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen.parallel.sharding import logical

RESIDUAL = ("act_batch", "act_len", "act_embed")  # Logical axes of the residual stream [B, L, D].


def check_ids(ids: jax.Array, mask: jax.Array | None, vocab_size: int, max_length: int) -> None:
  """Static checks of encoder inputs; value checks only when the ids are concrete (not traced under jit)."""
  if ids.ndim != 2:
    raise ValueError(f"ids must be [B, L] token ids; got shape {ids.shape}")
  if ids.shape[1] > max_length:
    raise ValueError(f"ids have length L={ids.shape[1]}; the encoder takes at most max_length={max_length} tokens")
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"ids must be integers, got dtype {ids.dtype}")
  if mask is not None and tuple(mask.shape) != tuple(ids.shape):
    raise ValueError(f"mask must have the shape of ids {tuple(ids.shape)}; got {tuple(mask.shape)}")
  if not isinstance(ids, jax.core.Tracer) and ids.size:
    lo, hi = int(np.min(ids)), int(np.max(ids))
    if lo < 0 or hi >= vocab_size:
      bad = lo if lo < 0 else hi
      raise ValueError(f"token id {bad} is out of range; allowed: 0 to vocab_size - 1 = {vocab_size - 1}")


def layer_norm(width: int, eps: float, param_dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """An affine LayerNorm over `width` whose statistics are float32 whatever the compute dtype."""
  return nnx.LayerNorm(width, epsilon=eps, dtype=jnp.float32, param_dtype=param_dtype,
                       scale_init=logical(nnx.initializers.ones_init(), "embed"),
                       bias_init=logical(nnx.initializers.zeros_init(), "embed"), rngs=rngs)


def _quick_gelu(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(1.702 * x)


# Hugging Face activation names -> functions. "gelu" is the exact (erf) GELU; "gelu_new" / "gelu_pytorch_tanh" /
# "gelu_fast" are all the tanh approximation.
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": _quick_gelu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def check_activation(name: str, field: str) -> str:
  """`name` if ACTIVATIONS has it; otherwise ValueError naming the config.json `field`."""
  if name not in ACTIVATIONS:
    raise ValueError(f"config.json field {field!r} names activation {name!r}, which is not supported; allowed: "
                     f"{sorted(ACTIVATIONS)}")
  return name


def dense(in_dims, out_dims, names, *, bias: bool, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.LinearGeneral:
  """A LinearGeneral from `in_dims` to `out_dims` whose kernel carries the logical axis `names` (input dims first)."""
  in_dims = (in_dims,) if isinstance(in_dims, int) else tuple(in_dims)
  out_dims = (out_dims,) if isinstance(out_dims, int) else tuple(out_dims)
  axis = tuple(range(-len(in_dims), 0))
  return nnx.LinearGeneral(
      in_dims, out_dims, axis=axis, use_bias=bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=logical(nnx.initializers.lecun_normal(), *names),
      bias_init=logical(nnx.initializers.zeros_init(), *names[len(in_dims):]), rngs=rngs)
