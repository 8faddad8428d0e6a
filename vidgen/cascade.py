"""CascadePipeline: prompt -> base clip -> super-resolved clip, over a base DiT run and its super-resolution stage.

  from vidgen.cascade import CascadePipeline, load_pipeline, with_super_resolution
  pipe = CascadePipeline.from_workdirs("workdirs/shapes_t2v")          # the stage in workdirs/shapes_t2v/sr
  video = pipe("a red circle moving left", steps=50, guidance=4.0, seed=0)   # uint8 [17, 128, 128, 3]
  pipe = load_pipeline("workdirs/shapes_t2v")      # a CascadePipeline when WORKDIR/sr is finished, else a VideoPipeline
  pipe = with_super_resolution(VideoPipeline.from_workdir(workdir, lora=...), workdir)   # the same, from a pipeline
  high = pipe.upsample("a red circle moving left", low_latents)       # the second stage alone, on given latents

The base stage samples latents (`VideoPipeline(..., output="latent")`); the super-resolution stage
(`config.super_resolution`, vidgen.diffusion.cascade) samples the high-resolution latents conditioned on them
(repeated onto its grid, noise-augmented at `super_resolution.sample_level`), and the shared VAE decodes them. Both
stages read the same prompts; the second draws its noise from a stream of its own, so example i of a call depends
only on (prompt i, seed, i), as in a `VideoPipeline`.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen import runs
from vidgen.data import to_uint8
from vidgen.diffusion import cascade
from vidgen.errors import InputError, RunNotFoundError
from vidgen.parallel import axis_rules
from vidgen.pipeline import VideoPipeline

SR_SUBDIR = "sr"  # where a base run's super-resolution stage is trained: BASE/sr
_SR_STREAM = 0x5352  # folded into the seed's key: the second stage's noise, apart from the base stage's


def sr_workdir(base_workdir: str) -> str:
  """The directory of a base run's super-resolution stage: `base_workdir/sr`."""
  return os.path.join(os.path.abspath(base_workdir), SR_SUBDIR)


def with_super_resolution(pipe: VideoPipeline, workdir: str, *, ema: bool = True) -> VideoPipeline | "CascadePipeline":
  """`pipe` (the run in `workdir`) followed by its super-resolution stage when `workdir/sr` holds a finished one;
  else `pipe` itself.

  Raises RunNotFoundError when `pipe` is a super-resolution stage itself (sample its base run instead).
  """
  if cascade.is_super_resolution(pipe.config):
    raise RunNotFoundError(f"{workdir} holds the super-resolution stage of a cascade, which upsamples a base run's "
                           "clips; sample with --workdir of its base run (the directory above it)")
  if not runs.is_finished(sr_workdir(workdir)):
    return pipe
  return CascadePipeline(pipe, VideoPipeline.from_workdir(sr_workdir(workdir), ema=ema, mesh=pipe.mesh))


def load_pipeline(workdir: str, *, ema: bool = True, mesh: jax.sharding.Mesh | None = None
                  ) -> VideoPipeline | "CascadePipeline":
  """The generator of the DiT run in `workdir`: base -> super-resolution when `workdir/sr` holds a finished stage,
  else the run alone (`VideoPipeline.from_workdir`)."""
  return with_super_resolution(VideoPipeline.from_workdir(workdir, ema=ema, mesh=mesh), workdir, ema=ema)


def _same_vae(a: VideoPipeline, b: VideoPipeline) -> bool:
  """Whether two pipelines decode with the same VAE: its config, weights and latent statistics."""
  if dict(a.vae_config) != dict(b.vae_config):
    return False
  leaves = lambda p: jax.tree.leaves((p.vae_params, p.vae_stats))  # noqa: E731
  return all(x.shape == y.shape and np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(leaves(a), leaves(b), strict=True))


class CascadePipeline:
  """A base `VideoPipeline` followed by a super-resolution stage (a `VideoPipeline` of a `config.super_resolution`
  run) that shares its VAE; same call as a `VideoPipeline` (see `__call__`), with output `factor` times larger.

  Args:
    base: the base run's pipeline.
    sr: the super-resolution stage's pipeline.

  Raises:
    InputError: when `sr` is not a super-resolution stage of `base` (its clips are not `base`'s at `factor` times
      the size, or it encodes with another VAE).
  """

  def __init__(self, base: VideoPipeline, sr: VideoPipeline):
    if not cascade.is_super_resolution(sr.config):
      raise InputError("sr: not a super-resolution stage (its config has no super_resolution block)")
    if cascade.is_super_resolution(base.config):
      raise InputError("base: a super-resolution stage; the base of a cascade samples from prompts alone")
    self.base, self.sr = base, sr
    self.settings = sr.config.super_resolution
    self.factor = int(self.settings.factor)
    try:
      cascade.check_stages(base.config.data, sr.config.data, self.factor)
    except ValueError as e:
      raise InputError(f"sr: not a stage of this base run: {e}") from None
    if not _same_vae(base, sr):
      raise InputError("sr: the super-resolution stage encodes with another VAE than the base run; a cascade's "
                       "stages share one (train the stage with vae_workdir= the base run's VAE)")
    self._compiled: dict = {}

  @classmethod
  def from_workdirs(cls, base_workdir: str, sr: str | None = None, *, ema: bool = True,
                    mesh: jax.sharding.Mesh | None = None) -> "CascadePipeline":
    """The base run in `base_workdir` and its super-resolution stage in `sr` (default `base_workdir/sr`)."""
    base = VideoPipeline.from_workdir(base_workdir, ema=ema, mesh=mesh)
    return cls(base, VideoPipeline.from_workdir(sr or sr_workdir(base_workdir), ema=ema, mesh=base.mesh))

  @property
  def config(self):
    """The base run's config: its prompts, clip length and sampling settings drive the cascade."""
    return self.base.config

  @property
  def source(self):
    return self.base.source

  def sampling_defaults(self) -> dict[str, Any]:
    """The base run's sampling settings, as keyword arguments of `__call__` (the second stage uses its own)."""
    return self.base.sampling_defaults()

  # -- generation ----------------------------------------------------------------------------------------------------

  def __call__(self, prompt: str | Sequence[str], num_frames: int = 17, height: int | None = None,
               width: int | None = None, steps: int = 50, guidance: float = 4.0, seed: int = 0,
               sampler: str = "ddim", guidance_interval: Sequence[float] = (0.0, 1.0), progress: bool = False,
               output: str = "video", aspect_ratio: float | None = None, sr_steps: int | None = None,
               sr_guidance: float | None = None, sr_sampler: str | None = None, sr_level: float | None = None,
               **base_options: Any) -> np.ndarray:
    """Generates one high-resolution video per prompt: the base stage, then the super-resolution stage.

    Args:
      prompt, num_frames, steps, guidance, seed, sampler, guidance_interval, progress: as `VideoPipeline.__call__`,
        for the base stage (one clip size per call).
      height, width, aspect_ratio: the output size (default the stage's training size); the base stage samples
        1 / factor of it, so each side must be a multiple of factor x the base run's VAE factor x patch.
      output: "video" (decoded frames) or "latent" (the high-resolution latents, in the VAE's scale).
      sr_steps, sr_guidance, sr_sampler, sr_level: the second stage's sampler steps, guidance scale, sampler and
        augmentation level; default its run's `config.sampling` and `super_resolution.sample_level`.
      base_options: further arguments of the base stage's `VideoPipeline.__call__` (frame conditions such as
        image= or video=, at the base stage's size), passed on unchanged.

    Returns:
      uint8 [T, H, W, 3] for one prompt, [B, T, H, W, 3] for a list (float32 latents with output="latent").
    """
    for name, value in (("num_frames", num_frames), ("height", height), ("width", width),
                        ("aspect_ratio", aspect_ratio)):
      if isinstance(value, (list, tuple, np.ndarray)):
        raise InputError(f"{name}: a cascade generates one size per call; give one value")
    height, width = self.sr._resolve_size(height, width, aspect_ratio)
    self.sr._check_size(num_frames, height, width)
    if height % self.factor or width % self.factor:
      raise InputError(f"height={height}, width={width}: must be multiples of the super-resolution factor "
                       f"{self.factor}")
    low = self.base(prompt, num_frames=num_frames, height=height // self.factor, width=width // self.factor,
                    steps=steps, guidance=guidance, seed=seed, sampler=sampler, guidance_interval=guidance_interval,
                    progress=progress, output="latent", **base_options)
    if isinstance(low, list):
      raise InputError("the base stage returned clips of several sizes; a cascade upsamples one size per call")
    return self.upsample(prompt, low, seed=seed, steps=sr_steps, guidance=sr_guidance, sampler=sr_sampler,
                         level=sr_level, output=output)

  def upsample(self, prompt: str | Sequence[str], low_latents: np.ndarray, *, seed: int = 0, steps: int | None = None,
               guidance: float | None = None, sampler: str | None = None,
               guidance_interval: Sequence[float] | None = None, level: float | None = None,
               output: str = "video") -> np.ndarray:
    """The super-resolution stage alone: low-resolution latents -> high-resolution video.

    Args:
      prompt: a caption, or a list of captions (one per clip).
      low_latents: float [T', h, w, C] (one prompt) or [B, T', h, w, C], in the VAE's (un-normalized) scale: a base
        stage's `output="latent"`, or the VAE posterior mean of real low-resolution clips.
      seed: noise seed (example i draws from `fold_in(key(seed), i)` within this stage's stream).
      steps, guidance, sampler, guidance_interval: default the stage's `config.sampling`.
      level: the condition's augmentation level in [0, 1] (default `super_resolution.sample_level`).
      output: "video" or "latent" (the high-resolution latents, in the VAE's scale).

    Returns:
      uint8 [T, H f, W f, 3] for one prompt, [B, T, H f, W f, 3] for a list (float32 latents with output="latent").
    """
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
      raise InputError(f"prompt {prompt!r}: give a non-empty caption or a list of them")
    low = np.asarray(low_latents, np.float32)
    if single:
      low = low[None]
    channels = self.sr.vae_config["latent_channels"]
    if low.ndim != 5 or low.shape[0] != len(prompts) or low.shape[-1] != channels:
      raise InputError(f"low_latents: expected float {'[T, h, w, ' if single else f'[{len(prompts)}, T, h, w, '}"
                       f"{channels}] (one latent clip per prompt), got {np.shape(low_latents)}")
    s = self.sr.config.sampling
    steps = s.steps if steps is None else steps
    guidance = s.guidance if guidance is None else guidance
    sampler = s.sampler if sampler is None else sampler
    interval = tuple(s.get("guidance_interval", (0.0, 1.0)) if guidance_interval is None else guidance_interval)
    level = float(self.settings.sample_level if level is None else level)
    if not 0.0 <= level <= 1.0:
      raise InputError(f"level={level!r}: must be in [0, 1]")
    interval = self.sr.check_sampling(sampler, steps, guidance, interval, output)
    high_shape = (low.shape[1], low.shape[2] * self.factor, low.shape[3] * self.factor, channels)

    key = jax.random.fold_in(jax.random.key(seed), _SR_STREAM)
    noise = jnp.stack([jax.random.normal(jax.random.fold_in(key, 2 * i), high_shape) for i in range(len(prompts))])
    aug = jnp.stack([jax.random.normal(jax.random.fold_in(key, 2 * i + 1), high_shape) for i in range(len(prompts))])
    sample_key = jax.random.fold_in(key, -1 & 0x7FFFFFFF)
    guided = self.sr.config.conditioning != "none" and guidance != 1.0
    task = self._condition_fn()(self.sr.vae_params, self.sr.vae_stats, jnp.asarray(low), aug, jnp.float32(level))
    # The stage's own generation program, with the condition in its task channels (and in both guidance branches).
    fn = self.sr._generate_fn(int(steps), sampler, guided, interval, 1.0, False, output == "video")
    params = {name: p for name, (_, p) in self.sr.networks.items()}
    out = fn(params, self.sr.vae_params, self.sr.vae_stats, self.sr._condition_inputs(prompts), noise, None,
             jnp.float32(guidance), sample_key, task=task)
    out = to_uint8(np.asarray(out)) if output == "video" else np.asarray(out, np.float32)
    return out[0] if single else out

  def _condition_fn(self):
    """(VAE state, low-resolution latents in the VAE's scale, augmentation noise, level) -> the stage's task
    channels: the normalized latents repeated onto its grid, noise-augmented, with the level channel."""
    if "condition" not in self._compiled:
      sr = self.sr

      def condition(vae_params, vae_stats, low, aug, level):
        with axis_rules(sr.mesh, sr.rules):
          vae = nnx.merge(sr.vae_graph, vae_params, vae_stats)
          up = cascade.upsample_latents(vae.normalize(low), self.factor)
          return cascade.condition(up, jnp.full((low.shape[0],), level), aug)

      self._compiled["condition"] = jax.jit(condition)
    return self._compiled["condition"]
