"""The Wan 2.1 video VAE (causal 3D convolutions, 4x time, 8x space, 16 latent channels) as an NNX module.

    video [B, T, H, W, 3] in [-1, 1], T = 1 + 4k, H and W divisible by 8
      --encode--> DiagonalGaussian over z [B, 1 + k, H/8, W/8, z_dim]
      --decode--> video [B, T, H, W, 3], clamped to [-1, 1] as diffusers does

The same interface as `vidgen.models.vae.SpacetimeVAE`, with parity to diffusers' `AutoencoderKLWan` (config keys and
weight names are diffusers'; `load_wan_vae` reads a diffusers folder without torch). What Wan does differently from
vidgen's own layers, and so is written here:
  * causal time padding with zeros (vidgen's `CausalConv3d` replicates frame 0 when it starts a video): every conv
    here gets an explicit all-zero state at the start, so the layer is reused unchanged;
  * `WanRMSNorm`: x / max(||x||_2, 1e-12) * sqrt(C) * gamma over channels (an L2 normalisation with a clamped norm,
    where `vidgen.layers.norms.RMSNorm` adds eps to the mean square);
  * the resample blocks: a space-only stride-2 conv (zero pad right / bottom) followed, for time down-sampling, by a
    stride-2 time conv whose first output is frame 0 itself (no conv); time up-sampling is a time conv that doubles the
    channels into two frames, again skipping frame 0, before a nearest 2x spatial up-sampling and a conv;
  * a mid block of residual block, single-head spatial attention (per frame), residual block.

Streaming: every temporal conv is causal, so a video can be processed in chunks that carry each conv's last input
frames (`chunk_frames=`); the results equal one pass. diffusers encodes frame 0 and then chunks of 4 frames, and decodes
one latent frame at a time: `chunk_frames=4` / `chunk_frames=1` here.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidgen.config import require
from vidgen.errors import ConfigError
from vidgen.layers.attention import full_attention
from vidgen.layers.conv import CausalConv3d, depth_to_space
from vidgen.layers.precision import COMPUTE_DTYPES, DTYPES, resolve_dtype
from vidgen.models.vae import VIDEO_AXES, Autoencoder, DiagonalGaussian, LatentStats, _States, _stream
from vidgen.models.weights import read_state_dict
from vidgen.parallel import constrain
from vidgen.parallel.sharding import logical

# Wan 2.1's latent statistics (diffusers' AutoencoderKLWan defaults): normalize(z) = (z - mean) / std.
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

SPATIAL_FACTOR = 8
TEMPORAL_FACTOR = 4


def wan_vae_config(**overrides) -> ml_collections.ConfigDict:
  """Wan 2.1's VAE hyper-parameters (diffusers' names, including its spelling `temperal_downsample`)."""
  config = ml_collections.ConfigDict(dict(
      base_dim=96,
      z_dim=16,
      dim_mult=(1, 2, 4, 4),
      num_res_blocks=2,
      attn_scales=(),  # must stay empty (attention only in the mid blocks), as in Wan 2.1
      temperal_downsample=(False, True, True),  # which encoder level transitions also halve time
      latents_mean=WAN21_LATENTS_MEAN,
      latents_std=WAN21_LATENTS_STD,
      dtype="float32",
      param_dtype="float32",
  ))
  config.update(overrides)
  return config


def validate_wan_vae_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first field that WanVAE cannot build."""
  require(config.base_dim >= 1, "vae.base_dim", f"must be >= 1, got {config.base_dim}")
  require(config.z_dim >= 1, "vae.z_dim", f"must be >= 1, got {config.z_dim}")
  levels = len(config.dim_mult)
  require(levels == 4 and all(m >= 1 for m in config.dim_mult), "vae.dim_mult",
          f"must be 4 positive ints (3 level transitions give the 8x spatial factor), got {config.dim_mult}")
  require(config.num_res_blocks >= 1, "vae.num_res_blocks", f"must be >= 1, got {config.num_res_blocks}")
  down = tuple(bool(d) for d in config.temperal_downsample)
  require(len(down) == levels - 1 and sum(down) == 2, "vae.temperal_downsample",
          f"must be {levels - 1} bools with exactly two True (the 4x temporal factor), "
          f"got {config.temperal_downsample}")
  # Attention inside the encoder's levels: no Wan checkpoint has it, and diffusers' AutoencoderKLWan cannot run it
  # (its encoder passes the conv cache to the attention block), so there is no reference to match.
  require(len(config.attn_scales) == 0, "vae.attn_scales",
          f"must be empty (attention in the encoder levels is not supported), got {config.attn_scales}")
  for field in ("latents_mean", "latents_std"):
    require(np.shape(config[field]) == (config.z_dim,), f"vae.{field}",
            f"must be {config.z_dim} floats (one per latent channel, vae.z_dim), got {config[field]!r}")
  require(bool(np.all(np.asarray(config.latents_std, np.float64) > 0)), "vae.latents_std",
          f"must be > 0, got {config.latents_std!r}")
  require(config.dtype in COMPUTE_DTYPES, "vae.dtype", f"must be one of {COMPUTE_DTYPES}, got {config.dtype!r}")
  require(config.param_dtype in DTYPES, "vae.param_dtype", f"must be one of {DTYPES}, got {config.param_dtype!r}")


# ----------------------------------------------------------------------------------------------------------------------
# Layers.


class _Cache(_States):
  """The temporal convs' states of one pass, one entry per conv in call order, as `vidgen.models.vae._States` but
  with Wan's zero past: `previous=None` marks the start of the video, whose frame 0 has zeros before it.

  Each state is the conv's last input frames (2 for a kernel of 3), so the carried structure has the same shapes after
  the 1-frame first chunk and after any later chunk, as a `fori_loop` over chunks needs.
  """

  def take(self, start: jax.Array) -> jax.Array:
    """The state of the next conv: the carried one, or `start` at the start of the video (then `put` its update)."""
    return start if self.previous is None else self.previous[len(self.new)]

  def put(self, state: jax.Array) -> None:
    self.new.append(state)

  def conv(self, conv: CausalConv3d, x: jax.Array) -> jax.Array:
    """A stride-1 causal conv; the past of frame 0 is zeros."""
    kt = conv.kernel_size[0]
    if kt == 1:
      return conv(x)[0]
    y, state = conv(x, self.take(jnp.zeros((x.shape[0], kt - 1, *x.shape[2:]), x.dtype)))
    self.put(state)
    return y


class WanRMSNorm(nnx.Module):
  """Over the channels (last axis): x / max(||x||_2, 1e-12) * sqrt(C) * gamma, in float32; keeps the input's dtype."""

  def __init__(self, dim: int, *, param_dtype=jnp.float32):
    self.scale = math.sqrt(dim)
    self.gamma = nnx.Param(logical(nnx.initializers.ones_init(), "conv_out")(None, (dim,), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True))
    return (x32 / jnp.maximum(norm, 1e-12) * (self.scale * self.gamma[...].astype(jnp.float32))).astype(x.dtype)


class WanResidualBlock(nnx.Module):
  """RMS norm -> SiLU -> causal 3x3x3 conv, twice, plus a 1x1x1 conv shortcut when the width changes."""

  def __init__(self, cin: int, cout: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = WanRMSNorm(cin, param_dtype=param_dtype)
    self.conv1 = CausalConv3d(cin, cout, 3, **kw)
    self.norm2 = WanRMSNorm(cout, param_dtype=param_dtype)
    self.conv2 = CausalConv3d(cout, cout, 3, **kw)
    self.conv_shortcut = CausalConv3d(cin, cout, 1, **kw) if cin != cout else None

  def __call__(self, x: jax.Array, cache: _Cache) -> jax.Array:
    h = cache.conv(self.conv1, jax.nn.silu(self.norm1(x)))
    h = cache.conv(self.conv2, jax.nn.silu(self.norm2(h)))
    skip = x if self.conv_shortcut is None else self.conv_shortcut(x)[0]
    return constrain(skip + h, VIDEO_AXES)


class WanAttentionBlock(nnx.Module):
  """Single-head self-attention over the pixels of each frame (no mixing across time), plus the input."""

  def __init__(self, dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs,
              kernel_init=logical(nnx.initializers.lecun_normal(), "conv_in", "conv_out"),
              bias_init=logical(nnx.initializers.zeros_init(), "conv_out"))
    self.norm = WanRMSNorm(dim, param_dtype=param_dtype)
    self.to_qkv = nnx.Linear(dim, 3 * dim, **kw)
    self.proj = nnx.Linear(dim, dim, **kw)

  def __call__(self, x: jax.Array, cache: _Cache | None = None) -> jax.Array:
    del cache  # no temporal state
    b, t, h, w, c = x.shape
    qkv = self.to_qkv(self.norm(x)).reshape(b * t, h * w, 3, 1, c)
    # XLA attention: the one head is as wide as the block (384 in Wan 2.1), beyond what the fused kernels take.
    out = full_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], backend="xla")
    return x + self.proj(out.reshape(b, t, h, w, c))


RESAMPLE_MODES = ("downsample2d", "downsample3d", "upsample2d", "upsample3d")


class WanResample(nnx.Module):
  """2x down- or up-sampling in space, and in time for the "3d" modes.

  downsample: a 3x3 stride-2 conv per frame (zero pad right and bottom, as `CausalConv3d` pads for stride 2), then
    ("3d") a stride-2 time conv over windows (0, 1, 2), (2, 3, 4), ...; frame 0 passes unchanged, so 1 + 2k frames
    give 1 + k. Its state is the last frame.
  upsample: ("3d") a time conv with 2x the channels, split into two frames each, over frames 1, 2, ... (frame 0
    passes unchanged, so 1 + k frames give 1 + 2k); then nearest 2x in space and a 3x3 conv to dim // 2 channels.
  """

  def __init__(self, dim: int, mode: str, *, dtype, param_dtype, rngs: nnx.Rngs):
    if mode not in RESAMPLE_MODES:
      raise ValueError(f"unknown resample mode {mode!r}; allowed: {RESAMPLE_MODES}")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.mode = mode
    if mode.startswith("down"):
      self.resample = CausalConv3d(dim, dim, (1, 3, 3), stride=(1, 2, 2), **kw)
      time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), **kw) if mode == "downsample3d" else None
    else:
      self.resample = CausalConv3d(dim, dim // 2, (1, 3, 3), **kw)
      time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), **kw) if mode == "upsample3d" else None
    self.time_conv = time_conv

  def __call__(self, x: jax.Array, cache: _Cache) -> jax.Array:
    if self.mode.startswith("down"):
      x = self.resample(x)[0]
      if self.time_conv is not None:
        x = self._time_down(x, cache)
      return x
    if self.time_conv is not None:
      x = self._time_up(x, cache)
    b, t, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, :, None, :, None], (b, t, h, 2, w, 2, c)).reshape(b, t, 2 * h, 2 * w, c)
    return self.resample(x)[0]

  def _time_down(self, x: jax.Array, cache: _Cache) -> jax.Array:
    # Frame 0 of the video passes unchanged and is the stride-2 time conv's first state.
    first = x[:, :1] if cache.at_start else x[:, :0]
    x, state = x[:, first.shape[1]:], cache.take(first)
    if x.shape[1]:
      x, state = self.time_conv(x, state)
    cache.put(state)
    return jnp.concatenate([first, x], axis=1)

  def _time_up(self, x: jax.Array, cache: _Cache) -> jax.Array:
    # Frame 0 of the video passes unchanged; the time conv starts at frame 1, with zeros before it.
    first = x[:, :1] if cache.at_start else x[:, :0]
    x = x[:, first.shape[1]:]
    state = cache.take(jnp.zeros((x.shape[0], 2, *x.shape[2:]), x.dtype))
    if x.shape[1]:
      y, state = self.time_conv(x, state)
      x = depth_to_space(y, 2, 1).astype(x.dtype)  # channels [j C, (j + 1) C) of output t are frame 2t + j
    cache.put(state)
    return jnp.concatenate([first, x], axis=1)


class WanMidBlock(nnx.Module):
  """Residual block, attention, residual block (diffusers' `resnets.0`, `attentions.0`, `resnets.1`)."""

  def __init__(self, dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.resnets = nnx.List([WanResidualBlock(dim, dim, **kw), WanResidualBlock(dim, dim, **kw)])
    self.attentions = nnx.List([WanAttentionBlock(dim, **kw)])

  def __call__(self, x: jax.Array, cache: _Cache) -> jax.Array:
    x = self.resnets[0](x, cache)
    return self.resnets[1](self.attentions[0](x), cache)


class WanEncoder(nnx.Module):
  """[B, T, H, W, 3] -> [B, 1 + (T-1)/4, H/8, W/8, 2 z_dim]; `down_blocks` is diffusers' flat list of residual and
  resample blocks."""

  def __init__(self, config: ml_collections.ConfigDict, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    dims = [config.base_dim * m for m in (1, *config.dim_mult)]
    self.conv_in = CausalConv3d(3, dims[0], 3, **kw)
    blocks: list[nnx.Module] = []
    for i in range(len(config.dim_mult)):
      cin = dims[i]
      for _ in range(config.num_res_blocks):
        blocks.append(WanResidualBlock(cin, dims[i + 1], **kw))
        cin = dims[i + 1]
      if i < len(config.dim_mult) - 1:
        mode = "downsample3d" if config.temperal_downsample[i] else "downsample2d"
        blocks.append(WanResample(dims[i + 1], mode, **kw))
    self.down_blocks = nnx.List(blocks)
    self.mid_block = WanMidBlock(dims[-1], **kw)
    self.norm_out = WanRMSNorm(dims[-1], param_dtype=param_dtype)
    self.conv_out = CausalConv3d(dims[-1], 2 * config.z_dim, 3, **kw)

  def __call__(self, x: jax.Array, cache: _Cache) -> jax.Array:
    h = cache.conv(self.conv_in, x)
    for block in self.down_blocks:
      h = block(h, cache)
    h = self.mid_block(h, cache)
    return cache.conv(self.conv_out, jax.nn.silu(self.norm_out(h)))


class WanUpBlock(nnx.Module):
  """`num_res_blocks + 1` residual blocks, then an optional up-sampling (`upsamplers`: an empty list or one)."""

  def __init__(self, cin: int, cout: int, num_res_blocks: int, mode: str | None, *, dtype, param_dtype,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.resnets = nnx.List([WanResidualBlock(cin if j == 0 else cout, cout, **kw) for j in range(num_res_blocks + 1)])
    self.upsamplers = nnx.List([WanResample(cout, mode, **kw)] if mode else [])

  def __call__(self, x: jax.Array, cache: _Cache) -> jax.Array:
    for block in self.resnets:
      x = block(x, cache)
    for block in self.upsamplers:
      x = block(x, cache)
    return x


class WanDecoder(nnx.Module):
  """[B, T', H', W', z_dim] -> [B, 1 + 4 (T'-1), 8 H', 8 W', 3] (unclamped)."""

  def __init__(self, config: ml_collections.ConfigDict, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    mult = tuple(config.dim_mult)
    dims = [config.base_dim * m for m in (mult[-1], *mult[::-1])]
    up_in_time = tuple(config.temperal_downsample)[::-1]
    self.conv_in = CausalConv3d(config.z_dim, dims[0], 3, **kw)
    self.mid_block = WanMidBlock(dims[0], **kw)
    blocks = []
    for i in range(len(mult)):
      # Each up-sampling halves the width, so every block after the first starts at half its nominal width.
      cin = dims[i] if i == 0 else dims[i] // 2
      mode = None if i == len(mult) - 1 else ("upsample3d" if up_in_time[i] else "upsample2d")
      blocks.append(WanUpBlock(cin, dims[i + 1], config.num_res_blocks, mode, **kw))
    self.up_blocks = nnx.List(blocks)
    self.norm_out = WanRMSNorm(dims[-1], param_dtype=param_dtype)
    self.conv_out = CausalConv3d(dims[-1], 3, 3, **kw)

  def __call__(self, z: jax.Array, cache: _Cache) -> jax.Array:
    h = cache.conv(self.conv_in, z)
    h = self.mid_block(h, cache)
    for block in self.up_blocks:
      h = block(h, cache)
    return cache.conv(self.conv_out, jax.nn.silu(self.norm_out(h)))


# ----------------------------------------------------------------------------------------------------------------------
# The VAE.


class WanVAE(Autoencoder):
  """Wan 2.1's causal video VAE. `encode(video) -> DiagonalGaussian`, `decode(z) -> video`, both accepting
  `chunk_frames`; `normalize` / `denormalize` with Wan's per-channel latent mean and std."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    validate_wan_vae_config(config)
    self.config = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    # The geometry every VAE's config dict states (what latent_grid, the latent cache and the pipeline read).
    self.config.update(spatial_downsample=SPATIAL_FACTOR, temporal_downsample=TEMPORAL_FACTOR,
                       latent_channels=int(config.z_dim))
    self.spatial_factor = SPATIAL_FACTOR
    self.temporal_factor = TEMPORAL_FACTOR
    self.in_channels = 3
    self.latent_channels = config.z_dim
    self.dtype = resolve_dtype(config.dtype)
    kw = dict(dtype=self.dtype, param_dtype=jnp.dtype(config.param_dtype), rngs=rngs)
    self.encoder = WanEncoder(config, **kw)
    self.quant_conv = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1, **kw)
    self.post_quant_conv = CausalConv3d(config.z_dim, config.z_dim, 1, **kw)
    self.decoder = WanDecoder(config, **kw)
    self.latent_shift = LatentStats(jnp.asarray(config.latents_mean, jnp.float32))
    self.latent_scale = LatentStats(jnp.asarray(config.latents_std, jnp.float32))

  # -- encode / decode ---------------------------------------------------------------------------------------------

  def encode(self, video: jax.Array, *, chunk_frames: int | None = None) -> DiagonalGaussian:
    """video [B, T, H, W, 3] in [-1, 1] -> posterior over z [B, 1 + (T-1)/4, H/8, W/8, z_dim] (float32).

    chunk_frames: stream the frames after the first in chunks of this many (a multiple of 4), carrying the causal
      convs' states; equal to one pass, with the activation memory of one chunk. diffusers uses 4.
    """
    self._check_video(video)
    self._check_chunk(chunk_frames, self.temporal_factor, "frames (the temporal down-sampling)")
    moments = _stream(self._encode_chunk, video.astype(self.dtype), chunk_frames).astype(jnp.float32)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return DiagonalGaussian(mean, jnp.clip(logvar, -30.0, 20.0))  # diffusers' clamp of the log-variance

  def decode(self, z: jax.Array, *, chunk_frames: int | None = None) -> jax.Array:
    """z [B, T', H', W', z_dim] -> video [B, 1 + 4 (T'-1), 8 H', 8 W', 3] in float32, clamped to [-1, 1] (diffusers
    clamps too).

    chunk_frames: stream the latent frames after the first in chunks of this many (diffusers uses 1).
    """
    self._check_latent(z)
    self._check_chunk(chunk_frames, 1, "latent frames")
    video = _stream(self._decode_chunk, z.astype(self.dtype), chunk_frames)
    return jnp.clip(video.astype(jnp.float32), -1.0, 1.0)

  def _encode_chunk(self, x: jax.Array, previous: list[jax.Array] | None) -> tuple[jax.Array, list[jax.Array]]:
    cache = _Cache(previous)
    return self.quant_conv(self.encoder(x, cache))[0], cache.new

  def _decode_chunk(self, z: jax.Array, previous: list[jax.Array] | None) -> tuple[jax.Array, list[jax.Array]]:
    cache = _Cache(previous)
    return self.decoder(self.post_quant_conv(z)[0], cache), cache.new


# ----------------------------------------------------------------------------------------------------------------------
# diffusers checkpoints.


def _diffusers_name(path: tuple[Any, ...]) -> str:
  """Our parameter path -> diffusers' state-dict key (`resample` is the conv inside diffusers' nn.Sequential)."""
  rename = {"resample": "resample.1", "kernel": "weight"}
  return ".".join(rename.get(str(p), str(p)) for p in path)


def _to_ours(name: str, weight: np.ndarray, ours: tuple[int, ...]) -> np.ndarray | None:
  """A diffusers tensor in our layout, or None when its rank fits no conversion."""
  if name.endswith(".gamma"):  # [C, 1, 1(, 1)] -> [C]
    return weight.reshape(-1)
  if len(ours) == 5 and weight.ndim == 5:  # Conv3d [out, in, t, h, w] -> [t, h, w, in, out]
    return weight.transpose(2, 3, 4, 1, 0)
  if len(ours) == 5 and weight.ndim == 4:  # Conv2d [out, in, h, w] -> [1, h, w, in, out]
    return weight.transpose(2, 3, 1, 0)[None]
  if len(ours) == 2 and weight.ndim == 4 and weight.shape[2:] == (1, 1):  # 1x1 Conv2d -> Linear [in, out]
    return weight[:, :, 0, 0].T
  if len(ours) == weight.ndim == 1:
    return weight
  return None


def _diffusers_shape(name: str, weight: np.ndarray, ours: tuple[int, ...]) -> tuple[int, ...]:
  """The diffusers shape that converts to our shape `ours` (for error messages)."""
  if name.endswith(".gamma"):
    return (*ours, *weight.shape[1:])
  if len(ours) == 5:
    return (ours[4], ours[3], ours[0], ours[1], ours[2]) if weight.ndim == 5 else (ours[4], ours[3], ours[1], ours[2])
  if len(ours) == 2:
    return (ours[1], ours[0], 1, 1)
  return ours


def _short_list(names, limit: int = 12) -> str:
  names = sorted(names)
  return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def convert_wan_state_dict(state_dict: Mapping[str, np.ndarray], config: ml_collections.ConfigDict) -> WanVAE:
  """A WanVAE for `config` with the weights of diffusers' AutoencoderKLWan `state_dict` (name -> array).

  The module is built abstractly (no random init) and every parameter filled; missing, unexpected or mis-shaped
  weights raise a ValueError naming them. The latent statistics come from `config` (latents_mean / latents_std).
  """
  validate_wan_vae_config(config)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: WanVAE(config, rngs=nnx.Rngs(0))))
  flat = nnx.traversals.flatten_mapping(nnx.to_pure_dict(abstract))
  stats = {("latent_shift",): config.latents_mean, ("latent_scale",): config.latents_std}
  names = {path: _diffusers_name(path) for path in flat if path not in stats}
  missing = sorted(set(names.values()) - set(state_dict))
  unexpected = sorted(set(state_dict) - set(names.values()))
  if missing or unexpected:
    parts = [f"missing ({len(missing)}): {_short_list(missing)}"] if missing else []
    parts += [f"unexpected ({len(unexpected)}): {_short_list(unexpected)}"] if unexpected else []
    raise ValueError("the state dict does not match WanVAE(config) (diffusers AutoencoderKLWan names): "
                     + "; ".join(parts))
  arrays, bad = {}, []
  for path, name in names.items():
    target = flat[path]
    weight = np.asarray(state_dict[name])
    converted = _to_ours(name, weight, tuple(target.shape))
    if converted is None or converted.shape != tuple(target.shape):
      bad.append(f"{name}: {tuple(weight.shape)}, expected {_diffusers_shape(name, weight, tuple(target.shape))}")
      continue
    arrays[path] = jnp.asarray(converted, target.dtype)
  if bad:
    raise ValueError(f"{len(bad)} weights do not fit WanVAE(config) (check base_dim, z_dim, dim_mult, "
                     f"num_res_blocks): {_short_list(bad)}")
  for path, values in stats.items():
    arrays[path] = jnp.asarray(values, jnp.float32)
  nnx.replace_by_pure_dict(abstract, nnx.traversals.unflatten_mapping(arrays))
  return nnx.merge(graphdef, abstract)


# diffusers' AutoencoderKLWan config keys that map onto ours unchanged.
_SAME_KEYS = ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales", "temperal_downsample", "latents_mean",
              "latents_std")


def wan_config_from_diffusers(config: Mapping[str, Any], *, where: str = "config") -> ml_collections.ConfigDict:
  """diffusers' AutoencoderKLWan config (config.json as a dict) -> `wan_vae_config`; refuses what WanVAE does not
  implement (Wan 2.2's residual blocks and patchified input, other channel counts or factors) with a ConfigError.

  Missing keys take diffusers' defaults, which are Wan 2.1's; `dropout` is ignored (inference only).
  """
  class_name = config.get("_class_name", "AutoencoderKLWan")
  if class_name != "AutoencoderKLWan":
    raise ConfigError(f"{where}: holds a {class_name}, not an AutoencoderKLWan")
  base_dim = config.get("base_dim", 96)
  supported = {  # key: (accepts the value, the feature a refused value stands for)
      "is_residual": (lambda v: not v, "Wan 2.2's residual down/up blocks"),
      "patch_size": (lambda v: v in (None, 1), "patchified input (Wan 2.2)"),
      "in_channels": (lambda v: v == 3, "other than 3 input channels"),
      "out_channels": (lambda v: v == 3, "other than 3 output channels"),
      "decoder_base_dim": (lambda v: v in (None, base_dim), "a decoder width other than base_dim"),
      "scale_factor_temporal": (lambda v: v in (None, TEMPORAL_FACTOR), f"a time factor other than {TEMPORAL_FACTOR}"),
      "scale_factor_spatial": (lambda v: v in (None, SPATIAL_FACTOR), f"a space factor other than {SPATIAL_FACTOR}"),
  }
  for key, (accepts, feature) in supported.items():
    if key in config and not accepts(config[key]):
      raise ConfigError(f"{where}: {key}={config[key]!r} ({feature}) is not supported; WanVAE implements Wan 2.1's VAE")
  known = set(_SAME_KEYS) | set(supported) | {"dropout"}
  unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
  if unknown:
    raise ConfigError(f"{where}: unknown AutoencoderKLWan config keys {unknown}; WanVAE implements Wan 2.1's VAE")
  out = wan_vae_config()
  for key in _SAME_KEYS:
    if key in config:
      value = config[key]
      out[key] = tuple(value) if isinstance(value, (list, tuple)) else value
  try:
    validate_wan_vae_config(out)
  except ConfigError as e:
    raise ConfigError(f"{where}: {e}") from e
  return out


WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


def load_wan_vae(path: str, *, dtype: str | None = None) -> WanVAE:
  """The WanVAE in a diffusers AutoencoderKLWan folder (config.json + diffusion_pytorch_model.safetensors, e.g. the
  `vae/` folder of the Wan-AI/Wan2.1-*-Diffusers repositories); no torch needed.

  dtype: compute and parameter dtype ("float32", "bfloat16", ...); None keeps float32.
  """
  directory = pathlib.Path(path)
  if not directory.is_dir():
    raise FileNotFoundError(f"{path}: no such directory; expected a diffusers AutoencoderKLWan folder with config.json "
                            f"and {WEIGHTS_FILE}")
  config_file = directory / "config.json"
  if not config_file.is_file():
    raise FileNotFoundError(f"{directory}: no config.json; expected a diffusers AutoencoderKLWan folder")
  config = wan_config_from_diffusers(json.loads(config_file.read_text()), where=str(config_file))
  if dtype is not None:
    config.dtype = config.param_dtype = jnp.dtype(dtype).name
  single, index = directory / WEIGHTS_FILE, directory / f"{WEIGHTS_FILE}.index.json"
  if not single.is_file() and not index.is_file():
    raise FileNotFoundError(f"{directory}: no {WEIGHTS_FILE} (or its .index.json); save the model with "
                            "AutoencoderKLWan.save_pretrained(..., safe_serialization=True)")
  return convert_wan_state_dict(read_state_dict(single if single.is_file() else index), config)


__all__ = ["WanVAE", "convert_wan_state_dict", "load_wan_vae", "validate_wan_vae_config", "wan_config_from_diffusers",
           "wan_vae_config"]
