"""Meshes, logical-axis rules and sharding helpers. Modules name axes; only this package knows about meshes."""

from vidgen.parallel.mesh import MESH_AXES, batch_sharding, make_mesh
from vidgen.parallel.sharding import (
    DEFAULT_RULES,
    axis_rules,
    constrain,
    logical,
    logical_specs,
    replicate,
    replicated,
    state_shardings,
    to_mesh_spec,
)

__all__ = [
    "DEFAULT_RULES",
    "MESH_AXES",
    "axis_rules",
    "batch_sharding",
    "constrain",
    "logical",
    "logical_specs",
    "make_mesh",
    "replicate",
    "replicated",
    "state_shardings",
    "to_mesh_spec",
]
