"""LoRA fine-tuning of a finished DiT run: low-rank adapters on its frozen weights, and embeddings for new words.

  config.trainer = "lora"
  config.base_workdir = "workdirs/shapes_t2v"          # a finished DiT run (`vidgen train` with trainer "dit")
  config.lora = dict(rank=8, alpha=8.0, targets=("attention", "mlp", "adaln"), init_new_words_from=("red",))

The fine-tune takes its model from the base run: `conditioning`, `dit`, `text`, `diffusion` and the VAE
(`vae_workdir` / `pretrained_vae`) are read from `base_workdir/config.json` and must not be set in its config
(`resolve_config`); the rest (data, steps, optimizer, sampling, eval) is its own. The base's EMA weights are loaded
once, placed with the same shardings as a full run's parameters and passed to every step as a frozen input: they are
never updated and never saved again. The train state (`DiTState`: step, params, ema_params, opt_state) holds only
what trains:
  params = {"lora": {"dit": adapter tree}}            (`vidgen.models.lora`; lora_b starts at 0, so step 0 = base)
         + {"words": [new words, text width]}         embedding rows of words the base vocabulary lacks
so checkpoints hold only those. Adapters are sharded like their kernels (A like the kernel's input axes, B like its
output axes).

New words. A small text encoder trained with the base has one embedding row per caption word. When the fine-tune's
data source has a larger caption vocabulary (e.g. the shapes data with `data.extra_colors`), the base vocabulary must
be its prefix; the extra words (recorded as `lora.new_words`) get rows of their own that train with the adapters
(textual inversion), initialised to the mean of the rows of `lora.init_new_words_from` (default: random, as the
table was). The old rows stay frozen, so every old prompt encodes exactly as before.

Inference: `VideoPipeline.from_workdir(base, lora=run)` (or the LoRA run's own workdir) merges the adapters into the
base weights; `merge_to_workdir` writes the merged model as an ordinary DiT run (`vidgen lora merge`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidgen import runs
from vidgen.checkpoint import Checkpointer, abstract_like, restore_fields
from vidgen.config import require
from vidgen.data.sources import get_source
from vidgen.errors import ConfigError, InputError, RunNotFoundError
from vidgen.models import lora
from vidgen.models.text.frozen import text_encoder_kind
from vidgen.parallel import make_mesh, state_shardings
from vidgen.train.dit_trainer import DiTState, DiTTrainer
from vidgen.train.optim import make_optimizer, optimizer_state_shardings

# Model fields a fine-tune takes from its base run (`resolve_config`).
INHERITED = ("conditioning", "dit", "text", "diffusion", "vae_workdir", "pretrained_vae", "vae_stage")
LORA_FIELDS = {"rank": None, "alpha": None, "targets": None, "init_new_words_from": ()}
# Filled in by `resolve_config`, not by the user.
DERIVED_LORA_FIELDS = ("new_words", "base_step")


def _caption_vocab(config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
  """The caption words of a run with a small text encoder (its data source's tokenizer), else None."""
  if config.get("conditioning") != "text" or text_encoder_kind(config.text) != "small":
    return None
  return tuple(get_source(config.data).caption_tokenizer(config.text.max_length).vocab)


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A fine-tune's config with its base run's model fields filled in (see the module docstring), the text
  vocabulary sized for its data, and `lora.new_words` / `lora.base_step` recorded. Raises ConfigError."""
  require(bool(config.get("base_workdir")), "base_workdir",
          "must name the finished DiT run to fine-tune (`--config.base_workdir=DIR`)")
  base_dir = os.path.abspath(os.path.expanduser(config.base_workdir))
  try:
    base = runs.read_config(base_dir)
  except RunNotFoundError as e:
    raise type(e)(f"config.base_workdir: {e}") from None
  require(base.get("trainer") == "dit", "base_workdir", f"{base_dir} holds a {base.get('trainer')!r} run, not a DiT "
                                                         "run")
  require(runs.is_finished(base_dir), "base_workdir", f"{base_dir}: the DiT run has not reached its last step")
  require("lora" in config, "lora", "is missing: a LoRA run needs config.lora (rank, alpha, targets)")
  present = [f for f in INHERITED if f in config]
  require(not present, present[0] if present else "", f"is taken from the base run ({base_dir}); leave it out")
  given = [f for f in DERIVED_LORA_FIELDS if f in config.lora]
  require(not given, f"lora.{given[0] if given else ''}", "is recorded by the run itself; leave it out")

  out = config.copy_and_resolve_references()
  with out.unlocked():
    out.base_workdir = base_dir
    for field in ("conditioning", "dit", "text", "diffusion"):
      if field in base:
        out[field] = ml_collections.ConfigDict(base[field].to_dict()) if isinstance(
            base[field], ml_collections.ConfigDict) else base[field]
    if base.get("pretrained_vae"):
      out.pretrained_vae, out.vae_workdir = base.pretrained_vae, ""
    else:
      out.vae_workdir, out.pretrained_vae = runs.vae_workdir(base, base_dir), ""
    old, new = _caption_vocab(base), _caption_vocab(out)
    words: tuple[str, ...] = ()
    if old is not None:
      require(new[:len(old)] == old, "data",
              f"its caption vocabulary {list(new)} must extend the base run's {list(old)} (the old words first, in "
              "order), so the base's text encoder reads old prompts as it was trained to")
      words = new[len(old):]
      out.text.vocab_size = len(new) + 1
    out.lora.new_words = words
    out.lora.base_step = int(runs.latest_step(base_dir))
  return out


def validate_lora_config(config: ml_collections.ConfigDict) -> None:
  """`config.lora` of a resolved fine-tune config; raises ConfigError naming the field."""
  c = config.lora
  unknown = sorted(set(c.keys()) - set(LORA_FIELDS) - set(DERIVED_LORA_FIELDS))
  require(not unknown, f"lora.{unknown[0] if unknown else ''}", f"is not a LoRA setting; allowed: {list(LORA_FIELDS)}")
  for name, default in LORA_FIELDS.items():
    require(default is not None or name in c, f"lora.{name}", "is missing")
  require(isinstance(c.rank, int) and not isinstance(c.rank, bool) and c.rank >= 1, "lora.rank",
          f"must be an integer >= 1, got {c.rank!r}")
  require(isinstance(c.alpha, (int, float)) and not isinstance(c.alpha, bool) and c.alpha > 0, "lora.alpha",
          f"must be a number > 0 (the adapters' scale is alpha / rank), got {c.alpha!r}")
  targets = c.targets
  require(isinstance(targets, (tuple, list)), "lora.targets", f"must be a list of groups, got {targets!r}")
  try:
    lora.check_groups(targets)
  except ValueError as e:
    raise ConfigError(f"config.lora.targets: {e}") from None
  init_from = tuple(c.get("init_new_words_from", ()))
  if init_from:
    require(bool(c.new_words), "lora.init_new_words_from", "initialises new words, but the data adds none")
    vocab = _caption_vocab(config)
    unknown_words = [w for w in init_from if w not in vocab[:len(vocab) - len(c.new_words)]]
    require(not unknown_words, "lora.init_new_words_from",
            f"{unknown_words} are not words of the base vocabulary {list(vocab[:len(vocab) - len(c.new_words)])}")


class LoRATrainer(DiTTrainer):
  """Adapters (+ new word rows) on a frozen base DiT run; `config` resolved by `resolve_config` and validated."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, workdir: str, **kwargs: Any):
    super().__init__(config, mesh, workdir, **kwargs)
    c = config.lora
    self.rank, self.scale = int(c.rank), float(c.alpha) / int(c.rank)
    self.new_words = tuple(c.new_words)
    abstract = {name: nnx.split(module, nnx.Param)[1]
                for name, module in nnx.eval_shape(lambda: runs.dit_models(config, nnx.Rngs(0))).items()}
    self.targets = lora.select_targets(abstract["dit"], tuple(c.targets))
    self.base = self._load_base(config.base_workdir, int(c.base_step))
    self._frozen: Any = None  # the base while a step is traced (its frozen input), else None
    self.word_init = None
    if self.new_words and c.get("init_new_words_from", ()):
      base_vocab = _caption_vocab(config)[:-len(self.new_words)]
      table = np.asarray(jax.device_get(self.base["text"]["token_embed"]["embedding"]), np.float32)
      rows = table[[base_vocab.index(w) + 1 for w in c.init_new_words_from]]  # id 0 is padding
      self.word_init = np.repeat(rows.mean(axis=0, keepdims=True), len(self.new_words), axis=0)

  def _load_base(self, base_dir: str, step: int) -> dict:
    """The base run's EMA weights at `step`, placed like this run's parameters (the text table at its own size)."""
    base_config = runs.read_config(base_dir)
    abstract, shardings = {}, {}
    for name, module in nnx.eval_shape(lambda: runs.dit_models(base_config, nnx.Rngs(0))).items():
      params = nnx.split(module, nnx.Param)[1]
      abstract[name] = params.to_pure_dict()
      shardings[name] = state_shardings(params, self.rules, self.mesh).to_pure_dict()
    restored, _ = restore_fields(os.path.join(base_dir, "checkpoints"),
                                 {"ema_params": abstract_like(abstract, shardings)}, step)
    return restored["ema_params"]

  # -- state -------------------------------------------------------------------------------------------------------

  def init_state(self, key: jax.Array) -> DiTState:
    k_adapters, k_words = jax.random.split(key)
    params: dict[str, Any] = {"lora": {"dit": lora.init_adapters(k_adapters, self.targets, self.rank)}}
    if self.new_words:
      shape = (len(self.new_words), int(self.config.text.width))
      params["words"] = (jnp.asarray(self.word_init) if self.word_init is not None
                         else 0.02 * jax.random.normal(k_words, shape))  # the embedding table's own init
    return DiTState(step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=self.optimizer.init(params))

  def state_shardings(self) -> DiTState:
    abstract = jax.eval_shape(self.init_state, jax.random.key(0))
    _, params = runs.lora_layout(self.config, self.mesh)
    rep = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    opt = optimizer_state_shardings(self.optimizer, abstract.opt_state, params, self.mesh)
    return DiTState(step=rep, params=params, ema_params=params, opt_state=opt)

  def frozen(self) -> dict:
    """The base weights: the loop passes them to every step (`train_step`'s fourth argument) and never saves them."""
    return self.base

  def model_flops_per_step(self, phase: str) -> None:
    # No weight gradients for the frozen kernels: the full run's count would overstate the work, so the loop reports
    # XLA's count of the compiled step.
    return None

  # -- the model ---------------------------------------------------------------------------------------------------

  def model_params(self, trainable: dict) -> dict:
    """Base weights with the adapters applied and the new words' rows appended to the text table."""
    base = self.base if self._frozen is None else self._frozen
    params = {"dit": lora.apply_adapters(base["dit"], trainable["lora"]["dit"], self.scale)}
    if "text" in base:
      text = base["text"]
      if "words" in trainable:
        text = jax.tree.map(lambda x: x, text)
        table = text["token_embed"]["embedding"]
        text["token_embed"]["embedding"] = jnp.concatenate([table, trainable["words"].astype(table.dtype)], axis=0)
      params["text"] = text
    return params

  def train_step(self, state: DiTState, batch: dict, phase: str, frozen: dict | None = None
                 ) -> tuple[DiTState, dict]:
    # While the step is traced, the adapters act on the traced frozen input rather than on the concrete base, which
    # would otherwise be embedded in the program.
    self._frozen = frozen
    try:
      return super().train_step(state, batch, phase)
    finally:
      self._frozen = None

  def trainable_fraction(self) -> dict[str, int | float]:
    """{"trainable", "base", "fraction"}: trained scalars (adapters and new rows) against the base networks'."""
    trained = lora.count_params(jax.eval_shape(self.init_state, jax.random.key(0)).params)
    base = lora.count_params(self.base)
    return {"trainable": trained, "base": base, "fraction": trained / base}


# -- merging ---------------------------------------------------------------------------------------------------------


def merge_to_workdir(lora_workdir: str, output: str, *, weight: float = 1.0) -> str:
  """Writes the LoRA run in `lora_workdir` merged into its base (weights W + weight x scale x A B, both the EMA and
  the raw weights, and the new words' rows) as an ordinary DiT run in `output`: config.json (trainer "dit", the
  fine-tune's data and sampling settings, its base's VAE) and one checkpoint at its last step, with a fresh optimizer
  state. `VideoPipeline.from_workdir(output)` and `vidgen sample` read it like any run. Returns `output`."""
  lora_workdir, output = os.path.abspath(lora_workdir), os.path.abspath(output)
  if os.path.exists(os.path.join(output, "config.json")) or os.path.isdir(os.path.join(output, "checkpoints")):
    raise InputError(f"{output} already holds a run; merge into a new directory")
  mesh = make_mesh({"data": -1})
  merged = {}
  for field, ema in (("ema_params", True), ("params", False)):
    adapter = runs.load_lora(lora_workdir, mesh, ema=ema)
    run = runs.with_lora(runs.load_dit(adapter.config.base_workdir, mesh, ema=ema), [(adapter, weight)])
    merged[field] = {name: params for name, (_, params) in run.networks.items()}
  config = run.config.copy_and_resolve_references()
  with config.unlocked():
    config.trainer = "dit"
    del config["lora"], config["base_workdir"]
  step = int(config.total_steps)
  optimizer = make_optimizer(config.optimizer, config.total_steps)
  state = DiTState(step=jnp.asarray(step, jnp.int32), params=merged["params"], ema_params=merged["ema_params"],
                   opt_state=optimizer.init(merged["params"]))
  os.makedirs(output, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(output, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  checkpointer = Checkpointer(os.path.join(output, "checkpoints"), max_to_keep=1)
  saved_config = {**json.loads(config.to_json_best_effort()),
                  "merged_from": {"lora_workdir": lora_workdir, "weight": float(weight)}}
  try:
    checkpointer.save(step, state, {}, saved_config, force=True)
  finally:
    checkpointer.close()
  return output
