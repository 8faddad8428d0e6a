"""The device mesh, built from `config.mesh` (axis name -> size, -1 = the remaining devices)."""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from vidgen.config import ConfigError

# Order matters: the data axis is outermost (slowest-varying devices, i.e. across hosts / DCN), tensor innermost so
# tensor-parallel collectives stay on the fastest links.
MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Sizes for MESH_AXES; exactly one axis may be -1 and takes the devices the others leave."""
  unknown = set(mesh_config) - set(MESH_AXES)
  if unknown:
    raise ConfigError(f"config.mesh: unknown axes {sorted(unknown)}; allowed axes are {list(MESH_AXES)}")
  sizes = [int(mesh_config.get(a, 1)) for a in MESH_AXES]
  free = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
  if len(free) > 1:
    raise ConfigError(f"config.mesh: only one axis may be -1, got {free}")
  for a, s in zip(MESH_AXES, sizes):
    if s == 0 or s < -1:
      raise ConfigError(f"config.mesh.{a}: size must be a positive integer or -1, got {s}")
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if free:
    if num_devices % fixed:
      raise ConfigError(
          f"config.mesh: the fixed axes use {fixed} devices, which does not divide the {num_devices} available")
    sizes[MESH_AXES.index(free[0])] = num_devices // fixed
  elif fixed != num_devices:
    raise ConfigError(
        f"config.mesh: {dict(zip(MESH_AXES, sizes))} needs {fixed} devices but {num_devices} are available "
        "(set one axis to -1 to use the rest)")
  return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) dimension split over data x fsdp; the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))
