"""Sweeps: a scaling study's points, from its definition to one result row per finished point.

An experiment file that defines a sweep has `get_config(arg)`, whose argument accepts `depth=D` (the model family's
size index, `vidgen.scaling.family`) and `steps=S` (training steps), and `get_sweep(arg)`, which returns:

  sizes       depths of the family to train
  budgets     IsoFLOP profiles: for each training-compute budget C (FLOPs), every size trained for the steps that
              spend C (rounded to whole steps; the row records the exact FLOPs)
  min_steps, max_steps   IsoFLOP points outside this range are dropped (too short to train / longer than the sweep
              is meant to be), so each profile keeps the sizes that make sense at its budget
  grid_steps  a grid of every size x these steps (optional, alongside or instead of the profiles)
  extra       further point arguments trained as they are (e.g. a larger run that checks a prediction)

Every point is trained by its own `vidgen train` run under the sweep's directory, on one shared VAE and latent cache.

Public names:
  Point: one run of a sweep.
  expand(sweep, make_config, arg): the sweep's points.
  training_compute(config): training FLOPs and tokens of a whole run, step by step (image steps at their size).
  point_result(point, workdir): the result row of a finished point, read from its workdir; None while unfinished.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from vidgen.data.latent_cache import is_image_batch
from vidgen.errors import ConfigError
from vidgen.layers.embeddings import token_grid
from vidgen.models.dit_config import DiTSpec
from vidgen.scaling.flops import forward_flops, param_counts, train_flops_per_step

SWEEP_FIELDS = ("sizes", "budgets", "min_steps", "max_steps", "grid_steps", "extra")


@dataclasses.dataclass(frozen=True)
class Point:
  """One training run of a sweep.

  name: its directory under the sweep's workdir; arg: the experiment file's `get_config` argument; kind: "isoflop",
  "grid" or "extra"; budget: the FLOPs budget of its IsoFLOP profile (None otherwise); depth, steps: its size and
  length; flops, tokens: the run's training compute (`training_compute`).
  """
  name: str
  arg: str
  kind: str
  budget: float | None
  depth: int
  steps: int
  flops: float
  tokens: int


def training_compute(config: ml_collections.ConfigDict) -> dict[str, float]:
  """{"flops", "tokens", "video_steps", "image_steps"} of a whole DiT run: the sum over its steps of the training FLOPs
  of each step's phase (`train_flops_per_step`) and of the latent tokens (patches) its batch holds."""
  d = config.data
  image_steps = sum(is_image_batch(b, d.image_every, d.get("image_first", 0)) for b in range(config.total_steps))
  video_steps = config.total_steps - image_steps
  spec = DiTSpec.from_config(config.dit)
  video_tokens = int(np.prod(token_grid(tuple(spec.input_size), spec.patch_size)))
  image_tokens = int(np.prod(token_grid((1, *spec.input_size[1:]), spec.patch_size)))
  flops = (video_steps * train_flops_per_step(config, "video") + image_steps * train_flops_per_step(config, "image"))
  tokens = config.batch_size * (video_steps * video_tokens + image_steps * image_tokens)
  return {"flops": float(flops), "tokens": int(tokens), "video_steps": video_steps, "image_steps": image_steps}


def _join(*parts: str) -> str:
  return ",".join(p for p in parts if p)


def _budget(flops: float) -> str:
  """1.58e12 -> "1.58e12" (no "+" or leading zeros, for directory names)."""
  mantissa, exponent = f"{float(flops):.3g}".split("e") if "e" in f"{float(flops):.3g}" else (f"{flops:.3g}", "0")
  return f"{mantissa}e{int(exponent)}"


def _name(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def validate_sweep(sweep: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (a ValueError) naming the field for an unknown field or a sweep that defines no point."""
  unknown = sorted(set(sweep) - set(SWEEP_FIELDS))
  if unknown:
    raise ConfigError(f"sweep: unknown fields {unknown}; allowed: {list(SWEEP_FIELDS)}")
  sizes = tuple(sweep.get("sizes", ()))
  if any(not isinstance(s, int) or s < 1 for s in sizes):
    raise ConfigError(f"sweep.sizes: depths must be positive integers, got {sizes}")
  if any(float(c) <= 0 for c in sweep.get("budgets", ())):
    raise ConfigError(f"sweep.budgets: FLOPs budgets must be > 0, got {tuple(sweep.budgets)}")
  lo, hi = int(sweep.get("min_steps", 1)), int(sweep.get("max_steps", 10 ** 9))
  if not 1 <= lo <= hi:
    raise ConfigError(f"sweep.min_steps / max_steps: need 1 <= min_steps <= max_steps, got {lo}, {hi}")
  if (sweep.get("budgets") or sweep.get("grid_steps")) and not sizes:
    raise ConfigError("sweep.sizes: IsoFLOP profiles and grids need at least one size")
  if not (sweep.get("budgets") or sweep.get("grid_steps") or sweep.get("extra")):
    raise ConfigError("sweep: defines no point (give budgets, grid_steps or extra)")


def expand(sweep: ml_collections.ConfigDict, make_config: Callable[[str], ml_collections.ConfigDict],
           arg: str = "") -> list[Point]:
  """The points of `sweep`: IsoFLOP profiles (budget by budget, sizes ascending), then the grid, then the extras.

  Args:
    sweep: the sweep definition (module docstring).
    make_config: point argument -> that point's train config (the experiment file's `get_config`, plus any
      overrides the sweep is run with).
    arg: the sweep's own argument, prepended to every point's.

  Returns:
    points with unique names; a profile that keeps fewer than all sizes says so only through its missing points.
  """
  validate_sweep(sweep)
  points: list[Point] = []
  per_step: dict[int, float] = {}

  def point(kind: str, name: str, point_arg: str, budget: float | None, depth: int, steps: int) -> Point:
    compute = training_compute(make_config(point_arg))
    return Point(name=name, arg=point_arg, kind=kind, budget=budget, depth=depth, steps=steps,
                 flops=compute["flops"], tokens=compute["tokens"])

  lo, hi = int(sweep.get("min_steps", 1)), int(sweep.get("max_steps", 10 ** 9))
  for budget in sweep.get("budgets", ()):
    for depth in sorted(sweep.sizes):
      if depth not in per_step:  # the mean FLOPs of a step over a long run (the image / video mix)
        per_step[depth] = training_compute(make_config(_join(arg, f"depth={depth},steps=1000")))["flops"] / 1000
      steps = int(round(float(budget) / per_step[depth]))
      if lo <= steps <= hi:
        points.append(point("isoflop", f"isoflop_{_budget(budget)}_d{depth}",
                            _join(arg, f"depth={depth},steps={steps}"), float(budget), depth, steps))
  for steps in sweep.get("grid_steps", ()):
    for depth in sorted(sweep.sizes):
      points.append(point("grid", f"grid_d{depth}_s{steps}", _join(arg, f"depth={depth},steps={steps}"), None, depth,
                          int(steps)))
  for extra in sweep.get("extra", ()):
    config = make_config(_join(arg, extra))
    points.append(point("extra", _name(f"extra_{extra}"), _join(arg, extra), None, int(config.dit.depth),
                        int(config.total_steps)))
  if not points:
    raise ConfigError(f"sweep: every IsoFLOP point falls outside [min_steps, max_steps] = [{lo}, {hi}]; widen the "
                     "range, or change the budgets or sizes")
  names = [p.name for p in points]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ConfigError(f"sweep: points {duplicates} appear twice (a budget or extra repeated?)")
  return points


def _last_with(records: Sequence[dict], key: str) -> dict | None:
  return next((r for r in reversed(records) if key in r), None)


def point_result(point: Point, workdir: str) -> dict[str, Any] | None:
  """The result row of `point` trained in `workdir`, or None while it is unfinished (no validation loss at its last
  step yet).

  Row: the point's identity; from the run's own config.json its steps, training compute, `forward_flops` (one clip
  through the DiT), shape and parameter counts; the validation losses and the data source's evaluation logged at the
  last step, the final training loss, and `train_seconds`, the summed step time of the run (compiles, evaluations
  and checkpoints excluded).
  """
  config_path, metrics_path = os.path.join(workdir, "config.json"), os.path.join(workdir, "metrics.jsonl")
  if not (os.path.exists(config_path) and os.path.exists(metrics_path)):
    return None
  with open(metrics_path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  final = _last_with(records, "val_loss")
  if final is None or final["step"] != config.total_steps:
    return None
  seconds, previous = 0.0, 0
  for r in records:
    if "step_time_s" in r:
      seconds += r["step_time_s"] * (r["step"] - previous)
    previous = r["step"]
  counts = param_counts(config.dit)
  compute = training_compute(config)  # from the run's own config, so the row describes what was trained
  row = {**dataclasses.asdict(point), "steps": int(config.total_steps), "flops": compute["flops"],
         "tokens": compute["tokens"], "width": int(config.dit.width), "num_heads": int(config.dit.num_heads),
         "forward_flops": forward_flops(config.dit, tuple(config.dit.input_size),
                                        config.text.max_length if config.conditioning == "text" else 0),
         "params": counts["total"], "non_embedding_params": counts["non_embedding"],
         "batch_size": int(config.batch_size), "lr": float(config.optimizer.lr),
         "loss": float(_last_with(records, "loss")["loss"]), "train_seconds": round(seconds, 2)}
  row.update({k: v for k, v in final.items() if k.startswith(("val_", "eval_"))})
  return row
