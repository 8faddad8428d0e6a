"""Spacetime VAE on the embedded moving-shapes data (the default VAE run; finishes in minutes on a laptop CPU).

  vidgen train --config experiments/shapes_vae.py --workdir /tmp/shapes_vae
  vidgen train --config experiments/shapes_vae.py:runlocal --workdir /tmp/smoke     # seconds: CI / smoke test

Arguments (comma separated): `runlocal` (tiny and fast), `channels16` (16 latent channels instead of 8).

`python -m vidgen.benchmarks.vae --workdir DIR --clips 96` prints a finished run's PSNR on validation and held-out
clips, shape read-back and speed; measured numbers and the ablations behind these settings are in
docs/results.md#shapes-vae.
"""

import ml_collections

from vidgen.config import parse_arg
from vidgen.models.discriminator import default_discriminator_config
from vidgen.models.vae import default_vae_config
from vidgen.parallel import DEFAULT_RULES
from vidgen.train.optim import default_optimizer_config

# Combinations never shown in training, kept for measuring generalization (shared with the text-to-video configs).
HELD_OUT = ("red square down", "green triangle left", "blue circle up", "yellow triangle right",
            "magenta circle left", "cyan square up", "white square right")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, runlocal=False, channels16=False)
  config = ml_collections.ConfigDict()
  config.trainer = "vae"
  config.seed = 0
  config.total_steps = 9400
  config.batch_size = 4
  config.log_every = 25
  config.checkpoint_every = 2350
  config.sample_every = 2350
  config.keep_checkpoints = 3
  config.skip_nonfinite_updates = False   # True: a NaN/Inf step leaves the state unchanged instead of stopping
  config.peak_tflops_per_device = ml_collections.config_dict.placeholder(float)  # MFU peak; None = by device kind
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.sharding_rules = DEFAULT_RULES

  config.data = ml_collections.ConfigDict(dict(
      # 9-frame clips (3 latent frames): with 5 the decoder never sees a latent frame with two real predecessors and
      # longer eval clips degrade after frame 8.
      name="shapes", num_frames=9, height=64, width=64, held_out=HELD_OUT, seed=0,
      min_radius=0.09, max_radius=0.2, max_speed=0.05,   # shape size and speed ranges, fractions of the frame
      # Training sees 32x32 windows that hold part of the shape (evaluation: whole frames): more distinct clips per
      # step for the same pixels.
      crop_size=32,
      # Every 3rd batch is 16 single frames: images are cheaper per frame and teach the spatial path.
      image_every=3, image_batch_size=16,
      eval_frames=17, eval_clips=8, latent_stats_clips=32))

  config.vae = default_vae_config()
  config.vae.stem_patch = 4
  # The run is step-limited, so the network is as shallow and narrow as keeps its quality per step: no residual blocks
  # in the encoder's levels, one per decoder level, channels in multiples of 16 (SIMD lanes), a 2-tap causal kernel
  # in time (2/3 the cost of 3 taps, and better at equal time). Ablation: docs/results.md#shapes-vae-ablation.
  config.vae.channels = (32, 48, 64)
  config.vae.num_res_blocks = 0
  config.vae.temporal_kernel = 2
  # Mean and std per channel of the shapes data in [-1, 1] (mostly black). Without centring, the first conv's gradient
  # is dominated by the constant background and training spikes and stalls.
  config.vae.pixel_mean = (-0.926, -0.933, -0.942)
  config.vae.pixel_std = (0.369, 0.352, 0.328)
  if args.channels16:
    config.vae.latent_channels = 16

  config.discriminator = default_discriminator_config()
  config.discriminator.channels = (16, 32, 64)
  config.discriminator.optimizer = default_optimizer_config(lr=2e-4)
  config.discriminator.optimizer.warmup_steps = 0

  config.loss = ml_collections.ConfigDict(dict(
      # MSE only: on mostly black frames L1's constant-size gradients from tiny background errors hold a run at the
      # all-black solution. No GAN: in a run this short it costs PSNR and speed. The runlocal smoke run switches it on
      # so the adversarial path stays exercised.
      l1_weight=0.0, l2_weight=1.0, kl_weight=1e-6, perceptual_weight=0.0, perceptual="",
      gan_weight=0.0, gan_start=540, adaptive_weight_max=1e4))

  # 5e-4: the best of 3e-4, 5e-4 and 1e-3 with these small batches (docs/results.md#shapes-vae-ablation).
  config.optimizer = default_optimizer_config(lr=5e-4)
  config.optimizer.warmup_steps = 20
  config.optimizer.final_lr_fraction = 0.05

  if args.runlocal:
    config.total_steps = 4
    config.log_every = 1
    config.checkpoint_every = 2
    config.sample_every = 4
    config.batch_size = 2
    config.data.update(num_frames=5, height=32, width=32, crop_size=16, image_every=2, image_batch_size=8,
                       eval_frames=5, eval_clips=2, latent_stats_clips=2)
    config.vae.channels = (8, 16, 16)
    config.discriminator.channels = (8, 16)
    config.loss.update(gan_weight=0.1, gan_start=2)
  return config
