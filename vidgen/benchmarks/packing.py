"""Packing benchmark: training throughput and token efficiency of one mix of clip sizes, batched four ways.

On CPU (preset "tiny": a W.A.L.T-style model shrunk to width 128, depth 2; float32). The default mix takes about two
minutes, mostly compiling its 7 programs; a mix of fewer sizes compiles fewer:

  python -m vidgen.benchmarks.packing --steps 3
  python -m vidgen.benchmarks.packing --mix 1x16x16,5x16x16,3x8x24 --copies 2 --steps 3

On one accelerator (the numbers to quote; W.A.L.T-L with patch 1x2x2, bf16 compute; add `--remat dots` or `full` when
the padded batch does not fit):

  python -m vidgen.benchmarks.packing --preset walt-l --dtype bfloat16 --steps 10
  python -m vidgen.benchmarks.packing --preset walt-l --dtype bfloat16 --steps 10 --copies 4 --remat full
  python -m vidgen.benchmarks.packing --preset walt-l --dtype bfloat16 --steps 10 --modes bucketed,packed \
      --copies 4 --row_length 8192

Every clip of `--mix` (latent T x H x W, each used `--copies` times, `--channels` channels) goes through one VideoDiT
training step per pass, in one of four ways (`--modes`):
  * padded: every clip zero-padded to the largest T, H and W of the mix, one batch through `VideoDiT.__call__`
    (windowed attention on the grid); the padding is computed and wasted.
  * bucketed: clips grouped by exact size, one compiled program per distinct size, each bucket a batch through
    `VideoDiT.__call__`; its step time is the sum of the buckets' median times (one pass over the mix).
  * packed: clips packed end to end into rows of `--row_length` tokens (`vidgen.data.packing.pack`, first fit, longest
    first; as many rows as `plan` needs) and run through `VideoDiT.packed`, attention on fixed-size window blocks
    (`pack(blocks=...)`, sized for the mix's grids), so its cost grows with windows x window size as the grid modes'.
  * packed_masked: the same rows with attention as an [L, L] segment-and-window mask per layer instead (cost L^2).

What is timed: forward + backward + AdamW update with global-norm clipping (as `vidgen.benchmarks.dit`), jitted with the
state donated; every mode threads the same parameters and optimizer state. The loss is a v-prediction-style MSE
against a fixed random target, averaged per clip over that clip's real elements (padding excluded), then over clips;
inputs are random latents, one random time per clip and `--text_len` random caption tokens per clip (cross-attention
included). After one warm-up call of every program, `--steps` rounds run each program once in turn (round-robin, so a
drift in the machine's speed hits every mode alike), each call waited for; the step time is the median.

Reported per mode: compiled programs and their total compile seconds (lowering + compilation), the step time, real
tokens per step (tokens of a clip), computed tokens per step (real + padding), token efficiency (real / computed),
real tokens per second, and compiled memory (the largest program's argument + output + temp - alias bytes from
`compiled.memory_analysis()`). The attention kernel is what `attention_backend="auto"` picks (XLA on CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vidgen.benchmarks.dit import compiled_memory, model_config, time_round_robin
from vidgen.data.packing import PackedBatch, block_shapes, pack, plan
from vidgen.layers.attention import ATTENTION_KINDS
from vidgen.layers.embeddings import POS_EMBEDDINGS, token_grid
from vidgen.layers.precision import COMPUTE_DTYPES
from vidgen.layers.scan import REMAT_POLICIES
from vidgen.models.dit import Conditioning, VideoDiT
from vidgen.models.dit_config import DiTSpec

MODES = ("padded", "bucketed", "packed_masked", "packed")
DEFAULT_MIX = ((1, 32, 32), (5, 32, 32), (9, 24, 48), (9, 48, 24), (3, 16, 16))

# Settings a preset fills in when --variant is not given: size fields are None = the variant's own.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(variant="WALT-L/1x2x2", width=128, depth=2, heads=4),
    "walt-l": dict(variant="WALT-L/1x2x2", width=None, depth=None, heads=None),
}

Size = tuple[int, int, int]


def parse_size(text: str) -> Size:
  """"9x24x48" -> (9, 24, 48)."""
  try:
    size = tuple(int(s) for s in text.strip().lower().split("x"))
  except ValueError:
    size = ()
  if len(size) != 3 or min(size) < 1:
    raise ValueError(f"a clip size must be TxHxW with positive integers, e.g. 5x32x32; got {text!r}")
  return size  # type: ignore[return-value]


def parse_mix(text: str) -> tuple[Size, ...]:
  """"1x32x32,5x32x32" -> ((1, 32, 32), (5, 32, 32))."""
  sizes = tuple(parse_size(s) for s in text.split(",") if s.strip())
  if not sizes:
    raise ValueError(f"--mix needs at least one TxHxW size; got {text!r}")
  return sizes


def parse_ints(text: str) -> tuple[int, ...]:
  """"5,8,8" -> (5, 8, 8)."""
  return tuple(int(s) for s in text.split(","))


def default_row_length(max_tokens: int, multiple: int = 128) -> int:
  """The largest clip's tokens rounded up to a multiple of `multiple` (accelerator-friendly lengths)."""
  return -(-max_tokens // multiple) * multiple


# ----------------------------------------------------------------------------------------------------------------------
# Training programs sharing one state.


class SharedState:
  """VideoDiT params + AdamW state that every program of the benchmark threads through (donated to each call)."""

  def __init__(self, spec: DiTSpec, seed: int = 0):
    self.spec = spec
    # The optimizer of vidgen.benchmarks.dit.TrainStep (vidgen.train.optim defaults at a constant rate).
    self.tx = optax.chain(optax.clip_by_global_norm(1.0),
                          optax.adamw(1e-4, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0))
    self.graphdef = nnx.split(nnx.eval_shape(lambda: VideoDiT(spec, rngs=nnx.Rngs(0))), nnx.Param, ...)[0]

    def init(key):
      _, params, rest = nnx.split(VideoDiT(spec, rngs=nnx.Rngs(key)), nnx.Param, ...)
      return dict(params=params, opt_state=self.tx.init(params), step=jnp.zeros((), jnp.int32)), rest

    self.state, self.rest = jax.jit(init)(jax.random.key(seed))

  def step_fn(self, loss_fn: Callable[[VideoDiT, Any], jax.Array]) -> Callable:
    """A jitted training step (state donated) for `loss_fn(model, inputs) -> scalar`."""
    graphdef, tx = self.graphdef, self.tx

    def train_step(state, rest, inputs):
      def loss(params):
        return loss_fn(nnx.merge(graphdef, params, rest), inputs)

      value, grads = jax.value_and_grad(loss)(state["params"])
      updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
      params = optax.apply_updates(state["params"], updates)
      return dict(params=params, opt_state=opt_state, step=state["step"] + 1), value

    return jax.jit(train_step, donate_argnums=(0,))


class Program:
  """One compiled training step on fixed inputs; calling it runs one step on the shared state and returns seconds."""

  def __init__(self, shared: SharedState, jitted: Callable, inputs: Any):
    self.shared = shared
    self.inputs = jax.device_put(inputs)
    start = time.perf_counter()
    self.compiled = jitted.lower(shared.state, shared.rest, self.inputs).compile()
    self.compile_seconds = time.perf_counter() - start
    self.memory = compiled_memory(self.compiled)
    self.loss = float("nan")

  def __call__(self) -> float:
    start = time.perf_counter()
    self.shared.state, loss = self.compiled(self.shared.state, self.shared.rest, self.inputs)
    jax.block_until_ready((self.shared.state, loss))
    seconds = time.perf_counter() - start
    self.loss = float(loss)
    return seconds


# ----------------------------------------------------------------------------------------------------------------------
# Losses: per clip mean squared error over its real elements, then the mean over clips.


def grid_loss(model: VideoDiT, inputs: Mapping[str, jax.Array]) -> jax.Array:
  """Clips on a grid `[B, T, H, W, C]`; `mask` `[B, T, H, W, 1]` marks the real region (padded mode) or is absent."""
  out = model(inputs["z"], inputs["t"], Conditioning(text=inputs["text"]))
  err = jnp.square(out.astype(jnp.float32) - inputs["target"])
  if "mask" not in inputs:
    return jnp.mean(err)  # Clips of one size: the mean of per-clip means.
  mask = inputs["mask"]
  per_clip = jnp.sum(err * mask, axis=(1, 2, 3, 4)) / (jnp.sum(mask, axis=(1, 2, 3, 4)) * err.shape[-1])
  return jnp.mean(per_clip)


def packed_loss(model: VideoDiT, inputs: Mapping[str, Any]) -> jax.Array:
  """Packed rows `[R, L, P, C]`; `elements` `[R, S]` = real elements of each clip slot (0 = empty slot)."""
  layout = inputs["layout"]
  out = model.packed(inputs["patches"], inputs["t"], layout, Conditioning(text=inputs["text"]))
  err = jnp.sum(jnp.square(out.astype(jnp.float32) - inputs["target"]), axis=(2, 3))  # [R, L]
  elements = inputs["elements"]
  slots = jnp.arange(1, elements.shape[1] + 1)
  owner = (layout.segment_ids[:, :, None] == slots).astype(jnp.float32)  # [R, L, S]; padding is in no slot
  sums = jnp.einsum("rl,rls->rs", err, owner)
  per_clip = jnp.where(elements > 0, sums / jnp.maximum(elements, 1.0), 0.0)
  return jnp.sum(per_clip) / jnp.sum(elements > 0)


# ----------------------------------------------------------------------------------------------------------------------
# Each mode's inputs from the same clips: latents and targets `[T, H, W, C]` each, times `[n]`, captions `[n, Lt, Dt]`.


def padded_inputs(latents: Sequence[np.ndarray], targets: Sequence[np.ndarray], times: np.ndarray,
                  text: np.ndarray) -> dict[str, np.ndarray]:
  """Every clip zero-padded to the largest T, H and W; `mask` marks each clip's real region."""
  n = len(latents)
  max_size = tuple(max(np.shape(x)[axis] for x in latents) for axis in range(3))
  z = np.zeros((n, *max_size, np.shape(latents[0])[-1]), np.float32)
  target = np.zeros((n, *max_size, np.shape(targets[0])[-1]), np.float32)
  mask = np.zeros((n, *max_size, 1), np.float32)
  for i, (x, y) in enumerate(zip(latents, targets)):
    t, h, w = np.shape(x)[:3]
    z[i, :t, :h, :w], target[i, :t, :h, :w], mask[i, :t, :h, :w] = x, y, 1.0
  return dict(z=z, t=np.asarray(times), text=np.asarray(text), target=target, mask=mask)


def bucket_inputs(latents: Sequence[np.ndarray], targets: Sequence[np.ndarray], times: np.ndarray,
                  text: np.ndarray) -> list[dict[str, np.ndarray]]:
  """One batch per distinct clip size, in order of first appearance."""
  buckets: dict[tuple[int, ...], list[int]] = {}
  for i, x in enumerate(latents):
    buckets.setdefault(tuple(np.shape(x)[:3]), []).append(i)
  times, text = np.asarray(times), np.asarray(text)
  return [dict(z=np.stack([latents[i] for i in members]), t=times[members], text=text[members],
               target=np.stack([targets[i] for i in members])) for members in buckets.values()]


def packed_inputs(latents: Sequence[np.ndarray], targets: Sequence[np.ndarray], times: np.ndarray, text: np.ndarray,
                  *, patch: Sequence[int], row_length: int, slots: int | None = None,
                  blocks: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], PackedBatch]:
  """Clips packed into as many rows of `row_length` tokens as `plan` needs; `elements` `[R, S]` holds each clip slot's
  real target elements (0 = empty slot). `blocks`: window blocks for attention (`vidgen.data.packing.block_shapes`);
  None = a mask over each whole row."""
  grids = [token_grid(np.shape(x)[:3], patch) for x in latents]
  placements = plan(grids, row_length, slots=slots)
  rows = max(p.row for p in placements) + 1
  slots = slots if slots is not None else max(p.slot for p in placements) + 1
  batch = pack(latents, patch=patch, row_length=row_length, rows=rows, slots=slots, blocks=blocks)
  elements = np.asarray([np.size(y) for y in targets], np.float32)
  inputs = dict(patches=batch.patches, t=batch.per_clip(times), text=batch.per_clip(text),
                target=batch.pack_like(targets), elements=batch.per_clip(elements), layout=batch.layout)
  return inputs, batch


# ----------------------------------------------------------------------------------------------------------------------
# The benchmark.


@dataclasses.dataclass
class PackingRow:
  """One mode's result; times in seconds, tokens per training step (one pass over the mix)."""

  mode: str
  batch: str                   # Shapes run: "5x9x48x48x4", "3 buckets", "3 rows x 2688".
  clips: int
  programs: int                # Compiled programs.
  compile_s: float             # Total over the programs.
  step_s: float                # Median; bucketed: the sum of the buckets' medians.
  real_tokens: int
  computed_tokens: int
  token_efficiency: float      # real / computed.
  real_tokens_per_s: float
  memory_compiled: int | None  # Largest program's argument + output + temp - alias bytes.
  loss: float                  # Last step's loss (mean over the mode's programs).


@dataclasses.dataclass
class _Mode:
  name: str
  batch: str
  programs: list[Program]
  computed_tokens: int
  token_efficiency: float


def clip_sizes(mix: Sequence[Sequence[int]], copies: int = 1) -> list[Size]:
  """Each size of `mix` `copies` times, in order."""
  if copies < 1:
    raise ValueError(f"copies must be >= 1, got {copies}")
  return [tuple(int(s) for s in size) for size in mix for _ in range(copies)]  # type: ignore[misc]


def run(mix: Sequence[Sequence[int]] = DEFAULT_MIX, *, copies: int = 1, channels: int = 4,
        variant: str = "WALT-L/1x2x2", overrides: Mapping[str, Any] | None = None, row_length: int | None = None,
        slots: int | None = None, steps: int = 5, dtype: str = "auto", remat: str = "none", text_len: int = 8,
        text_dim: int = 4096, seed: int = 0, modes: Sequence[str] = MODES) -> list[PackingRow]:
  """Builds, compiles and times the training step of every mode on the same clips; returns one row per mode.

  Args:
    mix: latent sizes (T, H, W), each divisible by the variant's patch size.
    copies: clips of each size.
    channels: latent channels.
    variant: VideoDiT size string; `overrides` changes `dit_config` fields (width, depth, window, ...).
    row_length: packed row length L; None = `default_row_length` of the largest clip's tokens.
    slots: clip slots per packed row; None = the most any row gets.
    steps: timed rounds after one warm-up call of every program.
    dtype: compute dtype (params and optimizer state are float32).
    remat: rematerialisation policy of the scanned blocks.
    text_len: random caption tokens per clip (>= 1: cross-attention is part of the step).
    text_dim: caption token width.
    seed: RNG seed of the parameters and the random data.
    modes: any of MODES, in the order of the rows.
  """
  modes = tuple(modes)
  unknown = [m for m in modes if m not in MODES]
  if unknown or not modes:
    raise ValueError(f"modes must be a non-empty subset of {MODES}, got {modes}")
  if text_len < 1:
    raise ValueError(f"text_len must be >= 1 (captions drive cross-attention), got {text_len}")
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  sizes = clip_sizes(mix, copies)
  max_size = tuple(max(s[axis] for s in sizes) for axis in range(3))
  spec = DiTSpec.from_config(model_config(variant, (*max_size, channels), dtype=dtype, remat=remat, num_classes=0,
                                          text_len=text_len, text_dim=text_dim, overrides=overrides))
  patch = spec.patch_size
  grids = []
  for i, size in enumerate(sizes):
    try:
      grids.append(token_grid(size, patch))
    except ValueError as e:
      raise ValueError(f"clip {i} of the mix: {e}") from None
  tokens = [math.prod(g) for g in grids]
  real_tokens = sum(tokens)
  n = len(sizes)

  # The same random clips, targets, times and captions for every mode.
  rng = np.random.default_rng(seed)
  latents = [rng.standard_normal((*s, channels)).astype(np.float32) for s in sizes]
  targets = [rng.standard_normal((*s, spec.out_channels)).astype(np.float32) for s in sizes]
  times = rng.uniform(0.0, 1.0, n).astype(np.float32)
  text = rng.standard_normal((n, text_len, text_dim)).astype(np.float32).astype(spec.compute_dtype)

  shared = SharedState(spec, seed)
  built: list[_Mode] = []
  for mode in modes:
    if mode == "padded":
      program = Program(shared, shared.step_fn(grid_loss), padded_inputs(latents, targets, times, text))
      max_tokens = math.prod(token_grid(max_size, patch))
      built.append(_Mode(mode, f"{n}x" + "x".join(map(str, (*max_size, channels))), [program], n * max_tokens,
                         real_tokens / (n * max_tokens)))
    elif mode == "bucketed":
      jitted = shared.step_fn(grid_loss)  # One jit, lowered once per distinct size.
      programs = [Program(shared, jitted, inputs) for inputs in bucket_inputs(latents, targets, times, text)]
      built.append(_Mode(mode, f"{len(programs)} buckets", programs, real_tokens, 1.0))
    else:
      length = row_length if row_length is not None else default_row_length(max(tokens))
      # "packed": attention on window blocks sized for the mix's grids; "packed_masked": a mask over each row.
      blocks = block_shapes(spec.packed_windows, grids, length) if mode == "packed" else None
      inputs, batch = packed_inputs(latents, targets, times, text, patch=patch, row_length=length, slots=slots,
                                    blocks=blocks)
      program = Program(shared, shared.step_fn(packed_loss), inputs)
      built.append(_Mode(mode, f"{batch.rows} rows x {length} (S={batch.slots})", [program],
                         batch.rows * batch.row_length, batch.token_efficiency()))

  all_programs = [p for m in built for p in m.programs]
  measured = iter(time_round_robin(all_programs, steps))
  result = []
  for m in built:
    step_s = sum(statistics.median(next(measured)) for _ in m.programs)
    memories = [p.memory["total"] for p in m.programs if p.memory]
    loss = float(np.mean([p.loss for p in m.programs]))
    if not np.isfinite(loss):
      raise FloatingPointError(f"the {m.name} training step produced a non-finite loss {loss}")
    result.append(PackingRow(
        mode=m.name, batch=m.batch, clips=n, programs=len(m.programs),
        compile_s=sum(p.compile_seconds for p in m.programs), step_s=step_s, real_tokens=real_tokens,
        computed_tokens=m.computed_tokens, token_efficiency=m.token_efficiency,
        real_tokens_per_s=real_tokens / step_s, memory_compiled=max(memories) if memories else None, loss=loss))
  return result


def _gib(n: int | None) -> str:
  return "n/a" if n is None else f"{n / 2**30:.3f}"


def format_table(rows: Sequence[PackingRow]) -> str:
  """Markdown table of benchmark rows."""
  lines = [
      "| mode | batch | programs | compile (s) | step (s) | real tokens/step | computed tokens/step | "
      "token efficiency | real tokens/s | memory compiled (GiB) |",
      "|" + "---|" * 10,
  ]
  for r in rows:
    lines.append(
        f"| {r.mode} | {r.batch} | {r.programs} | {r.compile_s:.2f} | {r.step_s:.4g} | {r.real_tokens} | "
        f"{r.computed_tokens} | {r.token_efficiency:.3f} | {r.real_tokens_per_s:,.0f} | {_gib(r.memory_compiled)} |")
  return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m vidgen.benchmarks.packing", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                      help="fills --variant, --width, --depth and --heads when --variant is not given")
  parser.add_argument("--variant", default=None, help="VideoDiT size, e.g. WALT-L/1x2x2, S/1x2x2")
  parser.add_argument("--width", type=int, default=None, help="override the variant's width")
  parser.add_argument("--depth", type=int, default=None, help="override the variant's depth")
  parser.add_argument("--heads", type=int, default=None, help="override the variant's number of heads")
  parser.add_argument("--pos_embedding", choices=POS_EMBEDDINGS, default=None, help="override the variant's")
  parser.add_argument("--attention_pattern", default=None,
                      help=f"comma-separated kinds from {ATTENTION_KINDS}, e.g. spatial,spatiotemporal or full")
  parser.add_argument("--window", default=None, help="spatiotemporal window in tokens, e.g. 5,8,8")
  parser.add_argument("--mix", type=parse_mix, default=",".join("x".join(map(str, s)) for s in DEFAULT_MIX),
                      help="latent sizes TxHxW, comma-separated (default: %(default)s)")
  parser.add_argument("--copies", type=int, default=1, help="clips of each size of --mix")
  parser.add_argument("--channels", type=int, default=4, help="latent channels")
  parser.add_argument("--row_length", type=int, default=None,
                      help="packed row length; default: the largest clip's tokens rounded up to a multiple of 128")
  parser.add_argument("--slots", type=int, default=None, help="most clips per packed row (default: no limit)")
  parser.add_argument("--text_len", type=int, default=8, help="random caption tokens per clip")
  parser.add_argument("--text_dim", type=int, default=4096, help="caption token width (4096 = T5-XXL)")
  parser.add_argument("--dtype", choices=COMPUTE_DTYPES, default="auto",
                      help="compute dtype (auto: bfloat16 on GPU / TPU, float32 on CPU); params stay float32")
  parser.add_argument("--remat", choices=REMAT_POLICIES, default="none")
  parser.add_argument("--steps", type=int, default=5, help="timed rounds after one warm-up call of every program")
  parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.variant is None:
    preset = PRESETS[args.preset]
    args.variant = preset["variant"]
    for name in ("width", "depth", "heads"):
      if getattr(args, name) is None:
        setattr(args, name, preset[name])
  args.modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
  bad = [m for m in args.modes if m not in MODES]
  if bad or not args.modes:
    parser.error(f"--modes must be a comma-separated subset of {','.join(MODES)}; got {bad or args.modes}")
  try:
    args.window = None if args.window is None else parse_ints(args.window)
  except ValueError:
    parser.error(f"--window must be three comma-separated integers, got {args.window!r}")
  if args.attention_pattern is not None:
    args.attention_pattern = tuple(k.strip() for k in args.attention_pattern.split(",") if k.strip())
  return args


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
  """The `dit_config` fields the command line changes."""
  fields = dict(width=args.width, depth=args.depth, num_heads=args.heads, pos_embedding=args.pos_embedding,
                attention_pattern=args.attention_pattern, window=args.window)
  return {k: v for k, v in fields.items() if v is not None}


def main(argv: Sequence[str] | None = None) -> list[PackingRow]:
  args = parse_args(argv)
  overrides = overrides_from(args)
  rows = run(args.mix, copies=args.copies, channels=args.channels, variant=args.variant, overrides=overrides,
             row_length=args.row_length, slots=args.slots, steps=args.steps, dtype=args.dtype, remat=args.remat,
             text_len=args.text_len, text_dim=args.text_dim, seed=args.seed, modes=args.modes)
  device = jax.devices()[0]
  model = args.variant + "".join(f" {k}={v}" for k, v in overrides.items())
  mix = ",".join("x".join(map(str, s)) for s in args.mix)
  print(f"device: {device.device_kind} ({jax.default_backend()}); model: {model}, dtype {args.dtype}, captions of "
        f"{args.text_len} tokens; mix: {mix} x {args.copies} copies, {args.channels} channels")
  print(f"training step = forward + backward + AdamW, state donated; median of {args.steps} rounds after 1 warm-up "
        "(programs round-robin, each waited for); bucketed step = sum of its buckets' medians")
  print(format_table(rows))
  return rows


if __name__ == "__main__":
  main()
