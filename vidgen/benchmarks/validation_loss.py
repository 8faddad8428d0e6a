"""The fixed-noise validation loss of finished DiT runs, measured after the fact on one shared set of clips.

  python -m vidgen.benchmarks.validation_loss --workdir RUN_A --workdir RUN_B [--clips 256 --timesteps 8]

Each run's EMA weights are scored by its own training objective (`vidgen.train.validation`: fixed clips of the data
source's validation split, fixed noise, stratified times) conditioned on each clip's caption or class, with no task
inputs, i.e. as text-to-video. Runs that share a VAE and an objective are then compared on exactly the same latents,
noise and times, with a standard error over clips: a far finer comparison of text-to-video quality than sampled
prompt-following, for runs that differ in something other than the loss (frame tasks, data mixes).
"""

from __future__ import annotations

import argparse
import json

import jax
import ml_collections
import numpy as np

from vidgen import runs
from vidgen.data import to_model_range
from vidgen.data.sources import get_source
from vidgen.parallel import make_mesh


def validation_loss(workdir: str, clips: int, timesteps: int, batch: int, seed: int) -> dict:
  from vidgen.train.dit_trainer import DiTTrainer

  mesh = make_mesh({"data": -1})
  run = runs.load_dit(workdir, mesh)
  config = ml_collections.ConfigDict(run.config.to_dict())
  config.validation = dict(clips=clips, timesteps=timesteps, batch=batch, seed=seed, ema=False)
  real = get_source(config.data).clips("validation", clips)
  encode = jax.jit(lambda x: run.vae.encode(x).mean)
  mean = np.concatenate([np.asarray(encode(to_model_range(real["video"][i:i + batch])))
                         for i in range(0, clips, batch)])
  validation = {"mean": mean, "label": np.asarray(real.get("label", np.full(clips, -1)), np.int32),
                "caption": np.asarray(real.get("caption", [""] * clips)).astype(str)}
  trainer = DiTTrainer(config, mesh, workdir, vae=run.vae, cache=None, validation=validation)
  params = {name: p for name, (_, p) in run.networks.items()}
  loss, se = trainer.validation_loss(params)
  return {"workdir": workdir, "step": run.step, "clips": clips, "timesteps": timesteps, "seed": seed,
          "val_loss": loss, "val_loss_se": se}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", action="append", required=True, help="a finished DiT run (repeat to compare)")
  parser.add_argument("--clips", type=int, default=256)
  parser.add_argument("--timesteps", type=int, default=8)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  for workdir in args.workdir:
    print(json.dumps(validation_loss(workdir, args.clips, args.timesteps, args.batch, args.seed)))


if __name__ == "__main__":
  main()
