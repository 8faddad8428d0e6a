"""Super-resolution stage of a two-stage cascade on the embedded moving shapes (vidgen.diffusion.cascade).

  vidgen train --config experiments/shapes_sr.py:base=workdirs/shapes_t2v --workdir workdirs/shapes_t2v/sr
  vidgen train --config experiments/shapes_sr.py:runlocal,base=/tmp/smoke --workdir /tmp/smoke/sr   # CI / smoke
  vidgen sample --workdir workdirs/shapes_t2v --prompt "a red circle moving right" --output red_circle.mp4
  python -m vidgen.benchmarks.super_resolution --workdir workdirs/shapes_t2v/sr

A DiT learns clips at twice the base run's height and width (17 x 128 x 128 for experiments/shapes_t2v.py's
17 x 64 x 64), conditioned through its task channels on the same clip downsampled 2x, encoded by the base run's own
VAE (the shapes VAE is convolutional, so it codes 128 x 128 clips too) and noise-augmented. Its latent cache holds
both resolutions of every training clip. Trained into BASE/sr, it is found by `vidgen sample --workdir BASE`, which
then generates base -> super-resolution (vidgen.cascade).

Arguments (comma separated): `base=DIR` (the finished base run: its VAE is reused and its sizes are checked),
`runlocal` (tiny and fast: upsamples experiments/shapes_t2v.py:runlocal).
"""

import os

import ml_collections

from vidgen.config import load_config_file, parse_arg
from vidgen.diffusion.cascade import task_channels
from vidgen.models.vae import latent_grid

_HERE = os.path.dirname(os.path.abspath(__file__))
FACTOR = 2


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, runlocal=False, base="")
  # The base stage's config: the same data (at twice the size), text encoder, objective and optimizer.
  config = load_config_file(os.path.join(_HERE, "shapes_t2v.py"), "runlocal" if args.runlocal else None)
  vae = config.vae_stage.vae
  # Both stages share the base run's VAE (required: the condition is in its latent space), so no VAE stage.
  del config.vae_stage
  config.vae_workdir = os.path.join(args.base, "vae") if args.base else ""

  config.super_resolution = ml_collections.ConfigDict(dict(
      factor=FACTOR,
      # Training levels s in [0, 0.5] (cosine: SNR down to 1); sampling at s = 0.15 (condition SNR 17) hides the
      # base model's sample noise while keeping its layout.
      max_level=0.5, sample_level=0.15,
      base_workdir=args.base))
  d = config.data
  d.update(height=FACTOR * d.height, width=FACTOR * d.width, image_every=0)
  # Patch FACTOR x FACTOR: one token per low-resolution latent pixel, as many tokens as the base DiT has.
  config.dit.update(input_size=latent_grid(vae, d.num_frames, d.height, d.width), patch_size=(1, FACTOR, FACTOR),
                    task_channels=task_channels(vae.latent_channels))
  config.total_steps = 1800
  config.checkpoint_every = 600
  # Samples written during training are the stage alone, with an empty condition; the stage is measured by
  # vidgen.benchmarks.super_resolution instead, so they are written once, at the end.
  config.sample_every = config.total_steps
  # Unguided: the low-resolution clip already fixes what the caption says; one model evaluation per step.
  config.sampling.update(guidance=1.0, guidance_interval=(0.0, 1.0))
  # The data source's evaluation (prompt-following) is for a base stage; this stage alone does not follow prompts.
  config.eval.at_end = False

  if args.runlocal:
    config.total_steps = 4
    config.checkpoint_every = 2
    config.sample_every = 4
    config.data.update(cache_clips=8, image_every=0)
  return config
