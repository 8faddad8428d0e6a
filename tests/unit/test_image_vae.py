"""ImageVAE: parity with diffusers' AutoencoderKL on random weights, checkpoint loading and conversion, input errors."""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from vidgen.config import ConfigError  # noqa: E402
from vidgen.models.image_vae import (ImageVAE, convert_image_vae_state_dict, image_vae_config,  # noqa: E402
                                     image_vae_config_from_diffusers, image_vae_from_state_dict, load_image_vae)
from vidgen.models.vae import param_count  # noqa: E402

# Three levels with a width change (conv_shortcut), quant convs and mid attention; and two levels with two ResNet
# blocks per level, other channel counts, and every optional layer switched off.
CONFIGS = {
    "three_levels": dict(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4),
    "bare": dict(block_out_channels=(8, 16), layers_per_block=2, norm_num_groups=4, in_channels=1, out_channels=2,
                 latent_channels=3, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False,
                 scaling_factor=1.5, shift_factor=0.25),
}
TOL = 1e-4
# sd-vae-ft-ema's config.json: written by diffusers 0.4, it omits scaling_factor and the later switches.
SD_VAE_FT_EMA_CONFIG = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.4.2", "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3,
    "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 256,
    "up_block_types": ["UpDecoderBlock2D"] * 4}


def _diffusers_kwargs(config) -> dict:
  n = len(config.block_out_channels)
  keys = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups",
          "scaling_factor", "shift_factor", "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention")
  return dict(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
              **{k: config[k] for k in keys})


def _reference(config, seed: int = 0) -> "diffusers.AutoencoderKL":
  """diffusers' model with torch's default init, and random GroupNorm affines (their init, ones and zeros, would hide a
  swapped scale / bias)."""
  torch.manual_seed(seed)
  model = diffusers.AutoencoderKL(**_diffusers_kwargs(config)).eval()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.GroupNorm):
        module.weight.copy_(1.0 + 0.2 * torch.randn_like(module.weight))
        module.bias.copy_(0.2 * torch.randn_like(module.bias))
  return model


# Jitted: run eagerly, every layer would compile on its own for each new shape.
_encode = nnx.jit(lambda vae, x, chunk_frames=None: vae.encode(x, chunk_frames=chunk_frames),
                  static_argnames="chunk_frames")
_decode = nnx.jit(lambda vae, z, chunk_frames=None: vae.decode(z, chunk_frames=chunk_frames),
                  static_argnames="chunk_frames")


@pytest.fixture(scope="module", params=list(CONFIGS), ids=list(CONFIGS))
def pair(request):
  config = image_vae_config(**CONFIGS[request.param])
  reference = _reference(config)
  return config, reference, image_vae_from_state_dict(reference.state_dict(), config)


def _video(shape, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)


def _to_frames(x) -> torch.Tensor:
  """[B, T, H, W, C] -> torch [B*T, C, H, W]."""
  x = np.asarray(x)
  return torch.from_numpy(x.reshape(-1, *x.shape[2:]).transpose(0, 3, 1, 2).copy())


def _from_frames(x: torch.Tensor, b: int, t: int) -> np.ndarray:
  y = x.detach().numpy().transpose(0, 2, 3, 1)
  return y.reshape(b, t, *y.shape[1:])


def _reference_encode(reference, video):
  with torch.no_grad():
    dist = reference.encode(_to_frames(video)).latent_dist
  b, t = video.shape[:2]
  return _from_frames(dist.mean, b, t), _from_frames(dist.logvar, b, t), _from_frames(dist.std, b, t)


def _reference_decode(reference, z):
  with torch.no_grad():
    return _from_frames(reference.decode(_to_frames(z)).sample, *z.shape[:2])


# -- parity ------------------------------------------------------------------------------------------------------------


VIDEO_SHAPE = (2, 2, 16, 32)  # two videos of two non-square frames: T folded into the batch, H and W not swapped


def test_encode_and_decode_match_diffusers(pair):
  config, reference, vae = pair
  video = _video((*VIDEO_SHAPE, config.in_channels))
  posterior = _encode(vae, video)
  mean, logvar, std = _reference_encode(reference, video)
  f = vae.spatial_factor
  assert posterior.mean.shape == (2, 2, 16 // f, 32 // f, config.latent_channels) == vae.latent_shape(video.shape)
  np.testing.assert_allclose(posterior.mean, mean, atol=TOL, rtol=0)
  np.testing.assert_allclose(posterior.logvar, logvar, atol=TOL, rtol=0)
  np.testing.assert_allclose(posterior.std, std, atol=TOL, rtol=0)
  z = jax.random.normal(jax.random.key(3), posterior.mean.shape)
  decoded = _decode(vae, z)
  assert decoded.shape == (*VIDEO_SHAPE, config.out_channels) and decoded.dtype == jnp.float32
  np.testing.assert_allclose(decoded, _reference_decode(reference, z), atol=TOL, rtol=0)


def test_chunked_frames_equal_one_pass(pair):
  """The 4 frames in chunks of 3 (one mapped chunk and a 1-frame tail) give the one-pass result (up to the float
  rounding of other batch sizes)."""
  config, _, vae = pair
  video = _video((*VIDEO_SHAPE, config.in_channels), seed=1)
  whole = _encode(vae, video)
  np.testing.assert_allclose(_encode(vae, video, chunk_frames=3).mean, whole.mean, atol=1e-5, rtol=0)
  np.testing.assert_allclose(_encode(vae, video, chunk_frames=3).logvar, whole.logvar, atol=1e-5, rtol=0)
  z = jax.random.normal(jax.random.key(4), whole.mean.shape)
  np.testing.assert_allclose(_decode(vae, z, chunk_frames=3), _decode(vae, z), atol=1e-5, rtol=0)


def test_bfloat16_compute_and_params_stay_close_to_float32():
  """dtype / param_dtype bfloat16: parameters stored in bfloat16, outputs float32 and within bfloat16 rounding (8-bit
  mantissa, about 0.4% per op, through some 20 layers) of the float32 model."""
  config = image_vae_config(**CONFIGS["three_levels"])
  state = _reference(config).state_dict()
  vae = image_vae_from_state_dict(state, config)
  half = image_vae_from_state_dict(state, image_vae_config(**CONFIGS["three_levels"], dtype="bfloat16",
                                                           param_dtype="bfloat16"))
  assert {p.dtype for p in jax.tree.leaves(nnx.state(half, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}
  video = _video((*VIDEO_SHAPE, 3), seed=7)
  mean, half_mean = _encode(vae, video).mean, _encode(half, video).mean
  assert half_mean.dtype == jnp.float32
  np.testing.assert_allclose(half_mean, mean, atol=0.1, rtol=0)
  np.testing.assert_allclose(_decode(half, mean), _decode(vae, mean), atol=0.1, rtol=0)


def test_normalize_is_diffusers_scaling_arithmetic(pair):
  config, _, vae = pair
  z = jax.random.normal(jax.random.key(5), (1, 1, 4, 4, config.latent_channels))
  shift = config.shift_factor or 0.0
  np.testing.assert_allclose(vae.normalize(z), (z - shift) * config.scaling_factor, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(vae.denormalize(vae.normalize(z)), z, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(vae.denormalize(z), z / config.scaling_factor + shift, rtol=1e-6, atol=1e-6)


# -- checkpoints -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("safe_serialization", [True, False], ids=["safetensors", "bin"])
def test_load_image_vae_round_trip(tmp_path, safe_serialization):
  """save_pretrained -> load_image_vae: same outputs as diffusers, latent stats from the config; also found from a
  hub-style parent folder holding `vae/`."""
  config = image_vae_config(**CONFIGS["bare"])
  reference = _reference(config, seed=2)
  reference.save_pretrained(tmp_path / "vae", safe_serialization=safe_serialization)
  for path in (tmp_path / "vae", tmp_path):
    vae = load_image_vae(str(path))
    assert vae.config == {**config.to_dict(), "spatial_downsample": 2, "temporal_downsample": 1}
    video = _video((*VIDEO_SHAPE, 1), seed=2)
    np.testing.assert_allclose(_encode(vae, video).mean, _reference_encode(reference, video)[0], atol=TOL, rtol=0)
    z = jax.random.normal(jax.random.key(6), (2, 2, 8, 16, 3))
    np.testing.assert_allclose(_decode(vae, z), _reference_decode(reference, z), atol=TOL, rtol=0)
    np.testing.assert_allclose(vae.normalize(z), (z - 0.25) * 1.5, rtol=1e-6, atol=1e-6)


def test_load_bin_without_torch_is_refused(tmp_path, monkeypatch):
  config = image_vae_config(**CONFIGS["bare"])
  _reference(config).save_pretrained(tmp_path, safe_serialization=False)
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  with pytest.raises(ImportError, match="needs torch"):
    load_image_vae(tmp_path)


def test_load_image_vae_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such directory"):
    load_image_vae(tmp_path / "absent")
  with pytest.raises(FileNotFoundError, match="no config.json"):
    load_image_vae(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps(SD_VAE_FT_EMA_CONFIG))
  with pytest.raises(FileNotFoundError, match="no weights file"):
    load_image_vae(tmp_path)


def test_legacy_attention_names_are_accepted():
  """Older checkpoints (sd-vae-ft-ema's) name the mid attention query / key / value / proj_attn."""
  config = image_vae_config(**CONFIGS["three_levels"])
  state = _reference(config).state_dict()
  legacy = {}
  for key, value in state.items():
    for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
      key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
    legacy[key] = value
  assert "encoder.mid_block.attentions.0.proj_attn.weight" in legacy
  expected = convert_image_vae_state_dict(state, config)
  jax.tree.map(np.testing.assert_array_equal, convert_image_vae_state_dict(legacy, config), expected)
  with pytest.raises(ValueError, match="both legacy and current names"):
    convert_image_vae_state_dict({**state, "decoder.mid_block.attentions.0.query.bias": torch.zeros(16)}, config)


def test_bad_state_dicts_are_refused_by_name():
  config = image_vae_config(**CONFIGS["three_levels"])
  state = dict(_reference(config).state_dict())
  missing = {k: v for k, v in state.items() if k != "decoder.up_blocks.1.upsamplers.0.conv.weight"}
  with pytest.raises(ValueError, match=r"missing weights \(1\).*decoder\.up_blocks\.1\.upsamplers\.0\.conv\.weight"):
    convert_image_vae_state_dict(missing, config)
  with pytest.raises(ValueError, match=r"unexpected weights \(1\).*encoder\.extra\.weight"):
    convert_image_vae_state_dict({**state, "encoder.extra.weight": torch.zeros(1)}, config)
  bad_shape = {**state, "encoder.conv_in.weight": torch.zeros(8, 3, 5, 5)}
  with pytest.raises(ValueError, match=r"encoder\.conv_in\.weight: \(8, 3, 5, 5\) does not convert to \(3, 3, 3, 8\)"):
    convert_image_vae_state_dict(bad_shape, config)
  # A checkpoint of another architecture: both directions named.
  with pytest.raises(ValueError, match="missing weights.*unexpected weights"):
    convert_image_vae_state_dict(state, image_vae_config(**CONFIGS["bare"]))


# -- config ------------------------------------------------------------------------------------------------------------


def test_default_config_is_sd_vae_ft_ema():
  """sd-vae-ft-ema's config.json reads as the defaults, whose parameter count and names equal diffusers' model."""
  config = image_vae_config_from_diffusers(SD_VAE_FT_EMA_CONFIG)
  assert config.to_dict() == image_vae_config().to_dict()
  abstract = nnx.eval_shape(lambda: ImageVAE(config, rngs=nnx.Rngs(0)))
  with torch.device("meta"):
    reference = diffusers.AutoencoderKL.from_config(SD_VAE_FT_EMA_CONFIG)
  assert param_count(abstract) == sum(p.numel() for p in reference.parameters()) == 83_653_863
  assert reference.config.scaling_factor == config.scaling_factor == 0.18215
  assert abstract.spatial_factor == 8 and abstract.temporal_factor == 1
  assert abstract.latent_shape((2, 1, 256, 256, 3)) == (2, 1, 32, 32, 4)


@pytest.mark.parametrize("change,message", [
    ({"down_block_types": ["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"]}, "down_block_types must be"),
    ({"up_block_types": ["UpDecoderBlock2D"] * 3}, "up_block_types must be 4"),
    ({"act_fn": "gelu"}, "act_fn must be 'silu'"),
    ({"latents_mean": [0.0] * 4, "latents_std": [1.0] * 4}, "latents_mean / latents_std are not supported"),
    ({"_class_name": "AutoencoderKLWan"}, "only AutoencoderKL"),
    ({"norm_type": "spatial"}, r"unknown fields \['norm_type'\]"),
    ({"norm_num_groups": 48}, "divisible by image_vae.norm_num_groups=48"),
])
def test_unsupported_diffusers_configs_are_refused(change, message):
  with pytest.raises(ValueError, match=message):
    image_vae_config_from_diffusers({**SD_VAE_FT_EMA_CONFIG, **change})


@pytest.mark.parametrize("overrides,message", [
    (dict(norm_num_groups=3), "divisible by image_vae.norm_num_groups=3"),
    (dict(block_out_channels=()), "non-empty tuple"),
    (dict(layers_per_block=0), "layers_per_block: must be >= 1"),
    (dict(scaling_factor=0.0), "scaling_factor: must be > 0"),
    (dict(dtype="int8"), "image_vae.dtype"),
    (dict(levels=3), r"unknown fields \['levels'\]"),
])
def test_bad_configs_are_refused(overrides, message):
  with pytest.raises(ConfigError, match=message):
    ImageVAE(image_vae_config(**{**CONFIGS["three_levels"], **overrides}), rngs=nnx.Rngs(0))


def test_config_attribute_rebuilds_the_model_and_derived_keys_are_checked():
  build = lambda config: nnx.eval_shape(lambda: ImageVAE(config, rngs=nnx.Rngs(0)))
  vae = build(image_vae_config(**CONFIGS["three_levels"]))
  assert vae.config["spatial_downsample"] == 4 and vae.config["temporal_downsample"] == 1
  assert build(vae.config).config == vae.config
  with pytest.raises(ConfigError, match="spatial_downsample: is derived"):
    ImageVAE({**vae.config, "spatial_downsample": 8}, rngs=nnx.Rngs(0))


# -- inputs ------------------------------------------------------------------------------------------------------------


def test_bad_inputs_are_refused(pair):
  config, _, vae = pair
  c = config.in_channels
  f = vae.spatial_factor
  with pytest.raises(ValueError, match="rank 5"):
    vae.encode(jnp.zeros((1, 16, 16, c)))
  with pytest.raises(ValueError, match=f"expects {c} channels"):
    vae.encode(jnp.zeros((1, 1, 16, 16, c + 1)))
  with pytest.raises(ValueError, match=f"positive multiples of {f}"):
    vae.encode(jnp.zeros((1, 1, 16 + 1, 16, c)))
  with pytest.raises(ValueError, match="floating video"):
    vae.encode(jnp.zeros((1, 1, 16, 16, c), jnp.uint8))
  with pytest.raises(ValueError, match="chunk_frames must be a positive int"):
    vae.encode(jnp.zeros((1, 1, 16, 16, c)), chunk_frames=0)
  with pytest.raises(ValueError, match="expects latents"):
    vae.decode(jnp.zeros((1, 4, 4, config.latent_channels)))
  with pytest.raises(ValueError, match="expects latents"):
    vae.decode(jnp.zeros((1, 1, 4, 4, config.latent_channels + 1)))
  with pytest.raises(ValueError, match="positive multiples"):
    vae.latent_shape((1, 0, 16, 16, c))
