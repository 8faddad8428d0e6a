"""Training FLOPs per step: the analytic count (`vidgen.scaling.train_flops_per_step`) against XLA's cost analysis.

  python -m vidgen.benchmarks.flops [--config experiments/shapes_t2v.py[:ARG]] [--set dit.depth=8 ...]

For each phase the DiT trainer runs (video batches and 1-frame image batches) it builds the trainer's real jitted
step on abstract inputs (nothing is materialised or run) and prints the analytic count, XLA's count of the lowered
program (before optimisation) and of the compiled one, and their ratios. The analytic count is matrix multiplies
only; XLA also counts elementwise work (norms, softmax, GELU, modulation, the AdamW and EMA updates), which is a
larger share of small models, and its CPU compiler counts elementwise ops it duplicates into several fusions more
than once.
"""

from __future__ import annotations

import argparse
import ast
import os
import types

import jax
import jax.numpy as jnp
import numpy as np

from vidgen.config import load_config_file
from vidgen.models.text.frozen import text_encoder_kind
from vidgen.parallel import make_mesh
from vidgen.scaling import train_flops_per_step
from vidgen.train.dit_trainer import DiTTrainer

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              "experiments", "shapes_t2v.py")


def lowered_step(config, phase: str):
  """(trainer, lowered step): the DiT trainer of `config` and its jitted step for `phase` lowered on abstract inputs."""
  channels = config.dit.in_channels
  # The step's FLOPs do not depend on the VAE: only its latent statistics are read, as constants.
  vae = types.SimpleNamespace(latent_shift=np.zeros(channels, np.float32), latent_scale=np.ones(channels, np.float32))
  trainer = DiTTrainer(config, make_mesh({"data": 1}, jax.devices()[:1]), "", vae=vae, cache=None)
  state = jax.eval_shape(trainer.init_state, jax.random.key(0))
  b, (t, h, w) = config.batch_size, config.dit.input_size
  latent = jax.ShapeDtypeStruct((b, 1 if phase == "image" else t, h, w, channels), jnp.float32)
  batch = {"mean": latent, "std": latent}
  length = config.text.max_length
  if config.conditioning == "class":
    batch["label"] = jax.ShapeDtypeStruct((b,), jnp.int32)
  elif config.conditioning == "text" and text_encoder_kind(config.text) == "hf":
    batch["text"] = jax.ShapeDtypeStruct((b, length, config.dit.text_dim), jnp.float16)
    batch["mask"] = jax.ShapeDtypeStruct((b, length), jnp.bool_)
  elif config.conditioning == "text":
    batch["ids"] = jax.ShapeDtypeStruct((b, length), jnp.int32)
    batch["mask"] = jax.ShapeDtypeStruct((b, length), jnp.bool_)
  return trainer, jax.jit(trainer.train_step, static_argnums=2).lower(state, batch, phase)


def xla_flops(config, phase: str) -> tuple[float, float]:
  """(lowered, compiled) FLOPs XLA counts for one training step of the DiT run `config` in `phase`."""
  _, lowered = lowered_step(config, phase)
  return float(lowered.cost_analysis()["flops"]), float(lowered.compile().cost_analysis()["flops"])


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=DEFAULT_CONFIG, help="a DiT experiment file, optionally with :ARG")
  parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="config overrides")
  args = parser.parse_args(argv)
  path, _, arg = args.config.partition(":")
  config = load_config_file(path, arg or None)
  for item in args.set:
    field, _, value = item.partition("=")
    *parents, leaf = field.split(".")
    node = config
    for name in parents:
      node = node[name]
    node[leaf] = ast.literal_eval(value) if value[:1] in "0123456789-([{'\"TF" else value
  print(f"{args.config} {' '.join(args.set)}".strip())
  print("| phase | batch | analytic | XLA lowered | lowered / analytic | XLA compiled | compiled / analytic |")
  print("|---|---|---|---|---|---|---|")
  for phase in ("video", "image"):
    analytic = train_flops_per_step(config, phase)
    lowered, compiled = xla_flops(config, phase)
    print(f"| {phase} | {config.batch_size} | {analytic:.4g} | {lowered:.4g} | {lowered / analytic:.3f} | "
          f"{compiled:.4g} | {compiled / analytic:.3f} |")


if __name__ == "__main__":
  main()
