"""LoRA (arXiv 2106.09685) as a transform of a parameter tree: `W' = W + (alpha / r) A @ B` on selected kernels.

The DiT's blocks are stacked for `lax.scan` (every block kernel has a leading "layers" axis) and its attention
projections are multi-axis (`qkv` is `[embed, 3, heads, kv]`, `out` is `[heads, kv, embed]`), so adapters are kept
beside the parameter tree rather than inside the modules: the model, its graphdef and its checkpoint layout stay
those of the base, and adapting, merging and un-merging are pure functions of pytrees.

For a kernel `W [*L, *I, *O]` (L: leading stacked axes, I: its input axes, O: its output axes) the adapter is
  lora_a  `[*L, *I, r]`   He-uniform over fan-in prod(I), as `flax.nnx.LoRA` initialises its fan-in matrix
  lora_b  `[*L, r, *O]`   zeros, so the adapted model starts exactly equal to the base
and `W' = W + scale * sum_r A[..., r] B[r, ...]`, batched over L. An adapter tree mirrors the parameter tree down to
each adapted kernel, where it holds `{"lora_a": A, "lora_b": B}` in place of the kernel.

Target groups (`TARGET_GROUPS`), by where a kernel sits in a VideoDiT's tree:
  attention  self-attention `attn/{qkv,out}` and cross-attention `cross/{q,kv,out}` projections
  mlp        `mlp/{fc1,fc2}`
  adaln      the adaLN modulation: every block's and the final layer's `ada` (and with AdaLN-LoRA the shared
             `ada_shared` and each block's `ada_down` / `ada_up`)

  targets = select_targets(nnx.split(dit, nnx.Param)[1], ("attention", "mlp"))
  adapters = init_adapters(key, targets, rank=8)
  params = apply_adapters(base_params, adapters, scale=alpha / rank)   # the adapted model's parameters
"""

from __future__ import annotations

import dataclasses
import re
import string
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

TARGET_GROUPS = ("attention", "mlp", "adaln")
ADAPTER_KEYS = ("lora_a", "lora_b")

# (group, pattern over the "/"-joined path of a parameter, number of input axes after the stacked ones). Output
# projections of attention read (heads, kv); everything else reads one axis.
_RULES = (
    ("attention", re.compile(r"(^|/)(attn|cross)/(qkv|q|kv)/kernel$"), 1),
    ("attention", re.compile(r"(^|/)(attn|cross)/out/kernel$"), 2),
    ("mlp", re.compile(r"(^|/)mlp/(fc1|fc2)/kernel$"), 1),
    ("adaln", re.compile(r"(^|/)(ada|ada_shared)/kernel$"), 1),
    ("adaln", re.compile(r"(^|/)(ada_down|ada_up)$"), 1),
)


@dataclasses.dataclass(frozen=True)
class Target:
  """An adapted kernel: its path in the parameter tree, shape, and how its axes split into
  (stacked layers, inputs, outputs)."""

  path: tuple[Any, ...]
  group: str
  shape: tuple[int, ...]
  leading: int  # stacked "layers" axes at the front
  inputs: int  # input axes after them; the remaining axes are outputs

  @property
  def in_shape(self) -> tuple[int, ...]:
    return self.shape[self.leading:self.leading + self.inputs]

  @property
  def out_shape(self) -> tuple[int, ...]:
    return self.shape[self.leading + self.inputs:]

  def adapter_shapes(self, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(lora_a shape, lora_b shape) for `rank`."""
    lead = self.shape[:self.leading]
    return (*lead, *self.in_shape, rank), (*lead, rank, *self.out_shape)


def check_groups(groups: Sequence[str]) -> tuple[str, ...]:
  """`groups` as a tuple; ValueError for an empty list, an unknown or a repeated group."""
  groups = tuple(groups)
  if not groups:
    raise ValueError(f"name at least one target group of {TARGET_GROUPS}")
  unknown = [g for g in groups if g not in TARGET_GROUPS]
  if unknown:
    raise ValueError(f"unknown target groups {unknown}; allowed: {list(TARGET_GROUPS)}")
  if len(set(groups)) != len(groups):
    raise ValueError(f"target groups repeat: {list(groups)}")
  return groups


def _path_text(path: Sequence[Any]) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def select_targets(params: nnx.State, groups: Sequence[str]) -> dict[tuple[Any, ...], Target]:
  """The kernels of `groups` in a model's parameters (an `nnx.State` from `nnx.split(model, nnx.Param)`, abstract or
  concrete), by path. Leading axes named "layers" (the scan's stacking) are the batched ones. ValueError when a group
  selects nothing."""
  groups = check_groups(groups)
  targets: dict[tuple[Any, ...], Target] = {}
  for path, var in nnx.to_flat_state(params):
    text = _path_text(path)
    for group, pattern, inputs in _RULES:
      if group in groups and pattern.search(text):
        meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
        names = tuple(meta.get("out_sharding") or meta.get("sharding_names") or ())
        shape = tuple(var.get_value().shape)
        leading = 0
        while leading < len(names) and names[leading] == "layers":
          leading += 1
        if len(shape) - leading <= inputs:
          raise ValueError(f"{text}: a kernel of shape {shape} with {leading} stacked axes has no output axis")
        targets[tuple(path)] = Target(tuple(path), group, shape, leading, inputs)
        break
  empty = [g for g in groups if not any(t.group == g for t in targets.values())]
  if empty:
    raise ValueError(f"target groups {empty} select no kernel of this model")
  return targets


def _set(tree: dict, path: Sequence[Any], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: Any, path: Sequence[Any]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def adapter_items(adapters: Any) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
  """[(kernel path, {"lora_a", "lora_b"})] of an adapter tree, in a fixed order."""
  out = []

  def walk(node, path):
    if isinstance(node, dict) and set(node) == set(ADAPTER_KEYS):
      out.append((path, node))
      return
    if not isinstance(node, dict):
      raise ValueError(f"adapter tree: {_path_text(path)} is neither a dict nor an adapter {ADAPTER_KEYS}")
    for key in sorted(node, key=str):
      walk(node[key], (*path, key))

  walk(adapters, ())
  return out


def init_adapters(key: jax.Array, targets: dict[tuple[Any, ...], Target], rank: int,
                  dtype=jnp.float32) -> dict:
  """A fresh adapter tree for `targets`: lora_a He-uniform over each kernel's fan-in (per stacked layer), lora_b 0."""
  if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
    raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
  adapters: dict = {}
  for i, target in enumerate(targets.values()):
    a_shape, b_shape = target.adapter_shapes(int(rank))
    lead, inputs = target.leading, target.inputs
    init = nnx.initializers.he_uniform(in_axis=tuple(range(lead, lead + inputs)), out_axis=-1,
                                       batch_axis=tuple(range(lead)))
    _set(adapters, target.path, {"lora_a": init(jax.random.fold_in(key, i), a_shape, dtype),
                                 "lora_b": jnp.zeros(b_shape, dtype)})
  return adapters


def abstract_adapters(targets: dict[tuple[Any, ...], Target], rank: int, dtype=jnp.float32) -> dict:
  """The adapter tree of `init_adapters` as ShapeDtypeStructs (a restore target), without creating arrays."""
  adapters: dict = {}
  for target in targets.values():
    a_shape, b_shape = target.adapter_shapes(rank)
    _set(adapters, target.path, {"lora_a": jax.ShapeDtypeStruct(a_shape, dtype),
                                 "lora_b": jax.ShapeDtypeStruct(b_shape, dtype)})
  return adapters


def _split(kernel_ndim: int, a_ndim: int, b_ndim: int) -> tuple[int, int, int]:
  """(leading, inputs, outputs) axes of a kernel from its adapter's ranks: A has L + I + 1 axes, B has L + 1 + O."""
  leading = a_ndim + b_ndim - 2 - kernel_ndim
  inputs, outputs = a_ndim - 1 - leading, b_ndim - 1 - leading
  if leading < 0 or inputs < 1 or outputs < 1:
    raise ValueError(f"an adapter with lora_a of rank {a_ndim} and lora_b of rank {b_ndim} does not fit a kernel of "
                     f"rank {kernel_ndim}")
  return leading, inputs, outputs


def delta(a: jax.Array, b: jax.Array, kernel_shape: Sequence[int]) -> jax.Array:
  """A @ B contracted over the rank, batched over the stacked axes: float32 `kernel_shape`."""
  leading, inputs, outputs = _split(len(kernel_shape), a.ndim, b.ndim)
  letters = iter(string.ascii_letters)
  lead = "".join(next(letters) for _ in range(leading))
  ins = "".join(next(letters) for _ in range(inputs))
  outs = "".join(next(letters) for _ in range(outputs))
  r = next(letters)
  d = jnp.einsum(f"{lead}{ins}{r},{lead}{r}{outs}->{lead}{ins}{outs}", a.astype(jnp.float32), b.astype(jnp.float32),
                 precision=jax.lax.Precision.HIGHEST)
  if d.shape != tuple(kernel_shape):
    raise ValueError(f"an adapter of shapes {a.shape} @ {b.shape} gives {d.shape}, not the kernel's "
                     f"{tuple(kernel_shape)}")
  return d


def apply_adapters(params: Any, adapters: Any, scale: float) -> Any:
  """`params` (nested dicts of arrays) with every adapted kernel replaced by `W + scale * A @ B` (added in float32,
  stored in W's dtype). The other leaves are the same objects; `params` is not changed."""
  out = jax.tree.map(lambda x: x, params)  # a new dict structure over the same leaves
  for path, adapter in adapter_items(adapters):
    try:
      kernel = _get(params, path)
    except (KeyError, IndexError, TypeError):
      raise ValueError(f"the adapter of {_path_text(path)} has no kernel in these parameters") from None
    d = delta(adapter["lora_a"], adapter["lora_b"], kernel.shape)
    _set(out, path, (kernel.astype(jnp.float32) + scale * d).astype(kernel.dtype))
  return out


def merge(params: Any, weighted: Iterable[tuple[Any, float]]) -> Any:
  """`params` with several adapter trees added, each with its own scale (alpha / rank x the user's weight)."""
  for adapters, scale in weighted:
    params = apply_adapters(params, adapters, scale)
  return params


def adapter_shardings(adapters: Any, kernels: Any) -> dict:
  """Shardings of an adapter tree (arrays or ShapeDtypeStructs) from its kernels: `kernels` holds, at the same paths,
  arrays or ShapeDtypeStructs with NamedShardings (e.g. the base parameters, placed). lora_a `[*L, *I, r]` takes the
  kernel's stacked and input axes' mesh axes, lora_b `[*L, r, *O]` its stacked and output axes'; the rank axis is
  replicated."""
  out: dict = {}
  for path, adapter in adapter_items(adapters):
    kernel = _get(kernels, path)
    sharding = kernel.sharding
    if not isinstance(sharding, NamedSharding):
      raise ValueError(f"{_path_text(path)}: the kernel has no NamedSharding ({sharding!r})")
    a, b = adapter["lora_a"], adapter["lora_b"]
    leading, inputs, _ = _split(len(kernel.shape), a.ndim, b.ndim)
    spec = tuple(sharding.spec) + (None,) * (len(kernel.shape) - len(sharding.spec))
    _set(out, path, {
        "lora_a": NamedSharding(sharding.mesh, PartitionSpec(*spec[:leading + inputs], None)),
        "lora_b": NamedSharding(sharding.mesh, PartitionSpec(*spec[:leading], None, *spec[leading + inputs:]))})
  return out


def count_params(tree: Any) -> int:
  """Number of scalars in a pytree of arrays (or ShapeDtypeStructs)."""
  return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))
