"""Text-to-video on your own captioned videos with a frozen pretrained text encoder (T5 / UMT5 / CLIP).

  vidgen train --config experiments/video_t2v.py --workdir /tmp/video_t2v \
      --config.data.path=DIR_OR_MANIFEST --config.text.path=T5_DIR [--config.vae_workdir=/tmp/video_vae]
  vidgen sample --workdir /tmp/video_t2v --prompt "a dog running on a beach"

Captions come from sidecar NAME.txt files or a manifest's `caption` column; `T5_DIR` is a local Hugging Face
checkpoint directory (`save_pretrained` output with its tokenizer): T5-v1.1-XXL by default (`dit.text_dim` = 4096);
for another encoder set `--config.dit.text_dim` to its width (the run refuses a mismatch and says the width).
Caption embeddings are computed once, stored with the latents, and the encoder is never trained. Without
`vae_workdir` the run first trains experiments/video_vae.py's VAE into WORKDIR/vae.
The DiT: W.A.L.T-style windowed attention (spatial windows alternating with spatiotemporal ones) over 5 x 32 x 32
latents in 2x2 patches (1280 tokens), DiT-B width and depth, adaLN-Zero, cross-attention to the caption tokens.
"""

import os

import ml_collections

from vidgen.config import load_config_file, parse_arg
from vidgen.models.dit_config import dit_config
from vidgen.models.vae import latent_grid
from vidgen.parallel import DEFAULT_RULES
from vidgen.train.optim import default_optimizer_config

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, runlocal=False)
  vae_stage = load_config_file(os.path.join(_HERE, "video_vae.py"), "runlocal" if args.runlocal else None)

  config = ml_collections.ConfigDict()
  config.trainer = "dit"
  config.seed = 0
  config.total_steps = 300_000
  config.batch_size = 64
  config.grad_accum_steps = 1
  config.log_every = 100
  config.checkpoint_every = 5000
  config.sample_every = 10_000
  config.keep_checkpoints = 3
  config.skip_nonfinite_updates = True
  config.peak_tflops_per_device = ml_collections.config_dict.placeholder(float)
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.sharding_rules = DEFAULT_RULES

  config.vae_workdir = ""          # "" = train vae_stage into WORKDIR/vae (skipped once finished)
  config.pretrained_vae = ""       # A published VAE's diffusers folder (Wan 2.1, SD); replaces the VAE stage.
  config.vae_stage = vae_stage
  d = vae_stage.data
  config.data = ml_collections.ConfigDict(dict(
      name="files", path=d.get_ref("path"), eval_path="", eval_records=0,
      num_frames=d.num_frames, height=d.height, width=d.width, fps=d.fps, frame_stride=d.frame_stride,
      offset="random", crop="center", flip=False,     # flips would mirror "left" / "right" in captions
      short_clips="skip", max_skip_fraction=0.05, num_workers=4, seed=0,
      cache_clips=100_000, cache_batch=32, cache_dir="",
      image_every=4, image_first=0))

  config.conditioning = "text"
  # T5 tokens: 128 covers most captions; longer ones are truncated.
  config.text = ml_collections.ConfigDict(dict(
      encoder="hf", path=ml_collections.config_dict.placeholder(str), max_length=128, dtype="bfloat16"))
  latent = latent_grid(vae_stage.vae, config.data.num_frames, config.data.height, config.data.width)
  config.dit = dit_config(
      "B/1x2x2", input_size=latent, in_channels=vae_stage.vae.latent_channels,
      attention_pattern=("spatial", "spatiotemporal"), window=(latent[0], 8, 8), qk_norm=True,
      pooled_text=True, text_dim=4096, dtype="bfloat16")   # T5-v1.1-XXL's width; other encoders: set dit.text_dim

  config.diffusion = ml_collections.ConfigDict(dict(
      schedule="cosine", shift=0.0, weighting="v_mse", min_snr_gamma=5.0, guidance_dropout=0.1,
      self_condition_prob=0.5))
  config.ema_decay = 0.9999
  config.optimizer = default_optimizer_config(lr=1e-4)
  config.optimizer.warmup_steps = 2000
  config.optimizer.final_lr_fraction = 0.1
  config.sampling = ml_collections.ConfigDict(dict(
      sampler="ddim", steps=50, guidance=6.0, seed=0, guidance_interval=(0.0, 1.0),
      prompts=("a dog running on a beach", "waves breaking on rocks at sunset", "a city street at night in the rain")))
  config.eval = ml_collections.ConfigDict(dict(at_end=False))

  if args.runlocal:
    config.total_steps = 4
    config.batch_size = 2
    config.log_every = 1
    config.checkpoint_every = 2
    config.sample_every = 4
    config.skip_nonfinite_updates = False
    config.data.update(cache_clips=4, cache_batch=2, num_workers=0, image_every=2, max_skip_fraction=0.5)
    config.text.update(max_length=8, dtype="float32")
    config.dit = dit_config(input_size=latent, in_channels=vae_stage.vae.latent_channels, patch_size=(1, 1, 1),
                            width=32, depth=2, num_heads=2, attention_pattern=("spatial", "spatiotemporal"),
                            window=(latent[0], 2, 2), pooled_text=True, text_dim=32)
    config.sampling.update(steps=3, prompts=config.sampling.prompts[:1])
  return config
