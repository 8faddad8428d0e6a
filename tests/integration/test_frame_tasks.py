"""Frame tasks end to end on tiny settings: a run trained with image-to-video, extension and interpolation, then
every frame condition, loops and long videos through the pipeline and the CLI."""

import os
import subprocess
import sys

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import experiment_config
from vidgen.config import ConfigError
from vidgen.errors import InputError
from vidgen.data.shapes import ShapesDataset
from vidgen.frame_conditions import plan_window
from vidgen.models.vae import latent_grid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPT = "a red circle moving right"
FAST = dict(steps=2)


@pytest.fixture(scope="module")
def tasks_run(tmp_path_factory):
  from vidgen.train import train_and_evaluate

  workdir = str(tmp_path_factory.mktemp("tasks"))
  config = experiment_config("shapes_t2v", "runlocal,tasks")
  config.validation = dict(clips=4, timesteps=2, batch=2, seed=0, ema=True)
  train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope="module")
def pipe(tasks_run):
  from vidgen.pipeline import VideoPipeline

  return VideoPipeline.from_workdir(tasks_run)


@pytest.fixture(scope="module")
def clip():
  """A real 9-frame 32x32 clip of the embedded data."""
  return ShapesDataset(split="validation", num_frames=9, height=32, width=32)[0].video


def test_config_checks():
  from vidgen.train import stages

  config = experiment_config("shapes_t2v", "runlocal,tasks")
  config.dit.task_channels = 3
  with pytest.raises(ConfigError, match="dit.task_channels"):
    stages.validate(config)
  config = experiment_config("shapes_t2v", "runlocal")
  config.dit.task_channels = 9  # a field nothing would read is refused
  with pytest.raises(ConfigError, match="nothing feeds the task channels"):
    stages.validate(config)
  config = experiment_config("shapes_t2v", "runlocal,tasks")
  config.tasks.zoom = 1.0
  with pytest.raises(ConfigError, match="zoom"):
    stages.validate(config)


def test_given_frames_are_kept_and_surrounded(pipe, clip):
  image = clip[0]
  video = pipe(PROMPT, image=image, num_frames=5, **FAST)
  assert video.shape == (5, 32, 32, 3)
  np.testing.assert_array_equal(video[0], image)
  forward = pipe(PROMPT, video=clip, num_frames=5, **FAST)  # window 5 = 2 latent frames: 1 given, 4 new frames
  assert forward.shape[0] == 9 + 4
  np.testing.assert_array_equal(forward[:9], clip)
  backward = pipe(PROMPT, video=clip, extend="backward", num_frames=5, **FAST)
  assert backward.shape[0] == 1 + 9
  np.testing.assert_array_equal(backward[1:], clip)
  between = pipe([PROMPT, "a blue square moving up"], first=clip[0], last=clip[-1], num_frames=9, window=9, **FAST)
  # 3 latent frames: the first image's, one generated (4 frames), the last image held over the last 4 frames.
  assert between.shape == (2, 1 + 4 + 1, 32, 32, 3)
  np.testing.assert_array_equal(between[:, 0], np.broadcast_to(clip[0], (2, 32, 32, 3)))
  np.testing.assert_array_equal(between[:, -1], np.broadcast_to(clip[-1], (2, 32, 32, 3)))
  with pytest.raises(InputError, match="at least one must be left"):
    pipe(PROMPT, first=clip[0], last=clip[-1], num_frames=5, **FAST)


def test_known_frames_ignore_the_sampler_and_condition_the_rest(pipe, clip):
  """The noise drawn for known frames never matters (they are clean at every step and written back), and the frame
  condition reaches the model (the generated frames depend on it)."""
  plan = plan_window(3, video=clip, overlap=1)
  shape = (1, *latent_grid(pipe.vae_config, 9, 32, 32), pipe.vae_config["latent_channels"])
  known, mask = pipe._known_latents(plan, shape)
  generate = pipe._generate_fn(2, "ddim", True, (0.0, 1.0), 1.0, False, False)
  params = {name: p for name, (_, p) in pipe.networks.items()}
  inputs = pipe._condition_inputs([PROMPT])
  noise = jax.random.normal(jax.random.key(0), shape)
  run = lambda n, k=known: np.asarray(generate(params, pipe.vae_params, pipe.vae_stats, inputs, n, None,  # noqa: E731
                                               jnp.float32(4.0), jax.random.key(1), k, mask))
  z = run(noise)
  z_other_known_noise = run(noise.at[:, 0].set(100.0))
  np.testing.assert_array_equal(z, z_other_known_noise)
  encoded = np.asarray(pipe._encode_fn()(pipe.vae_params, pipe.vae_stats, plan.head))
  np.testing.assert_allclose(known[:, :1], encoded, rtol=0, atol=0)
  assert not np.allclose(run(noise, known + 1.0)[:, 1:], z[:, 1:])


def test_long_video_is_window_by_window_with_one_program(pipe):
  plain = pipe(PROMPT, num_frames=5, **FAST)
  long = pipe(PROMPT, num_frames=21, **FAST)  # windows of 5 frames, each adding 4 after 1 shared latent frame
  assert long.shape == (21, 32, 32, 3)
  np.testing.assert_array_equal(long[:5], plain)  # the first window is the plain text-to-video clip
  programs = {k for k in pipe._compiled if k != "encode"}
  longer = pipe(PROMPT, num_frames=41, **FAST)
  assert longer.shape[0] == 41 and {k for k in pipe._compiled if k != "encode"} == programs
  np.testing.assert_array_equal(longer[:21], long)  # windows depend only on the seed and what came before
  looped = pipe(PROMPT, loop=True, num_frames=9, window=9, **FAST)
  assert looped.shape[0] == 9 + 4  # the clip, then a bridge from its last frame back to its first 4


def test_runs_without_tasks_refuse_frame_conditions(tasks_run, clip):
  from vidgen import runs
  from vidgen.pipeline import VideoPipeline

  # The same networks under a config that trained text-to-video only: no frame conditions and no windows.
  run = runs.load_dit(tasks_run)
  config = run.config.copy_and_resolve_references()
  config.tasks = dict(text_to_video=1.0)
  pipe = VideoPipeline(config, run.networks, run.vae)
  for kwargs in (dict(image=clip[0]), dict(window=5), dict(loop=True)):
    with pytest.raises(InputError, match="trained with frame tasks"):
      pipe(PROMPT, num_frames=5, **kwargs, **FAST)
  assert pipe(PROMPT, num_frames=9, **FAST).shape[0] == 9  # longer clips are still sampled in one window


def test_cli_frame_conditions(tasks_run, clip, tmp_path):
  image = str(tmp_path / "first.png")
  iio.imwrite(image, clip[0])
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  for args, frames in ((["--image", image, "--num_frames", "5"], 5), (["--num_frames", "13"], 13)):
    out = str(tmp_path / "out.mp4")
    done = subprocess.run([sys.executable, "-m", "vidgen.cli", "sample", "--workdir", tasks_run, "--prompt", PROMPT,
                           "--output", out, "--steps", "2", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list(iio.imiter(out))) == frames
  done = subprocess.run([sys.executable, "-m", "vidgen.cli", "sample", "--workdir", tasks_run, "--prompt", PROMPT,
                         "--output", out, "--extend", "backward"], capture_output=True, text=True, env=env, cwd=ROOT)
  assert done.returncode == 2 and "needs video=" in done.stderr


def test_validation_loss_after_the_fact_matches_training(tasks_run):
  """vidgen.benchmarks.validation_loss scores a finished run's EMA weights exactly as its own last evaluation did."""
  import json

  from vidgen.benchmarks.validation_loss import validation_loss

  with open(os.path.join(tasks_run, "metrics.jsonl")) as f:
    last = [json.loads(line) for line in f][-1]
  measured = validation_loss(tasks_run, clips=4, timesteps=2, batch=2, seed=0)
  np.testing.assert_allclose(measured["val_loss"], last["val_loss_ema"], rtol=1e-5)
  np.testing.assert_allclose(measured["val_loss_se"], last["val_loss_ema_se"], rtol=1e-4)
