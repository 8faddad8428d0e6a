"""The super-resolution cascade end to end on tiny settings: a base run and its stage trained through the stages,
the stage's latent cache, generation through the pipeline and the CLI, and the benchmark."""

import json
import os
import subprocess
import sys

import imageio.v3 as iio
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import experiment_config
from vidgen.data import to_model_range
from vidgen.data.sources import get_source
from vidgen.diffusion import cascade

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
  """A tiny text-to-video run (5 x 32 x 32) with its super-resolution stage (5 x 64 x 64) in BASE/sr."""
  from vidgen.train import train_and_evaluate

  base = str(tmp_path_factory.mktemp("cascade"))
  train_and_evaluate(experiment_config("shapes_t2v", "runlocal"), base)
  train_and_evaluate(experiment_config("shapes_sr", f"runlocal,base={base}"), os.path.join(base, "sr"))
  return base


def _cache_arrays(directory):
  with open(os.path.join(directory, "meta.json")) as f:
    meta = json.load(f)
  with np.load(os.path.join(directory, meta["shards"][0])) as shard:
    return meta, {k: shard[k] for k in shard.files}


def test_the_stage_caches_both_resolutions_of_each_clip(base_run):
  from vidgen import runs

  meta, arrays = _cache_arrays(os.path.join(base_run, "sr", "latents"))
  assert meta["fingerprint"]["super_resolution"] == {"factor": 2, "downsample": "area"}
  assert arrays["mean"].shape[1:] == (2, 8, 8, 8) and arrays["low_mean"].shape[1:] == (2, 4, 4, 8)
  assert arrays["low_std"].shape == arrays["low_mean"].shape and np.all(arrays["low_std"] > 0)
  # low_mean is the shared VAE's posterior mean of the training clips downsampled: recomputed for the first batch.
  config = runs.read_config(os.path.join(base_run, "sr"))
  clips = next(get_source(config.data).iterator("train", global_batch=config.data.cache_batch))
  vae, _ = runs.load_vae(os.path.join(base_run, "vae"))
  low = to_model_range(cascade.area_downsample(clips["video"], 2))
  np.testing.assert_allclose(arrays["low_mean"][:len(low)], vae.encode(jnp.asarray(low)).mean, rtol=1e-4,
                             atol=1e-4)
  high = vae.encode(jnp.asarray(to_model_range(clips["video"]))).mean
  np.testing.assert_allclose(arrays["mean"][:len(low)], high, rtol=1e-4, atol=1e-4)
  # A base run's cache keeps its format: no low-resolution arrays, no super_resolution fingerprint.
  meta, arrays = _cache_arrays(os.path.join(base_run, "latents"))
  assert "super_resolution" not in meta["fingerprint"] and not set(cascade.LOW_RESOLUTION_KEYS) & set(arrays)


def test_the_pipeline_and_the_cli_generate_through_the_cascade(base_run, tmp_path):
  from vidgen.cascade import CascadePipeline, load_pipeline

  pipe = load_pipeline(base_run)
  assert isinstance(pipe, CascadePipeline)
  video = pipe("a red circle moving right", num_frames=5, steps=2, seed=1)
  assert video.shape == (5, 64, 64, 3) and video.dtype == np.uint8
  np.testing.assert_array_equal(pipe("a red circle moving right", num_frames=5, steps=2, seed=1), video)

  out = str(tmp_path / "clip.mp4")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-m", "vidgen.cli", "sample", "--workdir", base_run, "--prompt",
                         "a green square moving up", "--output", out, "--num_frames", "5", "--steps", "2"],
                        capture_output=True, text=True, env=env, cwd=ROOT)
  assert done.returncode == 0, done.stderr[-2000:]
  assert np.stack(list(iio.imiter(out))).shape[:3] == (5, 64, 64)
  # The stage on its own is no generator: a one-line error naming what to do.
  done = subprocess.run([sys.executable, "-m", "vidgen.cli", "sample", "--workdir", os.path.join(base_run, "sr"),
                         "--prompt", "a green square moving up", "--output", out], capture_output=True, text=True,
                        env=env, cwd=ROOT)
  assert done.returncode == 2 and "super-resolution stage" in done.stderr and "Traceback" not in done.stderr


def test_the_benchmark_measures_the_stage_and_its_baselines(base_run, tmp_path):
  from vidgen.benchmarks import super_resolution

  output = str(tmp_path / "sr.json")
  results = super_resolution.main(["--workdir", os.path.join(base_run, "sr"), "--clips", "3", "--generated", "2",
                                   "--batch", "2", "--steps", "2", "--output", output])
  with open(output) as f:
    assert json.load(f) == json.loads(json.dumps(results))
  real = results["real"]
  assert set(real) == {"sr", "bilinear", "bicubic", "bilinear_vae", "bicubic_vae", "vae_high"}
  assert all(v["n"] == 3 for m in real.values() for k, v in m.items() if k != "sr_minus_this")
  paired = real["bicubic"]["sr_minus_this"]["psnr"]["mean"]
  assert np.isclose(paired, real["sr"]["psnr"]["mean"] - real["bicubic"]["psnr"]["mean"], atol=1e-6)
  # Interpolating the clip itself beats interpolating a barely trained VAE's reconstruction of it.
  assert real["bicubic"]["psnr"]["mean"] > real["bicubic_vae"]["psnr"]["mean"]
  assert results["generated"]["sr"]["sharpness"]["n"] == 2 and "consistency" in results["generated"]["sr"]
