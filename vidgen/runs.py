"""Reading a finished (or checkpointed) run from its workdir: config, weights, latent statistics. No trainer.

  config = runs.read_config(workdir)
  vae, step = runs.load_vae("workdirs/shapes_t2v/vae")          # SpacetimeVAE with its measured latent shift/scale
  run = runs.load_dit("workdirs/shapes_t2v")                    # EMA weights of the DiT and its text encoder, + VAE
  run = runs.with_lora(run, [(runs.load_lora("workdirs/lora_orange"), 1.0)])   # + LoRA adapters, merged

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
from vidgen.errors import InputError, RunNotFoundError
from vidgen.models import lora
from vidgen.models.dit import VideoDiT
from vidgen.models.pretrained import load_pretrained_vae
from vidgen.models.text import SmallTextEncoder, text_encoder_kind
from vidgen.models.vae import SpacetimeVAE
from vidgen.parallel import make_mesh, state_shardings, to_mesh_spec

__all__ = ["DiTRun", "LoRARun", "dit_models", "is_finished", "latest_step", "load_dit", "load_lora", "load_run_vae",
           "load_vae", "read_config", "vae_workdir", "with_lora"]


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


# -- LoRA adapters (vidgen.train.lora_trainer) ------------------------------------------------------------------------

WORDS_AXES = ("vocab", "embed")  # the new caption words' embedding rows: sharded like the embedding table


@dataclasses.dataclass(frozen=True)
class LoRARun:
  """A LoRA fine-tune's trained weights: DiT adapters (`vidgen.models.lora`) and the embedding rows of the words it
  added to the caption vocabulary (None when it added none)."""

  config: ml_collections.ConfigDict  # the fine-tune's config (its base's model fields filled in)
  step: int
  adapters: Any  # adapter tree over the DiT's parameters
  words: Any  # [new words, text width] or None
  scale: float  # alpha / rank

  @property
  def new_words(self) -> tuple[str, ...]:
    return tuple(self.config.lora.get("new_words", ()))


def lora_layout(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> tuple[dict, dict]:
  """(abstract trainable tree, its shardings) of a LoRA fine-tune's config: {"lora": {"dit": adapters}} (+ "words").

  Adapters follow their kernels' shardings under the run's `sharding_rules` on `mesh` (`lora.adapter_shardings`).
  """
  rules = tuple(tuple(r) for r in config.sharding_rules)
  params = nnx.split(nnx.eval_shape(lambda: VideoDiT(config.dit, rngs=nnx.Rngs(0))), nnx.Param)[1]
  targets = lora.select_targets(params, tuple(config.lora.targets))
  adapters = lora.abstract_adapters(targets, int(config.lora.rank))
  kernels = abstract_like(params.to_pure_dict(), state_shardings(params, rules, mesh).to_pure_dict())
  abstract, shardings = {"lora": {"dit": adapters}}, {"lora": {"dit": lora.adapter_shardings(adapters, kernels)}}
  words = tuple(config.lora.get("new_words", ()))
  if words:
    shape = (len(words), int(config.text.width))
    abstract["words"] = jax.ShapeDtypeStruct(shape, jax.numpy.float32)
    shardings["words"] = jax.sharding.NamedSharding(mesh, to_mesh_spec(WORDS_AXES, shape, rules, mesh))
  return abstract, shardings


def load_lora(workdir: str, mesh: jax.sharding.Mesh | None = None, *, ema: bool = True) -> LoRARun:
  """The latest adapters (their EMA by default) of the LoRA fine-tune in `workdir`; nothing of its base is read."""
  workdir = os.path.abspath(workdir)
  config, step = _require_run(workdir, "lora")
  mesh = make_mesh({"data": -1}) if mesh is None else mesh
  abstract, shardings = lora_layout(config, mesh)
  field = "ema_params" if ema else "params"
  restored, _ = restore_fields(os.path.join(workdir, "checkpoints"), {field: abstract_like(abstract, shardings)}, step)
  trained = restored[field]
  return LoRARun(config=config, step=step, adapters=trained["lora"]["dit"], words=trained.get("words"),
                 scale=float(config.lora.alpha) / int(config.lora.rank))


def _model_fields(config: ml_collections.ConfigDict) -> dict:
  """What must match between a base run and the adapters put on it: the DiT, and the text encoder but its vocabulary."""
  text = dict(config.text.to_dict()) if "text" in config else {}
  text.pop("vocab_size", None)
  return {"conditioning": config.get("conditioning"), "dit": config.dit.to_dict(), "text": text}


def with_lora(run: DiTRun, adapters: list[tuple[LoRARun, float]]) -> DiTRun:
  """`run` with LoRA adapters merged into its weights: W + sum_i weight_i x (alpha_i / rank_i) A_i B_i.

  At most one adapter may have added caption words; its new embedding rows extend the text encoder's table, and the
  result takes that adapter's config (else the first adapter's), so prompts may use its words. Raises InputError for
  adapters trained on a model of another shape or vocabulary.
  """
  if not adapters:
    return run
  base = _model_fields(run.config)
  for a, weight in adapters:
    if _model_fields(a.config) != base:
      raise InputError(f"the LoRA run of base {a.config.get('base_workdir')!r} was trained on a model other than this "
                       "run's (dit, text or conditioning config differs)")
    if not isinstance(weight, (int, float)) or isinstance(weight, bool):
      raise InputError(f"LoRA weight must be a number, got {weight!r}")
  adding = [a for a, _ in adapters if a.words is not None]
  if len(adding) > 1:
    raise InputError(f"{len(adding)} of the adapters add caption words ({[list(a.new_words) for a in adding]}); "
                     "merge at most one that does")
  networks = dict(run.networks)
  graph, dit = networks["dit"]
  networks["dit"] = (graph, lora.merge(dit, [(a.adapters, a.scale * float(w)) for a, w in adapters]))
  config = (adding or [adapters[0][0]])[0].config
  if adding:
    words = adding[0].words
    graph, text = networks["text"]
    table = text["token_embed"]["embedding"]
    if table.shape[0] + words.shape[0] != config.text.vocab_size:
      raise InputError(f"the adapter's {words.shape[0]} new words extend a vocabulary of "
                       f"{config.text.vocab_size - words.shape[0]}, not this run's {table.shape[0]}")
    text = jax.tree.map(lambda x: x, text)
    text["token_embed"]["embedding"] = jax.numpy.concatenate([table, words.astype(table.dtype)], axis=0)
    networks["text"] = (nnx.split(nnx.eval_shape(lambda: dit_models(config, nnx.Rngs(0)))["text"], nnx.Param)[0],
                        text)
  config = config.copy_and_resolve_references()
  return DiTRun(config=config, step=run.step, networks=networks, vae=run.vae)
