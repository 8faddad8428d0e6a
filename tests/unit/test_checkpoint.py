"""vidgen.checkpoint.restore_fields: reading some fields of a saved train state, verified against its fingerprint."""

import json
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen.checkpoint import CheckpointCorrupted, Checkpointer, abstract_like, restore_fields


@flax.struct.dataclass
class _State:
  step: Any
  params: Any
  ema_params: Any
  opt_state: Any


def _save(directory, step=3):
  state = _State(step=jnp.int32(step), params={"dit": {"w": jnp.arange(12.0).reshape(3, 4)}},
                 ema_params={"dit": {"w": jnp.full((3, 4), 0.5)}, "text": {"b": jnp.ones(5)}},
                 opt_state=({"mu": jnp.zeros(7)},))
  checkpointer = Checkpointer(directory)
  checkpointer.save(step, state, {"next": 1}, {"seed": 0}, force=True)
  checkpointer.close()
  return state


def test_restores_only_the_named_fields_and_verifies_them(tmp_path):
  directory = str(tmp_path / "checkpoints")
  state = _save(directory)
  abstract = {"ema_params": abstract_like(state.ema_params)}
  restored, step = restore_fields(directory, abstract)
  assert step == 3 and list(restored) == ["ema_params"]
  jax.tree.map(np.testing.assert_array_equal, restored["ema_params"], state.ema_params)

  # The saved fingerprint of one restored array no longer matches: the restore refuses instead of returning it.
  path = os.path.join(directory, "3", "loop", "metadata")  # orbax's JSON item
  with open(path) as f:
    item = json.load(f)
  item["fingerprint"][".ema_params['text']['b']"] ^= 1
  with open(path, "w") as f:
    json.dump(item, f)
  with pytest.raises(CheckpointCorrupted, match=r"fingerprint mismatch in \[\"\.ema_params\['text'\]\['b'\]\"\]"):
    restore_fields(directory, abstract)
  # A field whose arrays were not touched still restores.
  restored, _ = restore_fields(directory, {"params": abstract_like(state.params)})
  jax.tree.map(np.testing.assert_array_equal, restored["params"], state.params)


def test_no_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint found"):
    restore_fields(str(tmp_path / "none"), {"params": {}})
