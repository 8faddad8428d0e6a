"""Orbax checkpoints of a run: train state, data-iterator position and config, saved together per step.

The on-disk layout is plain nested dicts of arrays (never module objects), so it survives refactors of the modules:
  workdir/checkpoints/<step>/state   train state pytree (params as pure dicts)
  workdir/checkpoints/<step>/data    the input iterator's JSON state
  workdir/checkpoints/<step>/config  the run's config as JSON
Orbax writes each step to a temporary directory and renames it when complete, so a crash mid-save never damages the
last good checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """A CheckpointManager for one workdir (all processes must create it and call save/restore together)."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, asynchronous: bool = True):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=asynchronous,
                                             create=True),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, config: dict, *, force: bool = False) -> bool:
    return self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                                config=ocp.args.JsonSave(config)),
        force=force,
    )

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int] | None:
    """Restores (state, data_state, step) into the shardings of `abstract_state` (ShapeDtypeStructs), or None."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    out = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return out["state"], out["data"], step

  def restore_state_only(self, abstract_state: Any, step: int | None = None) -> Any:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no checkpoint found")
    out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    return out["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree: Any, shardings: Any = None) -> Any:
  """ShapeDtypeStructs (with shardings, if given) mirroring `tree`: the target structure for a restore."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
