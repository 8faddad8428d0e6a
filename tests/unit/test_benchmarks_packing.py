"""Tests for vidgen.benchmarks.packing: a tiny run of all three modes through the command line, whose token counts
must match what the mix and row shape give, and the per-clip losses that leave padding out.

  pytest tests/unit/test_benchmarks_packing.py
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen.benchmarks import packing as packing_bench

PATCH = (1, 2, 2)


def test_cli_runs_every_mode_with_exact_token_counts(capsys):
  # Two distinct sizes of 8 tokens each (patch 1x2x2), twice each: the padded grid is their elementwise max 2x8x4
  # (16 tokens), larger than either clip.
  sizes = [(2, 4, 4), (1, 8, 4)]
  copies, row_length = 2, 24
  rows = packing_bench.main([
      "--variant", "WALT-L/1x2x2", "--width", "16", "--depth", "2", "--heads", "2", "--window", "2,2,2",
      "--mix", "2x4x4,1x8x4", "--copies", str(copies), "--channels", "4", "--text_len", "2", "--text_dim", "8",
      "--row_length", str(row_length), "--steps", "1", "--dtype", "float32"])
  by_mode = {r.mode: r for r in rows}
  assert [r.mode for r in rows] == ["padded", "bucketed", "packed_masked", "packed"]

  clips = [s for s in sizes for _ in range(copies)]
  tokens = [math.prod(s) // math.prod(PATCH) for s in clips]
  real = sum(tokens)
  assert real == 32
  for r in rows:
    assert r.real_tokens == real and r.clips == len(clips)
    assert r.step_s > 0 and r.compile_s > 0 and np.isfinite(r.loss)
    assert r.real_tokens_per_s == pytest.approx(real / r.step_s)
    assert r.token_efficiency == pytest.approx(r.real_tokens / r.computed_tokens)

  max_size = tuple(max(s[a] for s in sizes) for a in range(3))
  padded = by_mode["padded"]
  assert padded.programs == 1
  assert padded.computed_tokens == len(clips) * math.prod(max_size) // math.prod(PATCH) == 64

  bucketed = by_mode["bucketed"]
  assert bucketed.programs == len(set(sizes)) == 2
  assert bucketed.computed_tokens == real and bucketed.token_efficiency == 1.0

  # Four clips of 8 tokens in rows of 24: three fill the first row, the fourth starts a second.
  for mode in ("packed", "packed_masked"):  # the same rows; only how attention finds each token's window differs
    packed = by_mode[mode]
    assert packed.programs == 1
    assert packed.computed_tokens == 2 * row_length
    assert packed.token_efficiency == pytest.approx(32 / 48)

  table = capsys.readouterr().out
  for mode in packing_bench.MODES:
    assert f"| {mode} |" in table


class _PlusOne:
  """Stands in for VideoDiT: output = input + 1, so padding (zero inputs and targets) has an error of 1."""

  def __call__(self, z, t, cond):
    return z + 1.0

  def packed(self, patches, t, layout, cond):
    return patches + 1.0


def test_losses_average_real_elements_per_clip_then_clips():
  rng = np.random.default_rng(0)
  sizes = [(1, 4, 4), (3, 2, 6), (1, 4, 4), (2, 6, 2)]
  latents = [rng.standard_normal((*s, 3)).astype(np.float32) for s in sizes]
  targets = [rng.standard_normal((*s, 3)).astype(np.float32) for s in sizes]
  times = rng.uniform(0, 1, len(sizes)).astype(np.float32)
  text = rng.standard_normal((len(sizes), 2, 5)).astype(np.float32)
  per_clip = [float(np.mean(np.square(x + 1.0 - y))) for x, y in zip(latents, targets)]
  expected = float(np.mean(per_clip))
  model = _PlusOne()
  on_device = lambda inputs: jax.tree.map(jnp.asarray, inputs)  # noqa: E731

  padded = packing_bench.padded_inputs(latents, targets, times, text)
  assert padded["z"].shape == (4, 3, 6, 6, 3)
  assert float(packing_bench.grid_loss(model, on_device(padded))) == pytest.approx(expected, rel=1e-6)

  inputs, batch = packing_bench.packed_inputs(latents, targets, times, text, patch=PATCH, row_length=10)
  assert batch.token_efficiency() < 1.0  # Padding tokens are present and must not count.
  assert float(packing_bench.packed_loss(model, on_device(inputs))) == pytest.approx(expected, rel=1e-6)

  buckets = packing_bench.bucket_inputs(latents, targets, times, text)
  assert [b["z"].shape[0] for b in buckets] == [2, 1, 1]
  bucket_losses = [float(packing_bench.grid_loss(model, on_device(b))) for b in buckets]
  assert bucket_losses == pytest.approx([np.mean([per_clip[0], per_clip[2]]), per_clip[1], per_clip[3]], rel=1e-6)
  np.testing.assert_array_equal(buckets[0]["t"], times[[0, 2]])


def test_parsing():
  assert packing_bench.parse_mix("1x32x32, 9x24x48") == ((1, 32, 32), (9, 24, 48))
  with pytest.raises(ValueError, match="TxHxW"):
    packing_bench.parse_mix("1x32")
  assert packing_bench.default_row_length(2592) == 2688
  assert packing_bench.default_row_length(256) == 256
  args = packing_bench.parse_args([])
  assert (args.variant, args.width, args.depth, args.heads) == ("WALT-L/1x2x2", 128, 2, 4)
  args = packing_bench.parse_args(["--variant", "S/1x2x2", "--modes", "packed,padded"])
  assert (args.width, args.depth, args.heads, args.modes) == (None, None, None, ("packed", "padded"))
  assert packing_bench.overrides_from(args) == {}
  with pytest.raises(SystemExit):
    packing_bench.parse_args(["--modes", "sorted"])
