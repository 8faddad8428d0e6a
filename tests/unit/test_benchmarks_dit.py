"""Tests for vidgen.benchmarks.attention and vidgen.benchmarks.dit: tiny in-process runs whose reported numbers must
agree with vidgen.scaling, and the linear-vs-quadratic scaling claim checked on analytic FLOPs (not timings).

  pytest tests/test_benchmarks_dit.py
"""

from __future__ import annotations

import math

import pytest

from vidgen.benchmarks import attention as attention_bench
from vidgen.benchmarks import dit as dit_bench
from vidgen.config import ConfigError
from vidgen.scaling import forward_flops, param_count

TINY_ATTENTION = dict(size=8, width=32, depth=2, heads=2, window=(2, 4, 4))


def test_attention_benchmark_rows_match_scaling():
  rows = attention_bench.main(["--frames", "2,4", "--size", "8", "--width", "32", "--depth", "2", "--heads", "2",
                               "--window", "2,4,4", "--steps", "1", "--max_full_tokens", "128"])
  assert [(r.kind, r.frames) for r in rows] == [("windowed", 2), ("windowed", 4), ("full", 2), ("full", 4)]
  for r in rows:
    config = attention_bench.attention_config(r.kind, r.frames, **TINY_ATTENTION)
    latent = (r.frames, 8, 8, 8)
    assert r.tokens == r.frames * 64
    assert r.forward_flops == forward_flops(config, latent)
    assert 0 < r.attention_flops < r.forward_flops
    assert r.memory_compiled is not None and r.memory_compiled > 0
    skipped = r.kind == "full" and r.tokens > 128
    assert (r.step_s is None) == skipped and (r.note != "") == skipped
    if not skipped:
      assert r.step_s > 0
  for first, second in ((rows[0], rows[1]), (rows[2], rows[3])):
    assert first.flops_ratio is None and first.time_ratio is None
    assert second.flops_ratio == pytest.approx(second.forward_flops / first.forward_flops)
  assert rows[1].time_ratio == pytest.approx(rows[1].step_s / rows[0].step_s)
  assert rows[3].time_ratio is None  # Not run, so no time ratio.
  # Same width and depth, so the kinds differ only in attention scores and weighted sums.
  for t in (0, 1):
    assert rows[2 + t].forward_flops - rows[t].forward_flops == rows[2 + t].attention_flops - rows[t].attention_flops
  table = attention_bench.format_table(rows).splitlines()
  assert len(table) == 2 + len(rows)


@pytest.mark.parametrize("frames", [(4, 8, 16, 32, 64)])
def test_windowed_linear_full_quadratic_in_analytic_flops(frames):
  """At the benchmark's default sizes: doubling T doubles windowed cost and quadruples full attention's term."""
  for previous, t in zip(frames, frames[1:]):
    assert t == 2 * previous
    windowed = [attention_bench.attention_config("windowed", f) for f in (previous, t)]
    full = [attention_bench.attention_config("full", f) for f in (previous, t)]
    latents = [(f, 16, 16, 8) for f in (previous, t)]
    windowed_flops = [forward_flops(c, s) for c, s in zip(windowed, latents)]
    full_flops = [forward_flops(c, s) for c, s in zip(full, latents)]
    # Windowed: every cost is per token except the per-example timestep / adaLN MLPs, so the total doubles.
    assert windowed_flops[1] / windowed_flops[0] == pytest.approx(2.0, rel=2e-3)
    full_attention = [attention_bench.attention_flops(c, s) for c, s in zip(full, latents)]
    windowed_attention = [attention_bench.attention_flops(c, s) for c, s in zip(windowed, latents)]
    assert windowed_attention[1] / windowed_attention[0] == 2.0
    assert full_attention[1] / full_attention[0] == 4.0
    # The attention terms are the part of vidgen.scaling's count that differs between the kinds.
    for i in (0, 1):
      assert full_flops[i] - windowed_flops[i] == full_attention[i] - windowed_attention[i]
    # Full attention's total is superlinear and tends to 4x as its quadratic term takes over.
    assert 2.5 < full_flops[1] / full_flops[0] < 4.0


def test_dit_benchmark_walt_with_text_is_consistent():
  overrides = dict(depth=2, width=32, num_heads=2, window=(2, 4, 4))
  latent = (2, 8, 8, 8)
  (row,) = dit_bench.run("WALT-L", latent, batch=2, dtype="float32", steps=1, peak_tflops=1.0, num_classes=10,
                         text_len=3, text_dim=16, overrides=overrides)
  config = dit_bench.model_config("WALT-L", latent, dtype="float32", num_classes=10, text_len=3, text_dim=16,
                                  overrides=overrides)
  assert row.forward_flops == forward_flops(config, latent, text_len=3)
  assert row.step_flops == 3 * row.forward_flops * 2
  assert row.num_params == param_count(config)
  assert row.tokens == 128
  assert row.step_s > 0 and row.compile_s > 0
  assert row.examples_per_s == pytest.approx(2 / row.step_s)
  assert row.steps_per_s == pytest.approx(1 / row.step_s)
  assert row.achieved_tflops == pytest.approx(row.step_flops / row.step_s / 1e12)
  assert row.mfu == pytest.approx(row.achieved_tflops / 1.0)
  # The step's arguments alone hold float32 parameters and AdamW's two moments: at least 3 x 4 bytes per parameter.
  assert row.memory_compiled is not None and row.memory_compiled >= 12 * row.num_params
  assert math.isfinite(row.loss)


def test_dit_benchmark_cli_small_variant():
  rows = dit_bench.main(["--variant", "mu/8", "--latent", "1x16x16x4", "--batch", "2", "--steps", "1",
                         "--dtype", "float32"])
  (row,) = rows
  config = dit_bench.model_config("mu/8", (1, 16, 16, 4), dtype="float32", num_classes=1000)
  assert row.forward_flops == forward_flops(config, (1, 16, 16, 4))
  assert row.step_s > 0
  if dit_bench.peak_tflops_for(row.device) is None:  # CPU: MFU is n/a unless a peak is given.
    assert row.peak_tflops is None and row.mfu is None
    assert "| n/a | n/a |" in dit_bench.format_table(rows)


def test_vary_adds_rows_timed_round_robin(monkeypatch):
  rows = dit_bench.main(["--variant", "mu/8", "--latent", "1x16x16x4", "--batch", "2", "--steps", "2",
                         "--dtype", "float32", "--num_classes", "0", "--vary", "width=32,num_heads=2",
                         "--vary", "qk_norm=True"])
  assert [r.variant for r in rows] == ["mu/8", "mu/8 width=32 num_heads=2", "mu/8 qk_norm=True"]
  for r, change in zip(rows, ({}, dict(width=32, num_heads=2), dict(qk_norm=True))):
    config = dit_bench.model_config("mu/8", (1, 16, 16, 4), dtype="float32", overrides=change)
    assert r.num_params == param_count(config) and r.forward_flops == forward_flops(config, (1, 16, 16, 4))
  assert rows[1].num_params < rows[0].num_params < rows[2].num_params  # the last adds qk-norm scales
  # One warm-up call of each row, then the rows take turns: one call of each per round.
  calls = []
  original = dit_bench.TrainStep.__call__
  monkeypatch.setattr(dit_bench.TrainStep, "__call__", lambda self: calls.append(self.spec.width) or original(self))
  dit_bench.run("mu/8", (1, 16, 16, 4), batch=1, dtype="float32", steps=2, num_classes=0,
                vary=[dict(width=32, num_heads=2)])
  assert calls == [64, 32, 64, 32, 64, 32]


def test_vary_values_are_literals_and_typos_are_refused():
  assert dit_bench.parse_vary("qk_norm=False,window=(5, 8, 8), attention_pattern=('spatial',)") == dict(
      qk_norm=False, window=(5, 8, 8), attention_pattern=("spatial",))
  assert dit_bench.parse_vary("attention_backend=xla") == dict(attention_backend="xla")
  with pytest.raises(ValueError, match="FIELD=VALUE"):
    dit_bench.parse_vary("qk_norm")
  with pytest.raises(ConfigError, match="config.dit.qk_nrom"):
    dit_bench.run("mu/8", (1, 16, 16, 4), batch=1, dtype="float32", steps=1, num_classes=0,
                  vary=[dict(qk_nrom=False)])


def test_presets_and_flags():
  args = dit_bench.parse_args(["--preset", "walt-l", "--text_len", "77"])
  assert (args.variant, args.latent, args.num_classes, args.text_len) == ("WALT-L", (5, 16, 16, 8), 0, 77)
  args = dit_bench.parse_args([])
  assert (args.variant, args.latent, args.num_classes, args.dtype) == ("XL/2", (1, 32, 32, 4), 1000, "bfloat16")
  assert args.peak_tflops is None
  args = dit_bench.parse_args(["--variant", "S/8", "--latent", "2x16x16x4", "--peak_tflops", "100"])
  assert (args.variant, args.latent, args.peak_tflops) == ("S/8", (2, 16, 16, 4), 100.0)
  with pytest.raises(ValueError):
    dit_bench.parse_latent("32x32x4")


@pytest.mark.parametrize("kind,peak", [
    ("TPU v4", 275.0), ("TPU v5 lite", 197.0), ("TPU v5e", 197.0), ("TPU v5p", 459.0), ("TPU v5", 459.0),
    ("TPU v6 lite", 918.0), ("TPU v6e", 918.0), ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H200", 989.0),
    ("NVIDIA H100 PCIe", 756.0), ("cpu", None), ("NVIDIA A100-SXM4-80GB", None),
])
def test_peak_lookup(kind, peak):
  assert dit_bench.peak_tflops_for(kind) == peak
