"""Latent DiT training: a VideoDiT (and, for captions, a small text encoder trained with it) on a frozen VAE's latents.

The trainer reads a latent cache (`vidgen.data.latent_cache`) that `vidgen.train.stages` built with the run's VAE;
it never trains or loads anything itself. Per step: the objective's loss (`config.diffusion.objective`: v-prediction
or rectified flow) on normalized latents z = (mean + std * eps - shift) / scale, guidance dropout of the class /
caption, an EMA of the weights, and joint image + video training (the first `data.image_first` batches and every
`data.image_every`-th batch are 1-frame latents). Every evaluation writes samples for `config.sampling.prompts` to
`workdir/samples/` and, with `validation.clips`, logs the fixed-noise validation loss (`vidgen.train.validation`); the
last also runs the data source's own evaluation (for the embedded shapes: prompt-following on seen and held-out
combinations, `workdir/eval.json`).

With `config.tasks` every example also draws a frame task (image-to-video, extension, interpolation;
`vidgen.diffusion.tasks`): its known latent frames are given clean and in the task channels, and the loss counts the
others only. A super-resolution stage (`config.super_resolution`, `vidgen.diffusion.cascade`) reads its
low-resolution clip through the task channels instead.

Conditioning (`config.conditioning`): "text" (captions through cross-attention: with `config.text.encoder = "small"`
a `SmallTextEncoder` trained with the DiT; with "hf" a frozen pretrained T5 / UMT5 / CLIP whose caption embeddings are
cached with the latents), "class" (the data source's class ids) or "none".
"""

from __future__ import annotations

import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from vidgen import diffusion, media
from vidgen.diffusion import cascade, tasks
from vidgen.config import ConfigError, require
from vidgen.data.buckets import Bucket, BucketSchedule, check_no_buckets_with, parse_buckets, plan_batches
from vidgen.data.latent_cache import (
    BucketedCache,
    BucketedIterator,
    LatentCache,
    LatentIterator,
    PackedIterator,
    is_image_batch,
)
from vidgen.data.sources import get_source
from vidgen.data.packing import block_shapes
from vidgen.layers.embeddings import token_grid
from vidgen.layers.layout import PackedLayout, WindowGather, per_clip, window_gather
from vidgen.models.dit import Conditioning, drop_conditioning
from vidgen.models.dit_config import DiTSpec
from vidgen.models.text.frozen import text_encoder_kind, text_width, validate_text_config
from vidgen.models.vae import SpacetimeVAE, latent_grid
from vidgen.parallel import axis_rules, state_shardings
from vidgen.pipeline import VideoPipeline
from vidgen.runs import dit_models
from vidgen.scaling import train_flops_per_example, train_flops_per_step
from vidgen.train.optim import make_optimizer, optimizer_state_shardings, validate_optimizer_config
from vidgen.train.validation import ValidationLoss, validate_validation_config, validation_settings

CONDITIONINGS = ("text", "class", "none")


@flax.struct.dataclass
class DiTState:
  step: jax.Array
  params: Any  # {"dit": VideoDiT params, "text": SmallTextEncoder params (captioned runs)}, nested dicts of arrays
  ema_params: Any  # same structure: the exponential moving average used for sampling
  opt_state: Any


def validate_config(config: ml_collections.ConfigDict, mesh_shape: dict[str, int], vae_config) -> None:
  """The DiT run's own fields, checked against the VAE config it will encode with and the mesh, before any stage."""
  require(config.conditioning in CONDITIONINGS, "conditioning",
          f"must be one of {CONDITIONINGS}, got {config.conditioning!r}")
  validate_optimizer_config(config.optimizer)
  spec = DiTSpec.from_config(config.dit)
  source = get_source(config.data)
  source.validate_eval(config)
  validate_validation_config(config)
  if config.conditioning == "text":
    validate_text_config(config.text)
    width = text_width(config.text)
    require(config.dit.text_dim == width, "dit.text_dim",
            f"must equal the text encoder's width {width} (the caption tokens' width), got {config.dit.text_dim}")
    if text_encoder_kind(config.text) == "small":
      vocab = source.caption_tokenizer(config.text.max_length).vocab_size
      require(config.text.vocab_size == vocab, "text.vocab_size",
              f"must be {vocab}, the caption vocabulary of data source {config.data.name!r}, got "
              f"{config.text.vocab_size}")
  if config.conditioning == "class":
    require(config.dit.num_classes == source.num_classes, "dit.num_classes",
            f"must be {source.num_classes}, the classes of data source {config.data.name!r}, got "
            f"{config.dit.num_classes}")
  d = config.data
  require(d.cache_clips >= config.batch_size, "data.cache_clips",
          f"must be >= batch_size={config.batch_size}, got {d.cache_clips}")
  require(d.image_every >= 0, "data.image_every", f"must be >= 0 (0 = videos only), got {d.image_every}")
  require(d.get("image_first", 0) >= 0, "data.image_first", f"must be >= 0, got {d.get('image_first', 0)}")
  diffusion.validate_diffusion_config(config.diffusion)
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
  most = s.get("max_size", (0, 0, 0))
  require(isinstance(most, (tuple, list)) and len(most) == 3
          and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in most), "sampling.max_size",
          f"must be (frames, height, width), each an integer >= 0 (0 = no limit), got {most!r}")

  # Against the VAE and the mesh.
  ft, fs = vae_config["temporal_downsample"], vae_config["spatial_downsample"]
  require(d.num_frames >= 1 and (d.num_frames - 1) % ft == 0, "data.num_frames",
          f"must be 1 + {ft}k for the VAE's {ft}x temporal down-sampling, got {d.num_frames}")
  for field in ("height", "width"):
    require(d[field] % (fs * spec.patch_size[1]) == 0, f"data.{field}",
            f"must be divisible by VAE factor x patch = {fs} x {spec.patch_size[1]}, got {d[field]}")
  grid = latent_grid(vae_config, d.num_frames, d.height, d.width)
  require(tuple(spec.input_size) == grid, "dit.input_size",
          f"must be the latent grid {grid} of {d.num_frames}x{d.height}x{d.width} clips under the VAE, got "
          f"{tuple(spec.input_size)}")
  require(spec.in_channels == vae_config["latent_channels"], "dit.in_channels",
          f"must equal the VAE's latent_channels={vae_config['latent_channels']}, got {spec.in_channels}")
  require(spec.num_heads % mesh_shape["tensor"] == 0, "dit.num_heads",
          f"{spec.num_heads} heads cannot be split over mesh.tensor={mesh_shape['tensor']} devices")
  validate_tasks(config, vae_config)
  cascade.validate_config(config, vae_config)
  buckets = bucket_plan(config, vae_config, mesh_shape)
  if buckets and not d.get("packing", False):
    require(d.cache_clips >= max(b.batch for b in buckets), "data.cache_clips",
            f"must be >= the largest bucket batch {max(b.batch for b in buckets)}, got {d.cache_clips}")
  validate_packing(config, vae_config)


def validate_tasks(config: ml_collections.ConfigDict, vae_config) -> None:
  """`config.tasks` (frame-conditioning task weights, `vidgen.diffusion.tasks`) against the DiT's task channels."""
  try:
    frame_tasks = tasks.uses_frame_tasks(config.get("tasks"))
  except ValueError as e:
    raise ConfigError(f"config.{e}") from None
  channels = config.dit.get("task_channels", 0)
  if frame_tasks:
    want = tasks.task_channels(vae_config["latent_channels"])
    require(channels == want, "dit.task_channels",
            f"must be {want} (the known latents and their mask) for the frame tasks of config.tasks, got {channels}")
    require(not config.data.get("packing", False), "tasks",
            "frame tasks are not supported on packed rows (data.packing); train them on whole clips or buckets")
    frames = latent_grid(vae_config, config.data.num_frames, config.data.height, config.data.width)[0]
    require(frames >= 2, "tasks", f"frame tasks need clips of at least 2 latent frames; data.num_frames="
                                  f"{config.data.num_frames} gives {frames}")
  elif not config.get("super_resolution"):
    require(channels == 0, "dit.task_channels",
            f"is {channels} but nothing feeds the task channels: set config.tasks (frame tasks) or 0")


def validate_packing(config: ml_collections.ConfigDict, vae_config) -> None:
  """`data.packing` (Patch n' Pack rows of `data.pack_length` tokens, at most `data.pack_slots` clips a row,
  `batch_size` rows a batch) and the fields it needs or replaces."""
  d = config.data
  packing = d.get("packing", False)
  require(isinstance(packing, bool), "data.packing", f"must be True or False, got {packing!r}")
  if not packing:
    for field in ("pack_length", "pack_slots"):
      require(not d.get(field, 0), f"data.{field}", "is a packing setting; set data.packing=True or leave it 0")
    return
  buckets = parse_buckets(d)
  require(bool(buckets), "data.packing", "needs data.buckets: the clip sizes that are packed together")
  require(not d.get("bucket_tokens", 0), "data.bucket_tokens",
          "sizes bucketed batches; with data.packing rows are data.pack_length tokens, so it must be 0")
  spec = DiTSpec.from_config(config.dit)
  require(spec.mlp_conv == 0, "dit.mlp_conv", "must be 0 with data.packing: the MLP's convolution runs over whole "
                                              "frames, which packed rows do not have")
  longest = max(int(np.prod(latent_grid(vae_config, b.frames, b.height, b.width))) // int(np.prod(spec.patch_size))
                for b in buckets)
  length, slots = d.get("pack_length", 0), d.get("pack_slots", 0)
  require(isinstance(length, int) and length >= longest, "data.pack_length",
          f"must be an integer >= {longest}, the tokens of the largest bucket's clips, got {length!r}")
  require(isinstance(slots, int) and slots >= 1, "data.pack_slots", f"must be an integer >= 1, got {slots!r}")
  require(config.get("grad_accum_steps", 1) == 1, "grad_accum_steps",
          "must be 1 with data.packing: rows hold different numbers of clips, so averaging micro-batch means would "
          "not give the batch's mean over clips")


def bucket_plan(config: ml_collections.ConfigDict, vae_config, mesh_shape: dict[str, int]) -> tuple[Bucket, ...]:
  """The run's size buckets with their batch sizes (`vidgen.data.buckets`); () without `data.buckets`. Checks every
  bucket's size against the VAE and the patch, and the fields buckets replace."""
  d = config.data
  buckets = parse_buckets(d)
  if not buckets:
    require(not d.get("bucket_tokens", 0), "data.bucket_tokens", "is a token budget for data.buckets; set buckets or 0")
    return ()
  check_no_buckets_with(d)
  spec = DiTSpec.from_config(config.dit)
  ft, fs = vae_config["temporal_downsample"], vae_config["spatial_downsample"]
  tokens = []
  for i, b in enumerate(buckets):
    require((b.frames - 1) % ft == 0, f"data.buckets[{i}]",
            f"{b.name}: frames must be 1 + {ft}k for the VAE's {ft}x temporal down-sampling")
    for name, value, p in (("height", b.height, spec.patch_size[1]), ("width", b.width, spec.patch_size[2])):
      require(value % (fs * p) == 0, f"data.buckets[{i}]",
              f"{b.name}: {name} must be divisible by VAE factor x patch = {fs} x {p}")
    t, h, w = latent_grid(vae_config, b.frames, b.height, b.width)
    require(t % spec.patch_size[0] == 0, f"data.buckets[{i}]",
            f"{b.name}: its {t} latent frames are not a multiple of the temporal patch {spec.patch_size[0]}")
    tokens.append(t * h * w // int(np.prod(spec.patch_size)))
  budget = d.get("bucket_tokens", 0)
  require(isinstance(budget, int) and budget >= 0, "data.bucket_tokens",
          f"must be an integer >= 0 (0 = batch_size clips in every bucket), got {budget!r}")
  multiple = int(np.lcm(mesh_shape["data"] * mesh_shape["fsdp"], jax.process_count()))
  return plan_batches(buckets, tokens, bucket_tokens=budget, max_batch=config.batch_size, multiple=multiple)


class DiTTrainer:
  """A latent VideoDiT on a built latent cache (see the module docstring); `config` validated by `validate_config`."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, workdir: str, *,
               vae: SpacetimeVAE, cache: LatentCache | BucketedCache, text_encoder: Any = None,
               validation: dict[str, np.ndarray] | None = None):
    """`text_encoder`: the frozen encoder of a `config.text.encoder = "hf"` run (its caption embeddings are in the
    cache; sampling during training encodes prompts with it). `validation`: the validation set stored beside the
    cache (`stages.load_validation_set`), for the validation loss logged at every evaluation."""
    self.config, self.mesh, self.workdir, self.vae, self.cache = config, mesh, workdir, vae, cache
    self.buckets = bucket_plan(config, vae.config, dict(mesh.shape)) if parse_buckets(config.data) else ()
    self.packing = bool(config.data.get("packing", False))
    self.blocks = {}
    if self.packing:  # fixed window blocks for every attention kind, sized for any row of the buckets' clips
      spec = DiTSpec.from_config(config.dit)
      grids = [token_grid(latent_grid(vae.config, b.frames, b.height, b.width), spec.patch_size)
               for b in self.buckets]
      self.blocks = block_shapes(spec.packed_windows, grids, config.data.pack_length)
    self.bucket_schedule = BucketSchedule([b.weight for b in self.buckets], config.data.seed) if self.buckets else None
    if cache is not None and bool(self.buckets) != isinstance(cache, BucketedCache):
      raise ValueError("a run with data.buckets reads a BucketedCache (one cache per bucket), and only such a run does")
    self.text_encoder = text_encoder
    self.frozen_text = config.conditioning == "text" and text_encoder_kind(config.text) == "hf"
    self.rules = tuple(tuple(r) for r in config.sharding_rules)
    self.latent_shift = np.asarray(vae.latent_shift[...])
    self.latent_scale = np.asarray(vae.latent_scale[...])
    self.spec = DiTSpec.from_config(config.dit)
    self.objective = diffusion.objective_from_config(config.diffusion)
    self.schedule = self.objective.schedule
    self.source = get_source(config.data)
    self.tokenizer = (self.source.caption_tokenizer(config.text.max_length)
                      if config.conditioning == "text" and not self.frozen_text else None)
    self.graphs, params = {}, {}
    for name, module in nnx.eval_shape(lambda: dit_models(config, nnx.Rngs(0))).items():
      self.graphs[name], params[name] = nnx.split(module, nnx.Param)
    self._param_shardings = {name: state_shardings(p, self.rules, mesh).to_pure_dict() for name, p in params.items()}
    self.optimizer = make_optimizer(config.optimizer, config.total_steps)
    self.validation_loss = self._validation_loss(validation) if validation is not None else None
    self.task_probabilities = (tasks.task_probabilities(config.tasks) if tasks.uses_frame_tasks(config.get("tasks"))
                               else None)

  # -- state -------------------------------------------------------------------------------------------------------

  def init_state(self, key: jax.Array) -> DiTState:
    params = {name: nnx.split(module, nnx.Param)[1].to_pure_dict()
              for name, module in dit_models(self.config, nnx.Rngs(key)).items()}
    return DiTState(step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=self.optimizer.init(params))

  def state_shardings(self) -> DiTState:
    abstract = jax.eval_shape(self.init_state, jax.random.key(0))
    rep = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    opt = optimizer_state_shardings(self.optimizer, abstract.opt_state, self._param_shardings, self.mesh)
    return DiTState(step=rep, params=self._param_shardings, ema_params=self._param_shardings, opt_state=opt)

  def model_flops_per_step(self, phase: str) -> int | None:
    """Training FLOPs of one step of `phase` ("video", "image" or a size bucket's "bucket_K"):
    `vidgen.scaling.train_flops_per_step`, or a bucket's batch x its clips' FLOPs. None for packed rows, whose mix
    of clips changes every step: the loop then reports XLA's count of the compiled step (attention over whole rows
    included, as it is computed)."""
    if phase == "packed":
      return None
    if phase.startswith("bucket_"):
      b = self.buckets[int(phase.split("_")[1])]
      grid = latent_grid(self.vae.config, b.frames, b.height, b.width)
      return b.batch * train_flops_per_example(self.config, grid)
    return train_flops_per_step(self.config, phase)

  # -- data --------------------------------------------------------------------------------------------------------

  def make_iterator(self, process_index: int, process_count: int) -> LatentIterator | BucketedIterator:
    d = self.config.data
    if self.packing:
      return PackedIterator(self.cache.caches, [b.weight for b in self.buckets], patch=self.spec.patch_size,
                            row_length=d.pack_length, slots=d.pack_slots, global_rows=self.config.batch_size,
                            seed=d.seed, process_index=process_index, process_count=process_count,
                            transform=self._tokenize)
    if self.buckets:
      return BucketedIterator(self.cache.caches, [b.batch for b in self.buckets], self.bucket_schedule, seed=d.seed,
                              process_index=process_index, process_count=process_count, transform=self._tokenize)
    return LatentIterator(self.cache, global_batch=self.config.batch_size, seed=d.seed, process_index=process_index,
                          process_count=process_count, image_every=d.image_every,
                          image_first=d.get("image_first", 0), transform=self._tokenize)

  def _tokenize(self, batch: dict) -> dict:
    if self.tokenizer is None:
      return batch
    if not self.packing:
      batch["ids"], batch["mask"] = self.tokenizer(list(batch["caption"]))
      return batch
    # Packed rows have [rows, slots] captions; empty slots ("") get no tokens at all.
    captions = np.asarray(batch["caption"]).reshape(-1)
    real = np.flatnonzero(captions != "")
    ids, mask = self.tokenizer([str(c) for c in captions[real]])
    batch["ids"] = np.zeros((len(captions), ids.shape[1]), ids.dtype)
    batch["mask"] = np.zeros((len(captions), mask.shape[1]), mask.dtype)
    batch["ids"][real], batch["mask"][real] = ids, mask
    shape = np.shape(batch["caption"])
    batch["ids"], batch["mask"] = batch["ids"].reshape(*shape, -1), batch["mask"].reshape(*shape, -1)
    return batch

  def host_batch(self, batch: dict) -> dict[str, np.ndarray]:
    out = {"mean": batch["mean"], "std": batch["std"]}
    out.update({k: batch[k] for k in cascade.LOW_RESOLUTION_KEYS if k in batch})  # a super-resolution stage
    if self.packing:
      out.update({k: batch[k] for k in ("segment_ids", "positions", "grids")})
      for kind, (window, windows, size) in self.blocks.items():
        # As many blocks as this batch's rows need (a power of two: a few compiled shapes), at most the bound.
        gather = window_gather(batch["segment_ids"], batch["positions"], window, windows=None, window_size=size,
                               max_windows=windows)
        out.update({f"{kind}_tokens": gather.tokens, f"{kind}_valid": gather.valid, f"{kind}_slot": gather.slot})
    if self.config.conditioning == "class":
      # Empty clip slots of packed rows (label -1) read the null class; nothing uses their output.
      out["label"] = np.where(batch["label"] < 0, self.spec.num_classes, batch["label"]).astype(np.int32)
    elif self.frozen_text:
      out["text"], out["mask"] = batch["text"], batch["text_mask"]
    elif self.config.conditioning == "text":
      out["ids"], out["mask"] = batch["ids"], batch["mask"]
    return out

  # -- training ----------------------------------------------------------------------------------------------------

  def phase(self, step: int) -> str:
    """Static variant: image batches (1 latent frame) and video batches have different shapes; with size buckets,
    each bucket ("bucket_K") is one."""
    if self.packing:
      return "packed"
    if self.buckets:
      return f"bucket_{self.bucket_schedule(step)[0]}"
    d = self.config.data
    return "image" if is_image_batch(step, d.image_every, d.get("image_first", 0)) else "video"

  def clip_conditioning(self, params: dict, batch: dict, drop: jax.Array) -> Conditioning:
    """Per-clip conditioning of packed rows (labels, captions `[rows, slots, ...]`), guidance dropout applied."""
    rows, slots = drop.shape
    flat = {k: batch[k].reshape(rows * slots, *batch[k].shape[2:]) for k in ("label", "ids", "text", "mask")
            if k in batch}
    cond = drop_conditioning(self.conditioning(params, flat), drop.reshape(-1), self.spec.num_classes)
    unflat = lambda a: None if a is None else a.reshape(rows, slots, *a.shape[1:])  # noqa: E731
    return cond.replace(labels=unflat(cond.labels), text=unflat(cond.text), text_mask=unflat(cond.text_mask))

  def model_params(self, trainable: dict) -> dict:
    """The networks' parameters ({"dit": ..., "text": ...}) from what the optimizer trains (`state.params`): the same
    tree here; a fine-tuning trainer that trains only adapters combines them with its frozen base."""
    return trainable

  def conditioning(self, params: dict, batch: dict) -> Conditioning:
    """Batch (+ text-encoder params) -> the DiT's conditioning."""
    if self.config.conditioning == "class":
      return Conditioning(labels=batch["label"])
    if self.frozen_text:  # cached embeddings (float16 on disk)
      return Conditioning(text=batch["text"].astype(jnp.float32), text_mask=batch["mask"])
    if self.config.conditioning == "text":
      text = nnx.merge(self.graphs["text"], params["text"])(batch["ids"], batch["mask"])
      return Conditioning(text=text, text_mask=batch["mask"])
    return Conditioning()

  def train_step(self, state: DiTState, batch: dict, phase: str) -> tuple[DiTState, dict]:
    del phase  # the batch shapes already select the compiled variant
    with axis_rules(self.mesh, self.rules):
      return self._train_step(state, batch)

  def _train_step(self, state: DiTState, batch: dict) -> tuple[DiTState, dict]:
    cfg = self.config
    key = jax.random.fold_in(jax.random.key(cfg.seed), state.step)
    k_z, k_drop, k_t, k_eps = jax.random.split(key, 4)
    # All randomness is drawn for the whole batch before it is split into micro-batches, so gradient accumulation
    # changes the memory footprint, not the result.
    mean = batch.pop("mean")
    # One time, guidance drop and self-conditioning draw per example: per clip slot in packed rows.
    examples = (mean.shape[0], self.config.data.pack_slots) if self.packing else (mean.shape[0],)
    z = mean + batch.pop("std") * jax.random.normal(k_z, mean.shape)
    batch.update(x=(z - self.latent_shift) / self.latent_scale,
                 t=self.objective.sample_t(k_t, int(np.prod(examples))).reshape(examples),
                 eps=jax.random.normal(k_eps, mean.shape),
                 drop=jax.random.bernoulli(k_drop, cfg.diffusion.guidance_dropout, examples))
    if self.spec.self_condition:
      # A key of its own keeps the other draws equal to those of a model without self-conditioning.
      p = cfg.diffusion.get("self_condition_prob", diffusion.DEFAULT_SELF_CONDITION_PROB)
      batch["self_cond"] = jax.random.bernoulli(jax.random.fold_in(key, 1), p, examples)

    if "low_mean" in batch:  # super-resolution: the low-resolution clip, noise-augmented (a key of its own)
      batch["task"] = cascade.training_condition(jax.random.fold_in(key, 3), batch.pop("low_mean"),
                                                 batch.pop("low_std"), self.latent_shift, self.latent_scale,
                                                 cfg.super_resolution)
    if self.task_probabilities is not None:
      # The frame task of each example (a key of its own: the other draws stay those of a run without tasks).
      batch["known"] = tasks.draw_known(jax.random.fold_in(key, 2), mean.shape[0], mean.shape[1],
                                        self.task_probabilities)

    def loss_fn(trainable, micro):
      if self.packing:
        return self.packed_loss(trainable, micro, k_eps)
      params = self.model_params(trainable)
      dit = nnx.merge(self.graphs["dit"], params["dit"])
      # Guidance dropout: a dropped example gets the null class / an empty caption.
      cond = drop_conditioning(self.conditioning(params, micro), micro["drop"], self.spec.num_classes)
      mask = None
      if "known" in micro:  # frame tasks: known frames clean in the input and the task channels, not in the loss
        cond = cond.replace(task=tasks.task_inputs(micro["x"], micro["known"]))
        mask = tasks.loss_mask(micro["known"])
      elif "task" in micro:  # a condition on every frame (a cascade stage's low-resolution clip)
        cond = cond.replace(task=micro["task"])
      model = lambda z_t, t, x_prev=None: dit(z_t, t, cond if x_prev is None else cond.replace(self_cond=x_prev))
      if "known" in micro:
        model = tasks.frame_conditioned(model, micro["x"], micro["known"])
      denoise = lambda z_t, t: model(z_t, t)
      if self.spec.self_condition:
        denoise = diffusion.self_conditioned(model, self.schedule, micro["self_cond"], self.objective.prediction)
      per_example = self.objective.loss(denoise, micro["x"], k_eps, t=micro["t"], eps=micro["eps"], mask=mask)
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
    if self.packing:  # the fraction of row tokens that belong to a clip
      metrics["token_efficiency"] = jnp.mean((batch["segment_ids"] > 0).astype(jnp.float32))
    return DiTState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state), metrics

  def packed_loss(self, trainable: dict, batch: dict, key: jax.Array) -> jax.Array:
    """The objective on packed rows: each clip's loss exactly as it would be alone (the mean over its elements,
    weighted by its time), averaged over the clips of the batch, every clip counting once whatever its size (as
    in an unpacked batch; weighting by tokens would let long high-resolution clips dominate)."""
    params = self.model_params(trainable)
    dit = nnx.merge(self.graphs["dit"], params["dit"])
    gathers = {kind: WindowGather(batch[f"{kind}_tokens"], batch[f"{kind}_valid"], batch[f"{kind}_slot"])
               for kind in self.blocks}
    layout = PackedLayout(batch["segment_ids"], batch["positions"], batch["grids"], gathers)
    cond = self.clip_conditioning(params, batch, batch["drop"])
    t_clip = batch["t"]
    rows, length = layout.segment_ids.shape
    token_shape = batch["x"].shape[2:]
    # Every token is an example of the objective, with its clip's time: the per-token losses of a clip then average
    # to that clip's loss.
    t_token = per_clip(t_clip, layout).reshape(-1)
    flat = lambda a: a.reshape(rows * length, *token_shape)  # noqa: E731
    packed = lambda a: a.reshape(rows, length, *token_shape)  # noqa: E731
    denoise = lambda z_t, t: flat(dit.packed(packed(z_t), t_clip, layout, cond))
    if self.spec.self_condition:
      use = per_clip(batch["self_cond"], layout).reshape(-1)
      denoise = diffusion.self_conditioned(
          lambda z_t, t, x_prev: flat(dit.packed(packed(z_t), t_clip, layout, cond.replace(self_cond=packed(x_prev)))),
          self.schedule, use, self.objective.prediction)
    per_token = self.objective.loss(denoise, flat(batch["x"]), key, t=t_token, eps=flat(batch["eps"]))
    valid = layout.valid.astype(jnp.float32).reshape(-1)
    clip_of = layout.segment_index.reshape(-1) + jnp.repeat(jnp.arange(rows), length) * t_clip.shape[1]
    sums = jnp.zeros(t_clip.size).at[clip_of].add(per_token * valid)
    counts = jnp.zeros(t_clip.size).at[clip_of].add(valid)
    real = counts > 0
    return jnp.sum(jnp.where(real, sums / jnp.maximum(counts, 1.0), 0.0)) / jnp.maximum(jnp.sum(real), 1)

  # -- sampling and evaluation ---------------------------------------------------------------------------------------

  def pipeline(self, state: DiTState, *, ema: bool = True) -> VideoPipeline:
    """A `VideoPipeline` over the current weights (EMA by default)."""
    params = self.model_params(state.ema_params if ema else state.params)
    networks = {name: (graph, params[name]) for name, graph in self.graphs.items()}
    return VideoPipeline(self.config, networks, self.vae, mesh=self.mesh, text_encoder=self.text_encoder)

  def _validation_loss(self, validation: dict[str, np.ndarray]) -> ValidationLoss:
    """The validation loss (vidgen.train.validation) of this run's objective on `validation`, conditioned on each
    clip's own caption or class (never dropped)."""
    v = validation_settings(self.config)
    x = (validation["mean"] - self.latent_shift) / self.latent_scale
    inputs = {}
    if self.config.conditioning == "class":
      inputs["label"] = validation["label"]
    elif self.frozen_text:
      inputs["text"], inputs["mask"] = validation["text"], validation["text_mask"]
    elif self.tokenizer is not None:
      inputs["ids"], inputs["mask"] = self.tokenizer(list(validation["caption"]))

    def loss_fn(trainable, x, t, eps, inputs):
      with axis_rules(self.mesh, self.rules):
        params = self.model_params(trainable)
        dit = nnx.merge(self.graphs["dit"], params["dit"])
        cond = self.conditioning(params, inputs)
        denoise = lambda z_t, t: dit(z_t, t, cond)
        if self.spec.self_condition:  # the second, self-conditioned pass, as sampling uses the model
          denoise = diffusion.self_conditioned(lambda z_t, t, x_prev: dit(z_t, t, cond.replace(self_cond=x_prev)),
                                               self.schedule, jnp.ones(x.shape[:1], bool),
                                               prediction=self.objective.prediction)
        return self.objective.loss(denoise, x, jax.random.key(0), t=t, eps=eps)

    return ValidationLoss(x.astype(np.float32), inputs, loss_fn, self.objective, num_times=v["timesteps"],
                          batch_size=v["batch"], seed=v["seed"], mesh=self.mesh)

  def evaluate(self, state: DiTState, step: int) -> dict[str, float]:
    """Writes sample videos for `config.sampling.prompts` and, with a validation set, logs the validation loss
    (`val_loss`, `val_loss_se`; `val_loss_ema`, `val_loss_ema_se` with `validation.ema`); at the last step also runs
    the data source's evaluation."""
    metrics = {}
    if self.validation_loss is not None:
      metrics["val_loss"], metrics["val_loss_se"] = self.validation_loss(state.params)
      if validation_settings(self.config)["ema"]:
        metrics["val_loss_ema"], metrics["val_loss_ema_se"] = self.validation_loss(state.ema_params)
    pipe = self.pipeline(state)
    prompts = list(self.config.sampling.prompts)
    videos = pipe(prompts, seed=self.config.sampling.seed, **pipe.sampling_defaults())
    if jax.process_index() == 0:
      name = os.path.join(self.workdir, "samples", f"samples_{step:06d}")
      media.write_video(name + ".mp4", media.grid(list(videos)))
      media.write_video(name + ".gif", media.grid(list(videos)))
      with open(name + ".txt", "w") as f:
        f.write("\n".join(prompts) + "\n")
    if step < self.config.total_steps or not self.config.eval.at_end:
      return metrics
    return {**metrics, **{f"eval_{k}": v for k, v in self.source.evaluate(pipe, self.config, self.workdir).items()}}

  def finalize(self, state: DiTState) -> DiTState:
    return state
