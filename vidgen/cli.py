"""The `vidgen` command: `vidgen train | sample | eval | sweep | lora merge` (see USAGE).

A thin entry point: flags are parsed here and the work is done by importable functions (`train_and_evaluate`).
A user's mistake (a bad config value, an unknown word in a prompt, a size that does not fit, a workdir without the
run asked for) is reported as one line on stderr with exit code 2; a traceback means a bug.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vidgen.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. experiments/shapes_vae.py or experiments/shapes_vae.py:runlocal.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, TensorBoard and samples.")
# Multi-host runs: every process runs the same command. Without these flags, Cloud TPU slices, SLURM (srun) and
# Open MPI (mpirun) are detected from the environment; a plain machine stays a single process.
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "train: host:port of process 0, reachable by every process (multi-host runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "train: number of processes (hosts) in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "train: this process's index, 0 .. num_processes - 1.")

# sample / eval.
_PROMPT = flags.DEFINE_multi_string("prompt", None, "sample: the caption (repeat the flag for a batch); for a DiT "
                                    "--checkpoint, an ImageNet class id or name.")
_OUTPUT = flags.DEFINE_string("output", None, "sample: output path, .mp4 or .gif (.png for 1-frame images; numbered "
                              "for several prompts: out_0.mp4, out_1.mp4, ...).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "sample: a published DiT instead of --workdir: a diffusers DiT "
                                  "pipeline folder, or DiT-XL-2-256x256.pt with --vae.")
_VAE = flags.DEFINE_string("vae", None, "sample: with --checkpoint, the diffusers VAE folder of the DiT's latents "
                           "(default: CHECKPOINT/vae).")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", None, "sample: frames, 1 + 4k (default: the training clip length).")
_HEIGHT = flags.DEFINE_integer("height", None, "sample: pixels (default: the training size).")
_WIDTH = flags.DEFINE_integer("width", None, "sample: pixels (default: the training size).")
_ASPECT = flags.DEFINE_float("aspect_ratio", None, "sample: width / height; sets the side not given (both left out: "
                             "about the training area).")
_STEPS = flags.DEFINE_integer("steps", 50, "sample: sampler steps.")
_GUIDANCE = flags.DEFINE_float("guidance", 4.0, "sample: classifier-free guidance scale.")
_GUIDANCE_INTERVAL = flags.DEFINE_list("guidance_interval", ["0", "1"], "sample: t_lo,t_hi: guide only at noise "
                                        "levels t in [t_lo, t_hi] (t = 1 is pure noise), conditional-only elsewhere.")
_SEED = flags.DEFINE_integer("seed", 0, "sample: noise seed.")
_IMAGE = flags.DEFINE_string("image", None, "sample: animate this image (its first frame): image-to-video.")
_VIDEO = flags.DEFINE_string("video", None, "sample: a video to extend (see --extend).")
_EXTEND = flags.DEFINE_enum("extend", None, ["forward", "backward"], "sample: with --video, continue it (forward) or "
                            "generate what came before it (backward).")
_FIRST = flags.DEFINE_string("first", None, "sample: an image or video the output starts with (with --last: connect).")
_LAST = flags.DEFINE_string("last", None, "sample: an image or video the output ends with (with --first: connect).")
_LOOP = flags.DEFINE_bool("loop", False, "sample: a video whose end leads back into its start.")
_OVERLAP = flags.DEFINE_integer("overlap", None, "sample: latent frames taken from a given video, per side (and "
                                "between the windows of a long video).")
_WINDOW = flags.DEFINE_integer("window", None, "sample: frames generated at once (default: the training clip length); "
                               "a longer --num_frames is generated window by window.")
# The names of vidgen.diffusion.SAMPLERS, spelled out: importing vidgen.diffusion here would load JAX for every command.
_SAMPLER = flags.DEFINE_enum("sampler", "ddim", ["ddim", "ddpm", "dpmpp_2m", "euler"],
                             "sample: sampler, for v and flow runs alike (euler: the deterministic first-order step, "
                             "the same update as ddim).")

# eval.
_METRICS = flags.DEFINE_list("metrics", None, "eval: any of fvd,fid,lpips,psnr,ssim over --num_clips generated (DiT) "
                             "or reconstructed (VAE) clips against real ones; without it, the data source's own eval.")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 256, "eval: clips compared (with --metrics).")
_EVAL_BATCH = flags.DEFINE_integer("eval_batch", 16, "eval: clips generated and measured at a time (with --metrics).")
_SPLIT = flags.DEFINE_string("split", "validation", "eval: the data split of the real clips and prompts.")
_REFERENCE = flags.DEFINE_string("reference", None, "eval: a folder of real videos to compare against instead of the "
                                 "run's split (fvd and fid only).")
_FID_WEIGHTS = flags.DEFINE_string("fid_weights", None, "eval: pt_inception-2015-12-05-6726825d.pth (pytorch-fid's "
                                   "release) for fid.")

# LoRA fine-tunes (vidgen.train.lora_trainer).
_LORA = flags.DEFINE_multi_string("lora", None, "sample: a LoRA run of --workdir's model to merge into it, DIR or "
                                  "DIR:WEIGHT (repeat the flag for several).")
_WEIGHT = flags.DEFINE_float("weight", 1.0, "lora merge: the adapters' weight (1 = as trained).")

# sweep.
_PRINT = flags.DEFINE_bool("print", False, "sweep: print one shell command per step (prepare, each point, collect) "
                           "for a cluster scheduler instead of running the sweep here.")
_STAGE = flags.DEFINE_enum("stage", "all", ["all", "prepare", "collect"], "sweep: everything (default); only the "
                           "shared VAE and latent cache; or only DIR/results.jsonl from the finished points.")

USAGE = """usage:
  vidgen train --config experiments/NAME.py[:ARG] --workdir DIR [--config.FIELD=VALUE ...]
  vidgen sample --workdir DIR --prompt TEXT --output out.mp4 [--num_frames 17 --steps 50 --guidance 4 --seed 0]
  vidgen sample --workdir DIR --prompt TEXT --output out.mp4 [--image I.png | --video V.mp4 --extend forward|backward
                | --first A --last B | --loop | --num_frames 65 --window 17 --overlap 2]   (a run trained with tasks)
  vidgen sample --checkpoint DiT-XL-2-256 --prompt 207 --output dog.png [--vae sd-vae-ft-ema]
  vidgen eval --workdir DIR [--metrics fvd,fid,lpips,psnr,ssim --num_clips 256 --reference VIDEOS --fid_weights F]
  vidgen sweep --config experiments/SWEEP.py[:ARG] --workdir DIR [--print] [--stage all|prepare|collect]
  vidgen sample --workdir BASE_RUN --lora LORA_RUN[:WEIGHT] --prompt TEXT --output out.mp4
  vidgen lora merge --workdir LORA_RUN [--weight 1.0] --output MERGED_RUN"""


def _train() -> None:
  from vidgen.parallel import distributed
  from vidgen.train.stages import train_and_evaluate
  from vidgen.train.preemption import PREEMPTED_EXIT_CODE, Preempted

  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError(f"train needs --config and --workdir\n{USAGE}")
  try:
    # Before anything touches a device: JAX cannot join processes once a backend exists.
    described = distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if "initialized" in described:
    from vidgen.train.writers import log

    log(described)
  try:
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except Preempted:
    sys.exit(PREEMPTED_EXIT_CODE)  # the loop logged the step and the checkpoint


def _interval(values: list[str]) -> tuple[float, float]:
  try:
    lo, hi = (float(v) for v in values)
  except ValueError as e:
    raise app.UsageError(f"--guidance_interval={','.join(values)!r}: expected two numbers t_lo,t_hi") from e
  return lo, hi


def _sample() -> None:
  import os

  from vidgen import media
  from vidgen.pipeline import VideoPipeline

  if bool(_WORKDIR.value) == bool(_CHECKPOINT.value) or not _PROMPT.value or not _OUTPUT.value:
    raise app.UsageError(f"sample needs one of --workdir and --checkpoint, and --prompt and --output\n{USAGE}")
  root, ext = os.path.splitext(_OUTPUT.value)
  if ext.lower() not in (".mp4", ".gif", ".png"):
    raise app.UsageError(f"--output={_OUTPUT.value!r}: the extension must be .mp4, .gif or .png")
  if _CHECKPOINT.value:
    pipe = VideoPipeline.from_dit_checkpoint(_CHECKPOINT.value, vae=_VAE.value)
  else:
    from vidgen.cascade import with_super_resolution

    pipe = VideoPipeline.from_workdir(_WORKDIR.value, lora=_lora_flags(_LORA.value))
    pipe = with_super_resolution(pipe, _WORKDIR.value)  # base -> super-resolution when WORKDIR/sr is a finished stage
  prompts = _PROMPT.value
  num_frames = _NUM_FRAMES.value or pipe.config.data.num_frames
  if ext.lower() == ".png" and num_frames != 1:
    raise app.UsageError(f"--output={_OUTPUT.value!r}: .png holds one frame; this model samples {num_frames}")
  videos = pipe(prompts, num_frames=num_frames, height=_HEIGHT.value, width=_WIDTH.value,
                aspect_ratio=_ASPECT.value, steps=_STEPS.value,
                guidance=_GUIDANCE.value, seed=_SEED.value, sampler=_SAMPLER.value,
                guidance_interval=_interval(_GUIDANCE_INTERVAL.value), progress=True, **_frame_conditions())
  paths = [_OUTPUT.value] if len(prompts) == 1 else [f"{root}_{i}{ext}" for i in range(len(prompts))]
  for path, prompt, video in zip(paths, prompts, videos):
    media.write_video(path, video)
    print(f"{path}: {prompt!r} ({video.shape[0]} frames, {video.shape[2]}x{video.shape[1]})")


def _frame_conditions() -> dict:
  """--image / --video / --extend / --first / --last / --loop / --overlap / --window as pipeline arguments; a file
  of one frame is an image."""
  from vidgen import media

  def frames(path, image=False):
    if path is None:
      return None
    video = media.read_video(path)
    return video[0] if image or len(video) == 1 else video

  return dict(image=frames(_IMAGE.value, image=True), video=frames(_VIDEO.value), extend=_EXTEND.value,
              first=frames(_FIRST.value), last=frames(_LAST.value), loop=_LOOP.value, overlap=_OVERLAP.value,
              window=_WINDOW.value)


def _lora_flags(values: list[str] | None) -> list[tuple[str, float]]:
  """--lora DIR or DIR:WEIGHT values -> [(DIR, WEIGHT)]."""
  pairs = []
  for value in values or ():
    path, sep, weight = value.rpartition(":")
    try:
      pairs.append((path, float(weight)) if sep and path else (value, 1.0))
    except ValueError:  # a ':' that belongs to the path
      pairs.append((value, 1.0))
  return pairs


def _lora(args: list[str]) -> None:
  """`vidgen lora merge`: a LoRA run merged into its base, written as an ordinary DiT run."""
  if args != ["merge"] or not _WORKDIR.value or not _OUTPUT.value:
    raise app.UsageError(f"expected `vidgen lora merge --workdir LORA_RUN --output DIR [--weight W]`\n{USAGE}")
  from vidgen.train.lora_trainer import merge_to_workdir

  output = merge_to_workdir(_WORKDIR.value, _OUTPUT.value, weight=_WEIGHT.value)
  print(f"{output}: {_WORKDIR.value} merged into its base with weight {_WEIGHT.value}; sample it with `vidgen sample "
        f"--workdir {output}`")


def _eval() -> None:
  from vidgen.pipeline import VideoPipeline

  if not _WORKDIR.value:
    raise app.UsageError(f"eval needs --workdir\n{USAGE}")
  if _METRICS.value:
    from vidgen.evaluation import evaluate_metrics
    results = evaluate_metrics(_WORKDIR.value, _METRICS.value, num_clips=_NUM_CLIPS.value,
                               batch_size=_EVAL_BATCH.value, split=_SPLIT.value, reference=_REFERENCE.value,
                               fid_weights=_FID_WEIGHTS.value, seed=_SEED.value)
    print(json.dumps(results, indent=2))
    print(f"written to {_WORKDIR.value}/eval.json")
    return
  pipe = VideoPipeline.from_workdir(_WORKDIR.value)
  if not pipe.source.evaluate(pipe, pipe.config, _WORKDIR.value):
    raise UserError(f"data source {pipe.config.data.name!r} has no evaluation of its own yet (only the embedded "
                    "shapes do); nothing was written")
  print(f"written to {_WORKDIR.value}/eval.json")


def _sweep() -> None:
  from vidgen.train.preemption import PREEMPTED_EXIT_CODE, Preempted
  from vidgen.train.sweep import Sweep

  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError(f"sweep needs --config and --workdir\n{USAGE}")
  path, _, arg = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")
  sweep = Sweep(path, arg, _WORKDIR.value, config_flags.get_override_values(flags.FLAGS["config"]))
  if _PRINT.value:
    print("\n".join(sweep.commands()))
  elif _STAGE.value == "prepare":
    sweep.prepare()
  elif _STAGE.value == "collect":
    sweep.collect()
  else:
    try:
      sweep.run()
    except Preempted:
      sys.exit(PREEMPTED_EXIT_CODE)  # the loop logged the step and the checkpoint; the same command resumes


COMMANDS = {"train": _train, "sample": _sample, "eval": _eval, "sweep": _sweep}


USER_ERROR_EXIT_CODE = 2


def main(argv: list[str]) -> None:
  if not flags.FLAGS["verbosity"].present:
    # Library INFO logs (orbax's per-save chatter, clu's logging writer) would drown the progress line.
    logging.set_verbosity(logging.WARNING)
  subcommand = len(argv) >= 2 and argv[1] == "lora"  # `vidgen lora merge`: the one command with a subcommand
  if not subcommand and (len(argv) != 2 or argv[1] not in COMMANDS):
    raise app.UsageError(f"expected one command from {sorted([*COMMANDS, 'lora'])}, got {argv[1:]}\n{USAGE}")
  try:
    if subcommand:
      _lora(argv[2:])
    else:
      COMMANDS[argv[1]]()
  except UserError as e:
    print(f"vidgen {argv[1]}: error: {e}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT_CODE)


def run() -> None:
  """Console-script entry point."""
  app.run(main, argv=sys.argv)


if __name__ == "__main__":
  run()
