"""DiT training benchmark: throughput, achieved TFLOP/s and MFU of one jitted VideoDiT training step, and its memory.

On one accelerator (the numbers to quote; bf16 compute, float32 params and AdamW state):

  python -m vidgen.benchmarks.dit --variant XL/2 --latent 1x32x32x4 --batch 32 --dtype bfloat16 --steps 10
  python -m vidgen.benchmarks.dit --preset walt-l --batch 32 --dtype bfloat16 --steps 10
  python -m vidgen.benchmarks.dit --preset walt-l --text_len 77 --batch 32 --dtype bfloat16 --steps 10

Add `--remat dots` (or `full`) when a batch does not fit. On CPU, a smoke run in seconds:

  python -m vidgen.benchmarks.dit --variant S/8 --batch 2 --steps 2 --dtype float32

A/B comparisons: each `--vary FIELD=VALUE[,FIELD=VALUE]` adds a row with those `dit_config` fields changed (values as
Python literals: `qk_norm=False`, `window=(5,8,8)`), and all rows' steps are timed round-robin, one step of each per
round, so a drift in the machine's speed (common on shared VMs; see docs/results.md#benchmarks) hits every row
alike:

  python -m vidgen.benchmarks.dit --variant S/2 --latent 5x16x16x8 --steps 12 --vary qk_norm=True --vary num_heads=3

What is timed: one training step = v-prediction loss (W.A.L.T's zero-terminal-SNR linear-beta schedule, t ~ U[0, 1))
forward + backward + AdamW update with global-norm clipping (as `vidgen.train.optim`'s defaults), jitted once with the
state donated, on random latents of the given shape that stay on the device. The first call after compilation is a
warm-up; the step time is the median over `--steps` further calls (rounds, with `--vary`), each waited for.

Conventions:
  * Model FLOPs per step = 3 x `vidgen.scaling.forward_flops` x batch: matmuls only, 2 FLOPs per multiply-add, the
    backward pass counted as twice the forward. Rematerialisation's recomputation is not counted (MFU, not HFU), so
    `--remat` lowers MFU by the time it costs.
  * MFU = achieved model TFLOP/s / the chip's dense bf16 peak, looked up from `jax.devices()[0].device_kind` (TPU v4
    275, v5e 197, v5p 459, v6e 918, H100 SXM / H200 989, H100 PCIe 756) or given by `--peak_tflops`. With another
    compute dtype the bf16 peak is still the reference. Unknown devices (and CPU) print MFU as n/a.
  * Memory: "compiled" = argument + output + temp - alias bytes from `compiled.memory_analysis()` (XLA's buffer
    assignment for the step; the donated state is aliased into the outputs, so it is counted once); "runtime" = the
    device allocator's `peak_bytes_in_use` for the whole process where the platform reports it (GPU, TPU; not CPU).

The attention kernel is whatever `attention_backend="auto"` picks (cuDNN flash attention on NVIDIA GPUs in bf16, Pallas
splash on TPU, XLA elsewhere). The benchmark runs on one device (`jax.devices()[0]`); throughput is per chip.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import statistics
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from vidgen.diffusion import LinearBetaSchedule, denoising_loss
from vidgen.layers.precision import DTYPES
from vidgen.layers.scan import REMAT_POLICIES
from vidgen.models.dit import Conditioning, VideoDiT
from vidgen.models.dit_config import DiTSpec, dit_config
from vidgen.scaling import forward_flops

# Dense bf16 peak TFLOP/s per chip, matched against the lower-cased `device_kind` in order (first match wins, so the
# more specific names come first: "TPU v5 lite" is a v5e, plain "TPU v5" a v5p).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("v5 lite", 197.0), ("v5e", 197.0),
    ("v5p", 459.0), ("tpu v5", 459.0),
    ("v6 lite", 918.0), ("v6e", 918.0),
    ("tpu v4", 275.0),
    ("h100 pcie", 756.0),
    ("h100", 989.0), ("h200", 989.0),
)

# Settings that a preset fills in unless the flag is given explicitly.
PRESETS: dict[str, dict[str, Any]] = {
    # DiT-XL/2 on ImageNet-256 latents (arXiv 2212.09748): one 32x32x4 frame, 1000 classes.
    "dit-xl2": dict(variant="XL/2", latent=(1, 32, 32, 4), num_classes=1000),
    # W.A.L.T-L (arXiv 2312.06662) on 17x128x128 videos encoded to 5x16x16x8; text cross-attention with --text_len.
    "walt-l": dict(variant="WALT-L", latent=(5, 16, 16, 8), num_classes=0),
}


def peak_tflops_for(device_kind: str) -> float | None:
  """Dense bf16 peak TFLOP/s of one chip of `device_kind` ("TPU v5 lite", "NVIDIA H100 80GB HBM3"); None: unknown."""
  kind = device_kind.lower()
  for pattern, tflops in PEAK_BF16_TFLOPS:
    if pattern in kind:
      return tflops
  return None


def parse_latent(text: str) -> tuple[int, int, int, int]:
  """"5x16x16x8" -> (T, H, W, C)."""
  try:
    shape = tuple(int(s) for s in text.lower().split("x"))
  except ValueError:
    shape = ()
  if len(shape) != 4 or min(shape) < 1:
    raise ValueError(f"--latent must be TxHxWxC with positive integers, e.g. 1x32x32x4; got {text!r}")
  return shape  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------------------
# The training step (shared with vidgen.benchmarks.attention).


def compiled_memory(compiled) -> dict[str, int] | None:
  """Byte counts of a compiled executable's buffer assignment; `total` = argument + output + temp - alias."""
  try:
    stats = compiled.memory_analysis()
  except NotImplementedError:  # Some backends do not implement it.
    return None
  if stats is None:
    return None
  out = dict(argument=int(stats.argument_size_in_bytes), output=int(stats.output_size_in_bytes),
             temp=int(stats.temp_size_in_bytes), alias=int(stats.alias_size_in_bytes))
  out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out


def runtime_peak_bytes(device=None) -> int | None:
  """The device allocator's peak bytes in use so far in this process; None where not reported (CPU)."""
  device = jax.devices()[0] if device is None else device
  try:
    stats = device.memory_stats()
  except (NotImplementedError, RuntimeError):
    return None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


class TrainStep:
  """A compiled VideoDiT training step with its state and inputs, ready to be timed.

  `state = {"params", "opt_state", "step"}` is donated to every call and replaced by the result, so only one copy of
  params and optimizer state lives on the device. The RNG is folded with the step number, as in a real trainer.
  """

  def __init__(self, config: Mapping[str, Any] | DiTSpec, latent_shape: Sequence[int], batch: int, *,
               text_len: int = 0, seed: int = 0):
    spec = DiTSpec.from_config(config)
    latent_shape = tuple(int(s) for s in latent_shape)
    if len(latent_shape) != 4 or latent_shape[3] != spec.in_channels:
      raise ValueError(f"latent_shape must be (T, H, W, {spec.in_channels}); got {latent_shape}")
    if spec.text_dim and text_len < 1:
      raise ValueError("a model with text cross-attention needs text_len >= 1 caption tokens")
    self.spec, self.latent_shape, self.batch, self.text_len = spec, latent_shape, batch, text_len
    schedule = LinearBetaSchedule(zero_terminal_snr=True)
    # The trainer's optimizer (vidgen.train.optim defaults: clipping + AdamW, b2 0.99) at a constant rate; the rate
    # schedule does not change the cost. Not imported from vidgen.train: that package pulls in TensorFlow (via clu),
    # which costs seconds and may claim accelerator memory in a benchmark process.
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-4, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0))

    graphdef = nnx.split(nnx.eval_shape(lambda: VideoDiT(spec, rngs=nnx.Rngs(0))), nnx.Param, ...)[0]

    def init(key):
      _, params, rest = nnx.split(VideoDiT(spec, rngs=nnx.Rngs(key)), nnx.Param, ...)
      return dict(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32)), rest

    def train_step(state, rest, inputs, key):
      key = jax.random.fold_in(key, state["step"])
      cond = Conditioning(labels=inputs.get("labels"), text=inputs.get("text"))

      def loss_fn(params):
        model = nnx.merge(graphdef, params, rest)
        return jnp.mean(denoising_loss(lambda z, t: model(z, t, cond), inputs["x"], key, schedule))

      loss, grads = jax.value_and_grad(loss_fn)(state["params"])
      updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
      params = optax.apply_updates(state["params"], updates)
      return dict(params=params, opt_state=opt_state, step=state["step"] + 1), loss

    k_init, k_x, k_label, k_text, self.key = jax.random.split(jax.random.key(seed), 5)
    # Initialised inside one jit: no full copy of the params on the host, and no per-op compiles of an eager init.
    self.state, self.rest = jax.jit(init)(k_init)
    self.inputs = dict(x=jax.random.normal(k_x, (batch, *latent_shape), jnp.float32))
    if spec.num_classes:
      self.inputs["labels"] = jax.random.randint(k_label, (batch,), 0, spec.num_classes)
    if spec.text_dim:
      self.inputs["text"] = jax.random.normal(k_text, (batch, text_len, spec.text_dim), spec.compute_dtype)
    self.num_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.state["params"])))

    start = time.perf_counter()
    lowered = jax.jit(train_step, donate_argnums=(0,)).lower(self.state, self.rest, self.inputs, self.key)
    self.compiled = lowered.compile()
    self.compile_seconds = time.perf_counter() - start
    self.memory = compiled_memory(self.compiled)
    self.loss = float("nan")

  def __call__(self) -> float:
    """Runs one step and waits for it; returns its wall time in seconds."""
    start = time.perf_counter()
    self.state, loss = self.compiled(self.state, self.rest, self.inputs, self.key)
    jax.block_until_ready((self.state, loss))
    seconds = time.perf_counter() - start
    self.loss = float(loss)
    return seconds

  def time(self, steps: int, warmup: int = 1) -> list[float]:
    """Wall seconds of `steps` steps after `warmup` untimed ones."""
    if steps < 1:
      raise ValueError(f"steps must be >= 1, got {steps}")
    for _ in range(warmup):
      self()
    return [self() for _ in range(steps)]

  def forward_flops(self) -> int:
    """Analytic forward FLOPs of one example (`vidgen.scaling.forward_flops`)."""
    return forward_flops(self.spec, self.latent_shape, text_len=self.text_len)


# ----------------------------------------------------------------------------------------------------------------------
# The benchmark.


@dataclasses.dataclass
class DiTRow:
  """One benchmark result. FLOPs are per step unless named per example; times in seconds; bytes in bytes."""

  variant: str
  latent: tuple[int, int, int, int]
  batch: int
  dtype: str
  remat: str
  text_len: int
  num_params: int
  tokens: int
  device: str
  backend: str
  compile_s: float
  step_s: float
  steps_per_s: float
  examples_per_s: float
  forward_flops: int                 # Per example.
  step_flops: int                    # 3 x forward_flops x batch.
  achieved_tflops: float
  peak_tflops: float | None
  mfu: float | None
  memory_compiled: int | None
  memory_runtime: int | None
  loss: float


def model_config(variant: str, latent: Sequence[int], *, dtype: str = "bfloat16", remat: str = "none",
                 num_classes: int = 0, text_len: int = 0, text_dim: int = 4096,
                 overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """The VideoDiT config benchmarked for `variant` on `latent` (T, H, W, C): float32 params, `dtype` compute."""
  fields = dict(input_size=tuple(latent[:3]), in_channels=int(latent[3]), dtype=dtype, param_dtype="float32",
                remat=remat, num_classes=num_classes, text_dim=text_dim if text_len else 0)
  fields.update(overrides or {})
  return dit_config(variant, **fields)


def time_round_robin(steps: Sequence[TrainStep], rounds: int, warmup: int = 1) -> list[list[float]]:
  """Wall seconds of `rounds` calls of each step, interleaved (one call of every step per round) after `warmup`
  untimed calls of each; result[i] holds step i's times."""
  if rounds < 1:
    raise ValueError(f"rounds must be >= 1, got {rounds}")
  for step in steps:
    for _ in range(warmup):
      step()
  times: list[list[float]] = [[] for _ in steps]
  for _ in range(rounds):
    for i, step in enumerate(steps):
      times[i].append(step())
  return times


def run(variant: str = "XL/2", latent: Sequence[int] = (1, 32, 32, 4), *, batch: int = 32, dtype: str = "bfloat16",
        steps: int = 10, peak_tflops: float | None = None, remat: str = "none", num_classes: int = 1000,
        text_len: int = 0, text_dim: int = 4096, seed: int = 0, overrides: Mapping[str, Any] | None = None,
        vary: Sequence[Mapping[str, Any]] = ()) -> list[DiTRow]:
  """Builds, compiles and times the training step; returns the measured rows: the config itself, then one row per
  `vary` entry (the same config with those fields changed), all timed round-robin.

  Args:
    variant: VideoDiT size string ("XL/2", "S/8", "WALT-L", ...).
    latent: (T, H, W, C) of one example.
    batch: examples per step.
    dtype: compute dtype (params and optimizer state stay float32).
    steps: timed steps (after one warm-up step).
    peak_tflops: chip peak for MFU; None looks it up from the device kind (n/a when unknown).
    remat: rematerialisation policy of the scanned blocks.
    num_classes: class-label conditioning (0 = none).
    text_len: caption tokens for cross-attention (0 = no cross-attention).
    text_dim: width of the caption tokens (4096 = T5-XXL, as in W.A.L.T).
    seed: RNG seed of the parameters and the random batch.
    overrides: further `dit_config` fields (the tests use them to shrink a preset).
    vary: field changes, one extra row each (e.g. `[{"qk_norm": False}]`).
  """
  changes = [{}, *vary]
  train_steps = [
      TrainStep(model_config(variant, latent, dtype=dtype, remat=remat, num_classes=num_classes, text_len=text_len,
                             text_dim=text_dim, overrides={**(overrides or {}), **change}),
                latent, batch, text_len=text_len, seed=seed)
      for change in changes]
  times = time_round_robin(train_steps, steps)
  device = jax.devices()[0]
  peak = peak_tflops if peak_tflops is not None else peak_tflops_for(device.device_kind)
  rows = []
  for change, step, step_times in zip(changes, train_steps, times):
    seconds = statistics.median(step_times)
    fwd = step.forward_flops()
    step_flops = 3 * fwd * batch
    achieved = step_flops / seconds / 1e12
    label = variant + "".join(f" {key}={value!r}" for key, value in change.items())
    row = DiTRow(
        variant=label, latent=tuple(int(s) for s in latent), batch=batch, dtype=dtype, remat=remat,
        text_len=text_len, num_params=step.num_params, tokens=int(np.prod(step.spec.token_grid)),
        device=device.device_kind, backend=jax.default_backend(), compile_s=step.compile_seconds, step_s=seconds,
        steps_per_s=1.0 / seconds, examples_per_s=batch / seconds, forward_flops=fwd, step_flops=step_flops,
        achieved_tflops=achieved, peak_tflops=peak, mfu=achieved / peak if peak else None,
        memory_compiled=step.memory["total"] if step.memory else None, memory_runtime=runtime_peak_bytes(device),
        loss=step.loss)
    if not np.isfinite(row.loss):
      raise FloatingPointError(f"the benchmarked training step of {label} produced a non-finite loss {row.loss}")
    rows.append(row)
  return rows


def parse_vary(text: str) -> dict[str, Any]:
  """"qk_norm=False,num_heads=1" -> {"qk_norm": False, "num_heads": 1}; values are Python literals, or strings."""
  change: dict[str, Any] = {}
  # Split on the commas that start a new FIELD=, not on those inside a tuple value such as window=(5,8,8).
  for item in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", text):
    key, sep, value = item.partition("=")
    if not sep or not key.strip().isidentifier():
      raise ValueError(f"--vary takes FIELD=VALUE[,FIELD=VALUE...], e.g. qk_norm=False; got {text!r}")
    try:
      change[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      change[key.strip()] = value.strip()
  return change


def _gib(n: int | None) -> str:
  return "n/a" if n is None else f"{n / 2**30:.2f}"


def format_table(rows: Sequence[DiTRow]) -> str:
  """Markdown table of benchmark rows."""
  lines = [
      "| model | latent | batch | dtype | remat | params (M) | tokens | step (ms) | steps/s | examples/s | "
      "GFLOP/step | TFLOP/s | peak | MFU | memory compiled (GiB) | memory runtime (GiB) | compile (s) |",
      "|" + "---|" * 17,
  ]
  for r in rows:
    model = r.variant + (f" + text {r.text_len}" if r.text_len else "")
    latent = "x".join(str(s) for s in r.latent)
    peak = "n/a" if r.peak_tflops is None else f"{r.peak_tflops:g}"
    mfu = "n/a" if r.mfu is None else f"{100 * r.mfu:.1f}%"
    lines.append(
        f"| {model} | {latent} | {r.batch} | {r.dtype} | {r.remat} | {r.num_params / 1e6:.1f} | {r.tokens} | "
        f"{1e3 * r.step_s:.1f} | {r.steps_per_s:.2f} | {r.examples_per_s:.1f} | {r.step_flops / 1e9:.1f} | "
        f"{r.achieved_tflops:.3f} | {peak} | {mfu} | {_gib(r.memory_compiled)} | {_gib(r.memory_runtime)} | "
        f"{r.compile_s:.1f} |")
  return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m vidgen.benchmarks.dit", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", choices=sorted(PRESETS), default="dit-xl2",
                      help="fills --variant, --latent and --num_classes unless they are given")
  parser.add_argument("--variant", default=None, help="VideoDiT size, e.g. XL/2, S/8, WALT-L")
  parser.add_argument("--latent", type=parse_latent, default=None, help="TxHxWxC of one example, e.g. 1x32x32x4")
  parser.add_argument("--num_classes", type=int, default=None, help="class conditioning (0 = none)")
  parser.add_argument("--text_len", type=int, default=0, help="caption tokens for cross-attention (0 = off)")
  parser.add_argument("--text_dim", type=int, default=4096, help="caption token width (4096 = T5-XXL)")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="compute dtype; params stay float32")
  parser.add_argument("--steps", type=int, default=10, help="timed steps after one warm-up step")
  parser.add_argument("--peak_tflops", default="auto",
                      help="chip peak for MFU in TFLOP/s; 'auto' looks it up from the device kind")
  parser.add_argument("--remat", choices=REMAT_POLICIES, default="none")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--vary", type=parse_vary, action="append", default=[], metavar="FIELD=VALUE[,...]",
                      help="add a row with these dit_config fields changed (repeatable); rows are timed round-robin")
  args = parser.parse_args(argv)
  preset = PRESETS[args.preset]
  for name in ("variant", "latent", "num_classes"):
    if getattr(args, name) is None:
      setattr(args, name, preset[name])
  if args.peak_tflops == "auto":
    args.peak_tflops = None
  else:
    try:
      args.peak_tflops = float(args.peak_tflops)
    except ValueError:
      parser.error(f"--peak_tflops must be 'auto' or a number, got {args.peak_tflops!r}")
  return args


def main(argv: Sequence[str] | None = None) -> list[DiTRow]:
  args = parse_args(argv)
  rows = run(args.variant, args.latent, batch=args.batch, dtype=args.dtype, steps=args.steps,
             peak_tflops=args.peak_tflops, remat=args.remat, num_classes=args.num_classes, text_len=args.text_len,
             text_dim=args.text_dim, seed=args.seed, vary=args.vary)
  order = "rows interleaved, " if len(rows) > 1 else ""
  print(f"device: {rows[0].device} ({rows[0].backend}); training step = v-loss forward + backward + AdamW, state "
        f"donated; median of {args.steps} steps after 1 warm-up ({order}each waited for)")
  print("FLOPs: model FLOPs = 3 x analytic forward (matmuls, 2 per MAC) x batch; MFU against the dense bf16 peak; "
        "memory compiled = argument + output + temp - alias (XLA), runtime = allocator peak (where reported)")
  print(format_table(rows))
  return rows


if __name__ == "__main__":
  main()
