"""Evaluation of a trained DiT run on the embedded data: prompt-following and VAE reconstruction.

Prompt-following generates clips for every color x shape x direction combination, several per combination with noise
of their own, and reads them back with the deterministic reader in `vidgen.data.shapes.reader`, which reads "none"
where a clip is not a dataset clip; a clip counts only when all three attributes are right. It is reported separately
for combinations seen in training and for the held-out ones (`config.data.held_out`), which the model only knows
through their words, with 95% Wilson intervals and the number of clips the reader abstained on. A run on data with
extra colors (`config.data.extra_colors`, e.g. a fine-tune that teaches a new color) is read against the extended
palette, and its extra-color combinations are a split of their own ("extra"). Used by the DiT
trainer at its last step and by `vidgen eval`.
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

from vidgen import metrics
from vidgen.config import require
from vidgen.data import to_model_range
from vidgen.data.shapes.dataset import (
    COLORS,
    DIRECTION_NAMES,
    SHAPES,
    ShapesDataset,
    caption,
    check_extra_colors,
    parse_combination,
)
from vidgen.data.shapes.reader import color_patterns, prompt_following
from vidgen.errors import ConfigError
from vidgen.metrics.intervals import wilson_interval


# config.eval: required fields, then optional ones with their defaults. Any other field is refused, so that a setting
# the evaluation would ignore (e.g. the former `seen_combinations`) cannot pass for one it applies.
EVAL_FIELDS = ("at_end", "seed", "samples_per_combination", "batch_size", "reconstruction_clips")
# The reported splits, in order (each only where it has combinations).
SPLITS = ("seen", "held_out", "extra")
OPTIONAL_EVAL_FIELDS = {
    "held_out_samples_per_combination": None,  # None: samples_per_combination
    "combinations": (),  # () = every color x shape x direction; else only these ("red circle left", ...)
    "sizes": (),  # more (frames, height, width) to measure prompt-following at (native sizes, buckets, unseen ones)
}


def validate_eval_config(config: ml_collections.ConfigDict) -> None:
  """Checks `config.eval` (and its combinations against `config.data.held_out`); raises ConfigError naming the field."""
  e = config.eval
  unknown = sorted(set(e.keys()) - set(EVAL_FIELDS) - set(OPTIONAL_EVAL_FIELDS))
  if "seen_combinations" in unknown:
    raise ConfigError("config.eval.seen_combinations: no longer used (every combination is evaluated, or those in "
                      "config.eval.combinations); remove it")
  require(not unknown, f"eval.{unknown[0] if unknown else ''}",
          f"is not an eval setting; allowed: {list(EVAL_FIELDS) + list(OPTIONAL_EVAL_FIELDS)}")
  for name in EVAL_FIELDS:
    require(name in e, f"eval.{name}", "is missing")
  for name in ("samples_per_combination", "batch_size", "reconstruction_clips", "held_out_samples_per_combination"):
    value = e.get(name, 1)
    if name == "held_out_samples_per_combination" and value is None:
      continue
    require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, f"eval.{name}",
            f"must be an integer >= 1, got {value!r}")
  require(isinstance(e.seed, int) and not isinstance(e.seed, bool), "eval.seed", f"must be an integer, got {e.seed!r}")
  try:
    palette = eval_palette(config)
    color_patterns(palette)
  except ValueError as err:
    raise ConfigError(f"config.data.extra_colors: {err}") from None
  if palette is not None:
    require(config.get("conditioning") != "class", "data.extra_colors",
            "extra colors have no class ids (their clips are captioned only); use conditioning='text'")
  colors = tuple(palette or COLORS)
  chosen = []
  for text in e.get("combinations", ()):
    try:
      chosen.append(parse_combination(text, colors))
    except ValueError as err:
      raise ConfigError(f"config.eval.combinations: {err}") from None
  require(len(set(chosen)) == len(chosen), "eval.combinations", f"lists a combination twice: {list(e.combinations)}")
  for i, size in enumerate(e.get("sizes", ())):
    ok = (isinstance(size, (tuple, list)) and len(size) == 3
          and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size))
    require(ok and size[0] > 1, f"eval.sizes[{i}]",
            f"must be (frames, height, width) with frames > 1 (the reader needs motion to read a direction), got "
            f"{size!r}")


def eval_palette(config: ml_collections.ConfigDict) -> dict[str, tuple[int, int, int]] | None:
  """The colors a run's clips are read against: None (the dataset's 7) without `config.data.extra_colors`, else the
  7 and the extra ones."""
  extra = check_extra_colors(config.data.get("extra_colors", None) or {})
  return {**COLORS, **extra} if extra else None


def eval_prompts(config: ml_collections.ConfigDict) -> dict[str, list[str]]:
  """The captions evaluated, each repeated once per sample: {"seen": [...], "held_out": [...]}, and "extra" with
  `config.data.extra_colors`. Every color x shape x direction combination (or `config.eval.combinations`), split by
  `config.data.held_out`; "extra" holds the combinations of extra colors that are not held out."""
  palette = eval_palette(config)
  colors = tuple(palette or COLORS)
  held = {parse_combination(c, colors) for c in config.data.held_out}
  chosen = [parse_combination(c, colors) for c in config.eval.get("combinations", ())]
  every = chosen or list(itertools.product(colors, SHAPES, DIRECTION_NAMES))
  seen_samples = config.eval.samples_per_combination
  held_samples = config.eval.get("held_out_samples_per_combination", None) or seen_samples
  new = lambda c: c[0] not in COLORS  # noqa: E731
  prompts = {"seen": [caption(*c) for c in every if c not in held and not new(c) for _ in range(seen_samples)],
             "held_out": [caption(*c) for c in every if c in held for _ in range(held_samples)]}
  if palette is not None:
    prompts["extra"] = [caption(*c) for c in every if c not in held and new(c) for _ in range(seen_samples)]
  return prompts


def _generate(pipe, config, prompts: list[str], size: dict[str, int] | None = None
              ) -> tuple[np.ndarray, list[tuple[int, int]]]:
  """Clips for `prompts` in batches of config.eval.batch_size, and per clip its (seed, index in batch): the batch
  starting at clip i uses seed config.eval.seed + i, so every clip has noise of its own and can be generated again.
  `size`: num_frames, height and width (default: the run's own)."""
  batch, seed = config.eval.batch_size, config.eval.seed
  out, ids = [], []
  for i in range(0, len(prompts), batch):
    chunk = prompts[i:i + batch]
    out.append(pipe(chunk, seed=seed + i, **{**pipe.sampling_defaults(), **(size or {})}))
    ids += [(seed + i, j) for j in range(len(chunk))]
  return np.concatenate(out), ids


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


def _split_result(readings: dict, ids: list[tuple[int, int]], combinations: int) -> dict:
  """A `prompt_following` result with 95% Wilson intervals and each clip's seed and index in its batch."""
  count = readings["count"]
  result = {k: readings[k]
            for k in ("count", "color", "shape", "direction", "all", "correct", "abstained", "failed_checks")}
  result["combinations"] = combinations
  result["interval"] = {k: list(wilson_interval(n, count)) for k, n in readings["correct"].items()}
  result["examples"] = [dict(e, seed=s, index=j) for e, (s, j) in zip(readings["examples"], ids)]
  return result


def prompt_following_results(pipe, config: ml_collections.ConfigDict, size: dict[str, int] | None = None) -> dict:
  """Generates every clip of `eval_prompts` in one stream and reads them back: {"seen", "held_out", "extra"} (where a
  split has combinations), each {"count", "combinations", "color", "shape", "direction", "all" (fractions), "correct"
  (counts), "interval" ({attribute: [low, high]}, 95% Wilson), "abstained" (clips read "none" per attribute and in any),
  "failed_checks" (clips failing each of the reader's checks),
  "examples" (per clip: prompt, seed, index, predicted, correct)}. `size`: as `_generate`."""
  by_split = eval_prompts(config)
  prompts = [p for split in by_split.values() for p in split]  # one stream, so no two clips share a seed and index
  videos, ids = _generate(pipe, config, prompts, size)
  results, start = {}, 0
  for split, split_prompts in by_split.items():
    if not split_prompts:  # e.g. no held-out combinations in this config
      continue
    stop = start + len(split_prompts)
    readings = prompt_following(videos[start:stop], split_prompts, eval_palette(config))
    results[split] = _split_result(readings, ids[start:stop], len(set(split_prompts)))
    start = stop
  return results


def evaluate(pipe, config: ml_collections.ConfigDict, workdir: str | None = None, *, verbose: bool = True) -> dict:
  """Prompt-following on seen and held-out combinations plus VAE PSNR; written to `workdir/eval.json` if given.

  Returns {"sampling": the sampler settings, "seen" / "held_out": see `prompt_following_results`, "vae_psnr"}.
  """
  validate_eval_config(config)
  results: dict[str, Any] = {"sampling": dict(pipe.sampling_defaults(), seed=config.eval.seed,
                                              batch_size=config.eval.batch_size)}
  results.update(prompt_following_results(pipe, config))
  if config.eval.get("sizes", ()):
    results["sizes"] = {
        "x".join(str(v) for v in size): prompt_following_results(
            pipe, config, dict(num_frames=size[0], height=size[1], width=size[2]))
        for size in config.eval.sizes}
  results["vae_psnr"] = reconstruction_psnr(pipe, config)
  if workdir is not None and jax.process_index() == 0:
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump(results, f, indent=2)
  if verbose and jax.process_index() == 0:
    print(format_table(results), flush=True)
  return results


def summary(results: dict) -> dict[str, float]:
  """Flat scalars of an `evaluate` result, for metrics.jsonl / TensorBoard: `{split}_{attribute}` and its interval's
  `_low` / `_high`, `{split}_count`, `{split}_abstained` (clips with a "none" reading), `vae_psnr`."""
  out = {"vae_psnr": float(results["vae_psnr"])}
  for split in SPLITS:
    if split not in results:
      continue
    r = results[split]
    out[f"{split}_count"] = float(r["count"])
    out[f"{split}_abstained"] = float(r["abstained"]["any"])
    for attr in ("color", "shape", "direction", "all"):
      out[f"{split}_{attr}"] = float(r[attr])
      out[f"{split}_{attr}_low"], out[f"{split}_{attr}_high"] = (float(v) for v in r["interval"][attr])
  for name, by_split in results.get("sizes", {}).items():  # the headline per extra size: all three right
    for split, r in by_split.items():
      out[f"size_{name}_{split}_all"] = float(r["all"])
  return out


def format_table(results: dict) -> str:
  """Markdown table: per split the clip count, each accuracy with its 95% interval, and the abstentions."""
  rows = ["| combinations | clips | color | shape | direction | all three | abstained |",
          "|---|---|---|---|---|---|---|"]
  for split in SPLITS:
    if split not in results:
      continue
    r = results[split]
    cells = [f"{r[k]:.1%} ({r['interval'][k][0]:.1%}-{r['interval'][k][1]:.1%})"
             for k in ("color", "shape", "direction", "all")]
    rows.append(f"| {split.replace('_', '-')} | {r['count']} | " + " | ".join(cells) + f" | {r['abstained']['any']} |")
  rows.append("\nIn parentheses: 95% Wilson intervals. Abstained: clips the reader read as none of the dataset's "
              "colors, shapes or directions in at least one attribute (counted wrong).")
  for split in SPLITS:
    if results.get(split, {}).get("failed_checks"):
      checks = ", ".join(f"{name} {n}" for name, n in results[split]["failed_checks"].items())
      rows.append(f"Why {split.replace('_', '-')} clips abstained (clips failing each check): {checks}")
  if results.get("sizes"):
    rows += ["\nAt other sizes (frames x height x width), all three attributes right:",
             "| size | combinations | clips | all three | abstained |", "|---|---|---|---|---|"]
    for name, by_split in results["sizes"].items():
      for split, r in by_split.items():
        low, high = r["interval"]["all"]
        rows.append(f"| {name} | {split.replace('_', '-')} | {r['count']} | {r['all']:.1%} ({low:.1%}-{high:.1%}) | "
                    f"{r['abstained']['any']} |")
  rows.append(f"VAE reconstruction PSNR: {results['vae_psnr']:.2f} dB")
  return "\n".join(rows)
