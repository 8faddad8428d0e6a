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
word. Measured on the main job's VAE and latent cache, 1800 steps at 3.2 steps/s, all three attributes right (eval as
in shapes_t2v, 56 seen / 28 held-out clips):

  one row per class (the DiT paper's table), adaLN only     14% seen    7% held-out  (directions 27%: chance)
  factored rows, adaLN only                                  20% seen   25% held-out  (directions 29%)
  factored rows, also as 3 cross-attention tokens            52% seen   32% held-out  (directions 64%)
  ... those tokens RMS-normalised (this config)             100% seen  100% held-out
  one row per class as 1 normalised token                   62% seen    0% held-out  (directions 98%, shapes 64%)

and this config on 12 clips per combination (eval seed 99): 95.5% of 336 seen, 100% of 84 held-out clips; the misses
are lumpy circles read as other shapes (105/120 circles right). Color was learned first in every variant. Motion
came with a normalised label token for cross-attention, even a single one; the rows start at DiT's std 0.02 (sized
for adding to the timestep embedding), and unnormalised, the values cross-attention made from them carried almost
nothing for hundreds of steps. Shapes and held-out combinations came with the factored rows. The default run from
scratch (its own VAE stage, 27.9 dB) takes 14m08s and gets 96.4% seen / 100% held-out.

Arguments (comma separated): `runlocal` (tiny and fast).
"""

import os

import ml_collections

from vidgen.config import load_config_file, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, runlocal=False)
  t2v = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shapes_t2v.py")
  return load_config_file(t2v, "class,runlocal" if args.runlocal else "class")
