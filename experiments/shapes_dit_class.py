"""Class-conditional latent video DiT on the embedded moving-shapes data (class = color x shape x direction).

  vidgen train --config experiments/shapes_dit_class.py --workdir workdirs/shapes_class
  vidgen train --config experiments/shapes_dit_class.py:runlocal --workdir /tmp/smoke       # seconds: CI / smoke test
  vidgen train --config experiments/shapes_dit_class.py --workdir DIR --config.vae_workdir=workdirs/shapes_vae

The same run as experiments/shapes_t2v.py (VAE stage, latent cache, joint image + video training, W.A.L.T windows,
guidance dropout, EMA, samples and the prompt-following eval) with a class embedding in place of captions: the
DiT paper's setting on video. Sampling takes captions too; a caption of the embedded data names its class.

The class embedding is built for a label made of attributes (`dit.class_factors = (7, 3, 4)`): the sum of one color,
one shape and one direction row, so each row learns from every class that has its attribute (1/7, 1/3 or 1/4 of the
clips instead of 1/84) and a held-out combination is a sum of trained rows. The three rows, RMS-normalised, are also
the blocks' cross-attention context (`dit.class_tokens`), one token per attribute as the caption model has one per
word. The tokens are normalised because the rows start at DiT's std 0.02 (sized for adding to the timestep
embedding), too small for cross-attention to read. Measured runs and the embedding ablation:
docs/results.md#shapes-dit-class.

Arguments (comma separated): `runlocal` (tiny and fast).
"""

import os

import ml_collections

from vidgen.config import load_config_file, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, runlocal=False)
  t2v = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shapes_t2v.py")
  return load_config_file(t2v, "class,runlocal" if args.runlocal else "class")
