"""Class-conditional DiT on ImageNet 256 latents (32x32x4, one frame): the DiT paper setup (arXiv 2212.09748).

Usage (the model and its size/FLOPs accounting; the latent DiT trainer, `config.trainer = "dit"`, is not in the
library yet, and `vidgen train` says so):
  from experiments.dit_imagenet import get_config
  dit = VideoDiT(get_config("variant=XL/2").dit, rngs=nnx.Rngs(0))

`variant` is a DiT size string (S/B/L/XL with patch 2/4/8, or an explicit "B/1x2x2"). The paper trains with AdamW at
a constant 1e-4, no weight decay, batch 256, class dropout 0.1 for classifier-free guidance; XL/2 reaches FID 2.27
(guidance 1.5) after 7M steps, and the 400K-step column of the paper's tables is the usual comparison point.
`runlocal` keeps the data shape (32x32x4 latents, 1000 classes) so the same input pipeline works, and shrinks the
model, batch and schedule to a smoke run.
"""

from __future__ import annotations

import ml_collections

from vidgen.config import parse_arg
from vidgen.models.dit import dit_config
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
  # Labels replaced by the null class (id = num_classes) with this probability, for classifier-free guidance.
  config.label_dropout = 0.1
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
  return config
