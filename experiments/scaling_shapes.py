"""Scaling laws on the embedded moving shapes: a family of text-to-video DiTs, IsoFLOP profiles, a low-noise loss.

  vidgen sweep --config experiments/scaling_shapes.py --workdir workdirs/scaling         # the committed sweep
  vidgen sweep --config experiments/scaling_shapes.py --workdir workdirs/scaling --print # one command per point
  vidgen sweep --config experiments/scaling_shapes.py:sweep=compare --workdir workdirs/scaling_compare \
      --config.vae_workdir=workdirs/scaling/vae --config.data.cache_dir=workdirs/scaling/latents   # the same VAE
  vidgen train --config experiments/scaling_shapes.py:depth=8,steps=600 --workdir DIR   # one point alone

Every point is the main job's text-to-video run (experiments/shapes_t2v.py: 17-frame 64x64 clips, its VAE stage,
captions through a small text encoder) with the DiT taken from one family and trained for a given number of steps on
one shared VAE and latent cache; it ends with the validation loss on 256 held-out clips at fixed noise and times
(vidgen.train.validation). Results, fits and plots: notebooks/scaling_laws.ipynb and docs/results.md#scaling-laws.

The family (vidgen.scaling.family): depth D, width 8 D, heads of width 16, the W.A.L.T pattern of shapes_t2v; 2x2
latent patches, so a clip is 5 x 4 x 4 = 80 tokens and the sweep fits the time of a CPU. Learning rate 1e-3 at width
64 (the main job's, tuned there), scaled as 1 / width for the others (Adam's hidden-layer rule of muP, arXiv
2203.03466); batch 32 clips at every size; warm-up 10% of the steps (at most 100) and a cosine decay over each run's
own length (Chinchilla's finding: a schedule longer than the run overstates its loss).

Arguments (comma separated, shared by `vidgen train` and `vidgen sweep`):
  depth=D, steps=S    the point (train only)
  runlocal            a tiny setting for CI and smoke tests (shapes_t2v's runlocal data, seconds per point)
  objective=v|flow    v-prediction (default) or rectified flow (shapes_t2v's `flow`)
  attention=windowed|full    the W.A.L.T pattern (default) or full attention in every block
  patch=2|1           latent patch size (tokens per clip: 80 or 320)
  follow              end each point with the prompt-following evaluation (a small one: 96 clips)
  sweep=isoflop|compare|objectives|predict   which sweep `vidgen sweep` runs (see get_sweep)
"""

import os

import ml_collections

from vidgen.config import load_config_file, parse_arg
from vidgen.errors import ConfigError
from vidgen.scaling.family import family_member

_HERE = os.path.dirname(os.path.abspath(__file__))

ASPECT, HEAD_WIDTH = 8, 16          # width = 8 x depth; heads of width 16
BASE_LR, BASE_WIDTH = 1e-3, 64      # the main job's learning rate at its width


def _args(arg):
  return parse_arg(arg, depth=8, steps=1000, runlocal=False, objective="v", attention="windowed", patch=2,
                   follow=False, sweep="isoflop")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = _args(arg)
  base = ",".join(a for a in ("runlocal" if args.runlocal else "", "flow" if args.objective == "flow" else "") if a)
  if args.objective not in ("v", "flow"):
    raise ConfigError(f"objective={args.objective!r}: must be 'v' or 'flow'")
  config = load_config_file(os.path.join(_HERE, "shapes_t2v.py"), base or None)

  if args.attention not in ("windowed", "full"):
    raise ConfigError(f"attention={args.attention!r}: must be 'windowed' or 'full'")
  if args.attention == "full":
    config.dit.attention_pattern = ("full", "full")
  if args.patch not in (1, 2):
    raise ConfigError(f"patch={args.patch!r}: must be 1 or 2")
  if not args.runlocal:
    config.dit.patch_size = (1, args.patch, args.patch)
    # Windows in tokens: half the frame each way at either patch size.
    config.dit.window = (5, 2, 2) if args.patch == 2 else (5, 4, 4)
  config.dit = family_member(config.dit, args.depth, ASPECT, HEAD_WIDTH)
  config.dit.scan_layers = args.depth > 4        # unrolled only while shallow: its step time grows faster than depth

  config.total_steps = args.steps
  config.optimizer.lr = BASE_LR * BASE_WIDTH / config.dit.width
  config.optimizer.warmup_steps = min(100, max(1, args.steps // 10))
  config.log_every = max(1, min(50, args.steps // 10))
  config.checkpoint_every = max(1, min(200, args.steps))
  config.keep_checkpoints = 1
  config.sample_every = args.steps
  config.sampling.prompts = config.sampling.prompts[:2]

  config.eval.at_end = args.follow
  config.validation = ml_collections.ConfigDict(dict(clips=256, timesteps=8, batch=64, seed=0, ema=False))
  if not args.runlocal:
    config.data.cache_clips = 4096
    # A small prompt-following evaluation: every combination once, the held-out ones twice.
    config.eval.update(samples_per_combination=1, held_out_samples_per_combination=2, batch_size=32)
  else:
    config.validation.update(clips=8, timesteps=2, batch=4)
  return config


def get_sweep(arg: str | None = None) -> ml_collections.ConfigDict:
  """The sweeps of this file (`sweep=`):

  isoflop     IsoFLOP profiles at 4 budgets over 1.5 decades of training compute, every size whose step count lands
              in [min_steps, max_steps] at that budget (4-5 per budget).
  compare     windowed against full attention (two sizes) and patch 2 against patch 1 (one size), at the same steps:
              the DiT paper's loss against forward GFLOPs.
  objectives  v-prediction against rectified flow at equal compute, compared by prompt-following (their validation
              losses measure different targets).
  predict     a run past the top budget to check the fits on (not part of the committed results).
  """
  args = _args(arg)
  sweep = ml_collections.ConfigDict()
  if args.runlocal:
    sweep.sizes, sweep.budgets, sweep.min_steps, sweep.max_steps = (2, 4), (1e8, 2e8), 2, 40
    return sweep
  if args.sweep == "isoflop":
    sweep.sizes = (2, 4, 6, 8, 10, 12)
    sweep.budgets = (2.5e11, 7.9e11, 2.5e12, 7.9e12)
    sweep.min_steps, sweep.max_steps = 40, 4000
  elif args.sweep == "compare":
    # Same steps for every model, as the DiT paper's loss against forward GFLOPs.
    sweep.sizes, sweep.grid_steps = (4, 6), (600,)
    # Patch 1 (4x the tokens) at the smaller size only: the CPU time of the committed sweep.
    sweep.extra = ("attention=full,depth=4,steps=600", "attention=full,depth=6,steps=600", "patch=1,depth=4,steps=600")
  elif args.sweep == "objectives":
    sweep.extra = ("follow,depth=4,steps=1200", "follow,objective=flow,depth=4,steps=1200")
  elif args.sweep == "predict":
    sweep.extra = ("depth=8,steps=4000",)   # 2.5e13 FLOPs, half a decade past the top budget, near the fits' N_opt
  else:
    raise ConfigError(f"sweep={args.sweep!r}: must be 'isoflop', 'compare', 'objectives' or 'predict'")
  return sweep
