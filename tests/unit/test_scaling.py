"""Tests for vidgen.scaling.flops: the DiT paper's table, XLA's own count (forward pass and whole training step), and
parameter counts."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from conftest import experiment_config
from vidgen.models.dit import Conditioning, VideoDiT
from vidgen.models.dit_config import dit_config
from vidgen.models.text import hf_text_config, small_text_config
from vidgen.scaling import (forward_flops, param_count, param_counts, text_encoder_forward_flops,
                            text_encoder_param_counts, train_flops_per_step)

# DiT paper (arXiv 2212.09748) Table 4 "Gflops" on a 32x32x4 latent: multiply-adds, so FLOPs are twice these.
DIT_GMACS = {
    ("S", 8): 0.36, ("S", 4): 1.41, ("S", 2): 6.06,
    ("B", 8): 1.42, ("B", 4): 5.56, ("B", 2): 23.01,
    ("L", 8): 5.01, ("L", 4): 19.70, ("L", 2): 80.71,
    ("XL", 8): 7.39, ("XL", 4): 29.05, ("XL", 2): 118.64,
}


@pytest.mark.parametrize("size,patch", sorted(DIT_GMACS))
def test_matches_dit_paper_table(size, patch):
  # The paper's models predict 2 x 4 channels (learned sigma).
  config = dit_config(f"{size}/{patch}", num_classes=1000, out_channels=8)
  flops = forward_flops(config, (1, 32, 32, 4))
  expected = 2e9 * DIT_GMACS[(size, patch)]
  assert abs(flops - expected) / expected < 0.01, (flops, expected)


def _xla_flops(config, latent_shape, text_len=0):
  """FLOPs XLA counts for one compiled forward pass on one example (abstract params: nothing is materialised)."""
  model = nnx.eval_shape(lambda: VideoDiT(config, rngs=nnx.Rngs(0)))
  graphdef, params = nnx.split(model)

  def forward(params, z, t, text):
    cond = Conditioning(text=text) if text is not None else None
    return nnx.merge(graphdef, params)(z, t, cond)

  z = jax.ShapeDtypeStruct((1, *latent_shape), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  text = jax.ShapeDtypeStruct((1, text_len, config.text_dim), jnp.float32) if text_len else None
  return jax.jit(forward).lower(params, z, t, text).compile().cost_analysis()["flops"]


@pytest.mark.parametrize(
    "variant,overrides,latent_shape,text_len",
    [
        # DiT-style image model: full attention, class labels, per-block adaLN.
        ("S/2", dict(depth=2, width=128, num_heads=4, input_size=(1, 16, 16), num_classes=10), (1, 16, 16, 4), 0),
        # W.A.L.T-style video model: spatial + spatiotemporal windows, AdaLN-LoRA, qk-norm, text cross-attention,
        # conv MLPs.
        ("WALT-L", dict(depth=2, width=128, num_heads=4, input_size=(4, 8, 8), in_channels=4, window=(2, 4, 4),
                        text_dim=32, mlp_conv=3), (4, 8, 8, 4), 8),
        # Class-conditional video model cross-attending to its label's three factor rows.
        ("WALT-L", dict(depth=2, width=128, num_heads=4, input_size=(4, 8, 8), in_channels=4, window=(2, 4, 4),
                        num_classes=84, class_factors=(7, 3, 4), class_tokens=True), (4, 8, 8, 4), 0),
    ],
)
def test_matches_xla_cost_analysis(variant, overrides, latent_shape, text_len):
  # Unrolled: XLA's CPU cost analysis counts a scan (while loop) body once, not once per iteration.
  config = dit_config(variant, scan_layers=False, **overrides)
  analytic = forward_flops(config, latent_shape, text_len=text_len)
  measured = _xla_flops(config, latent_shape[:3] + (config.in_channels,), text_len)
  # XLA also counts elementwise work (norms, softmax, GELU) that the analytic count leaves out, so it sits a little
  # above; 5% is the agreed tolerance.
  assert abs(measured - analytic) / analytic < 0.05, (measured, analytic)


def test_window_cost_scales_with_window():
  base = dict(depth=2, width=64, num_heads=4, input_size=(4, 16, 16), in_channels=4)
  small = forward_flops(dit_config("WALT-L", window=(2, 4, 4), attention_pattern=("spatiotemporal",), **base),
                        (4, 16, 16))
  large = forward_flops(dit_config("WALT-L", window=(4, 8, 8), attention_pattern=("spatiotemporal",), **base),
                        (4, 16, 16))
  full = forward_flops(dit_config("WALT-L", attention_pattern=("full",), **base), (4, 16, 16))
  n, d, depth = 4 * 16 * 16, 64, 2
  # Only the attention-score terms differ: 2 (QK^T, AV) x N x window x D multiply-adds per layer, x 2 FLOPs.
  assert large - small == 2 * depth * 2 * n * (256 - 32) * d
  assert full - large == 2 * depth * 2 * n * (n - 256) * d
  # An image (T = 1) through the same model: the window clamps to its frame.
  image = forward_flops(dit_config("WALT-L", window=(4, 8, 8), attention_pattern=("spatiotemporal",), **base),
                        (1, 16, 16))
  assert image < large / 3


def test_latent_shape_is_checked():
  config = dit_config("S/2")
  with pytest.raises(ValueError, match="channels"):
    forward_flops(config, (1, 32, 32, 8))
  with pytest.raises(ValueError, match="patch"):
    forward_flops(config, (1, 31, 32))


def test_param_count_closed_form():
  # DiT-S/2 with learned sigma and 1000 classes, counted by hand.
  d, depth, patch, c_in, c_out, classes = 384, 12, 4, 4, 8, 1000
  block = (3 * d * d + 3 * d) + (d * d + d) + (8 * d * d + 5 * d) + (6 * d * d + 6 * d)
  total = (depth * block
           + patch * c_in * d + d                      # Patch embedding.
           + 256 * d + d + d * d + d                   # Timestep MLP.
           + (classes + 1) * d                         # Class table with the null class.
           + 2 * d * d + 2 * d + d * patch * c_out + patch * c_out)  # Final adaLN and projection.
  assert param_count(dit_config("S/2", num_classes=classes, out_channels=c_out)) == total


# -- training FLOPs per step -------------------------------------------------------------------------------------------


def _run_config(arg=None, *, batch_size=8, text=None, **dit):
  """A shapes_t2v run config (`arg` "class" for labels) with a 2-block, width-256 DiT on a (4, 8, 8) latent grid.

  Width 256: the elementwise work XLA also counts (norms, GELU, softmax, adaLN modulation: O(width) per token against
  the matmuls' O(width^2)) is 5-14% of the step at width 64 and 2-4% here; the optimizer and EMA updates (O(params),
  independent of the batch) are < 1% from batch 8 on.
  """
  config = experiment_config("shapes_t2v", arg, batch_size=batch_size)
  if text is not None:
    config.text = text
  fields = dict(input_size=(4, 8, 8), width=256, depth=2, num_heads=4, window=(2, 4, 4), scan_layers=False)
  fields.update(dit)
  config.dit.update(fields)
  if config.conditioning == "text":  # A frozen encoder's width is any: the step never reads its checkpoint.
    config.dit.text_dim = 768 if config.text.get("encoder") == "hf" else config.text.width
  return config


def _xla_step_flops(config, phase):
  """FLOPs XLA counts for the compiled `DiTTrainer` step of `phase` (abstract state and batch: compiled, never run)."""
  from vidgen.benchmarks.flops import lowered_step

  trainer, lowered = lowered_step(config, phase)
  assert trainer.model_flops_per_step(phase) == train_flops_per_step(config, phase)
  return lowered.compile().cost_analysis()["flops"]


@pytest.mark.parametrize(
    "arg,text,dit,phase",
    [
        # The main job's kind of model: captions through a small text encoder trained with the DiT, spatial and
        # spatiotemporal windows, depth unrolled.
        (None, None, {}, "video"),
        # 1-frame image batches with self-conditioning's extra gradient-free forward pass.
        (None, None, dict(self_condition=True), "image"),
        # Class labels as cross-attention tokens, full attention, depth scanned. XLA's CPU cost analysis counts a
        # scan (while loop) body once, so the two blocks form one super-block: one iteration, counted right.
        ("class", None, dict(attention_pattern=("full", "full"), scan_layers=True), "video"),
        # A frozen encoder's caption embeddings come from the latent cache: only the DiT's cross-attention costs.
        (None, hf_text_config("/unused", max_length=8), dict(self_condition=True), "video"),
        # Windows that do not tile the grid: the padding of partial windows is computed, and counted.
        (None, None, dict(window=(3, 3, 5)), "video"),
    ],
)
def test_train_flops_match_xla_cost_analysis(arg, text, dit, phase):
  config = _run_config(arg, text=text, **dit)
  analytic = train_flops_per_step(config, phase)
  measured = _xla_step_flops(config, phase)
  # XLA also counts the elementwise work (norms, softmax, GELU, loss, AdamW, EMA) that the matmul-only count leaves
  # out: 2-4% at these shapes.
  assert abs(measured - analytic) / analytic < 0.05, (measured, analytic)


def test_train_flops_terms():
  config = _run_config()
  length = config.text.max_length
  video, image = train_flops_per_step(config, "video"), train_flops_per_step(config, "image")
  text = 3 * config.batch_size * text_encoder_forward_flops(config.text, length)
  dit = forward_flops(config.dit, config.dit.input_size, length)
  assert video == 3 * config.batch_size * dit + text
  assert image == 3 * config.batch_size * forward_flops(config.dit, (1, 8, 8), length) + text
  # Self-conditioning: one more forward pass per example (its input has C more channels).
  sc = _run_config(self_condition=True)
  assert train_flops_per_step(sc, "video") == (
      4 * config.batch_size * forward_flops(sc.dit, config.dit.input_size, length) + text)
  # Gradient accumulation splits the batch, not the work.
  accum = _run_config()
  accum.grad_accum_steps = 4
  assert train_flops_per_step(accum, "video") == video
  # A frozen encoder costs nothing per step; class labels have no text encoder at all.
  frozen = _run_config(text=hf_text_config("/unused", max_length=length))
  assert train_flops_per_step(frozen, "video") == 3 * config.batch_size * forward_flops(
      frozen.dit, config.dit.input_size, length)
  labels = _run_config("class")
  assert train_flops_per_step(labels, "video") == 3 * config.batch_size * forward_flops(labels.dit, (4, 8, 8))
  with pytest.raises(ValueError, match="phase"):
    train_flops_per_step(config, "audio")


def test_text_encoder_flops_match_xla_cost_analysis():
  from vidgen.models.text import SmallTextEncoder

  # One block: its blocks are always scanned, and XLA's CPU cost analysis counts a scan body once.
  config = small_text_config(vocab_size=100, max_length=16, width=256, depth=1, num_heads=4)
  model = nnx.eval_shape(lambda: SmallTextEncoder(config, rngs=nnx.Rngs(0)))
  graphdef, params = nnx.split(model)
  ids = jax.ShapeDtypeStruct((1, 16), jnp.int32)
  mask = jax.ShapeDtypeStruct((1, 16), jnp.bool_)
  measured = jax.jit(lambda p, i, m: nnx.merge(graphdef, p)(i, m)).lower(params, ids, mask).compile().cost_analysis()
  analytic = text_encoder_forward_flops(config, 16)
  assert abs(measured["flops"] - analytic) / analytic < 0.05, (measured["flops"], analytic)
  with pytest.raises(ValueError, match="text_len"):
    text_encoder_forward_flops(config, 17)


def test_param_counts_exclude_lookup_tables():
  # Sin-cos positions have no parameters: only the class table (1000 classes + null) is a lookup.
  d = 384
  counts = param_counts(dit_config("S/2", num_classes=1000))
  assert counts["total"] == param_count(dit_config("S/2", num_classes=1000))
  assert counts["total"] - counts["non_embedding"] == 1001 * d
  # Learned time [T0, D] and space [H0, W0, D] tables; factored labels: one row per factor value plus a null each.
  config = dit_config("WALT-L", depth=2, width=64, num_heads=4, input_size=(4, 8, 8), window=(2, 4, 4),
                      num_classes=84, class_factors=(7, 3, 4), class_tokens=True)
  counts = param_counts(config)
  assert counts["total"] - counts["non_embedding"] == (4 + 8 * 8) * 64 + (8 + 4 + 5) * 64
  # The small text encoder: token and position tables.
  text = small_text_config(vocab_size=100, max_length=16, width=32, depth=1, num_heads=2)
  counts = text_encoder_param_counts(text)
  assert counts["total"] - counts["non_embedding"] == (100 + 16) * 32
