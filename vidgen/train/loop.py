"""The training loop shared by every trainer: Input -> State -> Step -> Checkpoint -> Eval -> Loop.

`run(trainer, config, mesh, workdir)` trains one model; the model-specific parts come from a `Trainer`
(vidgen.train.trainer), and multi-stage runs are composed in `vidgen.train.stages`. Everything the run produces lands
in `workdir`: config.json, metrics.jsonl, tensorboard/, checkpoints/, samples/.

Reliability: SIGTERM stops the run at a step boundary with a checkpoint (`Preempted`, exit code 75 from the CLI); a
restart resumes from the newest checkpoint that restores and verifies, skipping corrupted ones; with
`config.skip_nonfinite_updates` a step whose loss, gradients or new state are NaN/Inf leaves the state unchanged.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vidgen.checkpoint import Checkpointer, abstract_like
from vidgen.config import ConfigError, require
from vidgen.parallel import batch_sharding, replicated
from vidgen.parallel.distributed import batch_shard
from vidgen.parallel.mesh import MESH_AXES, resolve_mesh_shape
from vidgen.train.preemption import Preempted, PreemptionWatcher
from vidgen.train.trainer import Trainer
from vidgen.train.writers import RunWriter, log, peak_tflops_per_device

COMMON_FIELDS = ("trainer", "seed", "total_steps", "batch_size", "log_every", "checkpoint_every", "sample_every",
                 "mesh", "sharding_rules")


def validate_common(config: ml_collections.ConfigDict, num_devices: int | None = None) -> tuple[int, ...]:
  """Checks the fields every train config shares; returns the resolved mesh shape (data, fsdp, tensor)."""
  missing = [f for f in COMMON_FIELDS if f not in config]
  if missing:
    raise ConfigError(f"config is missing the top-level fields {missing} (every train config has {COMMON_FIELDS})")
  for field in ("total_steps", "batch_size", "log_every", "checkpoint_every", "sample_every"):
    require(isinstance(config[field], int) and config[field] >= 1, field,
            f"must be a positive integer, got {config[field]!r}")
  shape = resolve_mesh_shape(dict(config.mesh), jax.device_count() if num_devices is None else num_devices)
  require_splittable_batch("batch_size", config.batch_size, dict(zip(MESH_AXES, shape)))
  skip = config.get("skip_nonfinite_updates", False)
  require(isinstance(skip, bool), "skip_nonfinite_updates", f"must be True or False, got {skip!r}")
  peak = config.get("peak_tflops_per_device", None)
  require(peak is None or (isinstance(peak, (int, float)) and peak > 0), "peak_tflops_per_device",
          f"must be a positive number (dense bf16 TFLOP/s of one device) or None (look it up), got {peak!r}")
  return shape


def require_splittable_batch(field: str, size: int, mesh_shape: dict[str, int]) -> None:
  """A global batch of `size` must split evenly over the mesh's batch axes (data x fsdp) and over the processes."""
  data_parallel = mesh_shape["data"] * mesh_shape["fsdp"]
  require(size % data_parallel == 0, field, f"must be divisible by mesh data x fsdp = {mesh_shape['data']} x "
                                            f"{mesh_shape['fsdp']} = {data_parallel}, got {size}")
  require(size % jax.process_count() == 0, field,
          f"must be divisible by the number of processes ({jax.process_count()}), got {size}")


def _global_batch(mesh, batch: dict[str, np.ndarray], shard_count: int) -> dict[str, jax.Array]:
  """Per-process host arrays (one of `shard_count` row blocks) -> global arrays split over the batch axes."""
  out = {}
  for k, v in batch.items():
    global_shape = (v.shape[0] * shard_count, *v.shape[1:])
    out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v, global_shape)
  return out


def _check_finite(step: int, metrics: dict[str, Any]) -> None:
  for key in ("loss", "grad_norm"):
    value = float(metrics.get(key, 0.0))
    if not np.isfinite(value):
      raise FloatingPointError(
          f"{key} is {value} at step {step}; stopping without saving this state (the last checkpoint is kept; "
          "config.skip_nonfinite_updates=True skips such steps instead)")


def _all_finite(tree) -> jax.Array:
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return functools.reduce(jnp.logical_and, [jnp.all(jnp.isfinite(x)) for x in leaves], jnp.bool_(True))


def _keep_if(ok: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
  if jax.dtypes.issubdtype(new.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(jnp.where(ok, jax.random.key_data(new), jax.random.key_data(old)),
                                    impl=jax.random.key_impl(new))
  return jnp.where(ok, new, old)


def loop_step(train_step, skip_nonfinite: bool):
  """The trainer's step with the loop's counters; with `skip_nonfinite`, non-finite updates leave the state as it was.

  Generic on purpose: every trainer gets the guard without knowing of it. A step counts as bad if its loss, its
  `grad_norm` (when the trainer reports one) or any floating-point array of the new state is NaN/Inf; a NaN gradient
  shows up in the new parameters even when the trainer does not report a norm.
  """

  def step(state, batch, counters, phase, *frozen):
    new_state, metrics = train_step(state, batch, phase, *frozen)
    if not skip_nonfinite:
      return new_state, metrics, counters
    reported = {k: metrics[k] for k in ("loss", "grad_norm") if k in metrics}
    ok = jnp.logical_and(_all_finite(reported), _all_finite(new_state))
    new_state = jax.tree.map(functools.partial(_keep_if, ok), new_state, state)
    skipped = counters["skipped_updates"] + jnp.logical_not(ok).astype(jnp.int32)
    metrics = {**metrics, "update_skipped": jnp.logical_not(ok).astype(jnp.int32), "skipped_updates": skipped}
    return new_state, metrics, {"skipped_updates": skipped}

  return step


def flops_per_step(trainer: Trainer, phase, lowered) -> float | None:
  """The trainer's count if it has one, else XLA's estimate for the whole (unpartitioned) step program."""
  count = trainer.model_flops_per_step(phase)
  if count is not None:
    return float(count)
  try:
    cost = lowered.cost_analysis()
  except Exception:  # not every backend implements cost analysis; the run goes on without the MFU fields
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  return flops if flops > 0 else None


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """workdir/config.json: the run's full config, read back by `vidgen.runs` (process 0 writes it)."""
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))


def run(trainer: Trainer, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, workdir: str) -> Any:
  """Trains `trainer` in `workdir`, resuming from its latest good checkpoint if there is one. Returns the final state.

  `config` is the validated config of this model (its common fields: steps, batch, logging, mesh). Raises
  `Preempted` (after saving a checkpoint at that step) when SIGTERM arrives; call it again to resume.
  """
  write_config(config, workdir)

  # Input: this process's block of rows of every global batch, as the batch sharding places them.
  shard_index, shard_count = batch_shard(mesh, config.batch_size)
  iterator = trainer.make_iterator(shard_index, shard_count)

  # State: built abstractly, then created (or restored, into this run's mesh) directly with its shardings.
  shardings = trainer.state_shardings()
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.get("keep_checkpoints", 3),
                              cleanup_tmp=True)
  abstract = abstract_like(jax.eval_shape(trainer.init_state, jax.random.key(0)), shardings)
  restored = checkpointer.restore_latest_good(abstract, log=log)
  skipped_updates = 0
  if restored is None:
    state = jax.jit(trainer.init_state, out_shardings=shardings)(jax.random.key(config.seed))
    step = 0
  else:
    state, step = restored.state, restored.step
    iterator.set_state(restored.data)
    skipped_updates = int(restored.loop.get("skipped_updates", 0))
    log(f"resumed from {checkpointer.directory} at step {step}")

  # Step: one executable per (phase, batch shapes), compiled ahead so that compile time stays out of step time.
  position = iterator.get_state()
  example = trainer.host_batch(next(iterator))
  iterator.set_state(position)
  batch_shardings = {k: batch_sharding(mesh, v.ndim) for k, v in example.items()}
  rep = replicated(mesh)
  skip_nonfinite = config.get("skip_nonfinite_updates", False)
  # A trainer's frozen inputs (`frozen()`: e.g. the base weights a LoRA fine-tune adapts) are arguments of every step,
  # placed once, never updated and never saved; closed over instead, XLA would embed them in the program as constants.
  frozen = (trainer.frozen(),) if hasattr(trainer, "frozen") else ()
  frozen_shardings = tuple(jax.tree.map(lambda a: a.sharding, f) for f in frozen)
  train_step = jax.jit(loop_step(trainer.train_step, skip_nonfinite),
                       in_shardings=(shardings, batch_shardings, rep, *frozen_shardings),
                       out_shardings=(shardings, None, rep), static_argnums=(3,), donate_argnums=(0,))
  counters = {"skipped_updates": jax.make_array_from_process_local_data(rep, np.int32(skipped_updates), ())}
  executables: dict[Any, tuple[Any, float | None]] = {}

  writer = RunWriter(workdir, total_steps=config.total_steps, start_step=step, num_devices=mesh.size,
                     peak_tflops_per_device=peak_tflops_per_device(config.get("peak_tflops_per_device", None)))
  config_dict = json.loads(config.to_json_best_effort())
  metrics: dict[str, Any] = {}
  logged_skips = skipped_updates
  interval: list[float | None] = []
  watcher = PreemptionWatcher()
  try:
    while step < config.total_steps:
      batch = _global_batch(mesh, trainer.host_batch(next(iterator)), shard_count)
      phase = trainer.phase(step)
      variant = (phase, tuple((k, v.shape, str(v.dtype)) for k, v in sorted(batch.items())))
      if variant not in executables:
        jax.block_until_ready(state)
        started = time.perf_counter()
        lowered = train_step.lower(state, batch, counters, phase, *frozen)
        executables[variant] = (lowered.compile(), flops_per_step(trainer, phase, lowered))
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in sorted(batch.items()) if k in ("mean", "x", "video"))
        log(f"step {step}: compiled a step program for {shapes} (phase {phase}) in "
            f"{time.perf_counter() - started:.1f} s; {len(executables)} so far")
        writer.reset_timer(step)
        interval = []
      executable, flops = executables[variant]
      state, metrics, counters = executable(state, batch, counters, *frozen)
      interval.append(flops)  # the FLOPs of every step the writer's next timed interval covers (phases differ)
      step += 1
      is_last = step == config.total_steps
      preempted = watcher.reached(step) and not is_last
      do_eval = step % config.sample_every == 0 or is_last
      do_ckpt = step % config.checkpoint_every == 0 or is_last or preempted
      if step % config.log_every == 0 or do_eval or do_ckpt or step == 1:
        host_metrics = {**jax.device_get(metrics), **getattr(iterator, "stats", dict)()}  # + data counters
        writer.lap()
        if skip_nonfinite:
          total = int(host_metrics["skipped_updates"])
          if total > logged_skips:
            log(f"step {step}: skipped {total - logged_skips} update(s) with NaN/Inf loss, gradients or state since "
                f"the previous log line (the state kept its values); {total} skipped since the run began")
          logged_skips = total
        else:
          _check_finite(step, host_metrics)
        if do_eval:
          host_metrics.update(trainer.evaluate(state, step))
        mean_flops = None if None in interval else sum(interval) / len(interval)
        writer.write(step, host_metrics, model_flops_per_step=mean_flops)
        interval = []
      if is_last:
        state = trainer.finalize(state)
      if do_ckpt:
        skipped_updates = int(jax.device_get(counters["skipped_updates"]))
        checkpointer.save(step, state, iterator.get_state(), config_dict, loop={"skipped_updates": skipped_updates},
                          force=True)
      if preempted:
        checkpointer.wait()
        log(f"preempted ({watcher.reason}): stopped after step {step} and saved checkpoint {step} in "
            f"{checkpointer.directory}; run the same command again to resume")
        raise Preempted(step, watcher.reason)
      if do_eval or do_ckpt:
        jax.block_until_ready(metrics)
        writer.reset_timer(step)  # evaluation / checkpoint time is not step time
        interval = []
  finally:
    getattr(iterator, "close", lambda: None)()  # decoding worker processes
    watcher.close()
    checkpointer.close()
    writer.close()
  return state


def restore_state(trainer: Trainer, workdir: str, step: int | None = None) -> Any:
  """The whole train state of `trainer`'s run in `workdir` at `step` (default: the newest), with its shardings.

  For inspecting or continuing a run; inference reads only the weights, through `vidgen.runs`.
  """
  abstract = abstract_like(jax.eval_shape(trainer.init_state, jax.random.key(0)), trainer.state_shardings())
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    return checkpointer.restore_state_only(abstract, step)
  finally:
    checkpointer.close()
