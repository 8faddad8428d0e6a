"""Class-conditional DiT on ImageNet 256 latents (32x32x4, one frame): the DiT paper setup (arXiv 2212.09748).

Usage today: the model and its size/FLOPs accounting,
  from experiments.dit_imagenet import get_config
  dit = VideoDiT(get_config("variant=XL/2").dit, rngs=nnx.Rngs(0))
The run itself needs ImageNet from TFDS and a 4-channel 8x image VAE, neither of which vidgen has yet: `vidgen train`
validates the config and refuses it at `config.data.name` (an unknown data source), before anything is built.

`variant` is a DiT size string (S/B/L/XL with patch 2/4/8, or an explicit "B/1x2x2"). The paper trains with AdamW at
a constant 1e-4, no weight decay, batch 256, class dropout 0.1 for classifier-free guidance; 400K steps is the column
of the paper's tables usually compared against. FLOPs and parameters against the paper: docs/results.md#dit-flops.
`runlocal` keeps the data shape (32x32x4 latents, 1000 classes) so the same input pipeline works, and shrinks the
model, batch and schedule to a smoke run.
"""

from __future__ import annotations

import ml_collections

from vidgen.config import parse_arg
from vidgen.models.dit_config import dit_config
from vidgen.parallel import DEFAULT_RULES
from vidgen.train.optim import default_optimizer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant="XL/2", runlocal=False)
  config = ml_collections.ConfigDict()
  config.trainer = "dit"
  config.seed = 0
  config.total_steps = 400_000
  config.batch_size = 256
  config.log_every = 100
  config.checkpoint_every = 10_000
  config.sample_every = 20_000
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.sharding_rules = DEFAULT_RULES

  config.optimizer = default_optimizer_config(lr=1e-4)
  config.optimizer.warmup_steps = 0      # DiT trains at a constant learning rate from step 0,
  config.optimizer.schedule = "constant"
  config.optimizer.b2 = 0.999            # with PyTorch's default AdamW betas
  config.optimizer.weight_decay = 0.0
  config.optimizer.grad_clip = 1.0       # Global-norm clip; a safety net (DiT itself does not clip).

  # Predicts v with the same 4 channels as the latent (out_channels = 0 means in_channels); the DiT paper's model
  # additionally learns a variance (out_channels = 8), which v-prediction does not need.
  dit_fields = dict(input_size=(1, 32, 32), in_channels=4, num_classes=1000, dtype="bfloat16", remat="none")
  variant = arg.variant
  if arg.runlocal:
    config.total_steps = 20
    config.batch_size = 8
    config.log_every = 1
    config.checkpoint_every = 10
    config.sample_every = 10
    # Keep the requested patch size but use the smallest width/depth ("mu": 2 blocks x 64 wide), float32 on CPU.
    patch = variant.split("/", 1)[1] if "/" in variant else "4"
    variant = f"mu/{patch}"
    dit_fields.update(dtype="float32")
  config.dit = dit_config(variant, **dit_fields)

  config.conditioning = "class"
  # ImageNet from TFDS, encoded by a 4-channel 8x VAE (the DiT paper's SD VAE). Neither source is in vidgen yet, so
  # `vidgen train` refuses this config at config.data.name.
  config.data = ml_collections.ConfigDict(dict(
      name="tfds", tfds_name="imagenet2012", split="train", num_frames=1, height=256, width=256, seed=0,
      cache_clips=1_281_167, cache_batch=256, cache_dir="", image_every=0, image_first=0))
  config.vae_workdir = ""
  config.diffusion = ml_collections.ConfigDict(dict(
      schedule="linear", weighting="v_mse", guidance_dropout=0.1))  # class dropout 0.1, as the paper
  config.ema_decay = 0.9999
  config.sampling = ml_collections.ConfigDict(dict(
      sampler="ddim", steps=50, guidance=1.5, seed=0, prompts=("class 207", "class 360")))
  config.eval = ml_collections.ConfigDict(dict(at_end=False))
  return config
