"""Dtype names that configs accept, and their resolution to jnp dtypes (the precision policy's one table).

Configs hold dtype names, not dtypes, so they stay JSON and command-line friendly. A compute dtype may be "auto":
bfloat16 on accelerators, float32 on CPU (where bfloat16 matmuls are emulated and slow). Parameters take a concrete
name; norms, softmax and losses run in float32 whatever the compute dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DTYPES = ("float32", "bfloat16", "float16")
COMPUTE_DTYPES = ("auto", *DTYPES)


def resolve_dtype(name: str) -> jnp.dtype:
  """A name from COMPUTE_DTYPES -> its jnp dtype ("auto": bfloat16 on TPU / GPU, float32 on CPU)."""
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"dtype {name!r} is not supported; allowed: {COMPUTE_DTYPES}")
  if name == "auto":
    return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
  return jnp.dtype(name)
