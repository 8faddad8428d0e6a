"""VAE benchmark: reconstruction quality and speed of a trained workdir, plus its training curve; or the Wan 2.1 VAE's
speed and memory next to vidgen's own VAE.

  python -m vidgen.benchmarks.vae --workdir workdirs/shapes_vae [--clips 32]
  python -m vidgen.benchmarks.vae --vae wan [--frames 17 --size 128x128 --batch 1 --dtype float32 --repeats 3]

With a workdir: PSNR / SSIM on the validation split (for the embedded shapes: unseen clips of seen combinations, and
clips of held-out combinations, with how often the prompt-following analyzer reads each shape (and all three
attributes) right on the reconstructions, the ceiling for any generator that decodes through this VAE); encode and
decode throughput (frames/s, after compilation) at the evaluation length; the training curve from metrics.jsonl (loss,
train-batch PSNR, eval PSNR) and the training steps/s.

With `--vae wan`: `vidgen.models.wan_vae.WanVAE` at Wan 2.1's real width and vidgen's `SpacetimeVAE` as configured by
`--config` (default experiments/video_vae.py: the same 4x / 8x / 16-channel latents), both with random weights (speed
and memory do not depend on them), each in one pass and streamed as diffusers streams Wan (frame 0, then 4 frames per
encoder chunk; one latent frame per decoder chunk). Per row: the median wall time of `--repeats` jitted calls after a
warm-up (`--repeats 0`: compile only), and XLA's compiled memory (`compiled.memory_analysis()`: arguments, i.e. the
parameters the call uses and its input; temporaries; outputs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen import metrics, runs
from vidgen.benchmarks.dit import compiled_memory
from vidgen.config import load_config_file
from vidgen.data import to_model_range, to_uint8
from vidgen.data.shapes.reader import prompt_following
from vidgen.data.sources import get_source
from vidgen.models.vae import SpacetimeVAE
from vidgen.models.wan_vae import WanVAE, wan_vae_config
from vidgen.train.writers import read_metrics

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              "experiments", "video_vae.py")


def shape_readings(videos: np.ndarray, captions) -> str:
  """'circle k/n  square k/n  triangle k/n  all three p%': the reader on reconstructions, per true shape."""
  result = prompt_following(videos, list(captions))
  per_shape: dict[str, list[bool]] = {}
  for example in result["examples"]:
    shape = example["prompt"].split()[2]
    per_shape.setdefault(shape, []).append(example["correct"]["shape"])
  parts = [f"{shape} {sum(ok)}/{len(ok)}" for shape, ok in sorted(per_shape.items())]
  return "  ".join(parts) + f"  all three {100 * result['all']:.0f}%"


# ----------------------------------------------------------------------------------------------------------------------
# Wan 2.1's VAE next to vidgen's, random weights.


def _build(make: Callable[[], nnx.Module], abstract: bool):
  """(graphdef, state) of `make()`, initialised in one jitted call rather than parameter by parameter (or only shapes
  and dtypes, `abstract`)."""
  graph, shapes = nnx.split(nnx.eval_shape(make))
  return graph, shapes if abstract else jax.jit(lambda: nnx.state(make()))()


def _measure(fn, state, arg: jax.Array, repeats: int) -> dict[str, Any]:
  """Compiles `fn(state, arg)`, then times it: compile seconds, median seconds per call (None when `repeats` is 0:
  compile only), XLA memory (bytes)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(state, arg).compile()
  compile_s = time.perf_counter() - start
  if repeats == 0:
    return dict(seconds=None, compile_s=compile_s, memory=compiled_memory(compiled))
  jax.block_until_ready(compiled(state, arg))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(state, arg))
    times.append(time.perf_counter() - start)
  return dict(seconds=statistics.median(times), compile_s=compile_s, memory=compiled_memory(compiled))


def compare_with_wan(frames: int, height: int, width: int, *, batch: int = 1, dtype: str = "float32",
                     repeats: int = 3, config: str = DEFAULT_CONFIG) -> list[dict[str, Any]]:
  """Encode / decode time and compiled memory of WanVAE at Wan 2.1's width and of the SpacetimeVAE of experiment file
  `config` ("path[:arg]"), one pass and streamed, on a batch x frames x height x width video."""
  path, _, arg = config.partition(":")
  vidgen_config = load_config_file(path, arg or None).vae
  vidgen_config.update(dtype=dtype, param_dtype=dtype)
  wan_config = wan_vae_config(dtype=dtype, param_dtype=dtype)
  models = (("Wan 2.1 VAE", lambda: WanVAE(wan_config, rngs=nnx.Rngs(0))),
            (f"vidgen SpacetimeVAE ({os.path.basename(path)})", lambda: SpacetimeVAE(vidgen_config, rngs=nnx.Rngs(0))))
  video_shape = (batch, frames, height, width, 3)
  # Compile-only runs need no data: abstract arrays are enough for memory_analysis.
  video = (jax.ShapeDtypeStruct(video_shape, jnp.float32) if repeats == 0 else
           jax.random.uniform(jax.random.key(0), video_shape, jnp.float32, -1.0, 1.0))
  rows = []
  for name, make in models:
    graph, state = _build(make, abstract=repeats == 0)
    vae = nnx.merge(graph, state)
    latent_shape = vae.latent_shape(video_shape)
    latent = (jax.ShapeDtypeStruct(latent_shape, jnp.float32) if repeats == 0 else
              jax.random.normal(jax.random.key(1), latent_shape, jnp.float32))
    params = sum(x.size for x in jax.tree.leaves(nnx.state(vae, nnx.Param)))
    for enc_chunk, dec_chunk in ((None, None), (vae.temporal_factor, 1)):
      encode = lambda s, v, c=enc_chunk: nnx.merge(graph, s).encode(v, chunk_frames=c).mean
      decode = lambda s, z, c=dec_chunk: nnx.merge(graph, s).decode(z, chunk_frames=c)
      rows.append(dict(model=name, params=params, video=video.shape, latent=latent.shape,
                       chunks="one pass" if enc_chunk is None else f"{enc_chunk} frames / {dec_chunk} latent",
                       encode=_measure(encode, state, video, repeats), decode=_measure(decode, state, latent, repeats)))
  return rows


def _mib(memory: dict[str, int] | None) -> str:
  if memory is None:
    return "n/a"
  return " / ".join(f"{memory[k] / 2**20:.1f}" for k in ("argument", "temp", "output"))


def _seconds(measured: dict[str, Any]) -> str:
  return "-" if measured["seconds"] is None else f"{measured['seconds']:.3f}"


def format_comparison(rows: Sequence[dict[str, Any]]) -> str:
  lines = ["| model | params (M) | video (BxTxHxW) | latent | streamed | encode (s) | decode (s) | "
           "encode memory MiB (args / temp / out) | decode memory MiB (args / temp / out) | compile enc + dec (s) |",
           "|" + "---|" * 10]
  for r in rows:
    lines.append(
        f"| {r['model']} | {r['params'] / 1e6:.1f} | {'x'.join(map(str, r['video'][:4]))} | "
        f"{'x'.join(map(str, r['latent'][1:]))} | {r['chunks']} | {_seconds(r['encode'])} | "
        f"{_seconds(r['decode'])} | {_mib(r['encode']['memory'])} | {_mib(r['decode']['memory'])} | "
        f"{r['encode']['compile_s'] + r['decode']['compile_s']:.1f} |")
  return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
  try:
    height, width = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"--size must be HxW, e.g. 128x128; got {text!r}") from None
  return height, width


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m vidgen.benchmarks.vae", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--vae", choices=("workdir", "wan"), default="workdir",
                      help="workdir: a trained run (--workdir); wan: Wan 2.1's VAE next to vidgen's, random weights")
  parser.add_argument("--workdir")
  parser.add_argument("--clips", type=int, default=32, help="clips per split for PSNR / SSIM")
  wan = parser.add_argument_group("--vae wan")
  wan.add_argument("--frames", type=int, default=17)
  wan.add_argument("--size", type=_size, default=(128, 128), help="HxW")
  wan.add_argument("--batch", type=int, default=1)
  wan.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute and parameter dtype")
  wan.add_argument("--repeats", type=int, default=3, help="timed calls after a warm-up; 0: compile only (memory)")
  wan.add_argument("--config", default=DEFAULT_CONFIG, help="experiment file[:arg] of the vidgen VAE to compare")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if args.vae == "wan":
    rows = compare_with_wan(args.frames, *args.size, batch=args.batch, dtype=args.dtype, repeats=args.repeats,
                            config=args.config)
    timing = f"median of {args.repeats} calls after a warm-up" if args.repeats else "compiled only, not run"
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); {args.dtype}; random weights; {timing}; "
          "memory arguments = the parameters the call uses and its input")
    print(format_comparison(rows))
    return
  if not args.workdir:
    parser.error("--workdir is required (or pass --vae wan)")
  config = runs.read_config(args.workdir)
  vae, step = runs.load_vae(args.workdir)
  graph, params, stats = nnx.split(vae, nnx.Param, ...)
  encode = jax.jit(lambda p, s, v: nnx.merge(graph, p, s).encode(v).mean)
  decode = jax.jit(lambda p, s, z: nnx.merge(graph, p, s).decode(z))
  reconstruct = lambda v: np.asarray(jnp.clip(decode(params, stats, encode(params, stats, v)), -1.0, 1.0))
  frames = config.data.eval_frames
  source = get_source(config.data)
  print(f"workdir {args.workdir}: step {step}, {frames}-frame clips at {config.data.height}x{config.data.width}")
  shapes = config.data.name == "shapes"
  for split in ("validation", "held_out") if shapes else ("validation",):
    batch = source.clips(split, args.clips, num_frames=frames)
    x = to_model_range(batch["video"])
    recon = np.concatenate([reconstruct(x[i:i + 16]) for i in range(0, len(x), 16)])
    print(f"  {split:10s} PSNR {float(np.mean(metrics.psnr(recon, x))):6.2f} dB   "
          f"SSIM {float(np.mean(metrics.ssim(recon, x))):.4f}   ({args.clips} clips)")
    if shapes:
      print(f"  {'':10s} read back: {shape_readings(to_uint8(recon), batch['caption'])}")

  x = to_model_range(source.clips("validation", 4, num_frames=frames)["video"])
  z = encode(params, stats, x).block_until_ready()
  decode(params, stats, z).block_until_ready()
  for name, fn, arg in (("encode", encode, x), ("decode", decode, z)):
    start = time.perf_counter()
    for _ in range(3):
      jax.block_until_ready(fn(params, stats, arg))
    seconds = (time.perf_counter() - start) / 3
    print(f"  {name}: {4 * frames / seconds:8.1f} frames/s (batch 4 x {frames} frames)")

  records = read_metrics(args.workdir)
  print("  training curve (step, loss, train-batch PSNR, eval PSNR):")
  shown = records[:: max(len(records) // 12, 1)]
  for r in shown + ([records[-1]] if shown[-1] is not records[-1] else []):
    evaluation = f"{r['eval_psnr']:.2f}" if "eval_psnr" in r else "-"
    print(f"    {r['step']:6d}  {r['loss']:.5f}  {r.get('psnr', float('nan')):6.2f}  {evaluation}")
  rates = [r["steps_per_sec"] for r in records if r["step"] > 1 and "eval_psnr" not in r]
  if rates:
    print(f"  training: {np.median(rates):.2f} steps/s (median over logged intervals), batch {config.batch_size} x "
          f"{config.data.num_frames} frames")


if __name__ == "__main__":
  main()
