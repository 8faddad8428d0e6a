"""Tests for vidgen.scaling.flops: the DiT paper's table, XLA's own count, and parameter counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from vidgen.models.dit import Conditioning, VideoDiT
from vidgen.models.dit_config import dit_config
from vidgen.scaling import forward_flops, param_count

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
