"""LoRA fine-tune benchmark: what trains, what the step costs in memory, and what the fine-tuned model generates.

  python -m vidgen.benchmarks.lora --workdir workdirs/lora_orange [--new_samples 8 --old_samples 2 --batch 28]

For a finished LoRA run (`vidgen.train.lora_trainer`, e.g. experiments/shapes_lora.py) it prints:
  * Trainable parameters: adapters and new word rows against the base networks (DiT + text encoder).
  * Training-step memory from XLA's buffer assignment of the compiled step (`compiled.memory_analysis()`: argument +
    output + temp - alias bytes, the donated state counted once), for the LoRA step (adapters, their AdamW moments
    and EMA; the frozen base as an argument) and for full fine-tuning of the same model (same config, batch and
    optimizer: every weight trained, with its moments and EMA), both compiled as the training loop compiles them.
  * On the embedded shapes data: how often the new concept is generated (clips for every combination of the run's
    extra colors, read by `vidgen.data.shapes.reader` against the palette's ground-truth colors) and how well old
    prompts are still followed (every old combination), by the fine-tuned model and, on the same prompts and noise,
    by the base; each with its clip count and 95% Wilson interval (`vidgen.data.shapes.evaluation`). For reference,
    the base VAE's reconstructions of ground-truth clips of the new colors are read the same way: generated clips
    decode through that VAE, so its rate bounds what a fine-tune of the DiT alone can reach.
The results are also written to WORKDIR/lora_benchmark.json (or --output).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vidgen import runs
from vidgen.benchmarks.dit import compiled_memory
from vidgen.checkpoint import abstract_like
from vidgen.data import to_model_range, to_uint8
from vidgen.data.shapes import COLORS, SHAPES, DIRECTIONS, ShapesDataset, evaluation
from vidgen.data.shapes.reader import clip_features, prompt_following
from vidgen.metrics.intervals import wilson_interval
from vidgen.models.vae import latent_grid
from vidgen.parallel import batch_sharding, make_mesh, replicated
from vidgen.pipeline import VideoPipeline
from vidgen.train import loop
from vidgen.train.dit_trainer import DiTTrainer
from vidgen.train.lora_trainer import LoRATrainer


def full_finetune_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The LoRA run's config as a full fine-tune of the same model: trainer "dit", no adapters."""
  full = config.copy_and_resolve_references()
  with full.unlocked():
    full.trainer = "dit"
    del full["lora"], full["base_workdir"]
  return full


def abstract_batch(trainer: DiTTrainer, batch_size: int, mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """A video batch as the loop feeds it (latent mean and std, caption ids and mask), as placed ShapeDtypeStructs."""
  d = trainer.config.data
  latent = (batch_size, *latent_grid(trainer.vae.config, d.num_frames, d.height, d.width),
            trainer.vae.config["latent_channels"])
  shapes = {"mean": (latent, np.float32), "std": (latent, np.float32)}
  if trainer.tokenizer is not None:
    length = trainer.config.text.max_length
    shapes.update(ids=((batch_size, length), np.int32), mask=((batch_size, length), np.bool_))
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(mesh, len(shape)))
          for k, (shape, dtype) in shapes.items()}


def step_memory(trainer: DiTTrainer, batch_size: int) -> dict[str, int] | None:
  """Byte counts of `trainer`'s compiled video training step (vidgen.benchmarks.dit.compiled_memory), jitted as the
  training loop jits it: state donated, frozen inputs (the LoRA base) as arguments."""
  mesh = trainer.mesh
  shardings = trainer.state_shardings()
  state = abstract_like(jax.eval_shape(trainer.init_state, jax.random.key(0)), shardings)
  batch = abstract_batch(trainer, batch_size, mesh)
  rep = replicated(mesh)
  frozen = (abstract_like(trainer.frozen()),) if hasattr(trainer, "frozen") else ()
  frozen_shardings = tuple(jax.tree.map(lambda a: a.sharding, f) for f in frozen)
  step = jax.jit(loop.loop_step(trainer.train_step, False),
                 in_shardings=(shardings, {k: v.sharding for k, v in batch.items()}, rep, *frozen_shardings),
                 out_shardings=(shardings, None, rep), static_argnums=(3,), donate_argnums=(0,))
  counters = {"skipped_updates": jax.ShapeDtypeStruct((), np.int32, sharding=rep)}
  return compiled_memory(step.lower(state, batch, counters, "video", *frozen).compile())


def _rate(correct: int, count: int) -> dict[str, Any]:
  low, high = wilson_interval(correct, count)
  return {"rate": correct / count, "correct": correct, "count": count, "interval": [low, high]}


def _split_rates(result: dict) -> dict[str, Any]:
  return {k: _rate(result["correct"][k], result["count"]) for k in ("color", "shape", "direction", "all")}


def prompt_following_of(pipe: VideoPipeline, config: ml_collections.ConfigDict, combinations: list[str],
                        samples: int, *, seed: int, batch: int) -> dict:
  """`evaluation.prompt_following_results` on `combinations`, `samples` clips each, read against `config`'s palette."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.eval.update(combinations=tuple(combinations), samples_per_combination=samples,
                  held_out_samples_per_combination=samples, seed=seed, batch_size=batch)
  evaluation.validate_eval_config(c)
  return evaluation.prompt_following_results(pipe, c)


def new_concept_readings(pipe: VideoPipeline, config: ml_collections.ConfigDict, combinations: list[str],
                         samples: int, *, seed: int, batch: int) -> tuple[dict, dict[str, Any]]:
  """Clips of the new colors' combinations read by the reader (its `prompt_following` result), and the palette color
  nearest to each clip's mean color, the reader's checks left out: {"counts": {color: clips}, "new": rate of clips
  nearest to the color asked for, with its interval}. The second separates a wrong or old color from a clip of the
  right hue that the reader refuses (a hue that flickers between frames, a shape it cannot read)."""
  palette = evaluation.eval_palette(config)
  prompts = [f"a {c.split()[0]} {c.split()[1]} moving {c.split()[2]}" for c in combinations for _ in range(samples)]
  videos = []
  for i in range(0, len(prompts), batch):  # every batch its own seed, as vidgen.data.shapes.evaluation draws them
    videos.append(pipe(prompts[i:i + batch], seed=seed + i, **pipe.sampling_defaults()))
  videos = np.concatenate(videos)
  readings = prompt_following(videos, prompts, palette)
  return readings, _nearest_colors(videos, prompts, palette)


def _nearest_colors(videos, prompts: list[str], palette) -> dict[str, Any]:
  """{"counts": {palette color nearest to a clip's mean color: clips}, "asked": rate of the color asked for}."""
  nearest = []
  for video in videos:
    features = clip_features(video, palette)
    nearest.append("none" if features is None else features.color)
  asked = [p.split()[1] for p in prompts]
  counts = {name: nearest.count(name) for name in dict.fromkeys(nearest)}
  return {"counts": counts, "asked": _rate(sum(n == a for n, a in zip(nearest, asked)), len(prompts))}


def vae_reference(config: ml_collections.ConfigDict, vae, clips: int) -> dict[str, Any]:
  """Ground-truth clips of the extra colors (validation split), through the base VAE and read with the palette."""
  palette = evaluation.eval_palette(config)
  d = config.data.copy_and_resolve_references()
  with d.unlocked():
    d.extra_color_fraction = 1.0
  videos, captions = [], []
  dataset = ShapesDataset.from_config(d, "validation")
  reconstruct = jax.jit(lambda x: jnp.clip(vae.decode(vae.encode(x).mode()), -1.0, 1.0))
  for start in range(0, clips, 8):
    batch = dataset.batch(start, min(8, clips - start))
    videos += list(to_uint8(np.asarray(reconstruct(to_model_range(batch["video"])))))
    captions += list(batch["caption"])
  result = prompt_following(np.stack(videos), captions, palette)
  clean = prompt_following(np.stack([dataset[i].video for i in range(clips)]), captions, palette)
  return {"reconstructed": _split_rates(result), "ground_truth": _split_rates(clean),
          "reconstructed_nearest_color": _nearest_colors(videos, captions, palette)}


def measure(workdir: str, *, new_samples: int, old_samples: int, batch: int, memory_batch: int | None,
            vae_clips: int, seed: int, generation: bool = True) -> dict[str, Any]:
  config = runs.read_config(workdir)
  if config.get("trainer") != "lora":
    raise ValueError(f"{workdir} holds a {config.get('trainer')!r} run, not a LoRA run")
  mesh = make_mesh(dict(config.mesh))
  vae = runs.load_run_vae(config, workdir, mesh)
  results: dict[str, Any] = {"workdir": os.path.abspath(workdir), "base_workdir": config.base_workdir}
  with tempfile.TemporaryDirectory() as scratch:  # the trainers write only when they evaluate, which is not run
    lora = LoRATrainer(config, mesh, scratch, vae=vae, cache=None)
    full = DiTTrainer(full_finetune_config(config), mesh, scratch, vae=vae, cache=None)
    results["parameters"] = {**lora.trainable_fraction(), "new_words": list(config.lora.new_words),
                             "rank": int(config.lora.rank), "targets": list(config.lora.targets)}
    size = memory_batch or config.batch_size
    results["memory"] = {"batch": size, "lora": step_memory(lora, size), "full": step_memory(full, size)}
    del lora, full
  if not generation:
    return results
  if config.data.get("name") != "shapes" or evaluation.eval_palette(config) is None:
    raise ValueError("the generation measurements read the embedded shapes data with extra colors "
                     "(config.data.extra_colors); pass --no_generation for other runs")
  palette = evaluation.eval_palette(config)
  new = [f"{c} {s} {d}" for c in palette if c not in COLORS for s in SHAPES for d in DIRECTIONS]
  old = [f"{c} {s} {d}" for c in COLORS for s in SHAPES for d in DIRECTIONS]
  tuned = VideoPipeline.from_workdir(workdir)
  base = VideoPipeline.from_workdir(config.base_workdir)
  # The same eval seed and prompt order for both models: clip k of the old prompts has the same noise in each.
  after = prompt_following_of(tuned, config, old, old_samples, seed=seed, batch=batch)
  before = prompt_following_of(base, config, old, old_samples, seed=seed, batch=batch)
  extra, nearest = new_concept_readings(tuned, config, new, new_samples, seed=seed, batch=batch)
  old_rates = lambda r: _split_rates({"count": r["seen"]["count"] + r["held_out"]["count"],  # noqa: E731
                                      "correct": {k: r["seen"]["correct"][k] + r["held_out"]["correct"][k]
                                                  for k in ("color", "shape", "direction", "all")}})
  results["new_concept"] = {"prompts": len(new), "samples_per_prompt": new_samples, **_split_rates(extra),
                            "abstained": extra["abstained"], "failed_checks": extra["failed_checks"],
                            "nearest_color": nearest}
  results["old_prompts"] = {"prompts": len(old), "samples_per_prompt": old_samples,
                            "lora": old_rates(after), "base": old_rates(before),
                            "lora_by_split": {s: _split_rates(after[s]) for s in ("seen", "held_out")},
                            "base_by_split": {s: _split_rates(before[s]) for s in ("seen", "held_out")}}
  results["vae_reference"] = {"clips": vae_clips, **vae_reference(config, vae, vae_clips)}
  return results


def _pct(r: dict) -> str:
  low, high = r["interval"]
  return f"{r['rate']:.1%} ({low:.1%}-{high:.1%}, {r['correct']}/{r['count']})"


def format_report(results: dict) -> str:
  p, m = results["parameters"], results["memory"]
  mib = lambda b: f"{b / 2 ** 20:.1f} MiB"  # noqa: E731
  lines = [f"LoRA run {results['workdir']} on {results['base_workdir']}",
           f"trainable: {p['trainable']:,} of {p['base']:,} base parameters = {p['fraction']:.2%} (rank {p['rank']}, "
           f"targets {p['targets']}, new words {p['new_words']})", "",
           f"training-step memory (XLA buffer assignment, batch {m['batch']}):",
           "| step | arguments | outputs | temporaries | aliased | peak |", "|---|---|---|---|---|---|"]
  for name in ("lora", "full"):
    s = m[name]
    if s is None:
      lines.append(f"| {name} | n/a | | | | |")
      continue
    lines.append(f"| {name} | {mib(s['argument'])} | {mib(s['output'])} | {mib(s['temp'])} | {mib(s['alias'])} | "
                 f"{mib(s['total'])} |")
  if m["lora"] and m["full"]:
    lines.append(f"LoRA / full: {m['lora']['total'] / m['full']['total']:.2f}")
  if "new_concept" in results:
    n, o, v = results["new_concept"], results["old_prompts"], results["vae_reference"]
    lines += ["", "generation (95% Wilson intervals, correct/clips):",
              "| prompts | model | color | shape | direction | all three |", "|---|---|---|---|---|---|",
              f"| new color ({n['prompts']} x {n['samples_per_prompt']}) | LoRA | "
              + " | ".join(_pct(n[k]) for k in ("color", "shape", "direction", "all")) + " |"]
    near = n["nearest_color"]
    lines.append(f"| new color, nearest palette color of the mean (no checks) | LoRA | {_pct(near['asked'])} "
                 f"{near['counts']} | | | |")
    for model in ("lora", "base"):
      lines.append(f"| old ({o['prompts']} x {o['samples_per_prompt']}) | {model} | "
                   + " | ".join(_pct(o[model][k]) for k in ("color", "shape", "direction", "all")) + " |")
    for name in ("ground_truth", "reconstructed"):
      lines.append(f"| new color, {v['clips']} {name.replace('_', ' ')} clips | VAE | "
                   + " | ".join(_pct(v[name][k]) for k in ("color", "shape", "direction", "all")) + " |")
    near = v["reconstructed_nearest_color"]
    lines.append(f"| new color, {v['clips']} reconstructed clips, nearest palette color of the mean (no checks) | VAE | "
                 f"{_pct(near['asked'])} {near['counts']} | | | |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="a finished LoRA run")
  parser.add_argument("--new_samples", type=int, default=8, help="clips per combination of the new colors")
  parser.add_argument("--old_samples", type=int, default=2, help="clips per old combination (both models)")
  parser.add_argument("--batch", type=int, default=28, help="clips generated at a time")
  parser.add_argument("--memory_batch", type=int, default=None, help="batch of the compiled steps (default: the "
                      "run's batch_size)")
  parser.add_argument("--vae_clips", type=int, default=48, help="ground-truth clips of the new colors through the VAE")
  parser.add_argument("--seed", type=int, default=1234)
  parser.add_argument("--no_generation", action="store_true", help="parameters and memory only")
  parser.add_argument("--output", default=None, help="the results' JSON file (default: WORKDIR/lora_benchmark.json)")
  args = parser.parse_args(argv)
  jax.config.update("jax_threefry_partitionable", True)
  results = measure(args.workdir, new_samples=args.new_samples, old_samples=args.old_samples, batch=args.batch,
                    memory_batch=args.memory_batch, vae_clips=args.vae_clips, seed=args.seed,
                    generation=not args.no_generation)
  print(format_report(results), flush=True)
  if jax.process_index() == 0:
    with open(args.output or os.path.join(args.workdir, "lora_benchmark.json"), "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
