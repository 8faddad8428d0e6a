"""VAE benchmark: reconstruction quality and speed of a trained workdir, plus its training curve.

  python -m vidgen.benchmarks.vae --workdir workdirs/shapes_vae [--clips 32]

Prints PSNR / SSIM on the validation split (for the embedded shapes: unseen clips of seen combinations, and clips of
held-out combinations, with how often the prompt-following analyzer reads each shape (and all three attributes) right
on the reconstructions, the ceiling for any generator that decodes through this VAE); encode and decode throughput
(frames/s, after compilation) at the evaluation length; the training curve from metrics.jsonl (loss, train-batch
PSNR, eval PSNR) and the training steps/s.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen import metrics, runs
from vidgen.data import to_model_range, to_uint8
from vidgen.data.shapes.reader import prompt_following
from vidgen.data.sources import get_source
from vidgen.train.writers import read_metrics


def shape_readings(videos: np.ndarray, captions) -> str:
  """'circle k/n  square k/n  triangle k/n  all three p%': the reader on reconstructions, per true shape."""
  result = prompt_following(videos, list(captions))
  per_shape: dict[str, list[bool]] = {}
  for example in result["examples"]:
    shape = example["prompt"].split()[2]
    per_shape.setdefault(shape, []).append(example["correct"]["shape"])
  parts = [f"{shape} {sum(ok)}/{len(ok)}" for shape, ok in sorted(per_shape.items())]
  return "  ".join(parts) + f"  all three {100 * result['all']:.0f}%"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--clips", type=int, default=32, help="clips per split for PSNR / SSIM")
  args = parser.parse_args()
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
