"""Attention scaling benchmark: W.A.L.T windowed attention versus full attention in a VideoDiT training step, as the
number of latent frames T grows.

  python -m vidgen.benchmarks.attention [--frames 4,8,16,32] [--size 16] [--width 256 --depth 2 --heads 4]
      [--window 4,8,8] [--batch 1] [--steps 5] [--dtype float32] [--max_full_tokens 4096]

For every T and attention kind it builds a patch-1 VideoDiT on latents `[B, T, size, size, 8]` and times one jitted
training step (v-loss forward + backward + AdamW, state donated; `vidgen.benchmarks.dit.TrainStep`):
  * windowed: blocks alternate a spatial window `(1, size, size)` (one latent frame) and a spatiotemporal window
    (`--window`, in tokens), as in W.A.L.T (arXiv 2312.06662); every query sees a fixed number of keys, so the cost
    grows linearly in T;
  * full: every block attends over all `T * size * size` tokens, so the score matrices grow quadratically in T.
Both use W.A.L.T's other settings (AdaLN-LoRA r=2, qk-norm, learned positions) and the same width, depth and heads.

Reported per (T, kind): the median step time over `--steps` steps after one warm-up; the compiled memory of the step
(argument + output + temp - alias bytes from `compiled.memory_analysis()`); the analytic forward FLOPs per example
(`vidgen.scaling.forward_flops`) and the part of them in attention scores and weighted sums (QK^T and AV); and the
ratios of time and FLOPs to the previous T of the same kind. Full attention above `--max_full_tokens` tokens is compiled
(its memory is still reported) but not run, to keep the default run within a few minutes on a CPU.

The defaults make attention matter at small scale: a narrow model (width 256, head dim 64) has little MLP work per
token, so full attention's T^2 term dominates from about 1.5k tokens on. The frame counts double (4 -> 32 latent
frames, 1k -> 8k tokens) so the ratios read directly as 2 (linear) or 4 (quadratic). W.A.L.T's causal VAE gives
1 + 4k latent frames (5, 9, 17, 33); windows must tile the token grid, so pick a temporal window that divides every T
(e.g. `--frames 5,15,45 --window 5,8,8`).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from typing import Sequence

import ml_collections
import numpy as np

from vidgen.benchmarks.dit import TrainStep
from vidgen.layers.attention import clamp_window
from vidgen.layers.precision import DTYPES
from vidgen.models.dit_config import DiTSpec, dit_config
from vidgen.scaling import forward_flops

KINDS = ("windowed", "full")


def attention_config(kind: str, frames: int, *, size: int = 16, channels: int = 8, width: int = 256, depth: int = 2,
                     heads: int = 4, window: Sequence[int] = (4, 8, 8), dtype: str = "float32",
                     backend: str = "auto") -> ml_collections.ConfigDict:
  """The W.A.L.T-style VideoDiT of the benchmark on a `frames x size x size x channels` latent.

  `kind`: "windowed" (alternating spatial / spatiotemporal windows) or "full" (full attention in every block).
  """
  if kind not in KINDS:
    raise ValueError(f"attention kind must be one of {KINDS}, got {kind!r}")
  pattern = ("spatial", "spatiotemporal") if kind == "windowed" else ("full",)
  return dit_config("WALT-L", depth=depth, width=width, num_heads=heads, input_size=(frames, size, size),
                    in_channels=channels, window=tuple(window), attention_pattern=pattern, dtype=dtype,
                    attention_backend=backend)


def attention_flops(config, latent_shape: Sequence[int]) -> int:
  """Forward FLOPs of one example spent in self-attention scores and weighted sums (QK^T and AV), 2 per MAC.

  A query of a layer sees all N tokens (full), one frame (spatial) or its spatiotemporal window, clamped to the grid
  exactly as `SelfAttention.window_for` does; the projections are not included (they are linear in N).
  """
  spec = DiTSpec.from_config(config)
  t, h, w = (int(s) // p for s, p in zip(latent_shape[:3], spec.patch_size))
  n = t * h * w
  total = 0
  for kind in spec.attention_pattern * spec.num_super_blocks:
    if kind == "full":
      keys = n
    elif kind == "spatial":
      keys = h * w
    else:
      keys = int(np.prod(clamp_window((t, h, w), spec.window)))
    total += 2 * 2 * n * keys * spec.width   # Two matmuls (QK^T, AV) of n x keys x width MACs each.
  return total


@dataclasses.dataclass
class AttentionRow:
  """One (T, kind) result. Times in seconds, FLOPs per example (forward), memory in bytes; None = not measured."""

  frames: int
  tokens: int
  kind: str
  windows: str
  step_s: float | None
  time_ratio: float | None           # step_s / step_s of the previous T of the same kind.
  forward_flops: int
  flops_ratio: float | None
  attention_flops: int
  attention_ratio: float | None
  memory_compiled: int | None
  note: str = ""


def _ratio(a, b):
  return None if a is None or b is None or b == 0 else a / b


def run(frames: Sequence[int] = (4, 8, 16, 32), *, size: int = 16, channels: int = 8, width: int = 256,
        depth: int = 2, heads: int = 4, window: Sequence[int] = (4, 8, 8), batch: int = 1, steps: int = 5,
        dtype: str = "float32", max_full_tokens: int | None = 4096, backend: str = "auto",
        seed: int = 0) -> list[AttentionRow]:
  """Times the training step for every (T, kind); returns the rows grouped by kind, T ascending.

  Every config is built (and validated) before anything is compiled, so a window that does not tile some T fails at
  once. `max_full_tokens=None` runs full attention at every T.
  """
  frames = sorted(int(t) for t in frames)
  configs = {(kind, t): attention_config(kind, t, size=size, channels=channels, width=width, depth=depth,
                                         heads=heads, window=window, dtype=dtype, backend=backend)
             for kind in KINDS for t in frames}
  rows: list[AttentionRow] = []
  for kind in KINDS:
    previous = None
    for t in frames:
      config = configs[(kind, t)]
      latent = (t, size, size, channels)
      tokens = t * size * size
      if kind == "windowed":
        spatiotemporal = clamp_window((t, size, size), window)
        windows = f"1x{size}x{size} / {'x'.join(str(w) for w in spatiotemporal)}"
      else:
        windows = f"{t}x{size}x{size}"
      step = TrainStep(config, latent, batch, seed=seed)
      skip = kind == "full" and max_full_tokens is not None and tokens > max_full_tokens
      seconds = None if skip else statistics.median(step.time(steps))
      fwd, attn = forward_flops(config, latent), attention_flops(config, latent)
      row = AttentionRow(
          frames=t, tokens=tokens, kind=kind, windows=windows, step_s=seconds,
          time_ratio=_ratio(seconds, previous and previous.step_s), forward_flops=fwd,
          flops_ratio=_ratio(fwd, previous and previous.forward_flops), attention_flops=attn,
          attention_ratio=_ratio(attn, previous and previous.attention_flops),
          memory_compiled=step.memory["total"] if step.memory else None,
          note=f"not run: {tokens} tokens > --max_full_tokens {max_full_tokens} (compiled only)" if skip else "")
      del step  # Frees this config's params and optimizer state before the next one is built.
      rows.append(row)
      previous = row
  return rows


def _fmt(x: float | None, spec: str) -> str:
  return "-" if x is None else format(x, spec)


def format_table(rows: Sequence[AttentionRow]) -> str:
  """Markdown table; ratios are to the previous T of the same kind."""
  lines = [
      "| attention | windows | T | tokens | step (ms) | x prev T | fwd GFLOP | x prev T | attn GFLOP | x prev T | "
      "attn share | memory (MiB) | note |",
      "|" + "---|" * 13,
  ]
  for r in rows:
    memory = "-" if r.memory_compiled is None else f"{r.memory_compiled / 2**20:.0f}"
    lines.append(
        f"| {r.kind} | {r.windows} | {r.frames} | {r.tokens} | {_fmt(r.step_s and 1e3 * r.step_s, '.1f')} | "
        f"{_fmt(r.time_ratio, '.2f')} | {r.forward_flops / 1e9:.2f} | {_fmt(r.flops_ratio, '.2f')} | "
        f"{r.attention_flops / 1e9:.2f} | {_fmt(r.attention_ratio, '.2f')} | "
        f"{100 * r.attention_flops / r.forward_flops:.0f}% | {memory} | {r.note} |")
  return "\n".join(lines)


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m vidgen.benchmarks.attention", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--frames", type=_ints, default=(4, 8, 16, 32), help="latent frame counts T, comma-separated")
  parser.add_argument("--size", type=int, default=16, help="latent height = width (patch 1: tokens per frame size^2)")
  parser.add_argument("--channels", type=int, default=8, help="latent channels")
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--depth", type=int, default=2, help="blocks; even, so windowed blocks come in spatial/st pairs")
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--window", type=_ints, default=(4, 8, 8), help="spatiotemporal window in tokens, e.g. 4,8,8")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
  parser.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype; params stay float32")
  parser.add_argument("--max_full_tokens", type=int, default=4096,
                      help="full attention above this many tokens is compiled but not run (0 = no limit)")
  parser.add_argument("--backend", default="auto", help="attention backend (auto, xla, cudnn, splash)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if len(args.window) != 3:
    parser.error(f"--window must be three sizes (t, h, w), got {args.window}")
  return args


def main(argv: Sequence[str] | None = None) -> list[AttentionRow]:
  args = parse_args(argv)
  rows = run(args.frames, size=args.size, channels=args.channels, width=args.width, depth=args.depth,
             heads=args.heads, window=args.window, batch=args.batch, steps=args.steps, dtype=args.dtype,
             max_full_tokens=args.max_full_tokens or None, backend=args.backend, seed=args.seed)
  print(f"VideoDiT width {args.width}, depth {args.depth}, {args.heads} heads, patch 1, batch {args.batch}, "
        f"{args.dtype}; latents Tx{args.size}x{args.size}x{args.channels}. Step = v-loss forward + backward + AdamW "
        f"(median of {args.steps} after 1 warm-up). FLOPs: analytic forward per example (2 per MAC); attn = QK^T + AV. "
        "Memory: compiled argument + output + temp - alias.")
  print(format_table(rows))
  return rows


if __name__ == "__main__":
  main()
