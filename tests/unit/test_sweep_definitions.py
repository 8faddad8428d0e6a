"""Sweep definitions: the model family, IsoFLOP expansion into points, validation of the definition, scheduler commands,
and the validation loss's time grid."""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pytest

from vidgen import diffusion
from vidgen.config import load_config_file
from vidgen.errors import ConfigError
from vidgen.scaling.family import family_member, family_table
from vidgen.scaling.sweep import expand, point_result, training_compute, validate_sweep
from vidgen.train.sweep import Sweep
from vidgen.train.validation import validation_times

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCALING = os.path.join(ROOT, "experiments", "scaling_shapes.py")


def _config(arg: str) -> ml_collections.ConfigDict:
  return load_config_file(SCALING, arg)


def test_family_ties_width_and_heads_to_depth():
  base = _config("depth=8").dit
  for depth in (4, 6, 12):
    member = family_member(base, depth, aspect=8, head_width=16)
    assert (member.depth, member.width, member.num_heads) == (depth, 8 * depth, depth // 2)
    assert member.patch_size == base.patch_size and member.attention_pattern == base.attention_pattern
  with pytest.raises(ConfigError, match="multiple of the attention pattern's length 2"):
    family_member(base, 5, aspect=8, head_width=16)
  with pytest.raises(ConfigError, match="does not split into heads"):
    family_member(base, 4, aspect=6, head_width=16)


def test_family_table_grows_with_depth():
  rows = family_table(_config("depth=8"), (4, 8, 12), aspect=8, head_width=16)
  params = [r["params"] for r in rows]
  flops = [r["video_step_flops"] for r in rows]
  assert params == sorted(params) and flops == sorted(flops)
  assert all(r["non_embedding_params"] < r["params"] for r in rows)
  assert all(r["image_step_flops"] < r["video_step_flops"] for r in rows)


def test_training_compute_counts_image_steps_at_their_size():
  config = _config("depth=4,steps=8")  # image_every = 4: steps 4 and 8 are image batches
  compute = training_compute(config)
  assert (compute["video_steps"], compute["image_steps"]) == (6, 2)
  from vidgen.scaling import train_flops_per_step

  expected = 6 * train_flops_per_step(config, "video") + 2 * train_flops_per_step(config, "image")
  assert compute["flops"] == expected
  assert compute["tokens"] == config.batch_size * (6 * 5 * 4 * 4 + 2 * 4 * 4)


def test_isoflop_points_spend_their_budget():
  sweep = ml_collections.ConfigDict(dict(sizes=(4, 6, 8), budgets=(2e12, 6e12), min_steps=40, max_steps=4000))
  points = expand(sweep, _config)
  assert [p.kind for p in points] == ["isoflop"] * len(points)
  for p in points:
    assert 40 <= p.steps <= 4000
    # Whole steps: within one step's FLOPs of the budget.
    per_step = p.flops / p.steps
    assert abs(p.flops - p.budget) <= per_step, (p.name, p.flops, p.budget)
    assert p.arg == f"depth={p.depth},steps={p.steps}"
  names = [p.name for p in points]
  assert names[0] == "isoflop_2e12_d4" and len(set(names)) == len(names)
  # Sizes whose step count falls outside [min_steps, max_steps] are dropped from a profile.
  narrow = expand(ml_collections.ConfigDict(dict(sizes=(4, 6, 8), budgets=(2e12,), min_steps=500, max_steps=1000)),
                  _config)
  assert [p.depth for p in narrow] == [6]
  with pytest.raises(ValueError, match="every IsoFLOP point falls outside"):
    expand(ml_collections.ConfigDict(dict(sizes=(4,), budgets=(2e12,), min_steps=1, max_steps=10)), _config)


def test_grid_and_extra_points():
  sweep = ml_collections.ConfigDict(dict(sizes=(4, 8), grid_steps=(10, 20), extra=("depth=6,steps=7",)))
  points = expand(sweep, _config, "attention=full")
  assert [p.name for p in points] == ["grid_d4_s10", "grid_d8_s10", "grid_d4_s20", "grid_d8_s20",
                                      "extra_depth_6_steps_7"]
  assert points[-1].depth == 6 and points[-1].steps == 7
  assert all(p.arg.startswith("attention=full,") for p in points)


@pytest.mark.parametrize("sweep,message", [
    (dict(sizes=(4,), budgets=(1e12,), typo=1), "unknown fields"),
    (dict(sizes=(4,)), "defines no point"),
    (dict(budgets=(1e12,)), "need at least one size"),
    (dict(sizes=(0,), budgets=(1e12,)), "positive integers"),
    (dict(sizes=(4,), budgets=(-1.0,)), "must be > 0"),
    (dict(sizes=(4,), budgets=(1e12,), min_steps=10, max_steps=5), "min_steps <= max_steps"),
])
def test_bad_sweeps_are_refused(sweep, message):
  with pytest.raises(ValueError, match=message):
    validate_sweep(ml_collections.ConfigDict(sweep))


def test_commands_for_a_scheduler(tmp_path):
  sweep = Sweep(SCALING, "runlocal", str(tmp_path), {"batch_size": 2})
  lines = sweep.commands()
  assert lines[0].startswith(f"vidgen sweep --config {SCALING}:runlocal --workdir {tmp_path} ")
  assert "--stage prepare" in lines[0] and "--config.batch_size=2" in lines[0]
  assert lines[-1].endswith("--stage collect")
  trains = lines[1:-1]
  assert len(trains) == len(sweep.points) >= 2
  for line, point in zip(trains, sweep.points):
    assert line.startswith("vidgen train --config ") and f":{point.arg}" in line
    assert f"--workdir {tmp_path / point.name}" in line
    assert f"--config.vae_workdir={tmp_path / 'vae'}" in line and "--config.batch_size=2" in line


def test_unfinished_points_have_no_result(tmp_path):
  point = expand(ml_collections.ConfigDict(dict(extra=("runlocal,depth=2,steps=3",))), _config)[0]
  assert point_result(point, str(tmp_path)) is None
  config = _config(point.arg)
  (tmp_path / "config.json").write_text(config.to_json())
  (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 2, "loss": 1.0, "val_loss": 0.9}) + "\n")
  assert point_result(point, str(tmp_path)) is None  # the validation loss of an earlier step is not the result
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 3, "loss": 0.8, "val_loss": 0.7, "val_loss_se": 0.01, "step_time_s": 0.5}) + "\n")
  row = point_result(point, str(tmp_path))
  assert row["val_loss"] == 0.7 and row["val_loss_se"] == 0.01 and row["loss"] == 0.8 and row["steps"] == 3
  assert row["params"] > 0 and row["width"] == config.dit.width


def test_validation_times_are_quantiles_of_the_training_distribution():
  schedule = diffusion.CosineSchedule()
  uniform = diffusion.Objective(schedule=schedule)
  np.testing.assert_allclose(validation_times(uniform, 4), [0.125, 0.375, 0.625, 0.875])
  flow = diffusion.Objective(schedule=diffusion.FlowSchedule(), prediction="flow", timesteps="logit_normal",
                             logit_mean=0.5, logit_std=1.0)
  times = validation_times(flow, 1001)
  assert times[500] == pytest.approx(1 / (1 + np.exp(-0.5)), abs=1e-6)  # the median: sigmoid(mean)
  draws = np.asarray(flow.sample_t(__import__("jax").random.key(0), 20000))
  # Each grid point sits at its quantile of the distribution the model is trained on.
  for q in (0.1, 0.5, 0.9):
    assert np.quantile(draws, q) == pytest.approx(times[int(q * 1000)], abs=0.01)


def test_validation_loss_is_fixed_and_averages_clips_over_the_time_grid():
  import jax
  import jax.numpy as jnp

  from vidgen.parallel import make_mesh
  from vidgen.train.validation import ValidationLoss

  rng = np.random.default_rng(0)
  x = rng.standard_normal((6, 2, 3)).astype(np.float32)
  labels = np.arange(6, dtype=np.int32)

  def loss_fn(w, x, t, eps, inputs):  # a stand-in objective: per-example squared error of a scaled "denoiser"
    return jnp.mean((w * x - t[:, None, None] * eps) ** 2, axis=(1, 2)) + 0.01 * inputs["label"]

  objective = diffusion.Objective(schedule=diffusion.CosineSchedule())
  val = ValidationLoss(x, {"label": labels}, loss_fn, objective, num_times=3, batch_size=2, seed=7,
                       mesh=make_mesh({"data": 1}))
  mean, se = val(jnp.float32(0.5))
  assert (mean, se) == val(jnp.float32(0.5))  # the same noise, times and clips at every call
  # By hand: each clip's loss averaged over the 3 times, then the mean and standard error over the 6 clips.
  noise = np.random.default_rng(7).standard_normal((3, *x.shape), dtype=np.float32)
  times = np.array([1 / 6, 1 / 2, 5 / 6])
  per_clip = np.mean([np.mean((0.5 * x - t * n) ** 2, axis=(1, 2)) + 0.01 * labels for t, n in zip(times, noise)],
                     axis=0)
  assert mean == pytest.approx(per_clip.mean(), rel=1e-5)
  assert se == pytest.approx(per_clip.std(ddof=1) / np.sqrt(6), rel=1e-4)
  assert val(jnp.float32(1.0))[0] != pytest.approx(mean)  # it can tell two models apart
