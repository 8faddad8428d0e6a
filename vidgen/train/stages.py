"""Training runs composed top-down: which models a config trains, in which order, and from what.

  train_and_evaluate(config, workdir)
    trainer "vae":  the VAE                                                              -> workdir
    trainer "dit":  1. its VAE: config.pretrained_vae (a published VAE's diffusers folder), config.vae_workdir,
                       or config.vae_stage trained into                                  -> workdir/vae
                    2. the latent cache: config.data.cache_clips training clips encoded   -> workdir/latents
                       (and config.validation.clips validation clips beside them, for the validation loss)
                    3. the DiT on that cache                                              -> workdir
    trainer "lora": LoRA adapters on a finished DiT run (config.base_workdir; vidgen.train.lora_trainer): its VAE,
                    a latent cache of the fine-tune's own data (stage 2), then the adapters  -> workdir

Each stage is skipped when its output exists, so the same command resumes wherever a run stopped. Every config
(stages included) is validated before anything is built or compiled; each model is trained by the one loop,
`vidgen.train.loop.run`, with its own trainer.
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from flax import nnx

from vidgen import runs
from vidgen.config import ConfigError, require
from vidgen.errors import InputError
from vidgen.models.pretrained import pretrained_vae_geometry
from vidgen.data.buckets import parse_buckets
from vidgen.data.latent_cache import BucketedCache, LatentCache
from vidgen.data.sources import get_source
from vidgen.diffusion import cascade
from vidgen.models.vae import SpacetimeVAE
from vidgen.models.text.frozen import encode_captions, load_frozen_text_encoder, text_encoder_kind
from vidgen.parallel import axis_rules, batch_sharding, make_mesh
from vidgen.parallel.distributed import batch_shard, host_rows
from vidgen.parallel.mesh import MESH_AXES
from vidgen.train import dit_trainer, lora_trainer, loop, vae_trainer
from vidgen.train.validation import validation_settings
from vidgen.train.writers import log

TRAINERS = ("vae", "dit", "lora")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Checks `config` and every stage it implies; raises ConfigError naming the field (`vae_stage.` for the stage)."""
  mesh_shape = dict(zip(MESH_AXES, loop.validate_common(config, num_devices)))
  require(config.trainer in TRAINERS, "trainer", f"unknown trainer {config.trainer!r}; allowed: {list(TRAINERS)}")
  require("data" in config, "data", "is missing: every run names its data source (config.data.name)")
  get_source(config.data).check()
  if config.trainer == "vae":
    vae_trainer.validate_config(config, mesh_shape)
    return
  if config.trainer == "lora":
    config = lora_trainer.resolve_config(config)  # the base run's model fields, which the checks below read
    lora_trainer.validate_lora_config(config)
  pretrained = config.get("pretrained_vae", "")
  if pretrained:
    require(not config.vae_workdir, "pretrained_vae",
            f"and vae_workdir={config.vae_workdir!r} both name the VAE; give one")
    try:
      vae_config = pretrained_vae_geometry(pretrained)
    except InputError as e:
      raise ConfigError(f"config.pretrained_vae: {e}") from None
  elif config.vae_workdir:
    path = os.path.abspath(config.vae_workdir)
    require(runs.is_finished(path) and runs.read_config(path).get("trainer") == "vae", "vae_workdir",
            f"{path} holds no finished VAE run (config.json and a checkpoint at its last step); train one with "
            "`vidgen train --config experiments/shapes_vae.py`")
    vae_config = runs.read_config(path).vae
  else:
    require("vae_stage" in config, "vae_workdir",
            "is empty and there is no config.vae_stage: name a finished VAE run or give a VAE stage to train")
    require(config.vae_stage.get("trainer") == "vae", "vae_stage.trainer",
            f"must be 'vae', got {config.vae_stage.get('trainer')!r}")
    try:
      validate(config.vae_stage, num_devices)
    except ValueError as e:
      raise type(e)(str(e).replace("config.", "config.vae_stage.", 1)) from None
    vae_config = config.vae_stage.vae
  dit_trainer.validate_config(config, mesh_shape, vae_config)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Any:
  """Trains what `config` describes in `workdir` (see the module docstring); returns the final state of its model.

  Raises `Preempted` (after saving a checkpoint) when SIGTERM arrives; call it again to resume.
  """
  jax.config.update("jax_threefry_partitionable", True)
  config = with_absolute_paths(config)
  validate(config)
  workdir = os.path.abspath(workdir)
  if config.trainer == "vae":
    mesh = make_mesh(dict(config.mesh))
    return loop.run(vae_trainer.VAETrainer(config, mesh, workdir), config, mesh, workdir)

  if config.trainer == "lora":
    config = lora_trainer.resolve_config(config)
  mesh, vae, cache, text_encoder = prepare(config, workdir)
  validation = load_validation_set(config, cache)
  if config.trainer == "lora":
    log(f"stage 3/3: training LoRA adapters on the DiT run in {config.base_workdir}")
    trainer = lora_trainer.LoRATrainer(config, mesh, workdir, vae=vae, cache=cache, text_encoder=text_encoder,
                                       validation=validation)
  else:
    log("stage 3/3: training the DiT")
    trainer = dit_trainer.DiTTrainer(config, mesh, workdir, vae=vae, cache=cache, text_encoder=text_encoder,
                                     validation=validation)
  return loop.run(trainer, config, mesh, workdir)


def prepare(config: ml_collections.ConfigDict, workdir: str
            ) -> tuple[jax.sharding.Mesh, SpacetimeVAE, LatentCache | BucketedCache, Any]:
  """Stages 1 and 2 of a validated DiT config: (mesh, trained VAE, latent cache, frozen text encoder or None).

  A sweep calls this once to build the VAE and cache its points share.
  """
  mesh = make_mesh(dict(config.mesh))
  if config.get("pretrained_vae"):
    log(f"stage 1/3: using the pretrained VAE in {config.pretrained_vae}"
        + (" (config.vae_stage is not trained)" if "vae_stage" in config else ""))
    vae, vae_step = runs.load_run_vae(config, workdir, mesh), 0
  else:
    vae_dir = runs.vae_workdir(config, workdir)
    if not config.vae_workdir and not runs.is_finished(vae_dir):
      log(f"stage 1/3: training the VAE in {vae_dir}")
      train_and_evaluate(config.vae_stage, vae_dir)
    else:
      log(f"stage 1/3: using the trained VAE in {vae_dir}")
    vae, vae_step = runs.load_vae(vae_dir, mesh)
  text_encoder = None
  if config.conditioning == "text" and text_encoder_kind(config.text) == "hf":
    log(f"loading the frozen text encoder {config.text.path}")
    text_encoder = load_frozen_text_encoder(config.text)
  cache = latent_cache(config, workdir, vae, vae_step, mesh, text_encoder)
  return mesh, vae, cache, text_encoder


PATH_FIELDS = (("data", "path"), ("data", "eval_path"), ("data", "data_dir"), ("data", "cache_dir"), ("text", "path"),
               ("vae_workdir",), ("pretrained_vae",), ("base_workdir",), ("super_resolution", "base_workdir"))


def with_absolute_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy whose paths are absolute, so the run's config.json still finds its data and text encoder when read from
  another directory (`vidgen sample`, `vidgen eval`); stages included."""
  config = config.copy_and_resolve_references()
  for *parents, field in PATH_FIELDS:
    node = config
    for name in parents:
      node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
    if isinstance(node, ml_collections.ConfigDict) and isinstance(node.get(field), str) and node.get(field):
      node[field] = os.path.abspath(os.path.expanduser(node[field]))
  if "vae_stage" in config:
    config.vae_stage = with_absolute_paths(config.vae_stage)
  return config


def params_fingerprint(tree: Any) -> str:
  """SHA-256 of a parameter tree's bytes: identifies exactly which weights encoded a latent cache."""
  h = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(jax.device_get(tree)), key=lambda kv: str(kv[0])):
    h.update(str(path).encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def text_fingerprint(text_config) -> dict:
  """What decides a frozen text encoder's caption embeddings: its checkpoint (config and weight files) and length."""
  h = hashlib.sha256()
  for name in sorted(os.listdir(text_config.path)):
    file = os.path.join(text_config.path, name)
    if os.path.isfile(file):
      h.update(name.encode())
      h.update(open(file, "rb").read() if name.endswith(".json") else str(os.path.getsize(file)).encode())
  return {"path": os.path.abspath(text_config.path), "files_sha256": h.hexdigest(),
          "max_length": text_config.max_length, "dtype": text_config.get("dtype", "float32")}


def latent_cache(config: ml_collections.ConfigDict, workdir: str, vae: SpacetimeVAE, vae_step: int,
                 mesh: jax.sharding.Mesh, text_encoder: Any = None) -> LatentCache | BucketedCache:
  """Stage 2: opens workdir/latents (or config.data.cache_dir), encoding the training clips into it first if needed.

  The cache stores the VAE posterior's mean and std (un-normalized) of `data.cache_clips` clips of the training
  stream (rounded up to whole `data.cache_batch` batches), with a frozen `text_encoder` the captions' embeddings, and
  for a super-resolution stage (`config.super_resolution`) the posterior of each clip downsampled by its factor.
  With `data.buckets`, every bucket gets a cache of its own in DIR/bucket_FxHxW (`data.cache_clips` clips at that
  size each) and a `BucketedCache` is returned. Every process encodes its own shard of the stream; a build that stops
  resumes; a cache built by another VAE, data or text config is refused (see `vidgen.data.latent_cache`).
  """
  d = config.data
  directory = os.path.abspath(d.cache_dir) if d.cache_dir else os.path.join(workdir, "latents")
  graph, params, stats = nnx.split(vae, nnx.Param, ...)
  source = get_source(d)
  vae_fingerprint = {"config": vae.config, "step": int(vae_step), "params_sha256": params_fingerprint(params)}
  rules = tuple(tuple(r) for r in config.sharding_rules)
  shard_index, shard_count = batch_shard(mesh, d.cache_batch)
  video_sharding = batch_sharding(mesh, 5)

  @functools.partial(jax.jit, out_shardings=(video_sharding, video_sharding))
  def encode(params, stats, video_uint8):
    with axis_rules(mesh, rules):
      posterior = nnx.merge(graph, params, stats).encode(video_uint8.astype(jnp.float32) / 127.5 - 1.0)
      return posterior.mean, posterior.std

  def encode_fn(local_video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    video = jax.make_array_from_process_local_data(video_sharding, local_video,
                                                   (local_video.shape[0] * shard_count, *local_video.shape[1:]))
    mean, std = encode(params, stats, video)
    return host_rows(mean), host_rows(std)

  text_fn = None
  if text_encoder is not None:
    text_fn = lambda captions: encode_captions(text_encoder, captions, config.text.max_length)
  extra_fn = None
  if cascade.is_super_resolution(config):  # a super-resolution stage: each clip's downsampled latents beside it
    extra_fn = lambda clips: cascade.low_resolution_latents(clips["video"], config.super_resolution.factor, encode_fn)
  buckets = parse_buckets(d)
  barrier = lambda name: None
  if jax.process_count() > 1:
    barrier = lambda name: multihost_utils.sync_global_devices(name)

  def one_cache(path: str, **size: int) -> LatentCache:
    """The cache of the training stream (at `size` = num_frames, height, width when given) in `path`."""
    data = {**source.fingerprint(), **size, "clips": d.cache_clips}
    if size:  # which clips a bucket gets depends on every bucket (a clip goes to the nearest)
      data["buckets"] = [b.name for b in buckets]
    fingerprint = {"vae": vae_fingerprint, "data": data}
    if text_encoder is not None:
      fingerprint["text"] = text_fingerprint(config.text)
    if extra_fn is not None:
      fingerprint["super_resolution"] = cascade.cache_fingerprint(config.super_resolution)
    if LatentCache.exists(path):
      log(f"stage 2/3: using the latent cache {path}")
    else:
      log(f"stage 2/3: encoding {d.cache_clips} clips into the latent cache {path}")
      batches = source.iterator("train", global_batch=d.cache_batch, shard_index=shard_index,
                                shard_count=shard_count, **size)
      try:
        LatentCache.build(path, fingerprint=fingerprint, batches=batches, num_batches=-(-d.cache_clips // d.cache_batch),
                          encode_fn=encode_fn, text_fn=text_fn, extra_fn=extra_fn, shard_index=shard_index,
                          shard_count=shard_count, is_main=jax.process_index() == 0, barrier=barrier, log=log)
      finally:
        getattr(batches, "close", lambda: None)()
    return LatentCache.open(path, fingerprint)  # the fingerprint is checked before anything is added beside it

  if buckets:
    cache = BucketedCache(directory, [one_cache(os.path.join(directory, f"bucket_{b.name}"), num_frames=b.frames,
                                                height=b.height, width=b.width) for b in buckets])
  else:
    cache = one_cache(directory)
  if validation_settings(config)["clips"]:
    _validation_set(config, directory, source, encode_fn, text_fn, shard_index, shard_count, barrier)
  return cache


def _validation_set(config, directory, source, encode_fn, text_fn, shard_index, shard_count, barrier) -> None:
  """Encodes the first `validation.clips` clips of the data source's validation split into DIR/validation_N.npz
  (posterior means; captions, labels and, with a frozen text encoder, caption embeddings), unless it exists."""
  n, batch = validation_settings(config)["clips"], config.data.cache_batch
  path = os.path.join(directory, f"validation_{n}.npz")
  if os.path.exists(path):
    return
  log(f"encoding {n} validation clips into {path}")
  clips = source.clips("validation", n)
  local = batch // shard_count
  means = []
  for start in range(0, n, batch):
    video = clips["video"][start:start + batch]
    video = np.concatenate([video, np.repeat(video[-1:], batch - len(video), axis=0)])  # a whole last batch
    mean, _ = encode_fn(video[shard_index * local:(shard_index + 1) * local])
    if jax.process_count() > 1:  # every process's rows, placed by shard (shards fed by two processes count once)
      rows = multihost_utils.process_allgather(mean)
      owners = multihost_utils.process_allgather(np.int32(shard_index))
      mean = np.concatenate([rows[list(owners).index(i)] for i in range(shard_count)])
    means.append(np.asarray(mean)[:min(batch, n - start)])
  arrays = {"mean": np.concatenate(means).astype(np.float32),
            "label": np.asarray(clips.get("label", np.full(n, -1)), np.int32),
            "caption": np.asarray(clips.get("caption", [""] * n)).astype(str)}
  if text_fn is not None:
    arrays["text"], arrays["text_mask"] = text_fn(list(arrays["caption"]))
    arrays["text"] = arrays["text"].astype(np.float16)
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    np.savez(path + ".tmp.npz", **arrays)
    os.replace(path + ".tmp.npz", path)
  barrier("validation_set")


def load_validation_set(config: ml_collections.ConfigDict, cache: LatentCache | BucketedCache
                        ) -> dict[str, np.ndarray] | None:
  """The validation set stored beside `cache` (None when `config.validation.clips` is 0 or absent)."""
  n = validation_settings(config)["clips"]
  if not n:
    return None
  with np.load(os.path.join(cache.directory, f"validation_{n}.npz"), allow_pickle=False) as f:
    return {k: f[k] for k in f.files}
