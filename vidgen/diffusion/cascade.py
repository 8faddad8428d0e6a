"""Super-resolution cascade stage: how a high-resolution DiT is conditioned on a low-resolution clip.

A cascade (W.A.L.T, arXiv 2312.06662; Imagen Video, arXiv 2210.02303) generates a clip at the base size, then a
second DiT generates the same clip at `factor` times the height and width, conditioned on the first. Both stages
share one VAE, so the condition is the low-resolution clip's latents `[B, T', h, w, C]` (normalized), brought onto
the high-resolution latent grid `[B, T', h f, w f, C]` by repeating each latent pixel f x f times: a low-resolution
latent pixel and the f x f high-resolution ones it becomes describe the same region of the frame, and repeating
(unlike interpolating) gives the DiT only codes the VAE produced. With a DiT patch of f x f, each token then reads
exactly one low-resolution latent.

Noise augmentation (Imagen, cascaded diffusion): the condition is `alpha_s * up + sigma_s * eps` with a
variance-preserving cosine `(alpha_s, sigma_s) = (cos(pi s / 2), sin(pi s / 2))`, s drawn uniformly in
`[0, max_level]` per training example and fixed (`sample_level`) at sampling; s itself is one more constant channel,
so the model knows how far to trust the condition. The DiT's task channels are therefore C + 1
(`task_channels(C)`). The augmentation makes the stage robust to the gap between real low-resolution latents
(training) and the base model's samples (generation).

Training pairs: each clip is rendered at the high-resolution size (the true clip) and area-downsampled by `factor`
(`area_downsample`); both are encoded by the VAE into the latent cache, the low-resolution posterior as `low_mean`,
`low_std` (`low_resolution_latents`). Training draws `z_low = low_mean + low_std * eps`, the distribution the base
stage learns to generate.

`config.super_resolution` (validated by `validate_config`):
  factor        integer >= 2: the high-resolution height and width over the base stage's.
  max_level     augmentation levels s of training are uniform in [0, max_level], max_level in [0, 1).
  sample_level  the level used at sampling, in [0, max_level].
  base_workdir  optional: the base DiT run this stage upsamples; when set, its clip length, size and VAE are checked.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vidgen.config import ConfigError, read_run_config, require
from vidgen.errors import RunNotFoundError

Array = jax.Array

# The arrays a super-resolution latent cache holds per clip besides `mean` and `std`.
LOW_RESOLUTION_KEYS = ("low_mean", "low_std")
FIELDS = ("factor", "max_level", "sample_level", "base_workdir")


def task_channels(latent_channels: int) -> int:
  """The DiT's `task_channels` for super-resolution: the augmented condition (C) and its level (1)."""
  return latent_channels + 1


def is_super_resolution(config: Mapping[str, Any]) -> bool:
  """Whether a DiT run's config trains a super-resolution stage (a non-empty `config.super_resolution`)."""
  return bool(config.get("super_resolution", None))


def augmentation_scales(level: Array) -> tuple[Array, Array]:
  """(alpha, sigma) of augmentation level s in [0, 1]: the variance-preserving cosine, `(cos(pi s/2), sin(pi s/2))`."""
  level = jnp.asarray(level, jnp.float32)
  return jnp.cos(0.5 * math.pi * level), jnp.sin(0.5 * math.pi * level)


def upsample_latents(low: Array, factor: int) -> Array:
  """`[B, T', h, w, C]` -> `[B, T', h f, w f, C]`: each latent pixel repeated f x f times (see the module docstring)."""
  return jnp.repeat(jnp.repeat(low, factor, axis=2), factor, axis=3)


def condition(up: Array, level: Array, eps: Array) -> Array:
  """The DiT's task channels `[B, T, H, W, C + 1]`: `alpha_s up + sigma_s eps` and the constant level s.

  Args:
    up: `[B, T, H, W, C]` the upsampled low-resolution latents (normalized).
    level: `[B]` augmentation levels s in [0, 1].
    eps: `[B, T, H, W, C]` standard normal noise.
  """
  alpha, sigma = augmentation_scales(level)
  per_example = lambda a: a.reshape(a.shape + (1,) * (up.ndim - 1))  # noqa: E731
  noisy = per_example(alpha) * up.astype(jnp.float32) + per_example(sigma) * eps.astype(jnp.float32)
  channel = jnp.broadcast_to(per_example(jnp.asarray(level, jnp.float32)), (*up.shape[:-1], 1))
  return jnp.concatenate([noisy, channel], axis=-1)


def training_condition(key: Array, low_mean: Array, low_std: Array, shift: Any, scale: Any,
                       settings: Mapping[str, Any]) -> Array:
  """The task channels of a training batch: a posterior sample of each low-resolution clip, normalized, upsampled
  and noise-augmented at a level drawn uniformly in [0, settings.max_level].

  Args:
    key: the draws' key (the trainer folds its step key with a number of its own, so no other draw changes).
    low_mean, low_std: `[B, T', h, w, C]` the cached low-resolution posterior (un-normalized).
    shift, scale: `[C]` the VAE's latent statistics (normalized z = (z - shift) / scale).
    settings: `config.super_resolution`.

  Returns:
    `[B, T', h f, w f, C + 1]`.
  """
  k_z, k_level, k_eps = jax.random.split(key, 3)
  z = (low_mean + low_std * jax.random.normal(k_z, low_mean.shape) - shift) / scale
  up = upsample_latents(z, int(settings["factor"]))
  level = jax.random.uniform(k_level, (low_mean.shape[0],), maxval=float(settings["max_level"]))
  return condition(up, level, jax.random.normal(k_eps, up.shape))


def sampling_condition(key: Array, low: Array, factor: int, level: float) -> Array:
  """The task channels at generation: normalized low-resolution latents `[B, T', h, w, C]` (a base stage's sample),
  upsampled and augmented at the fixed `level` with noise from `key` -> `[B, T', h f, w f, C + 1]`."""
  up = upsample_latents(low, factor)
  return condition(up, jnp.full((low.shape[0],), level, jnp.float32), jax.random.normal(key, up.shape))


# -- the low-resolution half of a training pair ----------------------------------------------------------------------


def area_downsample(video: np.ndarray, factor: int) -> np.ndarray:
  """uint8 `[..., H, W, 3]` -> uint8 `[..., H / f, W / f, 3]`: the mean of each f x f block of pixels, rounded."""
  video = np.asarray(video)
  *lead, h, w, c = video.shape
  if h % factor or w % factor:
    raise ValueError(f"a {h}x{w} frame does not divide into {factor}x{factor} blocks")
  blocks = video.reshape(*lead, h // factor, factor, w // factor, factor, c).astype(np.float32)
  return np.clip(np.round(blocks.mean(axis=(-4, -2))), 0, 255).astype(np.uint8)


def low_resolution_latents(video: np.ndarray, factor: int,
                           encode_fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
  """The cache's low-resolution arrays of high-resolution clips: {"low_mean", "low_std"}, the VAE posterior of the
  area-downsampled clips, float32 `[n, T', h, w, C]`; `encode_fn` is the cache's uint8 video -> (mean, std)."""
  mean, std = encode_fn(area_downsample(video, factor))
  return {"low_mean": np.asarray(mean, np.float32), "low_std": np.asarray(std, np.float32)}


def cache_fingerprint(settings: Mapping[str, Any]) -> dict:
  """What decides a super-resolution cache's extra arrays beyond the VAE and data: the factor and the downsampling."""
  return {"factor": int(settings["factor"]), "downsample": "area"}


# -- configuration ---------------------------------------------------------------------------------------------------


def _vae_source(config: Mapping[str, Any], workdir: str | None = None) -> str:
  """Which VAE a DiT run encodes with, as a comparable string: its published folder or its VAE run's directory."""
  if config.get("pretrained_vae", ""):
    return "pretrained:" + os.path.abspath(config["pretrained_vae"])
  if config.get("vae_workdir", ""):
    return os.path.abspath(config["vae_workdir"])
  return os.path.join(os.path.abspath(workdir), "vae") if workdir else ""


def validate_config(config: Mapping[str, Any], vae_config: Mapping[str, Any]) -> None:
  """Checks `config.super_resolution` of a DiT run (nothing when absent) against its data, DiT and VAE, and, when
  `super_resolution.base_workdir` is set, against that base run; raises ConfigError naming the field."""
  if not is_super_resolution(config):
    return
  sr = config["super_resolution"]
  unknown = sorted(set(sr) - set(FIELDS))
  require(not unknown, "super_resolution", f"unknown fields {unknown}; allowed: {list(FIELDS)}")
  factor = sr.get("factor", None)
  require(isinstance(factor, int) and not isinstance(factor, bool) and factor >= 2, "super_resolution.factor",
          f"must be an integer >= 2 (high-resolution size over the base size), got {factor!r}")
  top = sr.get("max_level", None)
  require(isinstance(top, (int, float)) and not isinstance(top, bool) and 0.0 <= top < 1.0,
          "super_resolution.max_level", f"must be a number in [0, 1) (1 would leave no condition), got {top!r}")
  level = sr.get("sample_level", None)
  require(isinstance(level, (int, float)) and not isinstance(level, bool) and 0.0 <= level <= top,
          "super_resolution.sample_level",
          f"must be a number in [0, max_level={top}] (the levels the model was trained on), got {level!r}")

  d = config["data"]
  fs = vae_config["spatial_downsample"]
  for field in ("height", "width"):
    require(d[field] % (factor * fs) == 0, f"data.{field}",
            f"must be divisible by super_resolution.factor x VAE factor = {factor} x {fs}: the low-resolution clip "
            f"must be whole latent pixels, got {d[field]}")
  want = task_channels(vae_config["latent_channels"])
  channels = config["dit"].get("task_channels", 0)
  require(channels == want, "dit.task_channels",
          f"must be {want} (the low-resolution latents and their augmentation level) for super_resolution, got "
          f"{channels}")
  tasks = config.get("tasks", None)
  require(not tasks or all(name == "text_to_video" or not w for name, w in dict(tasks).items()), "tasks",
          "frame tasks share the task channels with super_resolution; train them in the base stage")
  for field in ("buckets", "packing"):
    require(not d.get(field, None), f"data.{field}",
            "is not supported with super_resolution: the stage trains on whole clips of one size")
  for field in ("image_every", "image_first"):
    require(not d.get(field, 0), f"data.{field}",
            "must be 0 with super_resolution: the latent cache's low-resolution latents are whole clips")
  validation = config.get("validation", None) or {}
  require(not validation.get("clips", 0), "validation.clips",
          "must be 0 with super_resolution: the validation set holds no low-resolution clips")
  require(bool(_vae_source(config)), "vae_workdir",
          "must name the base stage's VAE run (or set pretrained_vae): both stages of a cascade share one VAE")

  base_dir = sr.get("base_workdir", "")
  if not base_dir:
    return
  try:
    base = read_run_config(base_dir)
  except RunNotFoundError as e:
    raise ConfigError(f"config.super_resolution.base_workdir: {e}") from None
  require(base.get("trainer") == "dit" and not is_super_resolution(base), "super_resolution.base_workdir",
          f"{base_dir} must hold a base DiT run, got a {base.get('trainer')!r} run"
          + (" of a super-resolution stage" if is_super_resolution(base) else ""))
  check_stages(base.data, d, factor)
  require(_vae_source(base, base_dir) == _vae_source(config), "vae_workdir",
          f"must be the VAE of the base run {base_dir} ({_vae_source(base, base_dir)}), got {_vae_source(config)}")


def check_stages(base_data: Mapping[str, Any], sr_data: Mapping[str, Any], factor: int) -> None:
  """The high-resolution stage's clips are the base stage's at `factor` times the height and width."""
  require(base_data["num_frames"] == sr_data["num_frames"], "data.num_frames",
          f"must equal the base stage's {base_data['num_frames']} (the cascade upsamples space only), got "
          f"{sr_data['num_frames']}")
  for field in ("height", "width"):
    require(base_data[field] * factor == sr_data[field], f"data.{field}",
            f"must be super_resolution.factor x the base stage's = {factor} x {base_data[field]}, got "
            f"{sr_data[field]}")
