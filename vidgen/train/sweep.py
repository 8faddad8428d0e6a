"""Running a sweep (`vidgen sweep`): every point of a scaling study in its own workdir, on one shared VAE and cache.

  DIR/vae            the VAE every point encodes with (the experiment's VAE stage, trained once)
  DIR/latents        the latent cache and validation set they share
  DIR/NAME/          one `vidgen train` run per point (vidgen.scaling.sweep.Point.name)
  DIR/results.jsonl  one row per finished point (vidgen.scaling.sweep.point_result), in the sweep's order

Run here, the points are trained one after another in this process; finished points are skipped and a point that
was stopped resumes from its last checkpoint, exactly, so the same command continues a sweep wherever it stopped.
`commands()` writes the same sweep as shell commands for a cluster scheduler: a `prepare` step, one `vidgen train` per
point (independent; any order, any machines sharing DIR), and a `collect` step.

Public names:
  Sweep: a sweep file, its argument and overrides, bound to a directory: points, prepare, run, collect, commands.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import time
from typing import Any, Callable

import ml_collections

from vidgen.errors import UserError
from vidgen.scaling.sweep import Point, expand, point_result
from vidgen.train import stages
from vidgen.train.writers import log

RESULTS = "results.jsonl"
WALL = "wall.json"  # seconds this process spent on a point (all of its attempts), beside its run


def _load_module(path: str):
  spec = importlib.util.spec_from_file_location(f"vidgen_sweep_{os.path.basename(path)[:-3]}", path)
  if spec is None or not os.path.exists(path):
    raise UserError(f"{path}: no such experiment config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise UserError(f"{path} defines no sweep (a `get_sweep(arg)` function); see experiments/scaling_shapes.py")
  return module


def _set(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  *parents, field = dotted.split(".")
  node = config
  for name in parents:
    node = node[name]
  node[field] = value


def _flag_value(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return "(" + ",".join(_flag_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


class Sweep:
  """The sweep `get_sweep(arg)` of the experiment file at `path`, run in `workdir`.

  Args:
    path: an experiment file with `get_config(arg)` (one point, given `depth=` and `steps=`) and `get_sweep(arg)`.
    arg: the argument for both (e.g. "runlocal", "sweep=compare,attention=full").
    workdir: the sweep's directory.
    overrides: `--config.FIELD=VALUE` overrides, as {"FIELD": value}, applied to every point.
  """

  def __init__(self, path: str, arg: str, workdir: str, overrides: dict[str, Any] | None = None):
    self.path, self.arg, self.workdir = os.path.abspath(path), arg or "", os.path.abspath(workdir)
    self.given_path = path  # as the user wrote it, for the commands it prints
    self.overrides = dict(overrides or {})
    self.module = _load_module(self.path)
    self.points: list[Point] = expand(self.module.get_sweep(self.arg), self._config, self.arg)

  def _config(self, point_arg: str, shared: bool = False) -> ml_collections.ConfigDict:
    """A point's train config: the file's, with the overrides and (shared=True) the sweep's VAE and cache."""
    config = self.module.get_config(point_arg)
    for field, value in self.overrides.items():
      _set(config, field, value)
    if shared:
      config.vae_workdir, config.data.cache_dir = self.shared_dirs()
    return config

  def shared_dirs(self) -> tuple[str, str]:
    """(VAE run, latent cache) every point uses: DIR/vae and DIR/latents unless overridden."""
    return (self.overrides.get("vae_workdir") or os.path.join(self.workdir, "vae"),
            self.overrides.get("data.cache_dir") or os.path.join(self.workdir, "latents"))

  def point_config(self, point: Point) -> ml_collections.ConfigDict:
    return self._config(point.arg, shared=True)

  def point_dir(self, point: Point) -> str:
    return os.path.join(self.workdir, point.name)

  # -- running -------------------------------------------------------------------------------------------------------

  def prepare(self) -> None:
    """Trains the shared VAE (unless `vae_workdir` is overridden) and builds the shared latent cache and validation
    set; each is skipped once done."""
    config = self._config(self.points[0].arg, shared=True)
    config.vae_workdir = self.overrides.get("vae_workdir", "")  # "" = the experiment's VAE stage, into DIR/vae
    config = stages.with_absolute_paths(config)
    stages.validate(config)
    stages.prepare(config, self.workdir)

  def run(self, on_point: Callable[[Point, dict], None] | None = None) -> list[dict]:
    """Prepares, trains every unfinished point in order, and collects; returns the result rows."""
    self.prepare()
    for i, point in enumerate(self.points):
      directory = self.point_dir(point)
      if point_result(point, directory) is not None:
        log(f"sweep: point {i + 1}/{len(self.points)} {point.name} is finished")
        continue
      log(f"sweep: point {i + 1}/{len(self.points)} {point.name}: depth {point.depth}, {point.steps} steps, "
          f"{point.flops:.3g} training FLOPs")
      start = time.perf_counter()
      try:
        stages.train_and_evaluate(self.point_config(point), directory)
      finally:
        self._add_wall(directory, time.perf_counter() - start)
      if on_point is not None:
        on_point(point, point_result(point, directory))
    return self.collect()

  @staticmethod
  def _add_wall(directory: str, seconds: float) -> None:
    path = os.path.join(directory, WALL)
    total = json.load(open(path))["seconds"] if os.path.exists(path) else 0.0
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
      json.dump({"seconds": round(total + seconds, 2)}, f)

  def collect(self) -> list[dict]:
    """Writes DIR/results.jsonl from every finished point (unfinished ones are listed in the log); returns the rows."""
    rows, missing = [], []
    for point in self.points:
      row = point_result(point, self.point_dir(point))
      if row is None:
        missing.append(point.name)
        continue
      wall = os.path.join(self.point_dir(point), WALL)
      if os.path.exists(wall):
        row["wall_seconds"] = json.load(open(wall))["seconds"]
      rows.append(row)
    os.makedirs(self.workdir, exist_ok=True)
    with open(os.path.join(self.workdir, RESULTS + ".tmp"), "w") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
    os.replace(os.path.join(self.workdir, RESULTS + ".tmp"), os.path.join(self.workdir, RESULTS))
    log(f"sweep: {len(rows)} of {len(self.points)} points in {os.path.join(self.workdir, RESULTS)}"
        + (f"; unfinished: {', '.join(missing)}" if missing else ""))
    return rows

  # -- for a scheduler -----------------------------------------------------------------------------------------------

  def commands(self) -> list[str]:
    """Shell commands that run this sweep elsewhere: prepare, then the points (independent), then collect."""
    target = shlex.quote(f"{self.given_path}:{self.arg}" if self.arg else self.given_path)
    flags = " ".join(f"--config.{k}={shlex.quote(_flag_value(v))}" for k, v in self.overrides.items())
    sweep = f"vidgen sweep --config {target} --workdir {shlex.quote(self.workdir)}"
    lines = [f"{sweep} --stage prepare {flags}".rstrip()]
    vae_dir, cache_dir = self.shared_dirs()
    shared = f"--config.vae_workdir={shlex.quote(vae_dir)} --config.data.cache_dir={shlex.quote(cache_dir)}"
    for point in self.points:
      point_flags = " ".join(f"--config.{k}={shlex.quote(_flag_value(v))}" for k, v in self.overrides.items()
                             if k not in ("vae_workdir", "data.cache_dir"))
      lines.append(f"vidgen train --config {shlex.quote(f'{self.given_path}:{point.arg}')} "
                   f"--workdir {shlex.quote(self.point_dir(point))} {shared} {point_flags}".rstrip())
    lines.append(f"{sweep} --stage collect")
    return lines

