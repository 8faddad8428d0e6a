"""Latent DiT training: a VideoDiT (and, for captions, a small text encoder trained with it) on a frozen VAE's latents.

A DiT run goes through three stages, each skipped when its output already exists, so re-running the same command
resumes wherever it stopped:
  1. VAE: `config.vae_workdir` names a finished VAE run, or (when empty) `config.vae_stage` is trained into
     `workdir/vae` by the same loop.
  2. Latent cache: `config.data.cache_clips` training clips encoded once into `workdir/latents` (posterior mean and
     std; see `vidgen.data.latent_cache`). A cache built by another VAE or data config is refused.
  3. DiT: v-prediction loss on normalized latents z = (mean + std * eps - shift) / scale, guidance dropout of the
     class / caption, an EMA of the weights, and joint image + video training (the first `data.image_first` batches
     and every `data.image_every`-th batch are 1-frame latents). Samples for `config.sampling.prompts` are written to
     `workdir/samples/`; the last evaluation also measures prompt-following on seen and held-out combinations
     (`workdir/eval.json`).

Conditioning (`config.conditioning`): "text" (captions through `SmallTextEncoder`, cross-attention), "class"
(class id = color x shape x direction of the embedded data) or "none".
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from vidgen import diffusion
from vidgen.config import ConfigError, require
from vidgen.data import ShapesDataset
from vidgen.data.latent_cache import LatentCache, LatentIterator, is_image_batch
from vidgen.data.shapes import GEOMETRY_FIELDS, NUM_CLASSES
from vidgen.models.dit import Conditioning, DiTSpec, VideoDiT
from vidgen.models.text import SmallTextEncoder, WordTokenizer, shapes_tokenizer, validate_small_text_config
from vidgen.parallel import axis_rules, state_shardings
from vidgen.scaling import forward_flops
from vidgen.train.optim import make_optimizer, optimizer_state_shardings, validate_optimizer_config
from vidgen.train.vae_trainer import load_vae, replicate, vae_run_finished
from vidgen.train.writers import log

CONDITIONINGS = ("text", "class", "none")
# Probability that a training example sees its own first-pass estimate when the DiT is self-conditioned
# (`dit.self_condition`); configs written before `diffusion.self_condition_prob` existed get this value.
DEFAULT_SELF_CONDITION_PROB = 0.5
SCHEDULES = ("cosine", "linear")


@flax.struct.dataclass
class DiTState:
  step: jax.Array
  params: Any  # {"dit": VideoDiT params, "text": SmallTextEncoder params or {}}, nested dicts of arrays
  ema_params: Any  # same structure: the exponential moving average used for sampling
  opt_state: Any


def make_schedule(config: ml_collections.ConfigDict) -> diffusion.Schedule:
  """`config.diffusion` -> a noise schedule ("cosine" with a logSNR shift, or "linear" DDPM betas)."""
  if config.schedule == "cosine":
    return diffusion.CosineSchedule(shift=float(config.shift))
  if config.schedule == "linear":
    return diffusion.LinearBetaSchedule(zero_terminal_snr=bool(config.zero_terminal_snr))
  raise ConfigError(f"config.diffusion.schedule: must be one of {SCHEDULES}, got {config.schedule!r}")


def latent_grid(config: ml_collections.ConfigDict, vae_config) -> tuple[int, int, int]:
  """Latent (T', H', W') of the run's clips under the VAE's factors."""
  ft, fs = vae_config["temporal_downsample"], vae_config["spatial_downsample"]
  d = config.data
  return (1 + (d.num_frames - 1) // ft, d.height // fs, d.width // fs)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the DiT run's own fields (those that do not need the VAE) before any stage runs."""
  require(config.conditioning in CONDITIONINGS, "conditioning",
          f"must be one of {CONDITIONINGS}, got {config.conditioning!r}")
  require(bool(config.vae_workdir) or "vae_stage" in config, "vae_workdir",
          "is empty and there is no config.vae_stage: name a finished VAE run or give a VAE stage to train")
  validate_optimizer_config(config.optimizer)
  DiTSpec.from_config(config.dit)
  if config.conditioning == "text":
    validate_small_text_config(config.text)
    require(config.dit.text_dim == config.text.width, "dit.text_dim",
            f"must equal config.text.width={config.text.width} (the caption tokens' width), got {config.dit.text_dim}")
  if config.conditioning == "class":
    require(config.dit.num_classes == NUM_CLASSES, "dit.num_classes",
            f"must be {NUM_CLASSES} (color x shape x direction of the shapes data), got {config.dit.num_classes}")
  d = config.data
  require(d.num_frames >= 1, "data.num_frames", f"must be >= 1, got {d.num_frames}")
  require(d.cache_clips >= config.batch_size, "data.cache_clips",
          f"must be >= batch_size={config.batch_size}, got {d.cache_clips}")
  require(d.image_every >= 0, "data.image_every", f"must be >= 0 (0 = videos only), got {d.image_every}")
  require(d.get("image_first", 0) >= 0, "data.image_first", f"must be >= 0, got {d.get('image_first', 0)}")
  df = config.diffusion
  require(df.schedule in SCHEDULES, "diffusion.schedule", f"must be one of {SCHEDULES}, got {df.schedule!r}")
  require(df.weighting in diffusion.WEIGHTINGS, "diffusion.weighting",
          f"must be one of {diffusion.WEIGHTINGS}, got {df.weighting!r}")
  require(0.0 <= df.guidance_dropout < 1.0, "diffusion.guidance_dropout",
          f"must be in [0, 1), got {df.guidance_dropout}")
  p_sc = df.get("self_condition_prob", DEFAULT_SELF_CONDITION_PROB)
  require(0.0 <= p_sc <= 1.0, "diffusion.self_condition_prob", f"must be in [0, 1], got {p_sc}")
  require(0.0 <= config.ema_decay < 1.0, "ema_decay", f"must be in [0, 1), got {config.ema_decay}")
  accum = config.get("grad_accum_steps", 1)
  require(isinstance(accum, int) and accum >= 1 and config.batch_size % accum == 0, "grad_accum_steps",
          f"must be a positive integer dividing batch_size={config.batch_size}, got {accum!r}")
  s = config.sampling
  require(s.sampler in diffusion.SAMPLERS, "sampling.sampler", f"must be one of {diffusion.SAMPLERS}, got "
                                                                f"{s.sampler!r}")
  require(1 <= s.steps <= 1000, "sampling.steps", f"must be in [1, 1000], got {s.steps}")
  require(s.guidance >= 0, "sampling.guidance", f"must be >= 0, got {s.guidance}")
  try:
    diffusion.check_interval(s.get("guidance_interval", (0.0, 1.0)), "sampling.guidance_interval")
  except ValueError as e:
    raise ConfigError(f"config.{e}") from None
  require(len(s.prompts) >= 1, "sampling.prompts", "must list at least one prompt to sample during training")


def validate_against_vae(config: ml_collections.ConfigDict, vae_config, mesh: jax.sharding.Mesh) -> None:
  """Checks that need the VAE and the mesh: latent sizes and channels, and heads vs the tensor axis."""
  ft, fs = vae_config["temporal_downsample"], vae_config["spatial_downsample"]
  d = config.data
  require((d.num_frames - 1) % ft == 0, "data.num_frames",
          f"must be 1 + {ft}k for the VAE's {ft}x temporal down-sampling, got {d.num_frames}")
  spec = DiTSpec.from_config(config.dit)
  for field in ("height", "width"):
    require(d[field] % (fs * spec.patch_size[1]) == 0, f"data.{field}",
            f"must be divisible by VAE factor x patch = {fs} x {spec.patch_size[1]}, got {d[field]}")
  grid = latent_grid(config, vae_config)
  require(tuple(spec.input_size) == grid, "dit.input_size",
          f"must be the latent grid {grid} of {d.num_frames}x{d.height}x{d.width} clips under the VAE, got "
          f"{tuple(spec.input_size)}")
  require(spec.in_channels == vae_config["latent_channels"], "dit.in_channels",
          f"must equal the VAE's latent_channels={vae_config['latent_channels']}, got {spec.in_channels}")
  tensor = mesh.shape.get("tensor", 1)
  require(spec.num_heads % tensor == 0, "dit.num_heads",
          f"{spec.num_heads} heads cannot be split over mesh.tensor={tensor} devices")


def ensure_vae(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Stage 1: the directory of a finished VAE run, training `config.vae_stage` into workdir/vae if needed."""
  if config.vae_workdir:
    path = os.path.abspath(config.vae_workdir)
    if not vae_run_finished(path):
      raise ConfigError(f"config.vae_workdir: {path} holds no finished VAE run (config.json and a checkpoint at its "
                        "last step); train one with `vidgen train --config experiments/shapes_vae.py`")
    return path
  path = os.path.join(workdir, "vae")
  if not vae_run_finished(path):
    from vidgen.train.loop import train_and_evaluate  # the loop imports trainers lazily; no cycle at import time

    log(f"stage 1/3: training the VAE in {path}")
    train_and_evaluate(config.vae_stage, path)
  else:
    log(f"stage 1/3: using the trained VAE in {path}")
  return path


def params_fingerprint(tree: Any) -> str:
  """SHA-256 of a parameter tree's bytes: identifies exactly which weights encoded a latent cache."""
  h = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(jax.device_get(tree)), key=lambda kv: str(kv[0])):
    h.update(str(path).encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


class DiTTrainer:
  """Everything the generic loop needs to train a latent VideoDiT (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, workdir: str, *,
               run_stages: bool = True):
    validate_config(config)
    self.config, self.mesh, self.workdir = config, mesh, workdir
    self.rules = tuple(tuple(r) for r in config.sharding_rules)
    if run_stages:
      self.vae_workdir = ensure_vae(config, workdir)
    else:
      self.vae_workdir = os.path.abspath(config.vae_workdir) if config.vae_workdir else os.path.join(workdir, "vae")
    self.vae, self.vae_step = load_vae(self.vae_workdir, mesh)
    validate_against_vae(config, self.vae.config, mesh)
    self.vae_graph, self.vae_params, self.vae_stats = nnx.split(self.vae, nnx.Param, ...)
    self.latent_shift = np.asarray(self.vae.latent_shift[...])
    self.latent_scale = np.asarray(self.vae.latent_scale[...])
    self.spec = DiTSpec.from_config(config.dit)
    self.schedule = make_schedule(config.diffusion)
    self.tokenizer: WordTokenizer | None = None
    if config.conditioning == "text":
      self.tokenizer = shapes_tokenizer(config.text.max_length)
      require(config.text.vocab_size == self.tokenizer.vocab_size, "text.vocab_size",
              f"must be {self.tokenizer.vocab_size} for the shapes tokenizer, got {config.text.vocab_size}")

    abstract = nnx.eval_shape(lambda: self._build_models(nnx.Rngs(0)))
    (self.dit_graph, dit_params), (self.text_graph, text_params) = (
        nnx.split(m, nnx.Param) if m is not None else (None, nnx.State({})) for m in abstract)
    self._param_shardings = {
        "dit": state_shardings(dit_params, self.rules, mesh).to_pure_dict(),
        "text": state_shardings(text_params, self.rules, mesh).to_pure_dict(),
    }
    self.optimizer = make_optimizer(config.optimizer, config.total_steps)

  def _build_models(self, rngs: nnx.Rngs) -> tuple[VideoDiT, SmallTextEncoder | None]:
    dit = VideoDiT(self.config.dit, rngs=rngs)
    text = SmallTextEncoder(self.config.text, rngs=rngs) if self.config.conditioning == "text" else None
    return dit, text

  # -- state -------------------------------------------------------------------------------------------------------

  def init_state(self, key: jax.Array) -> DiTState:
    dit, text = self._build_models(nnx.Rngs(key))
    params = {"dit": nnx.split(dit, nnx.Param)[1].to_pure_dict(),
              "text": {} if text is None else nnx.split(text, nnx.Param)[1].to_pure_dict()}
    return DiTState(step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=self.optimizer.init(params))

  def state_shardings(self) -> DiTState:
    abstract = jax.eval_shape(self.init_state, jax.random.key(0))
    rep = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    opt = optimizer_state_shardings(self.optimizer, abstract.opt_state, self._param_shardings, self.mesh)
    return DiTState(step=rep, params=self._param_shardings, ema_params=self._param_shardings, opt_state=opt)

  def model_flops_per_step(self) -> int:
    """Training FLOPs of one video step: 3 x forward (forward + backward) x batch, from `vidgen.scaling`."""
    text_len = self.config.text.max_length if self.config.conditioning == "text" else 0
    return 3 * self.config.batch_size * forward_flops(self.spec, self.spec.input_size, text_len)

  # -- data --------------------------------------------------------------------------------------------------------

  def cache_fingerprint(self) -> dict:
    d = self.config.data
    return {"vae": {"config": self.vae.config, "step": int(self.vae_step),
                    "params_sha256": params_fingerprint(self.vae_params)},
            "data": {"name": d.name, "split": "train", "num_frames": d.num_frames, "height": d.height,
                     "width": d.width, "held_out": list(d.held_out), "seed": d.seed, "clips": d.cache_clips,
                     **{name: d[name] for name in GEOMETRY_FIELDS if name in d}}}

  def dataset(self, split: str) -> ShapesDataset:
    return ShapesDataset.from_config(self.config.data, split)

  def encode(self, video_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 clips -> the VAE posterior's (mean, std), un-normalized, on the run's mesh."""
    if not hasattr(self, "_encode"):
      def fn(params, stats, x):
        with axis_rules(self.mesh, self.rules):
          posterior = nnx.merge(self.vae_graph, params, stats).encode(x.astype(jnp.float32) / 127.5 - 1.0)
          return posterior.mean, posterior.std
      self._encode = jax.jit(fn)
    mean, std = self._encode(self.vae_params, self.vae_stats, replicate(self.mesh, video_uint8))
    return np.asarray(mean), np.asarray(std)

  def latent_cache(self) -> LatentCache:
    """Stage 2: opens workdir/latents (or config.data.cache_dir), building it first if it does not exist."""
    d = self.config.data
    directory = os.path.abspath(d.cache_dir) if d.cache_dir else os.path.join(self.workdir, "latents")
    fingerprint = self.cache_fingerprint()
    if not LatentCache.exists(directory):
      log(f"stage 2/3: encoding {d.cache_clips} clips into the latent cache {directory}")
      dataset = self.dataset("train")
      LatentCache.build(directory, fingerprint=fingerprint, num_clips=d.cache_clips,
                        clips_fn=dataset.batch, encode_fn=self.encode, batch_size=d.cache_batch,
                        write=jax.process_index() == 0)
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("vidgen latent cache written")
    else:
      log(f"stage 2/3: using the latent cache {directory}")
    return LatentCache.open(directory, fingerprint)

  def make_iterator(self, process_index: int, process_count: int) -> LatentIterator:
    cache = self.latent_cache()
    log("stage 3/3: training the DiT")
    return LatentIterator(cache, global_batch=self.config.batch_size, seed=self.config.data.seed,
                          process_index=process_index, process_count=process_count,
                          image_every=self.config.data.image_every,
                          image_first=self.config.data.get("image_first", 0), transform=self._add_conditioning)

  def _add_conditioning(self, batch: dict) -> dict:
    if self.tokenizer is not None:
      batch["ids"], batch["mask"] = self.tokenizer(list(batch["caption"]))
    return batch

  def host_batch(self, batch: dict) -> dict[str, np.ndarray]:
    out = {"mean": batch["mean"], "std": batch["std"]}
    if self.config.conditioning == "class":
      out["label"] = batch["label"]
    elif self.config.conditioning == "text":
      out["ids"], out["mask"] = batch["ids"], batch["mask"]
    return out

  # -- training ----------------------------------------------------------------------------------------------------

  def phase(self, step: int) -> str:
    """Static variant: image batches (1 latent frame) and video batches have different shapes."""
    d = self.config.data
    return "image" if is_image_batch(step, d.image_every, d.get("image_first", 0)) else "video"

  def conditioning(self, params: dict, batch: dict) -> Conditioning:
    """Batch (+ text-encoder params) -> the DiT's conditioning."""
    if self.config.conditioning == "class":
      return Conditioning(labels=batch["label"])
    if self.config.conditioning == "text":
      text = nnx.merge(self.text_graph, params["text"])(batch["ids"], batch["mask"])
      return Conditioning(text=text, text_mask=batch["mask"])
    return Conditioning()

  def train_step(self, state: DiTState, batch: dict, phase: str) -> tuple[DiTState, dict]:
    del phase  # the batch shapes already select the compiled variant
    with axis_rules(self.mesh, self.rules):
      return self._train_step(state, batch)

  def _drop_conditioning(self, batch: dict, key: jax.Array) -> dict:
    """Guidance dropout on the batch itself: a dropped example gets the null class / an all-padding caption."""
    p = self.config.diffusion.guidance_dropout
    if p <= 0 or self.config.conditioning == "none":
      return batch
    drop = jax.random.bernoulli(key, p, (batch["mean"].shape[0],))
    batch = dict(batch)
    if self.config.conditioning == "class":
      batch["label"] = jnp.where(drop, self.spec.num_classes, batch["label"])
    else:
      batch["mask"] = batch["mask"] & ~drop[:, None]
    return batch

  def _train_step(self, state: DiTState, batch: dict) -> tuple[DiTState, dict]:
    cfg = self.config
    key = jax.random.fold_in(jax.random.key(cfg.seed), state.step)
    k_z, k_drop, k_t, k_eps = jax.random.split(key, 4)
    # All randomness is drawn for the whole batch before it is split into micro-batches, so gradient accumulation
    # changes the memory footprint, not the result.
    mean = batch["mean"]
    z = mean + batch["std"] * jax.random.normal(k_z, mean.shape)
    batch = self._drop_conditioning(dict(batch, x=(z - self.latent_shift) / self.latent_scale,
                                         t=diffusion.sample_t(k_t, mean.shape[0]),
                                         eps=jax.random.normal(k_eps, mean.shape)), k_drop)
    del batch["mean"], batch["std"]
    if self.spec.self_condition:
      # Which examples see their own first-pass estimate (W.A.L.T: p = 0.9); a key of its own keeps the other draws
      # equal to those of a model without self-conditioning.
      p = cfg.diffusion.get("self_condition_prob", DEFAULT_SELF_CONDITION_PROB)
      batch["self_cond"] = jax.random.bernoulli(jax.random.fold_in(key, 1), p, (mean.shape[0],))

    def loss_fn(params, micro):
      dit = nnx.merge(self.dit_graph, params["dit"])
      cond = self.conditioning(params, micro)
      denoise = lambda z_t, t: dit(z_t, t, cond)
      if self.spec.self_condition:
        denoise = diffusion.self_conditioned(lambda z_t, t, x_prev: dit(z_t, t, cond.replace(self_cond=x_prev)),
                                             self.schedule, micro["self_cond"])
      per_example = diffusion.v_loss(denoise, micro["x"], k_eps, self.schedule,
                                     weighting=cfg.diffusion.weighting, gamma=cfg.diffusion.min_snr_gamma,
                                     t=micro["t"], eps=micro["eps"])
      return jnp.mean(per_example)

    steps = cfg.get("grad_accum_steps", 1)
    if steps == 1:
      loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
    else:
      micro_batches = jax.tree.map(lambda a: a.reshape(steps, a.shape[0] // steps, *a.shape[1:]), batch)

      def accumulate(carry, micro):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, micro)
        return jax.tree.map(jnp.add, carry, (loss, grads)), None

      zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
      (loss, grads), _ = jax.lax.scan(accumulate, zeros, micro_batches)
      loss, grads = jax.tree.map(lambda a: a / steps, (loss, grads))
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # EMA with a warm-up (decay grows as (1 + n) / (10 + n)), so early samples are not dominated by the random init.
    n = state.step.astype(jnp.float32)
    decay = jnp.minimum(cfg.ema_decay, (1.0 + n) / (10.0 + n))
    ema = jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), state.ema_params, params)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
    return DiTState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state), metrics

  # -- sampling and evaluation ---------------------------------------------------------------------------------------

  def pipeline(self, state: DiTState, *, ema: bool = True):
    """A `VideoPipeline` over the current weights (EMA by default)."""
    from vidgen.pipeline import VideoPipeline

    params = state.ema_params if ema else state.params
    return VideoPipeline(config=self.config, mesh=self.mesh, vae=(self.vae_graph, self.vae_params, self.vae_stats),
                         dit=(self.dit_graph, params["dit"]), text=(self.text_graph, params["text"]),
                         tokenizer=self.tokenizer)

  def evaluate(self, state: DiTState, step: int) -> dict[str, float]:
    """Writes sample videos for `config.sampling.prompts`; at the last step also runs the prompt-following eval."""
    from vidgen.data.shapes import evaluation

    pipe = self.pipeline(state)
    evaluation.write_samples(pipe, self.config, os.path.join(self.workdir, "samples"), step)
    if step < self.config.total_steps or not self.config.eval.at_end:
      return {}
    results = evaluation.evaluate(pipe, self.config, self.workdir)
    return {f"eval_{k}": v for k, v in evaluation.summary(results).items()}

  def finalize(self, state: DiTState) -> DiTState:
    return state
