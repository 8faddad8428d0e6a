"""Text-to-video on the embedded moving-shapes data: the README's main job (VAE -> latent cache -> text DiT -> eval).

  vidgen train --config experiments/shapes_t2v.py --workdir workdirs/shapes_t2v
  vidgen train --config experiments/shapes_t2v.py:runlocal --workdir /tmp/smoke      # seconds: CI / smoke test
  vidgen train --config experiments/shapes_t2v.py:flow --workdir workdirs/shapes_t2v_flow   # rectified flow
  vidgen train --config experiments/shapes_t2v.py:tasks --workdir workdirs/shapes_t2v_tasks   # + frame tasks
  vidgen sample --workdir workdirs/shapes_t2v --prompt "a red square moving down" --output red_square.mp4
  vidgen eval --workdir workdirs/shapes_t2v

Stages: the VAE of experiments/shapes_vae.py is trained into WORKDIR/vae (or `--config.vae_workdir=DIR` reuses a
finished one), `data.cache_clips` training clips are encoded into WORKDIR/latents, then a small W.A.L.T-style DiT
(alternating spatial / spatiotemporal windows, cross-attention to a word-level text encoder trained with it) learns
captions -> latents, jointly on videos and 1-frame images. The held-out combinations of shapes_vae.HELD_OUT never
appear in training; the final eval measures how often generated clips get color, shape and direction all right.

Arguments (comma separated): `runlocal` (tiny and fast), `class` (class-conditional instead of captions), `flow`
(rectified flow instead of v-prediction: the model predicts u = eps - x on z = (1 - s) x + s eps, logit-normal
training times, Euler sampling; everything else equal, so the two objectives compare on the same data and model),
`buckets` (native sizes: batches of 17-frame clips at 64x64, 48x96 and 96x48, 9-frame clips and 1-frame images, each
batch one size under a token budget; evaluated at each size and at two never trained on), `packing` (the same sizes
packed into rows of 1024 tokens instead, Patch n' Pack), `rope` (3-D rotary positions instead of learned tables that
are resampled to other sizes), `tasks` (frame conditioning trained with text-to-video: image-to-video, extension
forwards and backwards, interpolation; vidgen.diffusion.tasks).
"""

import os

import ml_collections

from vidgen.config import load_config_file, parse_arg
from vidgen.data.shapes import CLASS_FACTORS, NUM_CLASSES, shapes_tokenizer
from vidgen.models.dit_config import dit_config
from vidgen.models.vae import latent_grid
from vidgen.models.text import small_text_config
from vidgen.parallel import DEFAULT_RULES
from vidgen.train.optim import default_optimizer_config

_HERE = os.path.dirname(os.path.abspath(__file__))

# Fixed prompts rendered into WORKDIR/samples during training: seen combinations first, then held-out ones.
SAMPLE_PROMPTS = ("a red circle moving right", "a green square moving up", "a blue triangle moving down",
                  "a white circle moving left", "a red square moving down", "a green triangle moving left",
                  "a cyan square moving up", "a magenta circle moving left")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, runlocal=False, flow=False, buckets=False, packing=False, rope=False, tasks=False,
                   **{"class": False})
  args.buckets = args.buckets or args.packing  # packing packs the buckets' sizes
  vae_stage = load_config_file(os.path.join(_HERE, "shapes_vae.py"), "runlocal" if args.runlocal else None)

  config = ml_collections.ConfigDict()
  config.trainer = "dit"
  config.seed = 0
  # What mattered most was token size and shape geometry, not VAE PSNR: see docs/results.md#shapes-t2v.
  config.total_steps = 1800
  config.batch_size = 32
  config.grad_accum_steps = 1      # split each batch into this many micro-batches (same result, less memory)
  config.log_every = 50
  config.checkpoint_every = 1000
  config.sample_every = 1000
  config.keep_checkpoints = 2
  config.skip_nonfinite_updates = False   # True: a NaN/Inf step leaves the state unchanged instead of stopping
  config.peak_tflops_per_device = ml_collections.config_dict.placeholder(float)  # MFU peak; None = by device kind
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.sharding_rules = DEFAULT_RULES

  config.vae_workdir = ""          # "" = train vae_stage into WORKDIR/vae (skipped once finished)
  config.pretrained_vae = ""       # A published VAE's diffusers folder (Wan 2.1, SD); replaces the VAE stage.
  config.vae_stage = vae_stage
  if not args.runlocal:
    # Shorter than shapes_vae's run: a better VAE did not help this DiT, so the minutes go to the DiT.
    vae_stage.total_steps = 2400
    # shapes_vae's earlier, deeper network (1 / 2 residual blocks per encoder / decoder level): on the current
    # shallower one's latents this DiT drew lumpier circles (docs/results.md#shapes-t2v-vae-stage).
    vae_stage.vae.channels = (32, 48, 96)
    vae_stage.vae.num_res_blocks = 1
    vae_stage.checkpoint_every = vae_stage.sample_every = 1200
    # Larger shapes than shapes_vae's (radius 0.09-0.2 of the frame): at 0.14-0.25 the DiT draws squares and circles
    # apart; at the smaller sizes they blur into one blob.
    vae_stage.data.min_radius, vae_stage.data.max_radius = 0.14, 0.25
  config.data = ml_collections.ConfigDict(dict(
      name="shapes", num_frames=17, height=64, width=64, held_out=vae_stage.data.held_out, seed=0,
      min_radius=vae_stage.data.min_radius, max_radius=vae_stage.data.max_radius, max_speed=vae_stage.data.max_speed,
      cache_clips=2048, cache_batch=32, cache_dir="",
      image_every=4,               # every 4th batch is 1-frame latents (images), from the same cache
      image_first=0,               # this many image batches first (an image phase before joint training)
      buckets=(),                  # (frames, height, width, weight) sizes, one per batch (vidgen.data.buckets)
      bucket_tokens=0,             # latent tokens per bucketed batch (0 = batch_size clips in every bucket)
      packing=False,               # True: batch_size rows of clips of every bucket's size, packed (Patch n' Pack)
      pack_length=0,               # tokens per packed row
      pack_slots=0))               # most clips per packed row

  config.conditioning = "class" if args["class"] else "text"
  config.text = small_text_config(vocab_size=shapes_tokenizer().vocab_size, max_length=8, width=64, depth=1,
                                  num_heads=4)
  fs = vae_stage.vae.spatial_downsample
  latent = latent_grid(vae_stage.vae, config.data.num_frames, config.data.height, config.data.width)
  config.dit = dit_config(
      input_size=latent, in_channels=vae_stage.vae.latent_channels, patch_size=(1, 8 // fs, 8 // fs), width=64, depth=4,
      num_heads=2, attention_pattern=("spatial", "spatiotemporal"), window=(5, 4, 4), qk_norm=True,
      adaln_lora_rank=0, pos_embedding="rope" if args.rope else "learned", pooled_text=not args["class"],
      num_classes=NUM_CLASSES if args["class"] else 0, class_factors=CLASS_FACTORS if args["class"] else (),
      class_tokens=args["class"],
      text_dim=0 if args["class"] else config.text.width)
  # Relative weights of the training tasks (vidgen.diffusion.tasks); with frame tasks the DiT reads the known latents
  # and their mask in C + 1 task channels. Three quarters text-to-video: at equal steps, text-to-video loses less
  # than with half, and the tasks still work (docs/results.md#frame-tasks-t2v).
  config.tasks = ml_collections.ConfigDict(dict(text_to_video=1.0))
  if args.tasks:
    config.tasks.update(text_to_video=0.75, image_to_video=0.075, extend_forward=0.075, extend_backward=0.05,
                        interpolate=0.05)
    config.dit.task_channels = vae_stage.vae.latent_channels + 1
  # Two super-blocks, unrolled rather than scanned (same results, no per-iteration parameter slicing): a faster step
  # at this depth. Deep models keep the scan, whose compile time does not grow with depth.
  config.dit.scan_layers = False

  config.diffusion = ml_collections.ConfigDict(dict(
      objective="v", schedule="cosine", shift=0.0, timesteps="uniform", weighting="v_mse", min_snr_gamma=5.0,
      guidance_dropout=0.1,
      self_condition_prob=0.5))    # used when dit.self_condition is on
  if args.flow:
    # SD3's recipe (arXiv 2403.03206): logit-normal(0, 1) times, plain MSE on u. Shift 0: the shift corrects for a
    # larger sample than the one the unshifted schedule was tuned on, and these 5x8x8 latents are far smaller than
    # SD3's (which use k = 3 at 1024^2), so there is no base to correct towards; 0 also matches the v run's cosine.
    config.diffusion = ml_collections.ConfigDict(dict(
        objective="flow", schedule="flow", shift=0.0, timesteps="logit_normal", logit_mean=0.0, logit_std=1.0,
        weighting="v_mse", guidance_dropout=0.1, self_condition_prob=0.5))
  config.ema_decay = 0.995
  config.optimizer = default_optimizer_config(lr=1e-3)
  config.optimizer.warmup_steps = 100
  config.optimizer.final_lr_fraction = 0.05

  config.sampling = ml_collections.ConfigDict(dict(
      # "euler" is DDIM's deterministic update, which on the flow schedule is Euler's method on dz/ds = u.
      sampler="euler" if args.flow else "ddim", steps=50, guidance=4.0, seed=0, prompts=SAMPLE_PROMPTS,
      # Guide only at t >= 0.5 (arXiv 2404.07724): the same clips right as guiding every step, and half the sampling
      # steps run the conditional model alone. t = 0.5 is SNR 1 under both the cosine and the flow schedule.
      guidance_interval=(0.5, 1.0),
      max_size=(0, 0, 0)))  # the largest (frames, height, width) the pipeline samples; 0 = no limit
  # Every one of the 84 combinations (combinations=() = all): 4 clips per seen one and 8 per held-out one, whose
  # interval is the headline; 308 + 56 clips in 13 batches, sized to the README's time budget.
  config.eval = ml_collections.ConfigDict(dict(
      at_end=True, seed=1234, samples_per_combination=4, held_out_samples_per_combination=8, combinations=(),
      batch_size=28, reconstruction_clips=8))

  if args.buckets:
    # Each batch holds about as many tokens as a default batch (32 clips of 5x8x8 tokens): 32 square 17-frame clips,
    # 28 of the wide or tall ones, 53 of 9 frames, or the cap of 64 images. Images replace every-4th-batch images.
    config.batch_size = 64
    config.data.update(image_every=0, bucket_tokens=32 * 320, buckets=(
        (17, 64, 64, 3.0), (17, 48, 96, 2.0), (17, 96, 48, 2.0), (9, 64, 64, 1.0), (1, 64, 64, 2.0)))
    # Seen sizes besides the default one, then two never trained on: a wider aspect ratio and twice the frames.
    config.eval.sizes = ((17, 48, 96), (17, 96, 48), (9, 64, 64), (17, 48, 128), (33, 64, 64))
    config.sampling.max_size = (33, 128, 128)
  if args.packing:
    # The same sizes packed into rows of 1024 tokens (3 square 17-frame clips, plus whatever else fits), 10 rows a
    # batch: about as many tokens as a bucketed batch.
    config.data.update(bucket_tokens=0, packing=True, pack_length=1024, pack_slots=16)
    config.batch_size = 10

  if args.runlocal:
    config.total_steps = 4
    config.batch_size = 4
    config.log_every = 1
    config.checkpoint_every = 2
    config.sample_every = 4
    config.data.update(num_frames=5, height=32, width=32, cache_clips=8, cache_batch=4, image_every=2)
    config.text.update(width=16, num_heads=2)
    config.dit.update(input_size=latent_grid(vae_stage.vae, 5, 32, 32), width=32, depth=2, num_heads=2,
                      window=(2, 2, 2), text_dim=0 if args["class"] else 16)
    config.sampling.update(steps=4, prompts=SAMPLE_PROMPTS[:2])
    config.eval.update(samples_per_combination=1, held_out_samples_per_combination=1, batch_size=9,
                       combinations=SAMPLE_PROMPTS[:2] + tuple(config.data.held_out), reconstruction_clips=2)
    if args.buckets:
      config.batch_size = 8
      config.data.update(image_every=0, bucket_tokens=4 * 20,
                         buckets=((5, 32, 32, 1.0), (5, 16, 48, 1.0), (1, 32, 32, 1.0)))
      config.eval.sizes = ((5, 16, 48), (9, 32, 32))
      if args.packing:
        config.batch_size = 2
        config.data.update(bucket_tokens=0, pack_length=48, pack_slots=4)
  return config
