"""How much a cascade's super-resolution stage adds over interpolating the base-size clip.

  python -m vidgen.benchmarks.super_resolution --workdir workdirs/shapes_t2v/sr [--base workdirs/shapes_t2v]
      [--clips 64] [--generated 32] [--batch 16] [--steps 50] [--level 0.15] [--output sr.json]

Real clips: the first `--clips` validation clips at the stage's size (the true high-resolution clips, never trained
on) are area-downsampled by the stage's factor, and brought back up by
  sr            the stage, conditioned on the low-resolution clip's VAE posterior mean (training draws posterior
                samples around it);
  bilinear, bicubic          interpolation of the low-resolution clip itself;
  bilinear_vae, bicubic_vae  interpolation of its VAE reconstruction: what the stage is handed, so the fair baseline;
  vae_high      the VAE's reconstruction of the true clip: the most a stage in this latent space could reach.
Each is compared with the true clip: PSNR and SSIM (vidgen.metrics), and sharpness, the gradient energy relative
to the true clip's (`sharpness`; 1 = as sharp, < 1 blurrier). For the stage, `consistency` is the PSNR between its
output area-downsampled and the low-resolution clip: whether it keeps what it was given. Every number is a mean
over clips with its standard error; paired differences against the stage are over the same clips.

Generated clips (with a base run: `--base`, default the stage's `super_resolution.base_workdir`, else the directory
above the stage): `--generated` clips of the base run for validation captions, upsampled by the stage and by
interpolation of the base output. There is no true clip to compare with, so this reports sharpness (relative to the
mean of the real high-resolution clips) and the stage's consistency with the base output.

Prints markdown tables and writes every number (with n) to `--output` (default WORKDIR/super_resolution.json).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen import metrics
from vidgen.cascade import CascadePipeline
from vidgen.data import to_model_range, to_uint8
from vidgen.data.sources import get_source
from vidgen.diffusion.cascade import area_downsample
from vidgen.pipeline import VideoPipeline

INTERPOLATIONS = {"bilinear": "linear", "bicubic": "cubic"}


def sharpness(video: np.ndarray) -> np.ndarray:
  """Gradient energy per clip, the mean of |grad|^2 over pixels and channels: float [B, T, H, W, 3] in [-1, 1] ->
  [B] (finite differences over H and W). Squared, because the mean gradient magnitude of an edge is the same however
  many pixels it is spread over; its energy halves when the edge is spread over two."""
  video = np.asarray(video, np.float32)
  dy = video[:, :, 1:, :-1] - video[:, :, :-1, :-1]
  dx = video[:, :, :-1, 1:] - video[:, :, :-1, :-1]
  return (dy * dy + dx * dx).mean(axis=(1, 2, 3, 4))


def interpolate(video: np.ndarray, factor: int, method: str) -> np.ndarray:
  """Spatial upsampling of float [B, T, h, w, 3] by `factor` ("linear" or "cubic", jax.image.resize), rounded to
  uint8 levels as every output here is."""
  b, t, h, w, c = video.shape
  up = jax.image.resize(jnp.asarray(video, jnp.float32), (b, t, h * factor, w * factor, c), method=method)
  return to_model_range(to_uint8(np.asarray(up)))


def summary(values: np.ndarray) -> dict[str, float]:
  """{"mean", "se", "n"} of per-clip values (se: standard error of the mean)."""
  values = np.asarray(values, np.float64)
  n = len(values)
  return {"mean": float(values.mean()), "se": float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
          "n": n}


class _Vae:
  """The stage's VAE as jitted encode (posterior mean) and decode, on float clips in [-1, 1]."""

  def __init__(self, pipe: VideoPipeline):
    graph, params, stats = pipe.vae_graph, pipe.vae_params, pipe.vae_stats
    self.encode = lambda v: np.asarray(self._encode(params, stats, jnp.asarray(v)))  # noqa: E731
    self.decode = lambda z: np.asarray(self._decode(params, stats, jnp.asarray(z)))  # noqa: E731
    self._encode = jax.jit(lambda p, s, v: nnx.merge(graph, p, s).encode(v).mean)
    self._decode = jax.jit(lambda p, s, z: jnp.clip(nnx.merge(graph, p, s).decode(z), -1.0, 1.0))


def _batches(n: int, size: int):
  return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def real_clips(pipe: CascadePipeline, vae: _Vae, clips: dict, *, batch: int, steps: int | None, level: float | None,
               seed: int) -> dict[str, dict]:
  """Per-method metrics against the true high-resolution `clips` (see the module docstring)."""
  f = pipe.factor
  per_clip: dict[str, dict[str, list]] = {}

  def add(method, name, values):
    per_clip.setdefault(method, {}).setdefault(name, []).extend(np.asarray(values).tolist())

  for part in _batches(len(clips["video"]), batch):
    high = to_model_range(clips["video"][part])
    low_uint8 = area_downsample(clips["video"][part], f)
    low = to_model_range(low_uint8)
    z = vae.encode(low)
    recon = to_model_range(to_uint8(vae.decode(z)))
    outputs = {name: interpolate(low, f, m) for name, m in INTERPOLATIONS.items()}
    outputs.update({f"{name}_vae": interpolate(recon, f, m) for name, m in INTERPOLATIONS.items()})
    outputs["vae_high"] = to_model_range(to_uint8(vae.decode(vae.encode(high))))
    outputs["sr"] = to_model_range(pipe.upsample([str(c) for c in clips["caption"][part]], z, seed=seed + part.start,
                                                 steps=steps, level=level))
    reference = sharpness(high)
    for method, video in outputs.items():
      add(method, "psnr", metrics.psnr(video, high))
      add(method, "ssim", metrics.ssim(video, high))
      add(method, "sharpness", sharpness(video) / reference)
    add("sr", "consistency", metrics.psnr(to_model_range(area_downsample(to_uint8(outputs["sr"]), f)), low))
  results = {method: {name: summary(v) for name, v in values.items()} for method, values in per_clip.items()}
  for method in per_clip:
    if method != "sr":
      results[method]["sr_minus_this"] = {
          name: summary(np.subtract(per_clip["sr"][name], per_clip[method][name])) for name in ("psnr", "ssim")}
  return results


def generated_clips(pipe: CascadePipeline, vae: _Vae, captions: Sequence[str], reference: float, *, batch: int,
                    steps: int | None, level: float | None, seed: int) -> dict[str, dict]:
  """Sharpness (relative to `reference`, the real clips' mean) of the stage and of interpolation on the base run's
  samples for `captions`, and the stage's consistency with them."""
  f = pipe.factor
  per_clip: dict[str, dict[str, list]] = {}
  defaults = pipe.base.sampling_defaults()
  for part in _batches(len(captions), batch):
    prompts = list(captions[part])
    low_z = pipe.base(prompts, seed=seed + part.start, output="latent", **defaults)
    low = to_model_range(to_uint8(vae.decode(low_z)))
    outputs = {name: interpolate(low, f, m) for name, m in INTERPOLATIONS.items()}
    outputs["sr"] = to_model_range(pipe.upsample(prompts, low_z, seed=seed + part.start, steps=steps, level=level))
    for method, video in outputs.items():
      per_clip.setdefault(method, {}).setdefault("sharpness", []).extend((sharpness(video) / reference).tolist())
    consistency = metrics.psnr(to_model_range(area_downsample(to_uint8(outputs["sr"]), f)), low)
    per_clip["sr"].setdefault("consistency", []).extend(np.asarray(consistency).tolist())
  return {method: {name: summary(v) for name, v in values.items()} for method, values in per_clip.items()}


def _table(results: dict[str, dict], columns: Sequence[str]) -> str:
  rows = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
  for method, values in results.items():
    cells = [f"{values[c]['mean']:.4g} ± {values[c]['se']:.2g}" if c in values else "" for c in columns]
    rows.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m vidgen.benchmarks.super_resolution", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="the super-resolution stage's run")
  parser.add_argument("--base", default=None, help="its base run (default: super_resolution.base_workdir, else the "
                      "directory above WORKDIR)")
  parser.add_argument("--clips", type=int, default=64, help="real validation clips")
  parser.add_argument("--generated", type=int, default=32, help="base-run samples (0: skip)")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=None, help="the stage's sampler steps (default: its config)")
  parser.add_argument("--level", type=float, default=None, help="augmentation level (default: sample_level)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", default=None)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  sr = VideoPipeline.from_workdir(args.workdir)
  base_dir = args.base or sr.config.super_resolution.get("base_workdir", "") or os.path.dirname(
      os.path.abspath(args.workdir))
  pipe = CascadePipeline(VideoPipeline.from_workdir(base_dir, mesh=sr.mesh), sr)
  vae = _Vae(sr)
  clips = get_source(sr.config.data).clips("validation", args.clips)
  settings = dict(batch=args.batch, steps=args.steps, level=args.level, seed=args.seed)
  results = {"workdir": os.path.abspath(args.workdir), "base": os.path.abspath(base_dir), "factor": pipe.factor,
             "size": [int(s) for s in clips["video"].shape[1:4]], "steps": args.steps or sr.config.sampling.steps,
             "level": sr.config.super_resolution.sample_level if args.level is None else args.level,
             "real": real_clips(pipe, vae, clips, **settings)}
  print(f"{args.clips} validation clips at {results['size']}, downsampled {pipe.factor}x and brought back up "
        f"(sharpness: gradient energy / the true clip's; consistency: PSNR of the output downsampled vs the "
        f"low-resolution input):")
  print(_table(results["real"], ("psnr", "ssim", "sharpness", "consistency")))
  print("stage minus each baseline, paired over the same clips:")
  print(_table({m: v["sr_minus_this"] for m, v in results["real"].items() if m != "sr"}, ("psnr", "ssim")))
  if args.generated:
    reference = float(np.mean(sharpness(to_model_range(clips["video"]))))
    captions = [str(c) for c in get_source(sr.config.data).clips("validation", args.generated)["caption"]]
    results["generated"] = generated_clips(pipe, vae, captions, reference, **settings)
    results["generated_reference_sharpness"] = reference
    print(f"{args.generated} base-run samples for validation captions, upsampled (sharpness / the real "
          f"high-resolution clips' mean {reference:.4g}; consistency with the base sample):")
    print(_table(results["generated"], ("sharpness", "consistency")))
  output = args.output or os.path.join(args.workdir, "super_resolution.json")
  with open(output, "w") as f:
    json.dump(results, f, indent=2)
  print(f"written to {output}")
  return results


if __name__ == "__main__":
  main()
