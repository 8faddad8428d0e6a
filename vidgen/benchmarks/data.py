"""Input benchmark: does decoding keep up with the device step of a VAE experiment (default: experiments/video_vae.py)?

  python -m vidgen.benchmarks.data --path DIR [--config experiments/video_vae.py] [--workers 0,1,2] [--batches 10]
      [--step-batches 5] [--set data.height=128 ...] [--json PATH]
  python -m vidgen.benchmarks.data --path DIR --config-arg runlocal --batches 2 --step-batches 2   # a CPU smoke run

DIR is what `config.data.path` takes: a folder of videos / images or a .csv / .jsonl manifest. Three measurements:

  * The loader: for each worker count, the training clip iterator is built exactly as the VAE trainer builds it
    (`get_source(config.data).iterator("train", global_batch=config.batch_size, num_frames=..., crop_size=...)`, with
    `config.data.num_workers` set to the count), one warm-up batch is read (the start-up seconds: worker processes
    spawned, first clips decoded), then `--batches` batches are timed. Prefetched clips waiting in the workers' buffers
    (2 per worker) flatter a short run, so use enough batches. Records skipped are counted as in training.
  * The device step: the experiment's jitted VAE train step (the loop's step with its NaN guard, state donated, GAN
    phase off) on a synthetic uint8 batch of the clip shape, over the mesh of `config.mesh` on the default devices;
    the median of `--step-batches` steps after compilation and one warm-up step, each waited for.
  * A verdict per worker count: loader clips/s over the step's clips/s (batch_size / step time).
  * With `--assume-tflops R`, also the step estimated from XLA's FLOP count of the lowered step at R TFLOP/s, and
    verdicts against it: for a machine without the accelerator the run is meant for.

Only clip batches are compared: the trainer's image batches (every `data.image_every`-th batch, single frames) are
lighter for both sides and left out. On a CPU backend the decoders and the step share the cores during training, so
there the verdict is an upper bound. A step that does not fit in memory is reported as such (the loader's numbers
stand; `--set batch_size=N` measures a smaller one). The last line of the output is the numbers as one JSON object
(also written to `--json`).
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import json
import os
import statistics
import tempfile
import time
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from vidgen.config import load_config_file
from vidgen.data.sources import get_source
from vidgen.errors import ConfigError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              "experiments", "video_vae.py")


@dataclasses.dataclass
class LoaderRow:
  """The loader with `workers` decoding processes; times in seconds, counts include the warm-up batch."""

  workers: int
  startup_s: float
  seconds: float
  batches: int
  clips_per_s: float
  batches_per_s: float
  read: int
  skipped: int


@dataclasses.dataclass
class StepRow:
  """The experiment's train step on `num_devices` devices of kind `device`; times in seconds."""

  device: str
  backend: str
  num_devices: int
  batch: int
  clip: tuple[int, int, int]  # (T, H, W) of the clips the step trains on
  compile_s: float
  step_s: float
  steps: int
  clips_per_s: float
  loss: float


# ----------------------------------------------------------------------------------------------------------------------
# Config.


def parse_value(text: str) -> Any:
  """A `--set` value: a Python literal (128, 0.5, True, (64, 128)) or else the string itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: ml_collections.ConfigDict, items: Sequence[str]) -> None:
  """`["data.height=128", ...]` -> sets those existing fields of `config` (a typo is refused, not added)."""
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      raise ConfigError(f"--set takes FIELD=VALUE, e.g. data.height=128; got {item!r}")
    *parents, leaf = key.strip().split(".")
    node = config
    for name in parents:
      if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
        raise ConfigError(f"--set {item}: the config has no section {key.rsplit('.', 1)[0]!r}")
      node = node[name]
    if leaf not in node:
      raise ConfigError(f"--set {item}: the config has no field {key!r}")
    node[leaf] = parse_value(value.strip())


def load_config(path: str, arg: str | None, data_path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The experiment's config with `data.path` = `data_path` and the `--set` overrides."""
  config = load_config_file(path, arg)
  config.data.path = data_path
  apply_overrides(config, overrides)
  return config


def clip_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(T, H, W) of a training clip batch: `data.crop_size` windows when set, else whole frames."""
  d = config.data
  crop = d.get("crop_size", 0)
  return (d.num_frames, crop or d.height, crop or d.width)


def clip_iterator_args(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The clip-stream arguments of `VAETrainer.make_iterator` (one process)."""
  d = config.data
  args = dict(global_batch=config.batch_size, num_frames=d.num_frames)
  if d.get("crop_size", 0):
    args.update(crop_size=d.crop_size, crop_grid=config.vae.spatial_downsample)
  return args


# ----------------------------------------------------------------------------------------------------------------------
# Measurements.


def measure_loader(config: ml_collections.ConfigDict, workers: int, batches: int) -> LoaderRow:
  """Start-up (iterator + first batch) and the steady throughput over `batches` further batches, `workers` processes."""
  if batches < 1:
    raise ValueError(f"batches must be >= 1, got {batches}")
  config = copy.deepcopy(config)
  config.data.num_workers = workers
  source = get_source(config.data)
  source.check()  # the listing is read here, not inside the start-up time
  start = time.perf_counter()
  iterator = source.iterator("train", **clip_iterator_args(config))
  try:
    next(iterator)
    startup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
      next(iterator)
    seconds = time.perf_counter() - start
    stats = iterator.stats()
  finally:
    iterator.close()
  return LoaderRow(workers=workers, startup_s=startup, seconds=seconds, batches=batches,
                   clips_per_s=batches * config.batch_size / seconds, batches_per_s=batches / seconds,
                   read=int(stats["data_read"]), skipped=int(stats["data_skipped"]))


def _step_program(config: ml_collections.ConfigDict):
  """The experiment's jitted VAE train step and its inputs' builders: (step_fn, trainer, shardings, batch_sharding,
  counters, mesh, abstract batch)."""
  import jax

  # Imported here: vidgen.train pulls in TensorFlow (via clu), which a loader-only run does not need.
  from vidgen.parallel import batch_sharding, make_mesh, replicated
  from vidgen.parallel.mesh import MESH_AXES
  from vidgen.train import loop, vae_trainer

  jax.config.update("jax_threefry_partitionable", True)
  if config.get("trainer") != "vae":
    raise ConfigError(f"config.trainer: the step benchmark times a VAE experiment, got {config.get('trainer')!r} "
                      "(use --no-step to measure the loader alone)")
  mesh_shape = dict(zip(MESH_AXES, loop.validate_common(config)))
  vae_trainer.validate_config(config, mesh_shape)
  mesh = make_mesh(dict(config.mesh))
  with tempfile.TemporaryDirectory() as workdir:  # the trainer writes only at evaluation, which is not run
    trainer = vae_trainer.VAETrainer(config, mesh, workdir)
  shardings = trainer.state_shardings()
  sharding = batch_sharding(mesh, 5)
  rep = replicated(mesh)
  step_fn = jax.jit(loop.loop_step(trainer.train_step, config.get("skip_nonfinite_updates", False)),
                    in_shardings=(shardings, {"video": sharding}, rep), out_shardings=(shardings, None, rep),
                    static_argnums=(3,), donate_argnums=(0,))
  return step_fn, trainer, shardings, sharding, rep, mesh


def step_flops(config: ml_collections.ConfigDict) -> float | None:
  """FLOPs of one VAE train step (GAN off) by XLA's cost analysis of the lowered program: nothing is allocated, so
  it works for steps that do not fit this machine's memory."""
  import jax

  from vidgen.train import loop

  step_fn, trainer, shardings, sharding, rep, _ = _step_program(config)
  abstract = jax.eval_shape(trainer.init_state, jax.random.key(0))
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  batch = {"video": jax.ShapeDtypeStruct((config.batch_size, *clip_shape(config), 3), np.uint8, sharding=sharding)}
  counters = {"skipped_updates": jax.ShapeDtypeStruct((), np.int32, sharding=rep)}
  return loop.flops_per_step(trainer, False, step_fn.lower(state, batch, counters, False))


def measure_step(config: ml_collections.ConfigDict, steps: int) -> StepRow:
  """Median wall time of the experiment's VAE train step (GAN off) on a synthetic batch, after compile + 1 warm-up."""
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  import jax

  from vidgen.parallel.distributed import batch_shard

  step_fn, trainer, shardings, sharding, rep, mesh = _step_program(config)
  state = jax.jit(trainer.init_state, out_shardings=shardings)(jax.random.key(config.seed))
  shard_index, shard_count = batch_shard(mesh, config.batch_size)
  rows = config.batch_size // shard_count
  local = np.random.default_rng(shard_index).integers(0, 256, (rows, *clip_shape(config), 3), dtype=np.uint8)
  batch = {"video": jax.make_array_from_process_local_data(sharding, local, (config.batch_size, *local.shape[1:]))}
  counters = {"skipped_updates": jax.make_array_from_process_local_data(rep, np.int32(0), ())}
  jax.block_until_ready(state)
  start = time.perf_counter()
  executable = step_fn.lower(state, batch, counters, False).compile()
  compile_s = time.perf_counter() - start

  times, metrics = [], {}
  for i in range(steps + 1):  # the first call is a warm-up
    start = time.perf_counter()
    state, metrics, counters = executable(state, batch, counters)
    jax.block_until_ready((state, metrics, counters))
    if i:
      times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  device = jax.devices()[0]
  return StepRow(device=device.device_kind, backend=jax.default_backend(), num_devices=mesh.size,
                 batch=config.batch_size, clip=clip_shape(config), compile_s=compile_s, step_s=step_s, steps=steps,
                 clips_per_s=config.batch_size / step_s, loss=float(metrics["loss"]))


def verdict(loader_clips_per_s: float, step_clips_per_s: float) -> str:
  """"keeps up (x1.8 headroom)" or "falls short: needs 1.7x more throughput"."""
  ratio = loader_clips_per_s / step_clips_per_s
  if ratio >= 1.0:
    return f"keeps up (x{_number(ratio, 1)} headroom)"
  return f"falls short: needs {_number(1.0 / ratio, 1)}x more throughput"


def _number(x: float, decimals: int = 2) -> str:
  """`decimals` decimals for ordinary values, none from 100 on, 3 significant digits below 1 (0.00827)."""
  if x >= 100:
    return f"{x:.0f}"
  return f"{x:.{decimals}f}" if x >= 1 else f"{x:.3g}"


def cpu_cores() -> tuple[int, int]:
  """(cores of the machine, cores this process may run on)."""
  total = os.cpu_count() or 1
  usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
  return total, usable


# ----------------------------------------------------------------------------------------------------------------------
# The benchmark.


def run(config: ml_collections.ConfigDict, workers: Sequence[int] = (0, 1, 2), batches: int = 10,
        step_batches: int = 5, measure_device_step: bool = True, label: str = "",
        show: Callable[[str], None] | None = None, assume_tflops: float | None = None) -> dict[str, Any]:
  """Measures the loader for each worker count, then the step; returns the results as a JSON-serializable dict.

  The loader runs first, so that compilation threads do not compete with decoding. `show`, when given, receives each
  section of the report as soon as it is measured (a step that does not fit in memory leaves the loader's numbers).
  """
  total, usable = cpu_cores()
  d = config.data
  result: dict[str, Any] = dict(
      config=label, path=d.path, batch=config.batch_size, clip=list(clip_shape(config)),
      sampling={k: d.get(k) for k in ("fps", "frame_stride", "offset", "crop", "flip", "short_clips")},
      cpu_count=total, cpu_usable=usable, loader=[], step=None)
  result["loader"] = [dataclasses.asdict(measure_loader(config, w, batches)) for w in workers]
  if show:
    show(format_loader(result))
  if assume_tflops:
    flops = step_flops(config)
    if flops:
      needed = config.batch_size / (flops / (assume_tflops * 1e12))
      result["estimate"] = {"flops_per_step": flops, "assumed_tflops": assume_tflops, "clips_per_s": needed,
                            "verdicts": [verdict(r["clips_per_s"], needed) for r in result["loader"]]}
      if show:
        show(format_estimate(result))
  if measure_device_step:
    try:
      step = measure_step(config, step_batches)
    except Exception as e:  # XLA's out-of-memory error; the loader's numbers are still worth the JSON line
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      result["step_error"] = str(e).strip().splitlines()[0]
      if show:
        show(format_step(result))
      return result
    result["step"] = {**dataclasses.asdict(step), "clip": list(step.clip)}
    for row in result["loader"]:
      row["ratio"] = row["clips_per_s"] / step.clips_per_s
      row["verdict"] = verdict(row["clips_per_s"], step.clips_per_s)
  if show:
    show(format_step(result))
  return result


def format_loader(result: dict[str, Any]) -> str:
  """The report's header and loader table."""
  t, h, w = result["clip"]
  sampling = ", ".join(f"{k} {v}" for k, v in result["sampling"].items())
  lines = [f"data benchmark: {result['config'] or 'config'} on {result['path']}",
           f"  clips: batch {result['batch']} x {t}x{h}x{w}; {sampling}",
           f"  host: {result['cpu_count']} CPU cores ({result['cpu_usable']} usable by this process)",
           "",
           f"loader (each row: 1 warm-up batch = start-up, then {result['loader'][0]['batches']} batches timed):",
           f"  {'workers':>7}  {'start-up (s)':>12}  {'clips/s':>9}  {'batches/s':>9}  {'read':>6}  {'skipped':>7}"]
  for r in result["loader"]:
    lines.append(f"  {r['workers']:>7}  {r['startup_s']:>12.2f}  {r['clips_per_s']:>9.2f}  {r['batches_per_s']:>9.3f}"
                 f"  {r['read']:>6}  {r['skipped']:>7}")
  return "\n".join(lines)


def format_step(result: dict[str, Any]) -> str:
  """The report's step time and verdicts."""
  step = result["step"]
  if "step_error" in result:
    return (f"\ndevice step: does not fit in memory ({result['step_error']}); try a smaller batch, e.g. --set "
            "batch_size=2, and compare clips/s")
  if step is None:
    return "\ndevice step: not measured (--no-step)"
  kind = step["device"] if step["device"] == step["backend"] else f"{step['device']} ({step['backend']})"
  lines = ["",
           f"device step on {kind} x{step['num_devices']} (VAE train step, GAN off; median of {step['steps']} after "
           "compile + 1 warm-up):",
           f"  {1e3 * step['step_s']:.1f} ms/step = {_number(step['clips_per_s'])} clips/s needed "
           f"(compile {step['compile_s']:.1f} s, loss {step['loss']:.4f})",
           "",
           "verdict (loader clips/s / step clips/s):"]
  for r in result["loader"]:
    label = f"{r['workers']} worker{'s' if r['workers'] != 1 else ''}:"
    lines.append(f"  {label:<11} {r['verdict']}")
  return "\n".join(lines)


def format_estimate(result: dict[str, Any]) -> str:
  """The step estimated from its FLOPs at an assumed sustained rate, and the verdicts against it."""
  e = result["estimate"]
  lines = ["", f"device step estimated from XLA's FLOP count: {e['flops_per_step'] / 1e12:.2f} TFLOP/step at an "
               f"assumed {e['assumed_tflops']:g} TFLOP/s = {1e3 * result['batch'] / e['clips_per_s']:.1f} ms/step = "
               f"{_number(e['clips_per_s'])} clips/s needed", "verdict against the estimate:"]
  for r, v in zip(result["loader"], e["verdicts"]):
    label = f"{r['workers']} worker{'s' if r['workers'] != 1 else ''}:"
    lines.append(f"  {label:<11} {v}")
  return "\n".join(lines)


def format_report(result: dict[str, Any]) -> str:
  """The whole aligned plain-text report of `run`'s result."""
  return format_loader(result) + ("\n" + format_estimate(result) if "estimate" in result else "") + "\n" + \
      format_step(result)


def parse_workers(text: str) -> list[int]:
  """"0,1,2" -> [0, 1, 2]."""
  try:
    workers = [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    workers = []
  if not workers or min(workers) < 0:
    raise argparse.ArgumentTypeError(f"--workers takes counts >= 0 separated by commas, e.g. 0,1,2; got {text!r}")
  return workers


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m vidgen.benchmarks.data", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--path", required=True, help="config.data.path: a folder of videos / images or a manifest")
  parser.add_argument("--config", default=DEFAULT_CONFIG, help="the experiment file (a VAE experiment)")
  parser.add_argument("--config-arg", default=None, help="its get_config argument, e.g. runlocal")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="config override, e.g. data.height=128 (repeatable)")
  parser.add_argument("--workers", type=parse_workers, default=[0, 1, 2], help="worker counts, e.g. 0,1,2")
  parser.add_argument("--batches", type=int, default=10, help="timed batches per worker count (after 1 warm-up)")
  parser.add_argument("--step-batches", type=int, default=5, help="timed steps (after compile and 1 warm-up)")
  parser.add_argument("--no-step", action="store_true", help="do not run the step on this machine's devices")
  parser.add_argument("--assume-tflops", type=float, default=None,
                      help="also estimate the step from its FLOPs at this sustained rate (e.g. an accelerator's "
                           "dense bf16 peak x the utilization you expect), for machines without that accelerator")
  parser.add_argument("--json", default=None, help="also write the JSON line to this file")
  args = parser.parse_args(argv)
  if args.batches < 1 or args.step_batches < 1:
    parser.error("--batches and --step-batches must be >= 1")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  config = load_config(args.config, args.config_arg, args.path, args.set)
  name = os.path.relpath(args.config) if os.path.abspath(args.config).startswith(os.getcwd()) else args.config
  label = " ".join([name + (f":{args.config_arg}" if args.config_arg else ""), *(f"--set {s}" for s in args.set)])
  result = run(config, args.workers, args.batches, args.step_batches, measure_device_step=not args.no_step,
               label=label, show=lambda text: print(text, flush=True), assume_tflops=args.assume_tflops)
  line = json.dumps(result)
  print(line)
  if args.json:
    with open(args.json, "w") as f:
      f.write(line + "\n")
  return result


if __name__ == "__main__":
  main()
