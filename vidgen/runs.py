"""Reading a finished (or checkpointed) run from its workdir: config, weights, latent statistics. No trainer.

  config = runs.read_config(workdir)
  vae, step = runs.load_vae("workdirs/shapes_t2v/vae")          # SpacetimeVAE with its measured latent shift/scale
  run = runs.load_dit("workdirs/shapes_t2v")                    # EMA weights of the DiT and its text encoder, + VAE

Only the weights are read from a checkpoint (the optimizer moments and the data-iterator state are never loaded), and
they are checked against the fingerprint saved with them. Arrays are placed on `mesh` by the modules' logical axes and
the run's `sharding_rules`; the default mesh replicates them over this process's devices.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
from flax import nnx

from vidgen.checkpoint import Checkpointer, abstract_like, restore_fields
from vidgen.config import read_run_config as read_config
from vidgen.errors import RunNotFoundError
from vidgen.models.dit import VideoDiT
from vidgen.models.pretrained import load_pretrained_vae
from vidgen.models.text import SmallTextEncoder, text_encoder_kind
from vidgen.models.vae import SpacetimeVAE
from vidgen.parallel import make_mesh, state_shardings

__all__ = ["DiTRun", "dit_models", "is_finished", "latest_step", "load_dit", "load_run_vae", "load_vae",
           "read_config", "vae_workdir"]


def latest_step(workdir: str) -> int | None:
  """The newest checkpointed step of the run in `workdir`, or None."""
  return Checkpointer.latest_step_in(os.path.join(workdir, "checkpoints"))


def is_finished(workdir: str) -> bool:
  """Whether `workdir` holds a run that checkpointed its last step."""
  if not os.path.exists(os.path.join(workdir, "config.json")):
    return False
  step = latest_step(workdir)
  return step is not None and step >= read_config(workdir).total_steps


def _require_run(workdir: str, trainer: str) -> tuple[ml_collections.ConfigDict, int]:
  config = read_config(workdir)
  if config.get("trainer") != trainer:
    raise RunNotFoundError(f"{workdir} holds a {config.get('trainer')!r} run, not a {trainer!r} run")
  step = latest_step(workdir)
  if step is None:
    raise RunNotFoundError(f"{workdir}: the {trainer} run has no checkpoint yet (nothing in {workdir}/checkpoints); "
                           "train it with `vidgen train`")
  return config, step


def _restore(workdir: str, config, step: int, mesh, fields: dict[str, Any]) -> dict[str, Any]:
  """{state field: tree of abstract nnx.States} -> the same tree with each State restored as a pure dict on `mesh`."""
  rules = tuple(tuple(r) for r in config.sharding_rules)
  placed = lambda state: abstract_like(state.to_pure_dict(), state_shardings(state, rules, mesh).to_pure_dict())
  abstract = jax.tree.map(placed, fields, is_leaf=lambda x: isinstance(x, nnx.State))
  restored, _ = restore_fields(os.path.join(workdir, "checkpoints"), abstract, step)
  return restored


def load_vae(workdir: str, mesh: jax.sharding.Mesh | None = None) -> tuple[SpacetimeVAE, int]:
  """The SpacetimeVAE of the finished VAE run in `workdir`, with its latent statistics; returns (vae, step).

  Raises RunNotFoundError for a workdir without such a run, or a run that has not reached its last step (the latent
  statistics are measured there).
  """
  workdir = os.path.abspath(workdir)
  config, step = _require_run(workdir, "vae")
  if step < config.total_steps:
    raise RunNotFoundError(f"{workdir}: the VAE run stopped at step {step} of {config.total_steps}; its latent "
                           "statistics are measured at the last step, so finish it first (run the same `vidgen "
                           "train` command again)")
  mesh = make_mesh({"data": -1}) if mesh is None else mesh
  graph, params, stats = nnx.split(nnx.eval_shape(lambda: SpacetimeVAE(config.vae, rngs=nnx.Rngs(0))), nnx.Param, ...)
  restored = _restore(workdir, config, step, mesh, {"params": params, "stats": stats})
  return nnx.merge(graph, restored["params"], restored["stats"]), step


def vae_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The VAE run a DiT run encodes with: `config.vae_workdir`, or the stage trained into `workdir/vae`."""
  return os.path.abspath(config.vae_workdir) if config.vae_workdir else os.path.join(os.path.abspath(workdir), "vae")


def dit_models(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> dict[str, nnx.Module]:
  """The networks a DiT run trains: {"dit": VideoDiT, "text": SmallTextEncoder (captioned runs with encoder "small")}.

  A frozen pretrained encoder (`config.text.encoder = "hf"`) is not among them: it is loaded from its checkpoint.
  """
  models = {"dit": VideoDiT(config.dit, rngs=rngs)}
  if config.conditioning == "text" and text_encoder_kind(config.text) == "small":
    models["text"] = SmallTextEncoder(config.text, rngs=rngs)
  return models


@dataclasses.dataclass(frozen=True)
class DiTRun:
  """A DiT run's weights: each network as (graphdef, params), and its VAE."""

  config: ml_collections.ConfigDict
  step: int
  networks: dict[str, tuple[nnx.GraphDef, Any]]  # "dit", and "text" for runs with a small text encoder
  vae: SpacetimeVAE


def load_dit(workdir: str, mesh: jax.sharding.Mesh | None = None, *, ema: bool = True) -> DiTRun:
  """The latest weights of the DiT run in `workdir` (its EMA by default) and the VAE it encodes with."""
  workdir = os.path.abspath(workdir)
  config, step = _require_run(workdir, "dit")
  mesh = make_mesh({"data": -1}) if mesh is None else mesh
  split = {name: nnx.split(module, nnx.Param)
           for name, module in nnx.eval_shape(lambda: dit_models(config, nnx.Rngs(0))).items()}
  field = "ema_params" if ema else "params"
  restored = _restore(workdir, config, step, mesh, {field: {name: params for name, (_, params) in split.items()}})
  networks = {name: (graph, restored[field][name]) for name, (graph, _) in split.items()}
  return DiTRun(config=config, step=step, networks=networks, vae=load_run_vae(config, workdir, mesh))


def load_run_vae(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh | None = None):
  """The VAE a DiT run encodes with: the published one in `config.pretrained_vae`, or its trained VAE run."""
  if config.get("pretrained_vae"):
    return load_pretrained_vae(config.pretrained_vae)
  return load_vae(vae_workdir(config, workdir), mesh)[0]
