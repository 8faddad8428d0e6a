"""SpacetimeVAE: a causal 3D-conv video autoencoder in the MAGVIT-v2 style (arXiv 2310.05737, as used by W.A.L.T).

    video [B, T, H, W, 3] in [-1, 1], T = 1 + ft*k
      --encode--> DiagonalGaussian over z [B, 1 + k, H/fs, W/fs, C]
      --decode--> video [B, T, H, W, 3]

Every convolution is causal in time (see `vidgen.layers.conv`), temporal downsampling is a strided causal conv, and
temporal upsampling is a depth-to-space that drops the frames "before" the first one. Consequences the tests check:
latent frame j depends on frames <= ft*j only; frame 0 is encoded alone, so an image is a 1-frame video; and a long
video can be encoded / decoded chunk by chunk, threading the causal-conv states, with the same result as one pass and
memory of one chunk (`chunk_frames=`).

Layout of the encoder (decoder mirrors it): a space-to-depth stem (`stem_patch`, cheap first-level compression that
keeps full-resolution convolutions out of the network), a causal conv, per level `num_res_blocks` residual blocks and a
strided causal conv into the next level, middle residual blocks, a head giving mean and log-variance. Which level
transitions downsample in space and time is derived from the requested factors: the first ones do, so the expensive
high-resolution levels also see fewer frames.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidgen.config import require
from vidgen.layers.conv import CausalConv3d, depth_to_space, space_to_depth
from vidgen.layers.norms import NORMS, make_norm
from vidgen.parallel import constrain

VIDEO_AXES = ("act_batch", "act_time", "act_height", "act_width", "act_channels")


class LatentStats(nnx.Variable):
  """Per-channel latent shift/scale measured on data; stored with the model but not trained by the optimizer."""


@flax.struct.dataclass
class DiagonalGaussian:
  """Posterior q(z | video): mean and log-variance, both [B, T', H', W', C]."""

  mean: jax.Array
  logvar: jax.Array

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  def mode(self) -> jax.Array:
    return self.mean

  def sample(self, key: jax.Array) -> jax.Array:
    return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

  def kl(self) -> jax.Array:
    """KL(q || N(0, I)) per example, summed over latent elements: [B]."""
    m, lv = self.mean.astype(jnp.float32), self.logvar.astype(jnp.float32)
    return 0.5 * jnp.sum(jnp.square(m) + jnp.exp(lv) - 1.0 - lv, axis=tuple(range(1, m.ndim)))


def default_vae_config() -> ml_collections.ConfigDict:
  """The defaults every VAE config starts from (4x time, 8x space, 8 latent channels)."""
  return ml_collections.ConfigDict(dict(
      in_channels=3,
      latent_channels=8,
      channels=(32, 64, 128),
      num_res_blocks=1,
      stem_patch=2,
      spatial_downsample=8,
      temporal_downsample=4,
      temporal_kernel=3,
      norm="none",
      # Pixel normalization: the encoder sees (video - pixel_mean) / pixel_std and the decoder's output is mapped back,
      # so the network works on centred, unit-scale values even when the data are not (one value per channel).
      pixel_mean=(0.0, 0.0, 0.0),
      pixel_std=(1.0, 1.0, 1.0),
      init_logvar=-6.0,
      logvar_min=-30.0,
      logvar_max=20.0,
      dtype="float32",
      param_dtype="float32",
  ))


def _log2(value: int, field: str) -> int:
  n = int(round(math.log2(value))) if value > 0 else -1
  require(n >= 0 and 2 ** n == value, field, f"must be a power of two, got {value}")
  return n


def validate_vae_config(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """Checks the VAE config and returns (number of spatial, number of temporal 2x down-sampling transitions)."""
  require(config.latent_channels >= 1, "vae.latent_channels", f"must be >= 1, got {config.latent_channels}")
  require(len(config.channels) >= 1 and all(c >= 1 for c in config.channels), "vae.channels",
          f"must be a non-empty tuple of positive ints, got {config.channels}")
  _log2(config.stem_patch, "vae.stem_patch")
  require(config.spatial_downsample % config.stem_patch == 0, "vae.spatial_downsample",
          f"must be a multiple of vae.stem_patch={config.stem_patch}, got {config.spatial_downsample}")
  n_space = _log2(config.spatial_downsample // config.stem_patch, "vae.spatial_downsample / vae.stem_patch")
  n_time = _log2(config.temporal_downsample, "vae.temporal_downsample")
  transitions = len(config.channels) - 1
  require(max(n_space, n_time) <= transitions, "vae.channels",
          f"{len(config.channels)} levels allow {transitions} 2x down-samplings, but spatial_downsample="
          f"{config.spatial_downsample} (stem {config.stem_patch}) and temporal_downsample="
          f"{config.temporal_downsample} need {max(n_space, n_time)}")
  require(config.temporal_kernel >= 2, "vae.temporal_kernel",
          f"must be >= 2 (strided temporal convs need kernel >= stride), got {config.temporal_kernel}")
  require(config.norm in NORMS, "vae.norm", f"must be one of {NORMS}, got {config.norm!r}")
  for field in ("pixel_mean", "pixel_std"):
    require(np.shape(config[field]) == (config.in_channels,), f"vae.{field}",
            f"must be {config.in_channels} floats (one per channel, vae.in_channels), got {config[field]!r}")
  require(bool(np.all(np.asarray(config.pixel_std, np.float64) > 0)), "vae.pixel_std",
          f"must be > 0, got {config.pixel_std!r}")
  require(config.num_res_blocks >= 0, "vae.num_res_blocks", f"must be >= 0, got {config.num_res_blocks}")
  for field in ("dtype", "param_dtype"):
    try:
      jnp.dtype(config[field])
    except TypeError as e:
      raise ValueError(f"config.vae.{field}: not a dtype name: {config[field]!r}") from e
  return n_space, n_time


def latent_grid(config: Mapping[str, Any], num_frames: int, height: int, width: int) -> tuple[int, int, int]:
  """The latent (T', H', W') of a num_frames x height x width clip: the first frame alone, then temporal_downsample
  frames per latent frame; spatial_downsample pixels per latent pixel."""
  ft, fs = config["temporal_downsample"], config["spatial_downsample"]
  return 1 + (num_frames - 1) // ft, height // fs, width // fs


class _States:
  """Threads streaming states through one forward pass: a list with one entry per causal conv, in call order.

  `previous=None` marks the start of a video (each conv pads by replicating the first frame).
  """

  def __init__(self, previous: list[jax.Array] | None):
    self.previous = previous
    self.new: list[jax.Array] = []

  @property
  def at_start(self) -> bool:
    return self.previous is None

  def conv(self, conv: CausalConv3d, x: jax.Array) -> jax.Array:
    y, state = conv(x, None if self.previous is None else self.previous[len(self.new)])
    self.new.append(state)
    return y


class ResBlock(nnx.Module):
  """norm -> SiLU -> causal conv, twice, plus a skip; the second conv starts at zero so the block starts as identity."""

  def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int], *, norm: str, dtype, param_dtype,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = make_norm(norm, cin, param_dtype=param_dtype, rngs=rngs)
    self.conv1 = CausalConv3d(cin, cout, kernel, **kw)
    self.norm2 = make_norm(norm, cout, param_dtype=param_dtype, rngs=rngs)
    self.conv2 = CausalConv3d(cout, cout, kernel, kernel_init=nnx.initializers.zeros, **kw)
    self.skip = CausalConv3d(cin, cout, 1, **kw) if cin != cout else None

  def __call__(self, x: jax.Array, states: _States) -> jax.Array:
    h = states.conv(self.conv1, jax.nn.silu(self.norm1(x)))
    h = states.conv(self.conv2, jax.nn.silu(self.norm2(h)))
    skip = x if self.skip is None else states.conv(self.skip, x)
    return constrain(skip + h, VIDEO_AXES)


def _layer_setup(config: ml_collections.ConfigDict, rngs: nnx.Rngs):
  """What the encoder and decoder share: conv keyword arguments, the conv kernel, and (time factor, space factor) for
  each level transition, the first transitions taking the down-sampling."""
  n_space, n_time = validate_vae_config(config)
  kw = dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype), rngs=rngs)
  factors = [(2 if i < n_time else 1, 2 if i < n_space else 1) for i in range(len(config.channels) - 1)]
  return kw, (config.temporal_kernel, 3, 3), factors


class Encoder(nnx.Module):

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    kw, kernel, factors = _layer_setup(config, rngs)
    ch = tuple(config.channels)
    self.stem_patch = config.stem_patch
    self.pixel_mean, self.pixel_std = _pixel_stats(config)
    self.conv_in = CausalConv3d(config.in_channels * config.stem_patch ** 2, ch[0], kernel, **kw)
    self.levels = nnx.List([
        nnx.List([ResBlock(ch[i], ch[i], kernel, norm=config.norm, **kw) for _ in range(config.num_res_blocks)])
        for i in range(len(ch))])
    self.downs = nnx.List([
        CausalConv3d(ch[i], ch[i + 1], (max(config.temporal_kernel, ft), 3, 3), stride=(ft, fs, fs), **kw)
        for i, (ft, fs) in enumerate(factors)])
    self.mid = nnx.List([ResBlock(ch[-1], ch[-1], kernel, norm=config.norm, **kw)
                         for _ in range(max(config.num_res_blocks, 1))])
    self.norm_out = make_norm(config.norm, ch[-1], param_dtype=kw["param_dtype"], rngs=rngs)
    self.conv_out = CausalConv3d(ch[-1], 2 * config.latent_channels, kernel, **kw)
    # Start the posterior narrow (log-variance `init_logvar`): with the usual 0 (sigma 1) the sampled latent is mostly
    # noise at first and the decoder learns the mean frame instead of reading the code.
    bias = self.conv_out.bias
    bias[...] = bias[...].at[config.latent_channels:].set(config.init_logvar)

  def __call__(self, x: jax.Array, states: _States) -> jax.Array:
    x = (x - jnp.asarray(self.pixel_mean, x.dtype)) / jnp.asarray(self.pixel_std, x.dtype)
    h = states.conv(self.conv_in, space_to_depth(x, self.stem_patch))
    for i, blocks in enumerate(self.levels):
      for block in blocks:
        h = block(h, states)
      if i < len(self.downs):
        h = states.conv(self.downs[i], h)
    for block in self.mid:
      h = block(h, states)
    return states.conv(self.conv_out, jax.nn.silu(self.norm_out(h)))


def _pixel_stats(config: ml_collections.ConfigDict) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) of the pixel normalization, one float per channel (plain tuples: constants, not parameters)."""
  return tuple(map(float, config.pixel_mean)), tuple(map(float, config.pixel_std))


class OutputHead(nnx.Module):
  """Decoder features [B, T, h, w, C0] -> video [B, T, H, W, 3]: norm, SiLU, causal conv, depth-to-space (stem), and
  the inverse of the encoder's pixel normalization.

  A module of its own because VAE training needs the gradient of each loss with respect to this last layer (the GAN's
  adaptive weight).
  """

  def __init__(self, channels: int, out_channels: int, stem_patch: int, kernel, *, norm: str, dtype, param_dtype,
               rngs: nnx.Rngs, pixel_mean=(0.0,), pixel_std=(1.0,)):
    self.stem_patch = stem_patch
    self.pixel_mean, self.pixel_std = tuple(pixel_mean), tuple(pixel_std)
    self.norm = make_norm(norm, channels, param_dtype=param_dtype, rngs=rngs)
    # Zero-initialised: the untrained decoder outputs mid-gray instead of large random values, which would cost the
    # first hundred steps of a short run.
    self.conv = CausalConv3d(channels, out_channels * stem_patch ** 2, kernel, dtype=dtype, param_dtype=param_dtype,
                             kernel_init=nnx.initializers.zeros, rngs=rngs)

  def __call__(self, h: jax.Array, states: _States | None = None) -> jax.Array:
    states = _States(None) if states is None else states
    y = depth_to_space(states.conv(self.conv, jax.nn.silu(self.norm(h))), 1, self.stem_patch)
    return y * jnp.asarray(self.pixel_std, y.dtype) + jnp.asarray(self.pixel_mean, y.dtype)


class Decoder(nnx.Module):

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    kw, kernel, self.factors = _layer_setup(config, rngs)
    ch = tuple(config.channels)
    self.conv_in = CausalConv3d(config.latent_channels, ch[-1], kernel, **kw)
    self.mid = nnx.List([ResBlock(ch[-1], ch[-1], kernel, norm=config.norm, **kw)
                         for _ in range(max(config.num_res_blocks, 1))])
    self.levels = nnx.List([
        nnx.List([ResBlock(ch[i], ch[i], kernel, norm=config.norm, **kw) for _ in range(config.num_res_blocks + 1)])
        for i in range(len(ch))])
    # Up-sampling from level i+1 to level i: a causal conv producing ft*fs*fs times the channels, then depth-to-space.
    self.ups = nnx.List([
        CausalConv3d(ch[i + 1], ch[i] * ft * fs * fs, kernel, **kw) for i, (ft, fs) in enumerate(self.factors)])
    pixel_mean, pixel_std = _pixel_stats(config)
    self.head = OutputHead(ch[0], config.in_channels, config.stem_patch, kernel, norm=config.norm,
                           pixel_mean=pixel_mean, pixel_std=pixel_std, **kw)

  def __call__(self, z: jax.Array, states: _States) -> jax.Array:
    return self.head(self.features(z, states), states)

  def features(self, z: jax.Array, states: _States) -> jax.Array:
    """Everything before the output head: z -> [B, T, H / stem, W / stem, channels[0]]."""
    h = states.conv(self.conv_in, z)
    for block in self.mid:
      h = block(h, states)
    for i in reversed(range(len(self.levels))):
      for block in self.levels[i]:
        h = block(h, states)
      if i > 0:
        ft, fs = self.factors[i - 1]
        h = depth_to_space(states.conv(self.ups[i - 1], h), ft, fs)
        if states.at_start:
          # Latent frame 0 stands for video frame 0 alone: of the ft frames it unfolds into, keep only the last.
          h = h[:, ft - 1:]
    return h


class Autoencoder(nnx.Module):
  """What every vidgen VAE shares (SpacetimeVAE here; the published WanVAE and ImageVAE): input checks and latent
  shapes from its factors, autoencoding through its `encode(video) -> DiagonalGaussian` and `decode(z)`, and the
  per-channel latent normalization held in `latent_shift` / `latent_scale` (`LatentStats`), which the DiT trains and
  samples in."""

  in_channels: int
  latent_channels: int
  spatial_factor: int
  temporal_factor: int

  # -- shapes and checks -------------------------------------------------------------------------------------------

  def latent_shape(self, video_shape: tuple[int, ...]) -> tuple[int, ...]:
    """[B, T, H, W, 3] -> [B, 1 + (T - 1) / ft, H / fs, W / fs, C] (after checking the shape)."""
    self._check_video_shape(tuple(video_shape))
    b, t, h, w, _ = video_shape
    return (b, 1 + (t - 1) // self.temporal_factor, h // self.spatial_factor, w // self.spatial_factor,
            self.latent_channels)

  def _check_video_shape(self, shape: tuple[int, ...]) -> None:
    name = type(self).__name__
    if len(shape) != 5:
      raise ValueError(f"{name} expects video of rank 5 [B, T, H, W, {self.in_channels}], got shape {shape}")
    _, t, h, w, c = shape
    ft, fs = self.temporal_factor, self.spatial_factor
    if c != self.in_channels:
      raise ValueError(f"{name} expects {self.in_channels} channels in the last axis, got shape {shape}")
    if t < 1 or (t - 1) % ft:
      raise ValueError(f"{name} expects T = 1 + {ft}k frames (1, {1 + ft}, {1 + 2 * ft}, ...), got T={t}")
    if h % fs or w % fs or h < fs or w < fs:
      raise ValueError(f"{name} expects height and width divisible by {fs}, got {h}x{w}")

  def _check_video(self, video: jax.Array) -> None:
    if not jnp.issubdtype(video.dtype, jnp.floating):
      raise ValueError(
          f"{type(self).__name__} expects a floating video in [-1, 1], got dtype {video.dtype} "
          "(convert uint8 frames with vidgen.data.to_model_range)")
    self._check_video_shape(tuple(video.shape))

  def _check_latent(self, z: jax.Array) -> None:
    name = type(self).__name__
    if z.ndim != 5 or z.shape[-1] != self.latent_channels:
      raise ValueError(f"{name}.decode expects latents [B, T', H', W', {self.latent_channels}], got {z.shape}")
    if not jnp.issubdtype(z.dtype, jnp.floating):
      raise ValueError(f"{name}.decode expects floating latents, got dtype {z.dtype}")

  @staticmethod
  def _check_chunk(chunk_frames: int | None, factor: int, what: str) -> None:
    if chunk_frames is not None and (chunk_frames < factor or chunk_frames % factor):
      raise ValueError(f"chunk_frames must be a positive multiple of {factor} {what}, got {chunk_frames}")

  # -- autoencoding and latent normalization -----------------------------------------------------------------------

  def __call__(self, video: jax.Array, key: jax.Array | None = None) -> tuple[jax.Array, DiagonalGaussian]:
    """Autoencodes `video`, sampling z with `key` (the posterior mode without one): (reconstruction, posterior)."""
    posterior = self.encode(video)
    z = posterior.mode() if key is None else posterior.sample(key)
    return self.decode(z), posterior

  def normalize(self, z: jax.Array) -> jax.Array:
    return (z - self.latent_shift[...]) / self.latent_scale[...]

  def denormalize(self, z: jax.Array) -> jax.Array:
    return z * self.latent_scale[...] + self.latent_shift[...]

  def set_latent_stats(self, shift: jax.Array, scale: jax.Array) -> None:
    self.latent_shift[...] = jnp.asarray(shift, jnp.float32).reshape(self.latent_channels)
    self.latent_scale[...] = jnp.asarray(scale, jnp.float32).reshape(self.latent_channels)


class SpacetimeVAE(Autoencoder):
  """Causal spacetime VAE. `encode(video) -> DiagonalGaussian`, `decode(z) -> video`, both accepting `chunk_frames`.

  Also holds the latent normalization (`normalize` / `denormalize`, per-channel shift and scale measured on data).
  """

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    validate_vae_config(config)
    self.config = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    self.spatial_factor = config.spatial_downsample
    self.temporal_factor = config.temporal_downsample
    self.in_channels = config.in_channels
    self.latent_channels = config.latent_channels
    self.logvar_range = (config.logvar_min, config.logvar_max)
    self.encoder = Encoder(config, rngs=rngs)
    self.decoder = Decoder(config, rngs=rngs)
    self.latent_shift = LatentStats(jnp.zeros((config.latent_channels,), jnp.float32))
    self.latent_scale = LatentStats(jnp.ones((config.latent_channels,), jnp.float32))

  # -- encode / decode ---------------------------------------------------------------------------------------------

  def _posterior(self, moments: jax.Array) -> DiagonalGaussian:
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return DiagonalGaussian(mean, jnp.clip(logvar, *self.logvar_range))

  def encode(self, video: jax.Array, *, chunk_frames: int | None = None) -> DiagonalGaussian:
    """video [B, T, H, W, 3] in [-1, 1] -> posterior over z [B, 1 + (T-1)/ft, H/fs, W/fs, C].

    chunk_frames: stream the frames after the first in chunks of this many frames (a multiple of ft), carrying the
      causal-conv states; equal to the one-pass result, with activation memory of one chunk.
    """
    self._check_video(video)
    self._check_chunk(chunk_frames, self.temporal_factor, "frames (the temporal down-sampling)")
    run = lambda x, prev: self._run(self.encoder, x, prev)
    return self._posterior(_stream(run, video, chunk_frames))

  def decode(self, z: jax.Array, *, chunk_frames: int | None = None) -> jax.Array:
    """z [B, T', H', W', C] -> video [B, 1 + ft (T'-1), H' fs, W' fs, 3] (unbounded; ~[-1, 1] once trained).

    chunk_frames: stream latent frames after the first in chunks of this many latent frames.
    """
    self._check_latent(z)
    self._check_chunk(chunk_frames, 1, "latent frames")
    run = lambda x, prev: self._run(self.decoder, x, prev)
    return _stream(run, z, chunk_frames).astype(jnp.float32)

  def decode_with_features(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One-pass decode that also returns the output head's input features (for losses on the last layer)."""
    self._check_latent(z)
    states = _States(None)
    features = self.decoder.features(z, states)
    return self.decoder.head(features, states).astype(jnp.float32), features

  @staticmethod
  def _run(net, x, previous):
    states = _States(previous)
    return net(x, states), states.new



def _stream(run, x: jax.Array, chunk_frames: int | None) -> jax.Array:
  """Applies a causal network `run(x, states) -> (y, states)` over axis 1 of x, whole or in chunks.

  The first frame is its own chunk (it starts the causal padding). Full chunks run in a `fori_loop` that slices its
  chunk out of x and writes the result into a preallocated output buffer, so compile time does not grow with their
  number and the live memory is x, the output and one chunk's activations. A shorter last chunk, if any, follows.
  """
  if chunk_frames is None:
    return run(x, None)[0]
  y0, states = run(x[:, :1], None)
  n_full = (x.shape[1] - 1) // chunk_frames
  tail = x.shape[1] - 1 - n_full * chunk_frames
  chunk_out = jax.eval_shape(lambda c, s: run(c, s)[0], x[:, :chunk_frames], states).shape[1] if n_full else 0
  tail_out = jax.eval_shape(lambda c, s: run(c, s)[0], x[:, :tail], states).shape[1] if tail else 0
  out = jnp.zeros((y0.shape[0], y0.shape[1] + n_full * chunk_out + tail_out, *y0.shape[2:]), y0.dtype)
  out = jax.lax.dynamic_update_slice_in_dim(out, y0, 0, axis=1)

  def body(i, carry):
    out, states = carry
    chunk = jax.lax.dynamic_slice_in_dim(x, 1 + i * chunk_frames, chunk_frames, axis=1)
    y, states = run(chunk, states)
    return jax.lax.dynamic_update_slice_in_dim(out, y, y0.shape[1] + i * chunk_out, axis=1), states

  if n_full:
    out, states = jax.lax.fori_loop(0, n_full, body, (out, states))
  if tail:
    y, _ = run(x[:, 1 + n_full * chunk_frames:], states)
    out = jax.lax.dynamic_update_slice_in_dim(out, y, out.shape[1] - tail_out, axis=1)
  return out


def param_count(module: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


__all__ = ["Autoencoder", "DiagonalGaussian", "LatentStats", "SpacetimeVAE", "default_vae_config", "validate_vae_config",
           "param_count"]
