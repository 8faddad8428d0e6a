"""Class-conditional DiT on ImageNet 256 (the DiT paper's setup, arXiv 2212.09748), from TFDS or an image folder.

  vidgen train --config experiments/dit_imagenet.py --workdir /tmp/dit_xl2                      # TFDS imagenet2012
  vidgen train --config experiments/dit_imagenet.py:variant=B/4 --workdir /tmp/dit_b4 \
      --config.data.name=files --config.data.path=/data/imagenet/train                         # DIR/CLASS/*.JPEG
  vidgen train --config experiments/dit_imagenet.py:runlocal --workdir /tmp/smoke \
      --config.data.path=DIR                                                                    # 4 class folders

TFDS needs imagenet2012 prepared in `data.data_dir` (its manual download; `tfds build imagenet2012`). Images are
1-frame videos: centre crops at 256x256 with random flips, encoded by a 4-channel 8x VAE into 32x32x4 latents (the
DiT paper's latent shape). The paper uses the pretrained Stable Diffusion VAE: give its diffusers folder
(stabilityai/sd-vae-ft-ema) as `--config.pretrained_vae=DIR`; otherwise the run first trains `vae_stage` (a 4-channel
image VAE on the same images) into WORKDIR/vae, or uses `vae_workdir`. The released DiT weights sample through
`VideoPipeline.from_dit_checkpoint` / `vidgen sample --checkpoint` without training.

`variant` is a DiT size string (S/B/L/XL with patch 2/4/8, or an explicit "B/1x2x2"). The paper trains with AdamW at
a constant 1e-4, no weight decay, batch 256, class dropout 0.1 for classifier-free guidance, EMA 0.9999; 400K steps
is the column of the paper's tables usually compared against. FLOPs and parameters against the paper:
docs/results.md#dit-flops. `runlocal` keeps the recipe on 32x32 images of 4 class folders and the smallest model.
"""

from __future__ import annotations

import os

import ml_collections

from vidgen.config import load_config_file, parse_arg
from vidgen.models.dit_config import dit_config
from vidgen.parallel import DEFAULT_RULES
from vidgen.train.optim import default_optimizer_config

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, variant="XL/2", runlocal=False)
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
  variant = args.variant
  if args.runlocal:
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
  config.data = ml_collections.ConfigDict(dict(
      name="tfds", tfds_name="imagenet2012", split="train", eval_split="validation", data_dir="",
      image_key="image", label_key="label", path="",   # path: an ImageNet-layout folder, with name="files"
      num_frames=1, height=256, width=256, offset="start", crop="center", flip=True, short_clips="skip",
      max_skip_fraction=0.01, num_workers=8, seed=0,
      cache_clips=1_281_167, cache_batch=256, cache_dir="", image_every=0, image_first=0))
  config.vae_workdir = ""          # "" = train vae_stage into WORKDIR/vae (skipped once finished)
  config.pretrained_vae = ""       # A published VAE's diffusers folder (Wan 2.1, SD); replaces the VAE stage.
  config.diffusion = ml_collections.ConfigDict(dict(
      schedule="linear", weighting="v_mse", guidance_dropout=0.1))  # class dropout 0.1, as the paper
  config.ema_decay = 0.9999
  config.sampling = ml_collections.ConfigDict(dict(
      sampler="ddim", steps=50, guidance=1.5, seed=0, prompts=("207", "360")))   # class ids (or names)
  config.eval = ml_collections.ConfigDict(dict(at_end=False))
  if args.runlocal:
    config.data.update(name="files", path=ml_collections.config_dict.placeholder(str), height=32, width=32,
                       num_workers=0, cache_clips=8, cache_batch=4, max_skip_fraction=0.5)
    config.dit.update(input_size=(1, 4, 4), num_classes=4)
    config.sampling.update(steps=3, prompts=("0", "1"))
  config.vae_stage = _image_vae(config.data, args.runlocal)
  return config


def _image_vae(data: ml_collections.ConfigDict, runlocal: bool) -> ml_collections.ConfigDict:
  """A 4-channel, 8x image VAE (spacetime VAE on 1-frame clips) trained on the same images."""
  vae = load_config_file(os.path.join(_HERE, "video_vae.py"), "runlocal" if runlocal else None)
  vae.data = data.copy_and_resolve_references()
  for field in ("name", "path", "tfds_name", "data_dir"):  # --config.data.X overrides reach the VAE stage too
    vae.data[field] = data.get_ref(field)
  vae.data.update(crop="random", eval_records=0 if data.name == "tfds" else 16, crop_size=0, image_every=0,
                  image_batch_size=1, eval_frames=1, eval_clips=8, latent_stats_clips=256)
  for field in ("cache_clips", "cache_batch", "cache_dir", "image_first"):
    del vae.data[field]
  vae.vae.latent_channels = 4
  vae.total_steps, vae.batch_size = (6, 2) if runlocal else (100_000, 64)
  if runlocal:
    vae.data.update(eval_records=2, eval_clips=2, latent_stats_clips=2)
  return vae
