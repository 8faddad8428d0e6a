"""Orbax checkpoints of a run: train state, data-iterator position and config, saved together per step.

The on-disk layout is plain nested dicts of arrays (never module objects), so it survives refactors of the modules:
  workdir/checkpoints/<step>/state   train state pytree (params as pure dicts)
  workdir/checkpoints/<step>/data    the input iterator's JSON state
  workdir/checkpoints/<step>/config  the run's config as JSON
  workdir/checkpoints/<step>/loop    JSON: a fingerprint of every state array, and the loop's counters
Orbax writes each step to a temporary directory and renames it when complete, so a crash mid-save never damages the
last good checkpoint. What renaming cannot catch (a file truncated or bit-flipped later, a copy that stopped half way,
a store without atomic renames) the restore does: an unreadable step, or one whose arrays no longer match the
fingerprint taken when it was saved, is moved aside to `checkpoints_unusable/` and the previous step is tried.
A state with NaN/Inf values is never saved, so the last checkpoint always holds finite numbers.
"""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from vidgen.parallel.distributed import any_process

# Saved in the "loop" item; bump it when the meaning of that item changes.
LOOP_FORMAT = 1


class Restored(NamedTuple):
  state: Any
  data: dict  # the input iterator's state
  loop: dict  # the loop's counters saved with the step (empty for checkpoints written before the item existed)
  step: int


class CheckpointCorrupted(RuntimeError):
  """A checkpoint step exists but cannot be trusted: unreadable, incomplete, or different from what was saved."""


class Checkpointer:
  """A CheckpointManager for one workdir (all processes must create it and call save/restore together)."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, asynchronous: bool = True, cleanup_tmp: bool = False):
    """`cleanup_tmp`: delete the temporary directories of saves cut off by a kill. Only the training run that owns the
    directory may do this; a reader (sampling from a run in progress) would delete the save being written."""
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=asynchronous,
                                             create=True, cleanup_tmp_directories=cleanup_tmp),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  @staticmethod
  def latest_step_in(directory: str) -> int | None:
    """The newest finished step in `directory`, read without opening a manager (orbax names finished steps by their
    number; saves in progress carry a temporary suffix). None when there is none."""
    if not os.path.isdir(directory):
      return None
    steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
    return max(steps) if steps else None

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, config: dict, *, loop: dict | None = None,
           force: bool = False) -> bool:
    """Saves asynchronously (the arrays are copied first, so `state` may be donated right after).

    Raises FloatingPointError, saving nothing, if any floating-point array of `state` holds NaN/Inf: a checkpoint is a
    promise that resuming from it works. `loop` adds JSON counters of the caller (restored as `Restored.loop`).
    """
    fingerprint, finite = state_fingerprint(state)
    if not finite:
      bad = [name for name, ok in finite_leaves(state).items() if not ok]
      raise FloatingPointError(
          f"the state at step {step} has NaN/Inf values in {bad[:5]}{' ...' if len(bad) > 5 else ''}; not saving it "
          f"(the last checkpoint, step {self.latest_step()}, is kept)")
    loop_item = {"format": LOOP_FORMAT, **(loop or {}), "fingerprint": fingerprint}
    return self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                                config=ocp.args.JsonSave(config), loop=ocp.args.JsonSave(loop_item)),
        force=force,
    )

  def _has_item(self, step: int, item: str) -> bool:
    return (epath.Path(self.directory) / str(step) / item).exists()

  def _restore_verified(self, abstract_state: Any, step: int, *, with_data: bool) -> Restored:
    """One step, checked against its saved fingerprint; raises CheckpointCorrupted (naming the reason) otherwise."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if with_data:
      items["data"] = ocp.args.JsonRestore()
    has_loop = self._has_item(step, "loop")
    if has_loop:
      items["loop"] = ocp.args.JsonRestore()
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax / tensorstore raise many types for missing and truncated files
      raise CheckpointCorrupted(f"unreadable: {_first_line(e)}") from e
    loop = dict(out["loop"]) if has_loop else {}
    if has_loop:
      saved = loop.pop("fingerprint", None)
      if not isinstance(saved, dict):
        raise CheckpointCorrupted("its loop item has no fingerprint")
      restored, _ = state_fingerprint(out["state"])
      changed = sorted(k for k in saved.keys() | restored.keys() if saved.get(k) != restored.get(k))
      if changed:
        raise CheckpointCorrupted(
            f"{len(changed)} arrays differ from what was saved (fingerprint mismatch in {changed[:3]}"
            f"{' ...' if len(changed) > 3 else ''})")
    return Restored(out["state"], dict(out["data"]) if with_data else {}, loop, step)

  def restore_latest_good(self, abstract_state: Any, log=print) -> Restored | None:
    """The newest step that restores and verifies, into the shardings of `abstract_state`; None if there are none.

    Each unusable step is reported through `log` (step and reason) and moved to `<directory>_unusable/` so that the
    run can save that step number again. Every process takes the same decision (any failure counts for all).
    Raises CheckpointCorrupted if steps exist but none is usable: starting over silently would discard the run.
    """
    steps = self.all_steps()
    failures = []
    for step in reversed(steps):
      reason = None
      try:
        restored = self._restore_verified(abstract_state, step, with_data=True)
      except CheckpointCorrupted as e:
        reason, restored = str(e), None
      if not any_process(reason is not None):
        return restored
      reason = reason or "unreadable on another process"
      failures.append((step, reason))
      older = [s for s in steps if s < step]
      log(f"checkpoint step {step} in {self.directory} is unusable ({reason}); moved aside, "
          + (f"falling back to step {older[-1]}" if older else "no older checkpoint left"))
      self._quarantine(step)
    if failures:
      raise CheckpointCorrupted(
          f"{self.directory}: no usable checkpoint ({'; '.join(f'step {s}: {r}' for s, r in failures)}); the broken "
          f"steps were moved to {self.directory}_unusable/. Restart from scratch with a new --workdir, or restore a "
          "copy of the checkpoints")
    return None

  def _quarantine(self, step: int) -> None:
    if jax.process_index() == 0:
      target = epath.Path(self.directory + "_unusable")
      target.mkdir(parents=True, exist_ok=True)
      (epath.Path(self.directory) / str(step)).rename(target / f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"vidgen_checkpoint_quarantine_{step}")
    self.manager.reload()

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int] | None:
    """Restores (state, data_state, step) into the shardings of `abstract_state` (ShapeDtypeStructs), or None.

    The arrays are verified against the fingerprint saved with them; a mismatch raises CheckpointCorrupted.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    restored = self._restore_verified(abstract_state, step, with_data=True)
    return restored.state, restored.data, step

  def restore_state_only(self, abstract_state: Any, step: int | None = None) -> Any:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no checkpoint found")
    return self._restore_verified(abstract_state, step, with_data=False).state

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


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  line = text[0] if text else ""
  return f"{type(error).__name__}: {line[:300]}"


def _as_words(x: jax.Array) -> jax.Array:
  """The bits of `x` as uint32 words (one per element for <= 32-bit types), for exact integer hashing."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  bits = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}.get(x.dtype.itemsize)
  if bits is None:  # 64-bit types (only with jax_enable_x64): two words per element
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  return jax.lax.bitcast_convert_type(x, bits).astype(jnp.uint32)


@jax.jit
def _fingerprints(leaves: list[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
  # A position-weighted sum of the bit patterns modulo 2**32: odd weights make every single-element change visible,
  # and integer addition is associative, so the value is identical for any sharding or mesh (elastic restores).
  sums, finite = [], []
  for x in leaves:
    words = _as_words(x).reshape(-1)
    weights = (jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2654435761)) | jnp.uint32(1)
    sums.append(jnp.sum(words * weights, dtype=jnp.uint32))
    finite.append(jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True))
  return sums, finite


def _named_leaves(tree: Any) -> tuple[list[str], list[jax.Array]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [jax.tree_util.keystr(path) for path, _ in flat], [leaf for _, leaf in flat]


def state_fingerprint(tree: Any) -> tuple[dict[str, int], bool]:
  """({leaf path: uint32 fingerprint}, whether every floating-point leaf is finite), computed on device.

  The same on every process and for any sharding of the same values, so it checks elastic restores bit for bit.
  """
  names, leaves = _named_leaves(tree)
  sums, finite = jax.device_get(_fingerprints(leaves))
  return {n: int(s) for n, s in zip(names, sums)}, bool(np.all(finite))


def finite_leaves(tree: Any) -> dict[str, bool]:
  names, leaves = _named_leaves(tree)
  return {n: bool(f) for n, f in zip(names, jax.device_get(_fingerprints(leaves))[1])}


def restore_fields(directory: str, abstract: dict[str, Any], step: int | None = None) -> tuple[dict[str, Any], int]:
  """Some top-level fields of a saved train state (e.g. {"ema_params": ...}), verified, without reading the others.

  `abstract` maps field names of the saved state to ShapeDtypeStruct trees (with the shardings to restore into). Returns
  (restored fields, step); `step` defaults to the newest. Raises CheckpointCorrupted when the arrays differ from what
  was saved, FileNotFoundError when there is no checkpoint. Inference reads weights this way: optimizer moments are
  never loaded.
  """
  step = Checkpointer.latest_step_in(directory) if step is None else step
  if step is None:
    raise FileNotFoundError(f"{directory}: no checkpoint found")
  restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), abstract)
  manager = ocp.CheckpointManager(os.path.abspath(directory))
  try:
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args, partial_restore=True),
        loop=ocp.args.JsonRestore()))
  except Exception as e:  # orbax / tensorstore raise many types for missing and truncated files
    raise CheckpointCorrupted(f"{directory} step {step} is unreadable: {_first_line(e)}") from e
  finally:
    manager.close()
  saved = out["loop"].get("fingerprint", {})
  # The saved state is a dataclass (paths ".field[...]"); the restored subset is a dict (paths "['field'][...]").
  restored = {"." + name[2:].replace("']", "", 1): value
              for name, value in state_fingerprint(out["state"])[0].items()}
  changed = sorted(k for k, v in restored.items() if saved.get(k) != v)
  if changed:
    raise CheckpointCorrupted(f"{directory} step {step}: {len(changed)} arrays differ from what was saved "
                              f"(fingerprint mismatch in {changed[:3]}{' ...' if len(changed) > 3 else ''})")
  return dict(out["state"]), step
