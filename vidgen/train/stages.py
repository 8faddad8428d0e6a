"""Training runs composed top-down: which models a config trains, in which order, and from what.

  train_and_evaluate(config, workdir)
    trainer "vae":  the VAE                                                              -> workdir
    trainer "dit":  1. its VAE: config.vae_workdir, or config.vae_stage trained into      -> workdir/vae
                    2. the latent cache: config.data.cache_clips training clips encoded   -> workdir/latents
                    3. the DiT on that cache                                              -> workdir

Each stage is skipped when its output exists, so the same command resumes wherever a run stopped. Every config
(stages included) is validated before anything is built or compiled; each model is trained by the one loop,
`vidgen.train.loop.run`, with its own trainer.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidgen import runs
from vidgen.config import require
from vidgen.data.latent_cache import LatentCache
from vidgen.data.sources import get_source
from vidgen.models.vae import SpacetimeVAE
from vidgen.parallel import axis_rules, make_mesh, replicate
from vidgen.parallel.mesh import MESH_AXES
from vidgen.train import dit_trainer, loop, vae_trainer
from vidgen.train.writers import log

TRAINERS = ("vae", "dit")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Checks `config` and every stage it implies; raises ConfigError naming the field (`vae_stage.` for the stage)."""
  mesh_shape = dict(zip(MESH_AXES, loop.validate_common(config, num_devices)))
  require(config.trainer in TRAINERS, "trainer", f"unknown trainer {config.trainer!r}; allowed: {list(TRAINERS)}")
  require("data" in config, "data", "is missing: every run names its data source (config.data.name)")
  get_source(config.data)
  if config.trainer == "vae":
    vae_trainer.validate_config(config, mesh_shape)
    return
  if config.vae_workdir:
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
  validate(config)
  workdir = os.path.abspath(workdir)
  if config.trainer == "vae":
    mesh = make_mesh(dict(config.mesh))
    return loop.run(vae_trainer.VAETrainer(config, mesh, workdir), config, mesh, workdir)

  vae_dir = runs.vae_workdir(config, workdir)
  if not config.vae_workdir and not runs.is_finished(vae_dir):
    log(f"stage 1/3: training the VAE in {vae_dir}")
    train_and_evaluate(config.vae_stage, vae_dir)
  else:
    log(f"stage 1/3: using the trained VAE in {vae_dir}")
  mesh = make_mesh(dict(config.mesh))
  vae, vae_step = runs.load_vae(vae_dir, mesh)
  cache = latent_cache(config, workdir, vae, vae_step, mesh)
  log("stage 3/3: training the DiT")
  return loop.run(dit_trainer.DiTTrainer(config, mesh, workdir, vae=vae, cache=cache), config, mesh, workdir)


def params_fingerprint(tree: Any) -> str:
  """SHA-256 of a parameter tree's bytes: identifies exactly which weights encoded a latent cache."""
  h = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(jax.device_get(tree)), key=lambda kv: str(kv[0])):
    h.update(str(path).encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def latent_cache(config: ml_collections.ConfigDict, workdir: str, vae: SpacetimeVAE, vae_step: int,
                 mesh: jax.sharding.Mesh) -> LatentCache:
  """Stage 2: opens workdir/latents (or config.data.cache_dir), encoding the training clips into it first if needed.

  The cache stores the VAE posterior's mean and std (un-normalized); a cache built by another VAE or data config is
  refused (see `vidgen.data.latent_cache`).
  """
  d = config.data
  directory = os.path.abspath(d.cache_dir) if d.cache_dir else os.path.join(workdir, "latents")
  graph, params, stats = nnx.split(vae, nnx.Param, ...)
  fingerprint = {"vae": {"config": vae.config, "step": int(vae_step), "params_sha256": params_fingerprint(params)},
                 "data": {**get_source(d).fingerprint(), "clips": d.cache_clips}}
  if LatentCache.exists(directory):
    log(f"stage 2/3: using the latent cache {directory}")
    return LatentCache.open(directory, fingerprint)
  log(f"stage 2/3: encoding {d.cache_clips} clips into the latent cache {directory}")
  rules = tuple(tuple(r) for r in config.sharding_rules)

  @jax.jit
  def encode(params, stats, video_uint8):
    with axis_rules(mesh, rules):
      posterior = nnx.merge(graph, params, stats).encode(video_uint8.astype(jnp.float32) / 127.5 - 1.0)
      return posterior.mean, posterior.std

  def encode_fn(video_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = encode(params, stats, replicate(mesh, video_uint8))
    return np.asarray(mean), np.asarray(std)

  LatentCache.build(directory, fingerprint=fingerprint, num_clips=d.cache_clips,
                    clips_fn=get_source(d).dataset("train").batch, encode_fn=encode_fn, batch_size=d.cache_batch,
                    write=jax.process_index() == 0)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("vidgen latent cache written")
  return LatentCache.open(directory, fingerprint)
