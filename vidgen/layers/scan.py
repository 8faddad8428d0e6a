"""Identical blocks stacked on a leading "layers" axis and run over depth with `lax.scan` (or an unrolled loop).

Scanning keeps compile time flat in depth: XLA compiles one block body, not `depth` copies. `remat` rematerialises
the body in the backward pass with a named `jax.checkpoint` policy, trading recomputation for activation memory.
"""

from __future__ import annotations

from typing import Callable

import jax
from flax import nnx

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


def stacked(make: Callable[[nnx.Rngs], nnx.Module], depth: int, rngs: nnx.Rngs) -> nnx.Module:
  """`depth` copies of `make(rngs)`, each with its own random init, parameters stacked on a leading "layers" axis."""

  @nnx.split_rngs(splits=depth)
  @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=depth, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def build(rngs: nnx.Rngs) -> nnx.Module:
    return make(rngs)

  return build(rngs)


def remat_policy(name: str):
  """A REMAT_POLICIES name (other than "none") -> the `jax.checkpoint` policy."""
  policies = {
      "full": None,  # Save nothing but the block inputs: recompute everything in the backward pass.
      "dots": jax.checkpoint_policies.checkpoint_dots,
      "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  }
  if name not in policies:
    raise ValueError(f"remat policy {name!r} is not known; allowed: {REMAT_POLICIES}")
  return policies[name]


def run_stacked(blocks: nnx.Module, x: jax.Array, *args, remat: str = "none", scan: bool = True) -> jax.Array:
  """Applies stacked `blocks` (from `stacked`) in order: `x = block_i(x, *args)` for every layer i.

  Args:
    blocks: a module whose every parameter has a leading layers axis.
    x: the carried activation (e.g. the residual stream); its shape and dtype must not change across blocks.
    *args: inputs every block receives unchanged (masks, conditioning).
    remat: one of REMAT_POLICIES.
    scan: `lax.scan` over depth (True) or an unrolled Python loop over the same weights (debugging, shallow models).
  """
  graphdef, state = nnx.split(blocks)

  def body(h, layer_state):
    return nnx.merge(graphdef, layer_state)(h, *args), None

  if remat != "none":
    # prevent_cse only matters outside scan (scan already stops CSE across iterations) and costs performance there.
    body = jax.checkpoint(body, policy=remat_policy(remat), prevent_cse=not scan)
  if scan:
    x, _ = jax.lax.scan(body, x, state)
    return x
  depth = jax.tree.leaves(state)[0].shape[0]
  for i in range(depth):
    x, _ = body(x, jax.tree.map(lambda a: a[i], state))  # noqa: B023
  return x
