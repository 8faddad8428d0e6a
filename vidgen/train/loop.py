"""The training loop shared by every trainer: Mesh -> Input -> State -> Step -> Checkpoint -> Eval -> Loop.

A trainer (`vidgen.train.TRAINERS[config.trainer]`) supplies the model-specific parts: `init_state(key)`,
`state_shardings()`, `train_step(state, batch, phase)`, `phase(step)` (a hashable selecting a compiled variant),
`make_iterator(process_index, process_count)`, `host_batch(batch)`, `evaluate(state, step)`, `finalize(state)`.
Everything the run produces lands in `workdir`: config.json, metrics.jsonl, tensorboard/, checkpoints/, samples/.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from vidgen.config import ConfigError, require
from vidgen.parallel import batch_sharding, make_mesh
from vidgen.parallel.mesh import resolve_mesh_shape
from vidgen.train.checkpoint import Checkpointer, abstract_like
from vidgen.train.writers import RunWriter, log

COMMON_FIELDS = ("trainer", "seed", "total_steps", "batch_size", "log_every", "checkpoint_every", "sample_every",
                 "mesh", "sharding_rules")


def get_trainer_class(name: str):
  from vidgen.train.vae_trainer import VAETrainer  # imported here: trainers pull in their models

  trainers = {"vae": VAETrainer}
  if name not in trainers:
    raise ConfigError(f"config.trainer: unknown trainer {name!r}; allowed: {sorted(trainers)}")
  return trainers[name]


def validate_common(config: ml_collections.ConfigDict, num_devices: int | None = None) -> tuple[int, ...]:
  """Checks the fields every train config shares; returns the resolved mesh shape (data, fsdp, tensor)."""
  missing = [f for f in COMMON_FIELDS if f not in config]
  if missing:
    raise ConfigError(f"config is missing the top-level fields {missing} (every train config has {COMMON_FIELDS})")
  for field in ("total_steps", "batch_size", "log_every", "checkpoint_every", "sample_every"):
    require(isinstance(config[field], int) and config[field] >= 1, field,
            f"must be a positive integer, got {config[field]!r}")
  shape = resolve_mesh_shape(dict(config.mesh), jax.device_count() if num_devices is None else num_devices)
  data_parallel = shape[0] * shape[1]
  require(config.batch_size % data_parallel == 0, "batch_size",
          f"must be divisible by mesh data x fsdp = {shape[0]} x {shape[1]} = {data_parallel}, got {config.batch_size}")
  require(config.batch_size % jax.process_count() == 0, "batch_size",
          f"must be divisible by the number of processes ({jax.process_count()}), got {config.batch_size}")
  return shape


def _global_batch(mesh, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Per-process host arrays -> global arrays split over the batch axes of the mesh."""
  out = {}
  for k, v in batch.items():
    global_shape = (v.shape[0] * jax.process_count(), *v.shape[1:])
    out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v, global_shape)
  return out


def _check_finite(step: int, metrics: dict[str, Any]) -> None:
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    raise FloatingPointError(
        f"loss is {loss} at step {step}; stopping without saving this state (the last checkpoint is kept)")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Any:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one. Returns the final state."""
  jax.config.update("jax_threefry_partitionable", True)
  validate_common(config)
  trainer_cls = get_trainer_class(config.trainer)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  # Mesh.
  mesh = make_mesh(dict(config.mesh))
  trainer = trainer_cls(config, mesh, workdir)  # validates its own config fields before anything compiles

  # Input.
  iterator = trainer.make_iterator(jax.process_index(), jax.process_count())

  # State: built abstractly, then created (or restored) directly with its shardings.
  shardings = trainer.state_shardings()
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.get("keep_checkpoints", 3))
  abstract = abstract_like(jax.eval_shape(trainer.init_state, jax.random.key(0)), shardings)
  restored = checkpointer.restore(abstract)
  if restored is None:
    state = jax.jit(trainer.init_state, out_shardings=shardings)(jax.random.key(config.seed))
    step = 0
  else:
    state, data_state, step = restored
    iterator.set_state(data_state)
    log(f"resumed from {checkpointer.directory} at step {step}")

  # Step.
  position = iterator.get_state()
  example = trainer.host_batch(next(iterator))
  iterator.set_state(position)
  batch_shardings = {k: batch_sharding(mesh, v.ndim) for k, v in example.items()}
  train_step = jax.jit(trainer.train_step, in_shardings=(shardings, batch_shardings), out_shardings=(shardings, None),
                       static_argnums=(2,), donate_argnums=(0,))

  writer = RunWriter(workdir, total_steps=config.total_steps, start_step=step)
  config_dict = json.loads(config.to_json_best_effort())
  metrics: dict[str, Any] = {}
  compiled_phases = set()
  try:
    while step < config.total_steps:
      batch = _global_batch(mesh, trainer.host_batch(next(iterator)))
      phase = trainer.phase(step)
      state, metrics = train_step(state, batch, phase)
      step += 1
      new_variant = phase not in compiled_phases  # this step compiled: keep that time out of later steps/s
      compiled_phases.add(phase)
      is_last = step == config.total_steps
      do_eval = step % config.sample_every == 0 or is_last
      do_ckpt = step % config.checkpoint_every == 0 or is_last
      if step % config.log_every == 0 or do_eval or do_ckpt or step == 1:
        host_metrics = jax.device_get(metrics)
        _check_finite(step, host_metrics)
        if do_eval:
          host_metrics.update(trainer.evaluate(state, step))
        writer.write(step, host_metrics)
      if is_last:
        state = trainer.finalize(state)
      if do_ckpt:
        checkpointer.save(step, state, iterator.get_state(), config_dict, force=True)
      if new_variant or do_eval or do_ckpt:
        jax.block_until_ready(metrics)
        writer.reset_timer(step)  # compile / evaluation / checkpoint time is not step time
  finally:
    checkpointer.close()
    writer.close()
  return state

