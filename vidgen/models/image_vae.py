"""ImageVAE: the Stable Diffusion image autoencoder (diffusers `AutoencoderKL`, e.g. sd-vae-ft-ema / -mse) in NNX.

    video [B, T, H, W, 3] in [-1, 1]
      --encode--> DiagonalGaussian over z [B, T, H/f, W/f, C]     (f = 2^(levels-1): 8 for the SD VAE, C = 4)
      --decode--> video [B, T, H, W, 3]

It is the latent space of the official DiT checkpoints (facebook/DiT-XL-2-*, whose hub repos ship it in `vae/`). Each
frame is coded on its own (T is folded into the batch), so the interface is that of `vidgen.models.vae.SpacetimeVAE`
with `temporal_factor = 1`, and a DiT sample is a 1-frame video.

Layout, as in diffusers (whose parameter names the submodules keep, so conversion is a rename plus transposes):
  encoder: conv_in, per level `layers_per_block` ResNet blocks and (except at the last level) a stride-2 conv on a
    bottom/right zero-padded input, a mid block (ResNet, one single-head self-attention, ResNet), GroupNorm + SiLU,
    conv_out to 2C moments; then the 1x1 quant_conv.
  decoder: the 1x1 post_quant_conv, conv_in, the mid block, per level from the deepest `layers_per_block + 1` ResNet
    blocks and (except at the last) nearest 2x up-sampling then a conv, GroupNorm + SiLU, conv_out.
Every norm is a GroupNorm with `norm_num_groups` groups and eps 1e-6; norms and softmax run in float32.

Latent normalization follows diffusers: `normalize(z) = (z - shift_factor) * scaling_factor` (stored as per-channel
`latent_shift` / `latent_scale = 1 / scaling_factor` like the video VAE's statistics). Parity with diffusers'
`AutoencoderKL` on random weights is tested.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidgen.config import require
from vidgen.errors import InputError
from vidgen.layers.attention import full_attention
from vidgen.layers.norms import FrameGroupNorm
from vidgen.layers.precision import COMPUTE_DTYPES, DTYPES, resolve_dtype
from vidgen.models.vae import Autoencoder, DiagonalGaussian, LatentStats
from vidgen.models.weights import read_state_dict, to_numpy
from vidgen.parallel.sharding import constrain, logical

IMAGE_AXES = ("act_batch", "act_height", "act_width", "act_channels")
# AutoencoderKL hard-codes these: GroupNorm eps and the posterior's log-variance clamp.
_NORM_EPS = 1e-6
_LOGVAR_RANGE = (-30.0, 20.0)
# Keys that `ImageVAE.config` adds for the video-VAE interface (`latent_grid`, the pipeline); derived, not settable.
_DERIVED_KEYS = ("spatial_downsample", "temporal_downsample")


def image_vae_config(**overrides) -> ml_collections.ConfigDict:
  """The sd-vae-ft-ema / -mse architecture (83.7M parameters); `overrides` replace fields (unknown names refused)."""
  config = ml_collections.ConfigDict(dict(
      in_channels=3,
      out_channels=3,
      block_out_channels=(128, 256, 512, 512),
      layers_per_block=2,
      latent_channels=4,
      norm_num_groups=32,
      scaling_factor=0.18215,
      shift_factor=None,  # None = 0; diffusers subtracts it before scaling (SD3 / FLUX VAEs set it).
      use_quant_conv=True,
      use_post_quant_conv=True,
      mid_block_add_attention=True,
      dtype="float32",  # compute dtype, any of vidgen.layers.precision.COMPUTE_DTYPES
      param_dtype="float32",
  ))
  unknown = sorted(set(overrides) - set(config))
  require(not unknown, "image_vae", f"unknown fields {unknown}; allowed: {sorted(config)}")
  config.update(overrides)
  return config


def validate_image_vae_config(config: Mapping[str, Any]) -> None:
  """Checks an `image_vae_config` (also accepts the derived keys that `ImageVAE.config` carries, if consistent)."""
  allowed = set(image_vae_config()) | set(_DERIVED_KEYS)
  unknown = sorted(set(config) - allowed)
  require(not unknown, "image_vae", f"unknown fields {unknown}; allowed: {sorted(allowed)}")
  channels = tuple(config["block_out_channels"])
  groups = config["norm_num_groups"]
  require(len(channels) >= 1 and all(isinstance(c, int) and c >= 1 for c in channels), "image_vae.block_out_channels",
          f"must be a non-empty tuple of positive ints, got {channels}")
  require(isinstance(groups, int) and groups >= 1, "image_vae.norm_num_groups", f"must be a positive int, got {groups}")
  require(all(c % groups == 0 for c in channels), "image_vae.block_out_channels",
          f"every entry must be divisible by image_vae.norm_num_groups={groups} (GroupNorm), got {channels}")
  require(config["layers_per_block"] >= 1, "image_vae.layers_per_block",
          f"must be >= 1, got {config['layers_per_block']}")
  for field in ("in_channels", "out_channels", "latent_channels"):
    require(config[field] >= 1, f"image_vae.{field}", f"must be >= 1, got {config[field]}")
  require(config["scaling_factor"] > 0, "image_vae.scaling_factor", f"must be > 0, got {config['scaling_factor']}")
  require(config["dtype"] in COMPUTE_DTYPES, "image_vae.dtype",
          f"must be one of {COMPUTE_DTYPES}, got {config['dtype']!r}")
  require(config["param_dtype"] in DTYPES, "image_vae.param_dtype",
          f"must be one of {DTYPES}, got {config['param_dtype']!r}")
  derived = {"spatial_downsample": 2 ** (len(channels) - 1), "temporal_downsample": 1}
  for key, value in derived.items():
    require(config.get(key, value) == value, f"image_vae.{key}",
            f"is derived from the architecture ({value}) and cannot be set, got {config.get(key)}")


# ----------------------------------------------------------------------------------------------------------------------
# Layers. Activations are channels-last images [N, H, W, C].


def _conv(cin: int, cout: int, kernel: int, *, stride: int = 1, padding=None, dtype, param_dtype,
          rngs: nnx.Rngs) -> nnx.Conv:
  """A 2D conv with kernel [kh, kw, cin, cout]; default padding keeps the size (torch's `padding=kernel // 2`)."""
  pad = kernel // 2
  padding = ((pad, pad), (pad, pad)) if padding is None else padding
  kernel_init = logical(nnx.initializers.lecun_normal(), None, None, "conv_in", "conv_out")
  return nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding=padding, dtype=dtype, param_dtype=param_dtype,
                  kernel_init=kernel_init, bias_init=logical(nnx.initializers.zeros, "conv_out"), rngs=rngs)


def _norm(channels: int, groups: int, param_dtype, rngs: nnx.Rngs) -> FrameGroupNorm:
  # FrameGroupNorm's statistics over (H, W, channel group) of each image are exactly torch's GroupNorm on [N, C, H, W].
  return FrameGroupNorm(channels, groups=groups, eps=_NORM_EPS, param_dtype=param_dtype, rngs=rngs)


class ResnetBlock(nnx.Module):
  """GroupNorm -> SiLU -> 3x3 conv, twice, plus a skip (a 1x1 conv when the width changes)."""

  def __init__(self, cin: int, cout: int, *, groups: int, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = _norm(cin, groups, param_dtype, rngs)
    self.conv1 = _conv(cin, cout, 3, **kw)
    self.norm2 = _norm(cout, groups, param_dtype, rngs)
    self.conv2 = _conv(cout, cout, 3, **kw)
    self.conv_shortcut = _conv(cin, cout, 1, **kw) if cin != cout else None

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    h = self.conv2(jax.nn.silu(self.norm2(h)))
    skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
    return constrain(skip + h, IMAGE_AXES)


class MidAttention(nnx.Module):
  """Single-head self-attention over the H*W positions, pre-GroupNorm, with a residual connection."""

  def __init__(self, channels: int, *, groups: int, dtype, param_dtype, rngs: nnx.Rngs):
    linear = lambda: nnx.Linear(channels, channels, dtype=dtype, param_dtype=param_dtype,
                                kernel_init=logical(nnx.initializers.lecun_normal(), "embed", "mlp"),
                                bias_init=logical(nnx.initializers.zeros, "mlp"), rngs=rngs)
    self.group_norm = _norm(channels, groups, param_dtype, rngs)
    self.to_q, self.to_k, self.to_v, self.to_out = linear(), linear(), linear(), linear()

  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    tokens = self.group_norm(x).reshape(n, h * w, 1, c)  # [N, HW, heads=1, C]
    out = full_attention(self.to_q(tokens), self.to_k(tokens), self.to_v(tokens), backend="xla")
    return x + self.to_out(out).reshape(n, h, w, c).astype(x.dtype)


class MidBlock(nnx.Module):
  """ResNet block, self-attention (optional), ResNet block, at the deepest level's width."""

  def __init__(self, channels: int, *, attention: bool, groups: int, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(groups=groups, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.resnets = nnx.List([ResnetBlock(channels, channels, **kw) for _ in range(2)])
    self.attention = MidAttention(channels, **kw) if attention else None

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.resnets[0](x)
    if self.attention is not None:
      x = self.attention(x)
    return self.resnets[1](x)


class DownBlock(nnx.Module):
  """`num_layers` ResNet blocks, then (unless last) a 3x3 stride-2 conv on the input zero-padded at bottom/right."""

  def __init__(self, cin: int, cout: int, num_layers: int, *, downsample: bool, groups: int, dtype, param_dtype,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.resnets = nnx.List([ResnetBlock(cin if i == 0 else cout, cout, groups=groups, **kw)
                             for i in range(num_layers)])
    # diffusers pads (0, 1) on each spatial axis and convolves unpadded: output H/2 for even H.
    self.downsample = _conv(cout, cout, 3, stride=2, padding=((0, 1), (0, 1)), **kw) if downsample else None

  def __call__(self, x: jax.Array) -> jax.Array:
    for block in self.resnets:
      x = block(x)
    return x if self.downsample is None else self.downsample(x)


class UpBlock(nnx.Module):
  """`num_layers` ResNet blocks, then (unless last) nearest-neighbour 2x up-sampling and a 3x3 conv."""

  def __init__(self, cin: int, cout: int, num_layers: int, *, upsample: bool, groups: int, dtype, param_dtype,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.resnets = nnx.List([ResnetBlock(cin if i == 0 else cout, cout, groups=groups, **kw)
                             for i in range(num_layers)])
    self.upsample = _conv(cout, cout, 3, **kw) if upsample else None

  def __call__(self, x: jax.Array) -> jax.Array:
    for block in self.resnets:
      x = block(x)
    if self.upsample is None:
      return x
    return self.upsample(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


def _dtypes(config: Mapping[str, Any]) -> dict[str, Any]:
  return dict(dtype=resolve_dtype(config["dtype"]), param_dtype=jnp.dtype(config["param_dtype"]))


class Encoder(nnx.Module):
  """image [N, H, W, in_channels] -> moments [N, H/f, W/f, 2 * latent_channels] (before quant_conv)."""

  def __init__(self, config: Mapping[str, Any], *, rngs: nnx.Rngs):
    kw = dict(**_dtypes(config), rngs=rngs)
    ch, groups = tuple(config["block_out_channels"]), config["norm_num_groups"]
    self.conv_in = _conv(config["in_channels"], ch[0], 3, **kw)
    self.down_blocks = nnx.List([
        DownBlock(ch[max(i - 1, 0)], ch[i], config["layers_per_block"], downsample=i < len(ch) - 1, groups=groups, **kw)
        for i in range(len(ch))])
    self.mid_block = MidBlock(ch[-1], attention=config["mid_block_add_attention"], groups=groups, **kw)
    self.conv_norm_out = _norm(ch[-1], groups, kw["param_dtype"], rngs)
    self.conv_out = _conv(ch[-1], 2 * config["latent_channels"], 3, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.conv_in(x)
    for block in self.down_blocks:
      h = block(h)
    h = self.mid_block(h)
    return self.conv_out(jax.nn.silu(self.conv_norm_out(h)))


class Decoder(nnx.Module):
  """z [N, h, w, latent_channels] (after post_quant_conv) -> image [N, h f, w f, out_channels]."""

  def __init__(self, config: Mapping[str, Any], *, rngs: nnx.Rngs):
    kw = dict(**_dtypes(config), rngs=rngs)
    ch, groups = tuple(reversed(config["block_out_channels"])), config["norm_num_groups"]
    self.conv_in = _conv(config["latent_channels"], ch[0], 3, **kw)
    self.mid_block = MidBlock(ch[0], attention=config["mid_block_add_attention"], groups=groups, **kw)
    # up_blocks[0] is the deepest level, as in diffusers.
    self.up_blocks = nnx.List([
        UpBlock(ch[max(i - 1, 0)], ch[i], config["layers_per_block"] + 1, upsample=i < len(ch) - 1, groups=groups,
                **kw)
        for i in range(len(ch))])
    self.conv_norm_out = _norm(ch[-1], groups, kw["param_dtype"], rngs)
    self.conv_out = _conv(ch[-1], config["out_channels"], 3, **kw)

  def __call__(self, z: jax.Array) -> jax.Array:
    h = self.mid_block(self.conv_in(z))
    for block in self.up_blocks:
      h = block(h)
    return self.conv_out(jax.nn.silu(self.conv_norm_out(h)))


# ----------------------------------------------------------------------------------------------------------------------
# The autoencoder.


def _latent_stats(config: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
  """(shift, scale), one value per latent channel, with normalize(z) = (z - shift) / scale."""
  c = config["latent_channels"]
  shift = 0.0 if config["shift_factor"] is None else float(config["shift_factor"])
  return jnp.full((c,), shift, jnp.float32), jnp.full((c,), 1.0 / float(config["scaling_factor"]), jnp.float32)


class ImageVAE(Autoencoder):
  """diffusers' AutoencoderKL with the video-VAE interface: `encode(video) -> DiagonalGaussian`, `decode(z) -> video`.

  Both code every frame independently and accept `chunk_frames` (how many frames of the B*T go through the network
  at once; bounds activation memory, same result).
  """

  def __init__(self, config: ml_collections.ConfigDict | Mapping[str, Any], *, rngs: nnx.Rngs):
    validate_image_vae_config(config)
    config = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    config["block_out_channels"] = tuple(config["block_out_channels"])
    self.spatial_factor = 2 ** (len(config["block_out_channels"]) - 1)
    self.temporal_factor = 1
    self.config = {**config, "spatial_downsample": self.spatial_factor, "temporal_downsample": 1}
    self.in_channels = config["in_channels"]
    self.out_channels = config["out_channels"]
    self.latent_channels = config["latent_channels"]
    kw = dict(**_dtypes(config), rngs=rngs)
    c = self.latent_channels
    self.encoder = Encoder(config, rngs=rngs)
    self.quant_conv = _conv(2 * c, 2 * c, 1, **kw) if config["use_quant_conv"] else None
    self.post_quant_conv = _conv(c, c, 1, **kw) if config["use_post_quant_conv"] else None
    self.decoder = Decoder(config, rngs=rngs)
    shift, scale = _latent_stats(config)
    self.latent_shift = LatentStats(shift)
    self.latent_scale = LatentStats(scale)

  # -- shapes and checks -------------------------------------------------------------------------------------------

  def latent_shape(self, video_shape: tuple[int, ...]) -> tuple[int, ...]:
    """[B, T, H, W, in_channels] -> [B, T, H / f, W / f, latent_channels] (after checking the shape)."""
    self._check_video_shape(tuple(video_shape))
    b, t, h, w, _ = video_shape
    f = self.spatial_factor
    return (b, t, h // f, w // f, self.latent_channels)

  def _check_video_shape(self, shape: tuple[int, ...]) -> None:
    if len(shape) != 5:
      raise InputError(f"ImageVAE expects video of rank 5 [B, T, H, W, {self.in_channels}] (an image is T = 1), "
                       f"got shape {shape}")
    _, t, h, w, c = shape
    f = self.spatial_factor
    if c != self.in_channels:
      raise InputError(f"ImageVAE expects {self.in_channels} channels in the last axis, got shape {shape}")
    if t < 1 or h < 1 or w < 1 or h % f or w % f:
      raise InputError(f"ImageVAE expects T >= 1 and height and width positive multiples of {f}, got shape {shape}")

  def _check_chunk(self, chunk_frames: int | None) -> None:
    if chunk_frames is not None and (not isinstance(chunk_frames, (int, np.integer)) or chunk_frames < 1):
      raise InputError(f"chunk_frames must be a positive int (frames per pass) or None, got {chunk_frames!r}")

  # -- encode / decode ---------------------------------------------------------------------------------------------

  def encode(self, video: jax.Array, *, chunk_frames: int | None = None) -> DiagonalGaussian:
    """video [B, T, H, W, in_channels] in [-1, 1] -> posterior over z [B, T, H / f, W / f, latent_channels].

    chunk_frames: run the B*T frames through the encoder this many at a time (None: all at once).
    """
    if not jnp.issubdtype(video.dtype, jnp.floating):
      raise InputError(f"ImageVAE expects a floating video in [-1, 1], got dtype {video.dtype} "
                       "(convert uint8 frames with vidgen.data.to_model_range)")
    self._check_video_shape(tuple(video.shape))
    self._check_chunk(chunk_frames)
    moments = _per_frame(self._encode_frames, video, chunk_frames).astype(jnp.float32)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return DiagonalGaussian(mean, jnp.clip(logvar, *_LOGVAR_RANGE))

  def decode(self, z: jax.Array, *, chunk_frames: int | None = None) -> jax.Array:
    """z [B, T, h, w, latent_channels] -> video [B, T, h f, w f, out_channels] (float32, ~[-1, 1]).

    chunk_frames: run the B*T latent frames through the decoder this many at a time (None: all at once).
    """
    if z.ndim != 5 or z.shape[-1] != self.latent_channels or 0 in z.shape:
      raise InputError(f"ImageVAE.decode expects latents [B, T, h, w, {self.latent_channels}], got shape {z.shape}")
    if not jnp.issubdtype(z.dtype, jnp.floating):
      raise InputError(f"ImageVAE.decode expects floating latents, got dtype {z.dtype}")
    self._check_chunk(chunk_frames)
    return _per_frame(self._decode_frames, z, chunk_frames).astype(jnp.float32)

  def _encode_frames(self, x: jax.Array) -> jax.Array:
    moments = self.encoder(x)
    return moments if self.quant_conv is None else self.quant_conv(moments)

  def _decode_frames(self, z: jax.Array) -> jax.Array:
    return self.decoder(z if self.post_quant_conv is None else self.post_quant_conv(z))


def _per_frame(fn: Callable[[jax.Array], jax.Array], x: jax.Array, chunk_frames: int | None) -> jax.Array:
  """Applies an image network `fn([N, H, W, C]) -> [N, H', W', C']` to every frame of x [B, T, H, W, C].

  With `chunk_frames`, full chunks of the B*T frames run under `lax.map` (one chunk's activations live at a time,
  compile time independent of their number) and a shorter last chunk follows.
  """
  b, t = x.shape[:2]
  frames = x.reshape(b * t, *x.shape[2:])
  n = b * t
  if chunk_frames is None or chunk_frames >= n:
    y = fn(frames)
  else:
    n_full = n // chunk_frames
    head = frames[:n_full * chunk_frames].reshape(n_full, chunk_frames, *frames.shape[1:])
    mapped = jax.lax.map(fn, head)
    parts = [mapped.reshape(n_full * chunk_frames, *mapped.shape[2:])]
    if n % chunk_frames:
      parts.append(fn(frames[n_full * chunk_frames:]))
    y = jnp.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
  return y.reshape(b, t, *y.shape[1:])


# ----------------------------------------------------------------------------------------------------------------------
# diffusers checkpoints.

# AutoencoderKL's constructor defaults: what a config.json that omits a field means (old ones, such as sd-vae-ft-ema's,
# omit scaling_factor and the quant-conv / mid-attention switches).
_DIFFUSERS_DEFAULTS = dict(
    in_channels=3, out_channels=3, block_out_channels=(64,), layers_per_block=1, act_fn="silu", latent_channels=4,
    norm_num_groups=32, scaling_factor=0.18215, shift_factor=None, latents_mean=None, latents_std=None,
    use_quant_conv=True, use_post_quant_conv=True, mid_block_add_attention=True)
# Fields that only steer diffusers' tiling, device placement or bookkeeping; they do not change the network.
_IGNORED_FIELDS = ("_class_name", "_diffusers_version", "_name_or_path", "sample_size", "force_upcast")


def image_vae_config_from_diffusers(diffusers_config: Mapping[str, Any], **overrides) -> ml_collections.ConfigDict:
  """An AutoencoderKL `config.json` (as a dict) -> `image_vae_config`; features this module lacks are refused.

  `overrides` set this module's own fields (`dtype`, `param_dtype`).
  """
  d = {**_DIFFUSERS_DEFAULTS, **diffusers_config}
  where = "diffusers AutoencoderKL config"
  class_name = d.get("_class_name", "AutoencoderKL")
  if class_name != "AutoencoderKL":
    raise ValueError(f"{where}: _class_name is {class_name!r}; only AutoencoderKL is supported")
  levels = len(d["block_out_channels"])
  problems = []
  for key, block in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
    types = list(d.get(key, [block] * levels))
    if types != [block] * levels:
      problems.append(f"{key} must be {levels} x {block!r} (one per block_out_channels entry), got {types}")
  if d["act_fn"] != "silu":
    problems.append(f"act_fn must be 'silu', got {d['act_fn']!r}")
  if d["latents_mean"] is not None or d["latents_std"] is not None:
    problems.append("per-channel latents_mean / latents_std are not supported (only scaling_factor and shift_factor)")
  known = set(_DIFFUSERS_DEFAULTS) | {"down_block_types", "up_block_types"} | set(_IGNORED_FIELDS)
  unknown = sorted(set(diffusers_config) - known)
  if unknown:
    problems.append(f"unknown fields {unknown}")
  if problems:
    raise ValueError(f"{where} is not supported: " + "; ".join(problems))
  fields = ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups", "scaling_factor",
            "shift_factor", "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention")
  config = image_vae_config(block_out_channels=tuple(int(c) for c in d["block_out_channels"]),
                            **{k: d[k] for k in fields}, **overrides)
  validate_image_vae_config(config)
  return config


def _diffusers_name(path: tuple[str | int, ...]) -> str:
  """Our parameter path -> the AutoencoderKL state-dict key it is stored under."""
  rename = {"downsample": "downsamplers.0.conv", "upsample": "upsamplers.0.conv", "attention": "attentions.0",
            "to_out": "to_out.0", "kernel": "weight", "scale": "weight"}
  return ".".join(rename.get(str(p), str(p)) for p in path)


# Pre-0.14 diffusers attention names (sd-vae-ft-ema's checkpoint uses them); diffusers renames them on load too.
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_PATTERN = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")


def _short_list(names, limit: int = 12) -> str:
  names = sorted(names)
  more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
  return f"{names[:limit]}{more}"


def _abstract_vae(config: Mapping[str, Any]) -> ImageVAE:
  return nnx.eval_shape(lambda: ImageVAE(config, rngs=nnx.Rngs(0)))


def convert_image_vae_state_dict(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> dict:
  """An AutoencoderKL state dict (torch or numpy tensors) -> our parameters, as a nested pure dict.

  The result has the tree of `nnx.to_pure_dict(nnx.state(ImageVAE(config), nnx.Param))`, arrays in
  `config.param_dtype`. Conv weights [out, in, kh, kw] become [kh, kw, in, out], Linear weights [out, in] become
  [in, out], GroupNorm weights become scales. Legacy attention names (query / key / value / proj_attn) are accepted.
  Missing, unexpected, duplicated and mis-shaped weights are refused by name.
  """
  validate_image_vae_config(config)
  return _convert(state_dict, config, _abstract_vae(config))


def _convert(state_dict: Mapping[str, Any], config: Mapping[str, Any], abstract: ImageVAE) -> dict:
  flat = nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
  tensors: dict[str, Any] = {}
  duplicated = []
  for key, value in state_dict.items():
    m = _LEGACY_PATTERN.match(key)
    name = f"{m.group(1)}.{_LEGACY_ATTENTION[m.group(2)]}.{m.group(3)}" if m else key
    if name in tensors:
      duplicated.append(f"{key} (also given as {name})")
    tensors[name] = value
  wanted = {_diffusers_name(path): path for path in flat}
  missing = sorted(set(wanted) - set(tensors))
  unexpected = sorted(set(tensors) - set(wanted))
  problems = []
  if missing:
    problems.append(f"missing weights ({len(missing)}): {_short_list(missing)}")
  if unexpected:
    problems.append(f"unexpected weights ({len(unexpected)}): {_short_list(unexpected)}")
  if duplicated:
    problems.append(f"weights given under both legacy and current names: {_short_list(duplicated)}")
  if problems:
    raise ValueError("state dict does not match the ImageVAE config "
                     f"(block_out_channels={tuple(config['block_out_channels'])}, layers_per_block="
                     f"{config['layers_per_block']}): " + "; ".join(problems))
  param_dtype = jnp.dtype(config["param_dtype"])
  params, bad = {}, []
  for name, path in wanted.items():
    weight = to_numpy(tensors[name])
    given = weight.shape
    if weight.ndim == 4:  # conv: [out, in, kh, kw] -> [kh, kw, in, out]
      weight = weight.transpose(2, 3, 1, 0)
    elif weight.ndim == 2:  # linear: [out, in] -> [in, out]
      weight = weight.T
    if weight.shape != tuple(flat[path].shape):
      bad.append(f"{name}: {tuple(given)} does not convert to {tuple(flat[path].shape)}")
      continue
    params[path] = np.asarray(weight, np.float32).astype(param_dtype)
  if bad:
    raise ValueError("state dict weights have the wrong shapes for the ImageVAE config: " + "; ".join(bad))
  return nnx.traversals.unflatten_mapping(params)


def image_vae_from_state_dict(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> ImageVAE:
  """An ImageVAE holding an AutoencoderKL state dict's weights (built abstractly: no random initialization runs).

  The latent shift / scale come from `config` (shift_factor, scaling_factor).
  """
  validate_image_vae_config(config)
  abstract = _abstract_vae(config)
  params = _convert(state_dict, config, abstract)
  graphdef, param_state, rest = nnx.split(abstract, nnx.Param, ...)
  nnx.replace_by_pure_dict(param_state, jax.tree.map(jnp.asarray, params))
  shift, scale = _latent_stats(config)
  nnx.replace_by_pure_dict(rest, {"latent_shift": shift, "latent_scale": scale})
  return nnx.merge(graphdef, param_state, rest)


_CONFIG_FILE = "config.json"
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def load_image_vae(path: str | pathlib.Path, *, dtype: str = "float32", param_dtype: str = "float32") -> ImageVAE:
  """Loads a diffusers-format AutoencoderKL directory (`config.json` + `diffusion_pytorch_model.safetensors` or `.bin`).

  `path` may also be a pipeline / DiT hub repo whose `vae/` folder holds the VAE. dtype / param_dtype: compute and
  parameter dtypes. Missing files, unsupported configs and mismatched weights are refused with the path named.
  """
  root = pathlib.Path(path)
  if not root.exists():
    raise FileNotFoundError(f"{root}: no such directory (expected a diffusers AutoencoderKL folder)")
  directory = root if (root / _CONFIG_FILE).is_file() or not (root / "vae" / _CONFIG_FILE).is_file() else root / "vae"
  if not (directory / _CONFIG_FILE).is_file():
    raise FileNotFoundError(f"{root}: no {_CONFIG_FILE} here or in {root / 'vae'}; expected a diffusers "
                            "AutoencoderKL folder")
  weights = next((directory / f for f in _WEIGHT_FILES if (directory / f).is_file()), None)
  if weights is None:
    raise FileNotFoundError(f"{directory}: no weights file; expected one of {list(_WEIGHT_FILES)}, found "
                            f"{sorted(p.name for p in directory.iterdir())}")
  config_file = directory / _CONFIG_FILE
  try:
    config = image_vae_config_from_diffusers(json.loads(config_file.read_text()), dtype=dtype, param_dtype=param_dtype)
  except ValueError as e:  # json.JSONDecodeError and ConfigError are ValueErrors too.
    raise ValueError(f"{config_file}: {e}") from e
  state_dict = read_state_dict(weights)
  try:
    return image_vae_from_state_dict(state_dict, config)
  except ValueError as e:
    raise ValueError(f"{weights}: {e}") from e


__all__ = ["ImageVAE", "convert_image_vae_state_dict", "image_vae_config", "image_vae_config_from_diffusers",
           "image_vae_from_state_dict", "load_image_vae", "validate_image_vae_config"]
