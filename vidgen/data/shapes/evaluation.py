"""Evaluation of a trained DiT run on the embedded data: sample videos, prompt-following, VAE reconstruction.

Prompt-following generates clips for captions and reads them back with the deterministic analyzer in
`vidgen.data.shapes.reader` (dominant color, shape by symmetry and fill ratio, direction of motion); a clip
counts only when all three attributes are right. It is reported separately for combinations seen in training and for
the held-out ones (`config.data.held_out`), which the model only knows through their words. Used by the DiT trainer at
its last step and by `vidgen eval`.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidgen import media, metrics
from vidgen.data import to_model_range
from vidgen.data.shapes.dataset import COLOR_NAMES, DIRECTION_NAMES, SHAPES, ShapesDataset, caption, parse_combination
from vidgen.data.shapes.reader import prompt_following


def _sample_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  s = config.sampling
  return dict(num_frames=config.data.num_frames, steps=s.steps, guidance=s.guidance, sampler=s.sampler,
              guidance_interval=tuple(s.get("guidance_interval", (0.0, 1.0))))


def write_samples(pipe, config: ml_collections.ConfigDict, directory: str, step: int) -> np.ndarray:
  """Generates `config.sampling.prompts` and writes them as one grid video (mp4 + gif) plus the prompt list."""
  prompts = list(config.sampling.prompts)
  videos = pipe(prompts, seed=config.sampling.seed, **_sample_kwargs(config))
  if jax.process_index() == 0:
    name = os.path.join(directory, f"samples_{step:06d}")
    sample = media.grid(list(videos))
    for ext in (".mp4", ".gif"):
      media.write_video(name + ext, sample)
    with open(name + ".txt", "w") as f:
      f.write("\n".join(prompts) + "\n")
  return videos


def eval_prompts(config: ml_collections.ConfigDict) -> dict[str, list[str]]:
  """The captions evaluated: every held-out combination, and an evenly spread subset of the seen ones."""
  held = {parse_combination(c) for c in config.data.held_out}
  every = list(itertools.product(COLOR_NAMES, SHAPES, DIRECTION_NAMES))
  seen = [c for c in every if c not in held]
  stride = max(1, len(seen) // max(1, config.eval.seen_combinations))
  seen = seen[::stride][:config.eval.seen_combinations]
  held_out = [c for c in every if c in held]
  n = config.eval.samples_per_combination
  return {"seen": [caption(*c) for c in seen for _ in range(n)],
          "held_out": [caption(*c) for c in held_out for _ in range(n)]}


def _generate(pipe, config, prompts: list[str], seed: int) -> np.ndarray:
  batch = config.eval.batch_size
  out = [pipe(prompts[i:i + batch], seed=seed + i, **_sample_kwargs(config)) for i in range(0, len(prompts), batch)]
  return np.concatenate(out)


def reconstruction_psnr(pipe, config: ml_collections.ConfigDict) -> float:
  """VAE reconstruction PSNR (posterior mode) on validation clips of the run's size."""
  d = config.data
  videos = ShapesDataset.from_config(d, "validation").batch(0, config.eval.reconstruction_clips)["video"]

  @jax.jit
  def reconstruct(params, stats, x):
    vae = nnx.merge(pipe.vae_graph, params, stats)
    return jnp.clip(vae.decode(vae.encode(x).mode()), -1.0, 1.0)

  x = to_model_range(videos)
  recon = np.asarray(reconstruct(pipe.vae_params, pipe.vae_stats, x))
  return float(np.mean(metrics.psnr(recon, x)))


def evaluate(pipe, config: ml_collections.ConfigDict, workdir: str | None = None, *, verbose: bool = True) -> dict:
  """Prompt-following on seen and held-out combinations plus VAE PSNR; written to `workdir/eval.json` if given."""
  results: dict[str, Any] = {"sampling": dict(_sample_kwargs(config), seed=config.eval.seed)}
  for split, prompts in eval_prompts(config).items():
    if not prompts:  # e.g. no held-out combinations in this config
      continue
    videos = _generate(pipe, config, prompts, config.eval.seed)
    results[split] = prompt_following(videos, prompts)
  results["vae_psnr"] = reconstruction_psnr(pipe, config)
  if workdir is not None and jax.process_index() == 0:
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump(results, f, indent=2)
  if verbose and jax.process_index() == 0:
    print(format_table(results), flush=True)
  return results


def summary(results: dict) -> dict[str, float]:
  """Flat scalars of an `evaluate` result, for metrics.jsonl / TensorBoard."""
  out = {"vae_psnr": float(results["vae_psnr"])}
  for split in ("seen", "held_out"):
    if split not in results:
      continue
    for attr in ("color", "shape", "direction", "all"):
      out[f"{split}_{attr}"] = float(results[split][attr])
  return out


def format_table(results: dict) -> str:
  rows = ["| combinations | clips | color | shape | direction | all three |", "|---|---|---|---|---|---|"]
  for split in ("seen", "held_out"):
    if split not in results:
      continue
    r = results[split]
    rows.append(f"| {split.replace('_', '-')} | {r['count']} | {r['color']:.1%} | {r['shape']:.1%} | "
                f"{r['direction']:.1%} | {r['all']:.1%} |")
  rows.append(f"\nVAE reconstruction PSNR: {results['vae_psnr']:.2f} dB")
  return "\n".join(rows)
