"""Logical axis names and their mapping to mesh axes.

Modules annotate parameters with `logical(init, "embed", "mlp")` and activations with
`constrain(x, ("act_batch", "act_len", "act_embed"))`. They never see a mesh. A run maps logical names to mesh axes with
a list of rules from its config (maxtext's `logical_axis_rules`): the first rule for a name whose mesh axes are still
unused in that array and divide the dimension wins; otherwise that dimension is replicated. Falling back to replication
(instead of failing) is deliberate: small VAE channel counts, biases and odd vocabularies must not force a different
rule set per model; the checks that matter (heads vs tensor, batch vs data x fsdp) are made on the config up front.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Logical name -> mesh axis (or tuple of axes, or None = replicated). Parameter names first, then activations.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # Parameters.
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("layers", None),
    # Activations.
    ("act_batch", ("data", "fsdp")),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_time", None),
    ("act_height", None),
    ("act_width", None),
    ("act_channels", None),
)

_ACTIVE: contextvars.ContextVar[tuple[Mesh, tuple] | None] = contextvars.ContextVar("vidgen_axis_rules", default=None)


def logical(initializer, *names: str | None):
  """Wraps a Flax initializer so the created `nnx.Param` carries logical axis names (one per dimension).

  `eager_sharding=False` keeps modules constructible without a mesh: shardings are applied by the trainer.
  """
  return nnx.with_partitioning(initializer, tuple(names), eager_sharding=False)


def _as_axes(target) -> tuple[str, ...]:
  if target is None:
    return ()
  if isinstance(target, str):
    return (target,)
  return tuple(target)


def to_mesh_spec(names: Sequence[str | None], shape: Sequence[int], rules, mesh: Mesh) -> PartitionSpec:
  """Maps one array's logical names to a PartitionSpec on `mesh` (see the module docstring for the rule order)."""
  if len(names) != len(shape):
    raise ValueError(f"logical axes {tuple(names)} do not match an array of shape {tuple(shape)}")
  used: set[str] = set()
  out = []
  for name, dim in zip(names, shape):
    chosen = None
    if name is not None:
      for rule_name, target in rules:
        if rule_name != name:
          continue
        axes = tuple(a for a in _as_axes(target) if a in mesh.shape)
        size = 1
        for a in axes:
          size *= mesh.shape[a]
        if axes and not used.intersection(axes) and dim % size == 0:
          chosen = axes[0] if len(axes) == 1 else axes
          used.update(axes)
          break
        if not axes:
          break
    out.append(chosen)
  return PartitionSpec(*out)


def logical_specs(state) -> Any:
  """Pytree (same structure as `state`'s arrays) of logical-name tuples; unannotated arrays get all-None names."""

  def names(var):
    meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
    axes = meta.get("out_sharding") or meta.get("sharding_names") or meta.get("sharding")
    ndim = len(var.get_value().shape)
    return tuple(axes) if axes else (None,) * ndim

  return jax.tree.map(names, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def state_shardings(state, rules, mesh: Mesh):
  """NamedShardings for an `nnx.State` (abstract or concrete), from its parameters' logical names."""

  def one(var):
    meta = var.get_metadata()
    axes = meta.get("out_sharding") or meta.get("sharding_names") or meta.get("sharding")
    shape = var.get_value().shape
    spec = to_mesh_spec(tuple(axes), shape, rules, mesh) if axes else PartitionSpec()
    return NamedSharding(mesh, spec)

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def replicate(mesh: Mesh, x) -> jax.Array:
  """The same host array on every process -> a global array replicated over `mesh`."""
  x = np.asarray(x)
  return jax.make_array_from_process_local_data(replicated(mesh), x, x.shape)


@contextlib.contextmanager
def axis_rules(mesh: Mesh, rules):
  """Makes `constrain` active while tracing: activations get sharding constraints on `mesh` under `rules`."""
  token = _ACTIVE.set((mesh, tuple((n, t) for n, t in rules)))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical names; a no-op outside `axis_rules` (plain single-device use of a module)."""
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  spec = to_mesh_spec(names, x.shape, rules, mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
