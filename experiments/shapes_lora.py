"""LoRA fine-tune of a finished shapes_t2v run on a color it has never seen: "orange", a new caption word.

  vidgen train --config experiments/shapes_lora.py --workdir workdirs/lora_orange \
      --config.base_workdir=workdirs/shapes_t2v
  vidgen train --config experiments/shapes_lora.py:runlocal --workdir /tmp/lora_smoke \
      --config.base_workdir=/tmp/smoke                                # on a shapes_t2v.py:runlocal run; seconds
  vidgen sample --workdir workdirs/lora_orange --prompt "a orange circle moving left" --output orange.mp4
  vidgen lora merge --workdir workdirs/lora_orange --output workdirs/shapes_t2v_orange
  python -m vidgen.benchmarks.lora --workdir workdirs/lora_orange

The base run's model (DiT, text encoder, diffusion, VAE) is read from `base_workdir` and stays frozen
(vidgen.train.lora_trainer): rank-8 adapters on every attention projection, MLP and adaLN kernel train, with one new
embedding row for "orange" (started at the mean of "red" and "yellow", the colors it lies between). The data are the
base's shapes clips with orange added to the palette (255, 128, 0: half-way between red and yellow, which the reader
tells apart from both); half the clips are orange and the other half the old colors, so old prompts keep being seen.
The base's latent cache is not reused: the fine-tune encodes its own mix with the base's VAE.

Arguments (comma separated): `runlocal` (tiny and fast, on a `shapes_t2v.py:runlocal` base).
"""

import os

import ml_collections

from vidgen.config import load_config_file, parse_arg
from vidgen.parallel import DEFAULT_RULES
from vidgen.train.optim import default_optimizer_config

_HERE = os.path.dirname(os.path.abspath(__file__))

NEW_COLOR = {"orange": (255, 128, 0)}
# Sampled during training: the new color first, then old prompts that must still work.
SAMPLE_PROMPTS = ("a orange circle moving right", "a orange square moving up", "a orange triangle moving down",
                  "a red circle moving right", "a yellow square moving left", "a blue triangle moving down")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, runlocal=False)
  base = load_config_file(os.path.join(_HERE, "shapes_t2v.py"), "runlocal" if args.runlocal else None)

  config = ml_collections.ConfigDict()
  config.trainer = "lora"
  config.base_workdir = ""        # the finished DiT run to fine-tune (required; --config.base_workdir=DIR)
  config.seed = 0
  config.total_steps = 1000
  config.batch_size = 32
  config.grad_accum_steps = 1
  config.log_every = 50
  config.checkpoint_every = 500
  config.sample_every = 1000
  config.keep_checkpoints = 2
  config.skip_nonfinite_updates = False
  config.peak_tflops_per_device = ml_collections.config_dict.placeholder(float)
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.sharding_rules = DEFAULT_RULES

  config.lora = ml_collections.ConfigDict(dict(
      rank=8, alpha=8.0,               # scale alpha / rank = 1
      targets=("attention", "mlp", "adaln"),
      init_new_words_from=("red", "yellow")))

  # The base's clips (same geometry and held-out combinations) with the new color in half of them.
  config.data = base.data.copy_and_resolve_references()
  config.data.update(cache_clips=1024, extra_colors=NEW_COLOR, extra_color_fraction=0.5)

  config.ema_decay = 0.99
  config.optimizer = default_optimizer_config(lr=1e-3)
  config.optimizer.warmup_steps = 50
  config.optimizer.final_lr_fraction = 0.1

  config.sampling = base.sampling.copy_and_resolve_references()
  config.sampling.prompts = SAMPLE_PROMPTS
  # One clip per combination, orange's 12 included ("extra"); the benchmark (vidgen.benchmarks.lora) measures more.
  config.eval = base.eval.copy_and_resolve_references()
  config.eval.update(samples_per_combination=1, held_out_samples_per_combination=1)

  if args.runlocal:
    config.total_steps = 4
    config.batch_size = 4
    config.log_every = 1
    config.checkpoint_every = 2
    config.sample_every = 4
    config.data.update(cache_clips=8)
    config.sampling.update(steps=4, prompts=SAMPLE_PROMPTS[:1] + SAMPLE_PROMPTS[3:4])
    config.eval.update(combinations=("orange circle right", "red circle right"))
  return config
