"""Spacetime VAE on your own videos (`config.data.name = "files"`), sized for one accelerator.

  vidgen train --config experiments/video_vae.py --workdir /tmp/video_vae --config.data.path=DIR_OR_MANIFEST
  vidgen train --config experiments/video_vae.py:runlocal --workdir /tmp/smoke --config.data.path=DIR   # seconds
  python -m vidgen.data.photo_clips /tmp/photos --held-out --clips-per-photo 12 --frames 17 --size 80x80
  vidgen train --config experiments/video_vae.py:cpu --workdir /tmp/photo_vae \
      --config.data.path=/tmp/photos/train --config.data.eval_path=/tmp/photos/held_out     # minutes on a CPU

`DIR_OR_MANIFEST` is a folder of videos / images (sidecar NAME.txt captions are not needed here) or a .csv / .jsonl
manifest (vidgen.data.records). 17-frame clips at 256x256 (5 x 32 x 32 latents of 16 channels: 4x time, 8x space,
the latent shape of Wan 2.1's and Cosmos' video VAEs), sampled at 8 fps, random offset, random crop and flip; every
4th batch is 16 single frames. `data.eval_records` records are held out (by path hash) for the PSNR / SSIM the run
logs. Reconstruction is L1 with a small KL and, from `loss.gan_start`, a 3D patch GAN with the adaptive weight (the
usual recipe for video autoencoders). A perceptual term is off by default (not yet measured on this recipe):
`--config.loss.perceptual=lpips_alex --config.loss.perceptual_weight=0.1` adds LPIPS per frame.
`python -m vidgen.benchmarks.data --path DIR` says whether decoding keeps up with this run's step.

Arguments: `runlocal` (a smoke run in seconds), `cpu` (the same recipe at 64x64 and a tenth of the width, short
enough for a laptop CPU: the photo-clip demo above, scored on photographs it never saw; docs/results.md#photo-vae).
"""

import ml_collections

from vidgen.config import parse_arg
from vidgen.models.discriminator import default_discriminator_config
from vidgen.models.vae import default_vae_config
from vidgen.parallel import DEFAULT_RULES
from vidgen.train.optim import default_optimizer_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, runlocal=False, cpu=False)
  config = ml_collections.ConfigDict()
  config.trainer = "vae"
  config.seed = 0
  config.total_steps = 200_000
  config.batch_size = 8
  config.log_every = 100
  config.checkpoint_every = 5000
  config.sample_every = 5000
  config.keep_checkpoints = 3
  config.skip_nonfinite_updates = True    # one bad batch must not end a week-long run
  config.peak_tflops_per_device = ml_collections.config_dict.placeholder(float)  # MFU peak; None = by device kind
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.sharding_rules = DEFAULT_RULES

  config.data = ml_collections.ConfigDict(dict(
      name="files", path=ml_collections.config_dict.placeholder(str), eval_path="", eval_records=16,
      num_frames=17, height=256, width=256, fps=8.0, frame_stride=1, offset="random", crop="random", flip=True,
      short_clips="skip", max_skip_fraction=0.05, num_workers=4, seed=0,
      crop_size=0, image_every=4, image_batch_size=16,
      eval_frames=17, eval_clips=8, latent_stats_clips=64))

  config.vae = default_vae_config()
  config.vae.latent_channels = 16
  config.vae.channels = (64, 128, 256)
  config.vae.num_res_blocks = 2
  config.vae.dtype = "bfloat16"
  # Natural video in [-1, 1] is roughly centred with unit-order spread: no per-dataset normalization needed.

  config.discriminator = default_discriminator_config()
  config.discriminator.channels = (64, 128, 256)
  config.discriminator.optimizer = default_optimizer_config(lr=1e-4)
  config.discriminator.optimizer.warmup_steps = 0

  config.loss = ml_collections.ConfigDict(dict(
      l1_weight=1.0, l2_weight=0.0, kl_weight=1e-6, perceptual_weight=0.0, perceptual="",
      gan_weight=0.1, gan_start=50_000, adaptive_weight_max=1e4))
  config.optimizer = default_optimizer_config(lr=1e-4)
  config.optimizer.warmup_steps = 1000
  config.optimizer.final_lr_fraction = 0.1

  if args.cpu:
    config.total_steps = 3000
    config.batch_size = 4
    config.log_every = 50
    config.checkpoint_every = config.sample_every = 1000
    # 32x32 training windows of the 64x64 clips (the network is fully convolutional): 4x the steps in the same time.
    config.data.update(num_frames=9, height=64, width=64, fps=0.0, eval_records=0, num_workers=1, crop_size=32,
                       image_batch_size=16, image_every=3, eval_frames=17, eval_clips=32, latent_stats_clips=32)
    config.vae.update(channels=(32, 64, 128), num_res_blocks=1, dtype="float32")
    config.discriminator.channels = (16, 32, 64)
    config.loss.gan_start = config.total_steps  # no GAN in a run this short
    config.optimizer.update(lr=5e-4, warmup_steps=100, final_lr_fraction=0.05)
  if args.runlocal:
    config.total_steps = 6
    config.batch_size = 2
    config.log_every = 1
    config.checkpoint_every = 3
    config.sample_every = 6
    config.skip_nonfinite_updates = False
    config.data.update(num_frames=5, height=32, width=32, fps=0.0, eval_records=2, num_workers=0, crop_size=16,
                       image_every=2, image_batch_size=4, eval_frames=5, eval_clips=2, latent_stats_clips=2,
                       max_skip_fraction=0.5)
    config.vae.update(latent_channels=4, channels=(8, 16, 16), num_res_blocks=0, dtype="float32")
    config.discriminator.channels = (8, 16)
    config.loss.update(gan_start=3)
  return config
