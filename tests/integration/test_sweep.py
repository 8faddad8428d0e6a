"""`vidgen sweep` end to end on the runlocal scaling sweep: it trains every point on one shared VAE and cache, a point
killed mid-run resumes exactly, finished points are skipped, and results.jsonl has one row per point."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import nbformat
import pytest

import cli_runs
from test_notebooks import NOTEBOOKS, SCALING, execute, kernel, outputs, parameterized  # noqa: F401 (kernel: fixture)
from vidgen.config import read_run_config
from vidgen.data.latent_cache import is_image_batch
from vidgen.scaling import train_flops_per_step

SWEEP = "scaling_shapes.py:runlocal"
KILLED = "isoflop_2e8_d2"  # the longest point (33 steps), killed after its checkpoint at step 20 was written
# Timing fields differ between runs; everything else a point logs must not.
TIMING = {"steps_per_sec", "step_time_s", "tflops_per_device", "mfu", "model_flops_per_step"}


def _untimed(workdir) -> list[dict]:
  return [{k: v for k, v in r.items() if k not in TIMING} for r in cli_runs.records(workdir)]


def _results(workdir) -> list[dict]:
  with open(os.path.join(workdir, "results.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
  """The runlocal sweep, SIGKILLed once during a point after its checkpoint and run again to the end."""
  workdir = tmp_path_factory.mktemp("sweep")
  overrides = ("--config.checkpoint_every=10",)
  run = cli_runs.Run(workdir, *overrides, config=SWEEP, verb="sweep")
  run.wait_for(lambda line: f"point 3/4 {KILLED}" in line, timeout=600)
  # Steps take milliseconds here: kill during the point's final evaluation, once checkpoint 20 is on disk.
  run.wait_for(lambda line: line.startswith("step 30/33"), timeout=300)
  deadline = time.monotonic() + 60
  while 20 not in cli_runs.checkpoint_steps(workdir / KILLED) and time.monotonic() < deadline:
    time.sleep(0.05)
  os.kill(run.proc.pid, signal.SIGKILL)
  run.finish()
  assert 20 in cli_runs.checkpoint_steps(workdir / KILLED)
  assert not os.path.exists(workdir / "results.jsonl")
  again = cli_runs.Run(workdir, *overrides, config=SWEEP, verb="sweep")
  assert again.finish(timeout=600) == 0, again.output()[-3000:]
  return workdir, again.output()


def test_sweep_trains_every_point_and_collects(finished_sweep):
  workdir, output = finished_sweep
  assert "point 1/4 isoflop_1e8_d2 is finished" in output and "point 2/4 isoflop_1e8_d4 is finished" in output
  assert f"resumed from {workdir / KILLED / 'checkpoints'} at step " in output
  rows = _results(workdir)
  assert [r["name"] for r in rows] == ["isoflop_1e8_d2", "isoflop_1e8_d4", "isoflop_2e8_d2", "isoflop_2e8_d4"]
  for row in rows:
    assert row["kind"] == "isoflop" and row["budget"] in (1e8, 2e8)
    assert abs(row["flops"] - row["budget"]) <= row["flops"] / row["steps"]  # whole steps spend the budget
    assert row["val_loss"] > 0 and row["val_loss_se"] > 0 and row["params"] > row["non_embedding_params"] > 0
  # Every point encoded with the one shared VAE and cache.
  for row in rows:
    config = json.load(open(workdir / row["name"] / "config.json"))
    assert config["vae_workdir"] == str(workdir / "vae")
    assert config["data"]["cache_dir"] == str(workdir / "latents")
  assert not os.path.exists(workdir / rows[0]["name"] / "vae")


def test_killed_point_matches_an_uninterrupted_run(finished_sweep, tmp_path):
  workdir, _ = finished_sweep
  # The same point alone, uninterrupted, through `vidgen train` (the same XLA flags as the sweep's processes).
  done = cli_runs.train(tmp_path / "alone", "--config.checkpoint_every=10", f"--config.vae_workdir={workdir / 'vae'}",
                        f"--config.data.cache_dir={workdir / 'latents'}",
                        config="scaling_shapes.py:runlocal,depth=2,steps=33")
  assert done.returncode == 0, done.stdout[-3000:]
  assert _untimed(workdir / KILLED) == _untimed(tmp_path / "alone")


def test_collect_again_gives_the_same_rows(finished_sweep):
  workdir, _ = finished_sweep
  before = _results(workdir)
  run = cli_runs.Run(workdir, "--config.checkpoint_every=10", "--stage=collect", config=SWEEP, verb="sweep")
  assert run.finish(timeout=300) == 0, run.output()[-3000:]
  assert _results(workdir) == before


def test_logged_flops_are_the_mean_of_each_interval(finished_sweep):
  # Every other runlocal step is an image step: a record's FLOPs per step are the mean over the steps it covers, so
  # the MFU of a record whose last step happens to be an image step is not understated.
  workdir, _ = finished_sweep
  config = read_run_config(str(workdir / KILLED))
  per_phase = {phase: train_flops_per_step(config, phase) for phase in ("image", "video")}
  phase = lambda step: "image" if is_image_batch(step - 1, config.data.image_every) else "video"
  previous = 0
  for record in cli_runs.records(workdir / KILLED):
    steps = range(previous + 1, record["step"] + 1)
    expected = sum(per_phase[phase(s)] for s in steps) / len(steps)
    assert record["model_flops_per_step"] == pytest.approx(expected, rel=1e-12), record["step"]
    previous = record["step"]


def test_scaling_notebook_reads_the_live_sweep(finished_sweep, kernel, tmp_path):
  # The notebook runs on a sweep this small too: it fits what four points allow and says what they do not.
  workdir, _ = finished_sweep
  shutil.copy(workdir / "results.jsonl", tmp_path / "isoflop.jsonl")
  nb = execute(parameterized(nbformat.read(SCALING, as_version=4), RESULTS_DIR=str(tmp_path), NUM_BOOTSTRAP=20),
               kernel, NOTEBOOKS)
  text, _ = outputs(nb, "load")
  assert "4 points, 2 budgets" in text
  text, _ = outputs(nb, "frontier")
  assert "not fitted" in text  # two frontier points cannot give a power law with an intercept
  text, _ = outputs(nb, "predict")
  assert "predicting C = " in text and "not fitted" in text  # one budget below the largest: nothing to fit
