"""Tests for vidgen.benchmarks.data: a tiny in-process run on mp4 files written by tests/media_files.py (the runlocal
variant of experiments/video_vae.py), its report and JSON line, and the argument parsing.

  pytest tests/unit/test_benchmarks_data.py
"""

from __future__ import annotations

import json
import os
import re

import media_files as mf
import numpy as np
import pytest

from vidgen.benchmarks import data as data_bench
from vidgen.errors import ConfigError


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("videos")
  for i in range(6):  # runlocal holds 2 records out for validation (the trainer reads them), 4 train
    mf.write_video(str(directory / f"clip{i}.mp4"), mf.counting_frames(12, 32, 32, noise=4, seed=i))
  return str(directory)


def test_cli_reports_loader_step_and_verdicts(video_dir, tmp_path, capsys):
  json_path = str(tmp_path / "data.json")
  result = data_bench.main(["--path", video_dir, "--config-arg", "runlocal", "--batches", "2", "--step-batches", "2",
                            "--workers", "0,1", "--json", json_path])
  out = capsys.readouterr().out
  lines = out.strip().splitlines()
  assert json.loads(lines[-1]) == result
  with open(json_path) as f:
    assert json.load(f) == result

  # runlocal: batch 2 of 5-frame clips cut to 16x16 windows (data.crop_size), as the trainer feeds them.
  assert result["batch"] == 2 and result["clip"] == [5, 16, 16]
  assert "batch 2 x 5x16x16" in out
  assert f"{os.cpu_count()} CPU cores" in out
  assert [r["workers"] for r in result["loader"]] == [0, 1]
  for r in result["loader"]:
    assert r["clips_per_s"] > 0 and r["batches_per_s"] > 0 and r["startup_s"] > 0 and r["seconds"] > 0
    assert r["clips_per_s"] == pytest.approx(2 * r["batches_per_s"])
    assert r["skipped"] == 0 and r["read"] == 3 * 2  # the warm-up batch and 2 timed batches of 2 clips
    assert re.search(rf"^\s+{r['workers']}\s+{r['startup_s']:.2f}\s+{r['clips_per_s']:.2f}\s", out, re.M)
    assert r["ratio"] == pytest.approx(r["clips_per_s"] / result["step"]["clips_per_s"])
    assert re.fullmatch(r"keeps up \(x\d+(\.\d)? headroom\)|falls short: needs \d+(\.\d)?x more throughput",
                        r["verdict"])
  assert re.search(r"^  0 workers: +(keeps up|falls short)", out, re.M)
  assert re.search(r"^  1 worker: +(keeps up|falls short)", out, re.M)

  step = result["step"]
  assert step["backend"] == "cpu" and step["num_devices"] >= 1 and step["steps"] == 2
  assert step["step_s"] > 0 and step["compile_s"] > 0 and step["loss"] > 0
  assert step["clips_per_s"] == pytest.approx(2 / step["step_s"])
  assert f"{1e3 * step['step_s']:.1f} ms/step = {data_bench._number(step['clips_per_s'])} clips/s" in out


def test_loader_only_with_overrides(video_dir, capsys):
  result = data_bench.main(["--path", video_dir, "--config-arg", "runlocal", "--batches", "1", "--workers", "0",
                            "--no-step", "--set", "data.crop_size=0", "--set", "batch_size=3"])
  assert result["step"] is None and result["clip"] == [5, 32, 32] and result["batch"] == 3
  assert result["config"].endswith("video_vae.py:runlocal --set data.crop_size=0 --set batch_size=3")
  (row,) = result["loader"]
  assert row["read"] == 6 and "verdict" not in row
  assert "not measured (--no-step)" in capsys.readouterr().out


def test_estimate_from_flops_scales_with_the_assumed_rate(video_dir, capsys):
  """--assume-tflops: the step from XLA's FLOP count (nothing allocated); twice the rate needs twice the clips/s."""
  args = ["--path", video_dir, "--config-arg", "runlocal", "--batches", "1", "--workers", "0", "--no-step"]
  slow = data_bench.main([*args, "--assume-tflops", "1e-3"])["estimate"]
  fast = data_bench.main([*args, "--assume-tflops", "2e-3"])["estimate"]
  assert slow["flops_per_step"] == fast["flops_per_step"] > 0
  np.testing.assert_allclose(fast["clips_per_s"], 2 * slow["clips_per_s"])
  assert "device step estimated from XLA's FLOP count" in capsys.readouterr().out


def test_step_out_of_memory_keeps_the_loader_numbers(video_dir, monkeypatch, capsys):
  def out_of_memory(config, steps):
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 39274401728 bytes.")

  monkeypatch.setattr(data_bench, "measure_step", out_of_memory)
  result = data_bench.main(["--path", video_dir, "--config-arg", "runlocal", "--batches", "1", "--workers", "0"])
  assert result["step"] is None and result["step_error"].startswith("RESOURCE_EXHAUSTED")
  assert result["loader"][0]["clips_per_s"] > 0
  out = capsys.readouterr().out
  assert "device step: does not fit in memory (RESOURCE_EXHAUSTED" in out
  assert json.loads(out.strip().splitlines()[-1]) == result

  monkeypatch.setattr(data_bench, "measure_step", lambda config, steps: 1 / 0)
  with pytest.raises(ZeroDivisionError):  # other errors are bugs, not measurements
    data_bench.main(["--path", video_dir, "--config-arg", "runlocal", "--batches", "1", "--workers", "0"])


def test_verdict_wording():
  assert data_bench.verdict(18.0, 10.0) == "keeps up (x1.8 headroom)"
  assert data_bench.verdict(10.0, 10.0) == "keeps up (x1.0 headroom)"
  assert data_bench.verdict(10.0, 17.0) == "falls short: needs 1.7x more throughput"
  assert data_bench.verdict(31.4, 0.00827) == "keeps up (x3797 headroom)"
  assert data_bench._number(0.00827) == "0.00827" and data_bench._number(34.984) == "34.98"


def test_arguments_and_overrides_are_checked(video_dir):
  assert data_bench.parse_workers("0, 2,4") == [0, 2, 4]
  for bad in ("", "1,-1", "a"):
    with pytest.raises(Exception, match="--workers"):
      data_bench.parse_workers(bad)
  config = data_bench.load_config(data_bench.DEFAULT_CONFIG, None, video_dir,
                                  ["data.height=128", "data.flip=False", "vae.channels=(32, 64, 128)"])
  assert (config.data.path, config.data.height, config.data.flip) == (video_dir, 128, False)
  assert tuple(config.vae.channels) == (32, 64, 128)
  with pytest.raises(ConfigError, match="data.hieght"):
    data_bench.load_config(data_bench.DEFAULT_CONFIG, None, video_dir, ["data.hieght=128"])
  with pytest.raises(ConfigError, match="FIELD=VALUE"):
    data_bench.load_config(data_bench.DEFAULT_CONFIG, None, video_dir, ["data.height"])
