"""WanVAE: parity with diffusers' AutoencoderKLWan (same random weights), streaming, loading and errors."""

import functools
import inspect
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from flax import nnx

from vidgen.config import ConfigError
from vidgen.models.wan_vae import (WanVAE, convert_wan_state_dict, load_wan_vae, validate_wan_vae_config,
                                   wan_vae_config)

TINY = dict(base_dim=8, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=1, attn_scales=(),
            temperal_downsample=(False, True, True), latents_mean=(0.3, -0.5, 0.1, 1.2),
            latents_std=(1.5, 0.8, 2.0, 1.1))
# Time halved at the encoder's first two level transitions (and so doubled at the decoder's last two).
TINY_EARLY_TIME = dict(TINY, temperal_downsample=(True, True, False))
HEIGHT, WIDTH = 16, 32  # non-square, so a swapped height and width cannot pass


def _reference(overrides: dict, seed: int = 0) -> AutoencoderKLWan:
  """diffusers' model with random weights; the RMS-norm gammas (ones at init) are randomised too."""
  torch.manual_seed(seed)
  model = AutoencoderKLWan(**{k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith("gamma"):
        param.uniform_(0.5, 1.5)
  return model


def _numpy_state(model: AutoencoderKLWan) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _video(frames: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, (2, frames, HEIGHT, WIDTH, 3)).astype(np.float32)


def _to_torch(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))  # [B, T, H, W, C] -> [B, C, T, H, W]


def _from_torch(x: torch.Tensor) -> np.ndarray:
  return x.detach().numpy().transpose(0, 2, 3, 4, 1)


def _reference_encode(model, video):
  with torch.no_grad():
    dist = model.encode(_to_torch(video)).latent_dist
  return _from_torch(dist.mean), _from_torch(dist.logvar), _from_torch(dist.std)


def _reference_decode(model, z):
  with torch.no_grad():
    return _from_torch(model.decode(_to_torch(z)).sample)


class _Jitted:
  """A WanVAE's encode / decode, jitted once per input shape and chunking."""

  def __init__(self, vae: WanVAE):
    graph, self.state = nnx.split(vae)

    def encode(state, video, chunk):
      post = nnx.merge(graph, state).encode(video, chunk_frames=chunk)
      return post.mean, post.logvar, post.std

    self._encode = jax.jit(encode, static_argnums=2)
    self._decode = jax.jit(lambda state, z, chunk: nnx.merge(graph, state).decode(z, chunk_frames=chunk),
                           static_argnums=2)

  def encode(self, video, chunk=None):
    return [np.asarray(a) for a in self._encode(self.state, jnp.asarray(video), chunk)]

  def decode(self, z, chunk=None):
    return np.asarray(self._decode(self.state, jnp.asarray(z), chunk))


@pytest.fixture(scope="module")
def models():
  reference = _reference(TINY)
  vae = convert_wan_state_dict(_numpy_state(reference), wan_vae_config(**TINY))
  return reference, vae, _Jitted(vae)


@pytest.mark.parametrize("frames", [1, 9])  # 9 = frame 0 and two chunks of 4 in diffusers' streaming encode
def test_encode_and_decode_match_diffusers(models, frames):
  reference, vae, jitted = models
  video = _video(frames, seed=frames)
  mean, logvar, std = _reference_encode(reference, video)
  ours = jitted.encode(video)
  latent_frames = 1 + (frames - 1) // 4
  assert ours[0].shape == mean.shape == (2, latent_frames, HEIGHT // 8, WIDTH // 8, 4)
  for got, want in zip(ours, (mean, logvar, std)):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  # Decoding (one latent frame at a time in diffusers) from latents other than the mean, to exercise every channel.
  z = mean + 0.5 * np.random.default_rng(1).standard_normal(mean.shape).astype(np.float32)
  want = _reference_decode(reference, z)
  assert want.shape == video.shape
  assert np.mean(np.abs(want) < 1) > 0.9, "the reference output is mostly clamped: the comparison would be weak"
  np.testing.assert_allclose(jitted.decode(z), want, atol=1e-4, rtol=0)


def test_other_time_levels_match_diffusers():
  """temperal_downsample moves the time halvings (and the decoder's time doublings) to other levels."""
  reference = _reference(TINY_EARLY_TIME, seed=1)
  jitted = _Jitted(convert_wan_state_dict(_numpy_state(reference), wan_vae_config(**TINY_EARLY_TIME)))
  video = _video(5, seed=5)
  mean, logvar, _ = _reference_encode(reference, video)
  got_mean, got_logvar, _ = jitted.encode(video)
  np.testing.assert_allclose(got_mean, mean, atol=1e-4, rtol=0)
  np.testing.assert_allclose(got_logvar, logvar, atol=1e-4, rtol=0)
  np.testing.assert_allclose(jitted.decode(mean), _reference_decode(reference, mean), atol=1e-4, rtol=0)


def test_chunked_encode_and_decode_equal_one_pass(models):
  _, _, jitted = models
  video = _video(9, seed=9)
  whole = jitted.encode(video)
  for got, want in zip(jitted.encode(video, chunk=4), whole):  # diffusers' schedule: frame 0, then 4 at a time
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  z = np.random.default_rng(3).standard_normal((2, 3, HEIGHT // 8, WIDTH // 8, 4)).astype(np.float32)
  np.testing.assert_allclose(jitted.decode(z, chunk=1), jitted.decode(z), atol=1e-5, rtol=0)


def test_chunked_decode_memory_does_not_grow_with_length(models):
  """The point of streaming: decoding 4x the latent frames one at a time needs about the same scratch memory."""
  _, vae, _ = models
  graph, state = nnx.split(vae)

  def temp_bytes(latent_frames, chunk):
    fn = jax.jit(lambda s, z: nnx.merge(graph, s).decode(z, chunk_frames=chunk))
    z = jax.ShapeDtypeStruct((1, latent_frames, 4, 4, 4), jnp.float32)
    return fn.lower(state, z).compile().memory_analysis().temp_size_in_bytes

  short, long = temp_bytes(3, 1), temp_bytes(12, 1)
  assert long < 1.5 * short, (short, long)
  assert temp_bytes(12, None) > 3 * long


def test_latent_normalization_is_wans(models):
  _, vae, _ = models
  mean, std = np.asarray(TINY["latents_mean"], np.float32), np.asarray(TINY["latents_std"], np.float32)
  z = np.random.default_rng(0).standard_normal((1, 2, 2, 4, 4)).astype(np.float32)
  # diffusers' Wan pipelines: (z - mean) * (1 / std) before the transformer, z / (1 / std) + mean before decoding.
  np.testing.assert_allclose(vae.normalize(z), (z - mean) * (1.0 / std), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(vae.denormalize(z), z / (1.0 / std) + mean, rtol=1e-6, atol=1e-6)
  other = nnx.clone(vae)
  other.set_latent_stats(jnp.zeros(4), jnp.full(4, 2.0))
  np.testing.assert_allclose(other.normalize(z), z / 2.0, rtol=1e-6)
  np.testing.assert_allclose(vae.latent_scale[...], std)


def test_default_config_is_wan21():
  config = wan_vae_config()
  validate_wan_vae_config(config)
  defaults = {k: p.default for k, p in inspect.signature(AutoencoderKLWan.__init__).parameters.items()}
  for key in ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales", "temperal_downsample",
              "latents_mean", "latents_std"):
    assert tuple(np.atleast_1d(config[key])) == tuple(np.atleast_1d(defaults[key])), key
  vae = nnx.eval_shape(lambda: WanVAE(config, rngs=nnx.Rngs(0)))
  assert (vae.spatial_factor, vae.temporal_factor, vae.in_channels, vae.latent_channels) == (8, 4, 3, 16)
  assert vae.latent_shape((2, 17, 64, 96, 3)) == (2, 5, 8, 12, 16)
  params = sum(x.size for x in jax.tree.leaves(nnx.state(vae, nnx.Param)))
  with torch.device("meta"):
    assert params == sum(p.numel() for p in AutoencoderKLWan().parameters())


def test_load_round_trip_from_save_pretrained(models, tmp_path):
  reference, vae, jitted = models
  reference.save_pretrained(tmp_path / "single")
  reference.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
  assert (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").is_file()
  video = _video(9, seed=2)  # the shape of the parity test: the same program, compiled once
  want = jitted.encode(video)[0]
  for folder in ("single", "sharded"):
    loaded = load_wan_vae(str(tmp_path / folder))
    assert nnx.graphdef(loaded) == nnx.graphdef(vae)
    for a, b in zip(jax.tree.leaves(nnx.state(loaded)), jax.tree.leaves(nnx.state(vae))):
      np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(_Jitted(loaded).encode(video)[0], want)
  half = load_wan_vae(str(tmp_path / "single"), dtype="bfloat16")
  assert {x.dtype for x in jax.tree.leaves(nnx.state(half, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}
  np.testing.assert_allclose(half.latent_scale[...], TINY["latents_std"], rtol=1e-6)


@pytest.mark.parametrize("change,match", [
    ({"is_residual": True}, "is_residual=True .*Wan 2.2"),
    ({"patch_size": 2}, "patch_size=2"),
    ({"in_channels": 12}, "in_channels=12"),
    ({"decoder_base_dim": 16}, "decoder_base_dim=16"),
    ({"_class_name": "AutoencoderKL"}, "not an AutoencoderKLWan"),
    ({"clip_output": False}, "unknown AutoencoderKLWan config keys \\['clip_output'\\]"),
    ({"z_dim": 8}, "latents_mean: must be 8 floats"),
])
def test_unsupported_configs_are_refused(tmp_path, change, match):
  config = {"_class_name": "AutoencoderKLWan", **{k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()},
            "dropout": 0.0, "is_residual": False, "in_channels": 3, "out_channels": 3, "patch_size": None}
  (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
  with pytest.raises(ConfigError, match=match):
    load_wan_vae(str(tmp_path))


def test_missing_files_are_reported(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such directory"):
    load_wan_vae(str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="no config.json"):
    load_wan_vae(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan", **TINY}))
  with pytest.raises(FileNotFoundError, match="no diffusion_pytorch_model.safetensors"):
    load_wan_vae(str(tmp_path))


def test_state_dict_mismatches_name_the_weights(models):
  reference, _, _ = models
  state = _numpy_state(reference)
  config = wan_vae_config(**TINY)
  dropped = {k: v for k, v in state.items() if k != "decoder.conv_in.bias"}
  with pytest.raises(ValueError, match=r"missing \(1\): decoder.conv_in.bias"):
    convert_wan_state_dict(dropped, config)
  with pytest.raises(ValueError, match=r"unexpected \(1\): encoder.extra.weight"):
    convert_wan_state_dict({**state, "encoder.extra.weight": np.zeros(3)}, config)
  with pytest.raises(ValueError, match=r"1 weights do not fit .*encoder.conv_in.weight: \(8, 3, 1, 3, 3\), "
                                      r"expected \(8, 3, 3, 3, 3\)"):
    convert_wan_state_dict({**state, "encoder.conv_in.weight": np.zeros((8, 3, 1, 3, 3))}, config)
  with pytest.raises(ValueError, match=r"weights do not fit WanVAE\(config\) \(check base_dim"):
    convert_wan_state_dict(state, wan_vae_config(**dict(TINY, base_dim=16)))


@pytest.mark.parametrize("overrides,match", [
    ({"dim_mult": (1, 2, 4)}, "dim_mult"),
    ({"temperal_downsample": (True, True, True)}, "exactly two True"),
    ({"attn_scales": (1.0,)}, "attn_scales: must be empty"),
    ({"latents_std": (1.0, 1.0, 0.0, 1.0)}, "latents_std: must be > 0"),
    ({"num_res_blocks": 0}, "num_res_blocks"),
])
def test_bad_configs_are_refused(overrides, match):
  with pytest.raises(ConfigError, match=match):
    WanVAE(wan_vae_config(**dict(TINY, **overrides)), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("shape,dtype,match", [
    ((9, 16, 32, 3), jnp.float32, "rank 5"),
    ((1, 8, 16, 32, 3), jnp.float32, "T = 1 \\+ 4k"),
    ((1, 9, 12, 32, 3), jnp.float32, "divisible by 8"),
    ((1, 9, 16, 32, 4), jnp.float32, "3 channels"),
    ((1, 9, 16, 32, 3), jnp.uint8, "floating video"),
])
def test_bad_videos_are_refused(models, shape, dtype, match):
  _, vae, jitted = models
  with pytest.raises(ValueError, match=match):
    vae.encode(jnp.zeros(shape, dtype))
  if dtype == jnp.float32 and len(shape) == 5 and match != "3 channels":
    with pytest.raises(ValueError, match=match):
      vae.latent_shape(shape)


def test_bad_latents_and_chunks_are_refused(models):
  _, vae, jitted = models
  with pytest.raises(ValueError, match="latents \\[B, T', H', W', 4\\]"):
    vae.decode(jnp.zeros((1, 2, 2, 4, 16)))
  with pytest.raises(ValueError, match="multiple of 4 frames"):
    vae.encode(jnp.zeros((1, 9, 16, 32, 3)), chunk_frames=6)
  with pytest.raises(ValueError, match="positive multiple of 1 latent frames"):
    vae.decode(jnp.zeros((1, 2, 2, 4, 4)), chunk_frames=0)
