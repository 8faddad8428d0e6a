"""The super-resolution cascade's mechanics: the condition and its noise augmentation (vidgen.diffusion.cascade),
config validation, the trainer's use of the condition, and CascadePipeline's composition (vidgen.cascade)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import experiment_config
from vidgen.config import ConfigError
from vidgen.diffusion import cascade
from vidgen.errors import InputError

C = 8  # the shapes VAE's latent channels


# -- the condition ---------------------------------------------------------------------------------------------------


def test_upsampling_repeats_each_latent_pixel_over_its_block():
  low = jax.random.normal(jax.random.key(0), (2, 3, 4, 5, C))
  up = np.asarray(cascade.upsample_latents(low, 2))
  assert up.shape == (2, 3, 8, 10, C)
  for i, j in ((0, 0), (1, 0), (0, 1), (1, 1)):
    np.testing.assert_array_equal(up[:, :, i::2, j::2], np.asarray(low))
  assert cascade.upsample_latents(low, 3).shape == (2, 3, 12, 15, C)


def test_condition_is_the_variance_preserving_mix_plus_a_level_channel():
  up = jax.random.normal(jax.random.key(0), (3, 2, 4, 4, C))
  eps = jax.random.normal(jax.random.key(1), up.shape)
  level = jnp.array([0.0, 0.3, 1.0])
  out = np.asarray(cascade.condition(up, level, eps))
  assert out.shape == (3, 2, 4, 4, C + 1)
  np.testing.assert_allclose(out[0, ..., :C], up[0], atol=1e-6)  # level 0: the clean condition
  np.testing.assert_allclose(out[2, ..., :C], eps[2], atol=1e-6)  # level 1: nothing of it left
  a, s = np.cos(0.15 * np.pi), np.sin(0.15 * np.pi)
  np.testing.assert_allclose(out[1, ..., :C], a * up[1] + s * eps[1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[..., C], np.broadcast_to(np.asarray(level)[:, None, None, None], (3, 2, 4, 4)))
  alpha, sigma = cascade.augmentation_scales(jnp.linspace(0.0, 1.0, 11))
  np.testing.assert_allclose(alpha ** 2 + sigma ** 2, 1.0, rtol=1e-6)


def test_training_condition_draws_levels_and_posterior_samples():
  key = jax.random.key(0)
  low_mean = jax.random.normal(jax.random.key(1), (64, 2, 2, 2, C)) * 3 + 1
  shift, scale = np.full(C, 1.0, np.float32), np.full(C, 3.0, np.float32)
  settings = {"factor": 2, "max_level": 0.4}
  out = np.asarray(cascade.training_condition(key, low_mean, jnp.zeros_like(low_mean), shift, scale, settings))
  assert out.shape == (64, 2, 4, 4, C + 1)
  levels = out[:, 0, 0, 0, C]
  assert np.all(out[..., C] == levels[:, None, None, None])  # one level per example, constant over the clip
  assert levels.min() >= 0.0 and levels.max() <= 0.4 and levels.std() > 0.05  # uniform on [0, 0.4]
  assert abs(levels.mean() - 0.2) < 0.05
  # Its noise: conditioning = alpha up + sigma eps with up the normalized latents, whatever the level.
  up = np.asarray(cascade.upsample_latents((low_mean - shift) / scale, 2))
  alpha, sigma = np.cos(0.5 * np.pi * levels), np.sin(0.5 * np.pi * levels)
  eps = (out[..., :C] - alpha[:, None, None, None, None] * up) / sigma[:, None, None, None, None]
  assert abs(eps.std() - 1.0) < 0.05 and abs(eps.mean()) < 0.05
  # Level 0 and a zero std: exactly the normalized, upsampled posterior mean.
  clean = cascade.training_condition(key, low_mean, jnp.zeros_like(low_mean), shift, scale,
                                     {"factor": 2, "max_level": 0.0})
  np.testing.assert_allclose(clean[..., :C], up, rtol=1e-6)
  # A nonzero std: a sample of the posterior, not its mean; other keys draw other conditions.
  sampled = cascade.training_condition(key, low_mean, jnp.ones_like(low_mean), shift, scale,
                                       {"factor": 2, "max_level": 0.0})
  np.testing.assert_allclose(np.std(np.asarray(sampled[..., :C]) - up), 1.0 / 3.0, rtol=0.05)
  other = cascade.training_condition(jax.random.key(5), low_mean, jnp.zeros_like(low_mean), shift, scale, settings)
  assert not np.allclose(other, out)


def test_sampling_condition_uses_the_fixed_level():
  low = jax.random.normal(jax.random.key(0), (2, 2, 2, 3, C))
  out = np.asarray(cascade.sampling_condition(jax.random.key(1), low, 2, 0.25))
  assert out.shape == (2, 2, 4, 6, C + 1)
  assert np.all(out[..., C] == 0.25)
  np.testing.assert_array_equal(out, cascade.sampling_condition(jax.random.key(1), low, 2, 0.25))
  exact = cascade.sampling_condition(jax.random.key(1), low, 2, 0.0)
  np.testing.assert_allclose(exact[..., :C], cascade.upsample_latents(low, 2), atol=1e-6)


def test_area_downsample_averages_blocks_and_refuses_partial_blocks():
  video = np.zeros((1, 2, 4, 4, 3), np.uint8)
  video[0, :, :2, :2] = [[0, 255, 10], [255, 255, 11]] * 1  # a 2x2 block of two rows
  video[0, 1, 2:, 2:] = 200
  out = cascade.area_downsample(video, 2)
  assert out.shape == (1, 2, 2, 2, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[0, 0, 0, 0], [128, 255, 10])  # (0 + 255) / 2 = 127.5 rounds to 128; (10+11)/2
  assert out[0, 1, 1, 1].tolist() == [200, 200, 200] and out[0, 0, 1, 1].tolist() == [0, 0, 0]
  with pytest.raises(ValueError, match="2x2 blocks"):
    cascade.area_downsample(np.zeros((1, 5, 6, 3), np.uint8), 2)


def test_low_resolution_latents_encode_the_downsampled_clips():
  seen = []

  def encode(video):
    seen.append(video)
    return video[..., :1].astype(np.float64), np.ones(video.shape[:-1] + (1,))

  video = np.random.default_rng(0).integers(0, 256, (2, 5, 8, 8, 3), dtype=np.uint8)
  arrays = cascade.low_resolution_latents(video, 2, encode)
  assert sorted(arrays) == sorted(cascade.LOW_RESOLUTION_KEYS)
  np.testing.assert_array_equal(seen[0], cascade.area_downsample(video, 2))
  assert arrays["low_mean"].dtype == np.float32 and arrays["low_mean"].shape == (2, 5, 4, 4, 1)


# -- configuration ---------------------------------------------------------------------------------------------------


def sr_config(base="", **overrides):
  """experiments/shapes_sr.py:runlocal with dotted-key overrides; a VAE run directory that need not exist."""
  arg = "runlocal" + (f",base={base}" if base else "")
  if not base:
    overrides = {"vae_workdir": "/nonexistent/vae", **overrides}
  config = experiment_config("shapes_sr", arg, **overrides)
  return config


def vae_config():
  return experiment_config("shapes_vae", "runlocal").vae


def test_the_experiment_config_is_valid_and_consistent():
  config = sr_config()
  cascade.validate_config(config, vae_config())
  base = experiment_config("shapes_t2v", "runlocal")
  cascade.check_stages(base.data, config.data, config.super_resolution.factor)
  assert config.dit.task_channels == cascade.task_channels(vae_config().latent_channels)
  assert "vae_stage" not in config
  full = experiment_config("shapes_sr", "base=/runs/base")
  assert full.vae_workdir == "/runs/base/vae" and (full.data.height, full.data.width) == (128, 128)
  assert tuple(full.dit.input_size) == (5, 16, 16)
  # A base stage is not a super-resolution stage, so the check does nothing there.
  cascade.validate_config(base, vae_config())


@pytest.mark.parametrize("field, value, named", [
    ("super_resolution.factor", 1, "super_resolution.factor"),
    ("super_resolution.max_level", 1.0, "super_resolution.max_level"),
    ("super_resolution.max_level", -0.1, "super_resolution.max_level"),
    ("super_resolution.sample_level", 0.9, "super_resolution.sample_level"),
    ("dit.task_channels", 8, "dit.task_channels"),
    ("data.height", 72, "data.height"),
    ("data.image_every", 2, "data.image_every"),
    ("data.packing", True, "data.packing"),
    ("tasks.image_to_video", 0.5, "config.tasks"),
    ("vae_workdir", "", "vae_workdir"),
])
def test_bad_fields_are_refused_by_name(field, value, named):
  config = sr_config(**{field: value})
  with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
    cascade.validate_config(config, vae_config())


def test_unknown_fields_and_a_validation_set_are_refused():
  config = sr_config()
  config.super_resolution.levels = 3
  with pytest.raises(ConfigError, match="unknown fields"):
    cascade.validate_config(config, vae_config())
  config = sr_config()
  config.validation = {"clips": 8}
  with pytest.raises(ConfigError, match=r"validation\.clips"):
    cascade.validate_config(config, vae_config())


def _write_run(directory, config):
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w") as f:
    f.write(config.to_json_best_effort())


def test_the_base_run_is_checked_when_named(tmp_path):
  base_dir = str(tmp_path / "base")
  base = experiment_config("shapes_t2v", "runlocal")
  _write_run(base_dir, base)
  cascade.validate_config(sr_config(base=base_dir), vae_config())  # its VAE: base_dir/vae
  with pytest.raises(ConfigError, match="vae_workdir"):
    cascade.validate_config(sr_config(base=base_dir, vae_workdir="/elsewhere/vae"), vae_config())
  base.data.num_frames = 9
  _write_run(base_dir, base)
  with pytest.raises(ConfigError, match=r"data\.num_frames"):
    cascade.validate_config(sr_config(base=base_dir), vae_config())
  _write_run(base_dir, sr_config())
  with pytest.raises(ConfigError, match="super-resolution stage"):
    cascade.validate_config(sr_config(base=base_dir), vae_config())
  with pytest.raises(ConfigError, match="base_workdir"):
    cascade.validate_config(sr_config(base=str(tmp_path / "none")), vae_config())


def test_the_dit_trainer_validates_the_block():
  from vidgen.train import dit_trainer

  mesh = {"data": 1, "fsdp": 1, "tensor": 1}
  dit_trainer.validate_config(sr_config(), mesh, vae_config())
  with pytest.raises(ConfigError, match=r"super_resolution\.sample_level"):
    dit_trainer.validate_config(sr_config(**{"super_resolution.sample_level": 0.7}), mesh, vae_config())


# -- training and generation -----------------------------------------------------------------------------------------


def _randomize(tree, seed):
  """Random values in every parameter: the DiT's zero-initialized output layer would hide what the input does."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [l + 0.3 * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, keys)])


def test_the_trainer_feeds_the_low_resolution_clip_to_the_model():
  from vidgen.models.vae import SpacetimeVAE
  from vidgen.parallel import make_mesh
  from vidgen.train.dit_trainer import DiTTrainer

  config = sr_config()
  vae = SpacetimeVAE(vae_config(), rngs=nnx.Rngs(0))
  trainer = DiTTrainer(config, make_mesh(dict(config.mesh)), "/tmp/unused", vae=vae, cache=None)
  state = trainer.init_state(jax.random.key(0))
  state = state.replace(params=_randomize(state.params, 1))
  rng = np.random.default_rng(0)
  b, (t, h, w, c) = config.batch_size, tuple(config.dit.input_size) + (C,)
  ids, mask = trainer.tokenizer(["a red circle moving right"] * b)
  batch = {"mean": rng.normal(size=(b, t, h, w, c)).astype(np.float32),
           "std": np.full((b, t, h, w, c), 0.1, np.float32),
           "low_mean": rng.normal(size=(b, t, h // 2, w // 2, c)).astype(np.float32),
           "low_std": np.full((b, t, h // 2, w // 2, c), 0.1, np.float32), "ids": ids, "mask": mask,
           "caption": np.asarray(["a red circle moving right"] * b), "label": np.zeros(b, np.int32)}
  host = trainer.host_batch(batch)
  assert set(cascade.LOW_RESOLUTION_KEYS) <= set(host)
  step = jax.jit(lambda s, x: trainer.train_step(s, x, "video"))
  loss = lambda x: float(step(state, {k: jnp.asarray(v) for k, v in x.items()})[1]["loss"])  # noqa: E731
  first = loss(host)
  assert first == loss(host)
  assert first != loss({**host, "low_mean": host["low_mean"] + 1.0})  # the condition reaches the model


@pytest.fixture(scope="module")
def stages():
  """Two in-memory pipelines with random weights: a runlocal base run and its super-resolution stage."""
  from vidgen.models.vae import SpacetimeVAE
  from vidgen.pipeline import VideoPipeline
  from vidgen.runs import dit_models

  vae = SpacetimeVAE(vae_config(), rngs=nnx.Rngs(0))

  def pipeline(config, seed):
    networks = {name: nnx.split(m, nnx.Param) for name, m in dit_models(config, nnx.Rngs(seed)).items()}
    networks = {name: (g, _randomize(p, seed)) for name, (g, p) in networks.items()}
    return VideoPipeline(config, networks, vae)

  return pipeline(experiment_config("shapes_t2v", "runlocal"), 1), pipeline(sr_config(), 2), vae


def test_cascade_shapes_and_the_second_stage_reads_the_first(stages):
  from vidgen.cascade import CascadePipeline

  base, sr, _ = stages
  pipe = CascadePipeline(base, sr)
  prompts = ["a red circle moving right", "a blue square moving up"]
  kw = dict(num_frames=5, steps=2, seed=3)
  video = pipe(prompts, **kw)
  assert video.shape == (2, 5, 64, 64, 3) and video.dtype == np.uint8
  assert pipe(prompts[0], **kw).shape == (5, 64, 64, 3)
  latents = pipe(prompts, output="latent", **kw)
  assert latents.shape == (2, 2, 8, 8, C)
  # The cascade is exactly: the base stage's latents -> the second stage.
  low = base(prompts, output="latent", **kw)
  assert low.shape == (2, 2, 4, 4, C)
  np.testing.assert_array_equal(pipe.upsample(prompts, low, seed=3, output="latent"), latents)
  # The second stage depends on those latents, and on the augmentation level it is given.
  moved = pipe.upsample(prompts, low + 1.0, seed=3, output="latent")
  assert np.abs(moved - latents).mean() > 1e-3
  clean = pipe.upsample(prompts, low, seed=3, output="latent", level=0.0)
  assert np.abs(clean - latents).mean() > 1e-4
  # Example i is a function of (prompt i, seed, i): the same in a batch of two as alone.
  np.testing.assert_allclose(pipe.upsample(prompts[0], low[0], seed=3, output="latent"), latents[0], rtol=1e-5,
                             atol=1e-4)
  assert pipe(prompts[0], height=32, width=32, **kw).shape == (5, 32, 32, 3)  # 16 x 16 base clips


def test_cascade_refuses_what_does_not_fit(stages):
  from vidgen.cascade import CascadePipeline
  from vidgen.models.vae import SpacetimeVAE
  from vidgen.pipeline import VideoPipeline

  base, sr, _ = stages
  with pytest.raises(InputError, match="not a super-resolution stage"):
    CascadePipeline(base, base)
  with pytest.raises(InputError, match="base"):
    CascadePipeline(sr, sr)
  other = VideoPipeline(sr.config, sr.networks, SpacetimeVAE(vae_config(), rngs=nnx.Rngs(7)))
  with pytest.raises(InputError, match="another VAE"):
    CascadePipeline(base, other)
  bigger = sr_config(**{"data.height": 128, "data.width": 128})
  with pytest.raises(InputError, match=r"data\.height"):
    CascadePipeline(base, VideoPipeline(bigger, sr.networks, stages[2]))
  pipe = CascadePipeline(base, sr)
  with pytest.raises(InputError, match="low_latents"):
    pipe.upsample(["a red circle moving right"], np.zeros((2, 4, 4, C)))
  with pytest.raises(InputError, match="one size per call"):
    pipe(["a red circle moving right"] * 2, num_frames=[5, 9])
  with pytest.raises(InputError, match="height"):
    pipe("a red circle moving right", num_frames=5, height=40)
