"""At which noise level a trained text-to-video run loses each attribute of a clip it is handed.

  python -m vidgen.benchmarks.renoise --workdir workdirs/shapes_t2v [--clips 36] [--strengths 0.2,0.4,0.6,0.8,1]
      [--guidance 4] [--guidance_interval 0,1] [--steps 20]

Validation clips (unseen clips of seen combinations, the same number of each shape) are noised to t = strength and
denoised under their own caption (`VideoPipeline(..., init_video=clip, strength=t)`, SDEdit), then read back with the
prompt-following analyzer. Strength 1 is plain generation. A row that is right at low strength and wrong at high
strength locates where the model decides an attribute; an attribute lost already at low strength is detail the model
erases while denoising. The ceiling, the analyzer on VAE reconstructions, is printed by `vidgen.benchmarks.vae`.

Prints one row per strength: accuracy of color, shape, direction and all three, then shape accuracy for each shape.
"""

from __future__ import annotations

import argparse
import collections

import numpy as np

from vidgen.data.shapes import ShapesDataset
from vidgen.data.shapes import SHAPES
from vidgen.data.shapes.reader import prompt_following
from vidgen.pipeline import VideoPipeline


def balanced_clips(config, count: int) -> list:
  """The first `count` validation clips, the same number of each shape (in dataset order)."""
  dataset = ShapesDataset.from_config(config.data, "validation")
  per_shape = count // len(SHAPES)
  chosen: dict[str, list] = collections.defaultdict(list)
  index = 0
  while any(len(chosen[s]) < per_shape for s in SHAPES):
    clip = dataset[index]
    if len(chosen[clip.shape]) < per_shape:
      chosen[clip.shape].append(clip)
    index += 1
  return [clip for s in SHAPES for clip in chosen[s]]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--clips", type=int, default=36, help="clips in all, split evenly over the shapes")
  parser.add_argument("--strengths", default="0.2,0.4,0.6,0.8,1", help="comma-separated noise levels in (0, 1]")
  parser.add_argument("--guidance", type=float, default=4.0)
  parser.add_argument("--guidance_interval", default="0,1", help="t_lo,t_hi: guide only at these noise levels")
  parser.add_argument("--steps", type=int, default=20, help="sampler steps over [0, strength]")
  parser.add_argument("--batch", type=int, default=12)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  pipe = VideoPipeline.from_workdir(args.workdir)
  clips = balanced_clips(pipe.config, args.clips)
  prompts = [clip.caption for clip in clips]
  videos = np.stack([clip.video for clip in clips])
  interval = tuple(float(v) for v in args.guidance_interval.split(","))
  print(f"{len(clips)} validation clips, guidance {args.guidance} on t in {list(interval)}, {args.steps} DDIM steps")
  print("| strength | color | shape | direction | all three | " + " | ".join(SHAPES) + " |")
  print("|---" * (5 + len(SHAPES)) + "|")
  for strength in (float(s) for s in args.strengths.split(",")):
    out = np.concatenate([
        pipe(prompts[i:i + args.batch], init_video=videos[i:i + args.batch], strength=strength, steps=args.steps,
             guidance=args.guidance, guidance_interval=interval, seed=args.seed + i)
        for i in range(0, len(clips), args.batch)])
    result = prompt_following(out, prompts)
    per_shape = collections.defaultdict(list)
    for clip, example in zip(clips, result["examples"]):
      per_shape[clip.shape].append(example["correct"]["shape"])
    cells = [f"{result[k]:.0%}" for k in ("color", "shape", "direction", "all")]
    cells += [f"{sum(per_shape[s])}/{len(per_shape[s])}" for s in SHAPES]
    print(f"| {strength:g} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
  main()
