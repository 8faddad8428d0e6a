"""The FVD floor of a run's data: the distance between two disjoint sets of real clips (validation vs. training).

  python -m vidgen.benchmarks.fvd_floor --workdir workdirs/shapes_t2v [--clips 256] [--batch 16]

A model's FVD (`vidgen eval --metrics fvd`) reads against this: samples from the data distribution itself score about
this much at the same number of clips, since FVD of N samples is biased upward by the noise of the moments. Clips are
taken as `vidgen eval` takes them (the run's num_frames, height and width; the source's fixed clips of each split).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from vidgen import runs
from vidgen.data.sources import get_source
from vidgen.metrics import FeatureStats, frechet_distance, i3d_features, load_i3d


def real_fvd(data_config, num_clips: int, batch: int = 16) -> float:
  """FVD between the first `num_clips` fixed clips of the validation and the training split of `data_config`."""
  source = get_source(data_config)
  i3d = load_i3d()
  features = jax.jit(lambda v: i3d_features(i3d, v))
  stats = []
  for split in ("validation", "train"):
    s = FeatureStats()
    clips = source.clips(split, num_clips)["video"]
    for start in range(0, num_clips, batch):
      s.update(np.asarray(features(clips[start:start + batch])))
    stats.append(s)
  return frechet_distance(*stats)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a run whose config.json names the data")
  parser.add_argument("--clips", type=int, default=256, help="clips of each split")
  parser.add_argument("--batch", type=int, default=16)
  args = parser.parse_args(argv)
  config = runs.read_config(args.workdir)
  fvd = real_fvd(config.data, args.clips, args.batch)
  print(f"| data | clips per set | FVD, validation vs. train |\n|---|---|---|\n"
        f"| {config.data.get('name', '')} {config.data.num_frames}x{config.data.height}x{config.data.width} | "
        f"{args.clips} | {fvd:.1f} |")


if __name__ == "__main__":
  main()
