"""Analytic cost of a VideoDiT: forward FLOPs per example and parameter counts.

FLOPs count matrix multiplies only, 2 per multiply-add (the DiT paper's "Gflops" column counts a multiply-add once,
so its numbers are half of these). Elementwise work (norms, softmax, GELU, modulation) is left out, as in the paper
and in the usual `6 N D` accounting; it is a few percent at the sizes where compute matters.

Training compute per example is ~3x the forward (forward + backward), 4x with full rematerialisation.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from vidgen.layers.attention import check_window
from vidgen.layers.embeddings import token_grid
from vidgen.models.dit import VideoDiT
from vidgen.models.dit_config import DiTSpec


def _window_tokens(kind: str, grid: Sequence[int], window: Sequence[int]) -> int:
  """Keys each query sees in a self-attention layer of `kind` on token `grid`."""
  t, h, w = grid
  if kind == "full":
    return t * h * w
  if kind == "spatial":
    return h * w
  return int(np.prod(check_window(grid, window)))


def forward_macs(model_config: Mapping[str, Any] | DiTSpec, latent_shape: Sequence[int], text_len: int = 0) -> int:
  """Multiply-adds of one forward pass on one example (see `forward_flops`)."""
  spec = DiTSpec.from_config(model_config)
  if len(latent_shape) == 4:
    if int(latent_shape[3]) != spec.in_channels:
      raise ValueError(f"latent_shape {tuple(latent_shape)} has {latent_shape[3]} channels but the model takes "
                       f"{spec.in_channels}")
    latent_shape = latent_shape[:3]
  if len(latent_shape) != 3:
    raise ValueError(f"latent_shape must be (T, H, W) or (T, H, W, C); got {tuple(latent_shape)}")
  grid = token_grid(tuple(int(s) for s in latent_shape), spec.patch_size)
  n = int(np.prod(grid))
  d = spec.width
  patch = int(np.prod(spec.patch_size))
  # Without a caption the model still cross-attends to one (masked) token.
  text = (max(int(text_len), 1) if spec.text_dim else 0)
  if spec.class_tokens:  # The label's rows, one per factor, are the context.
    text = len(spec.class_factors) or 1

  macs = n * patch * spec.input_channels * d                      # Patch embedding.
  macs += spec.freq_dim * d + d * d                               # Timestep MLP.
  macs += text * spec.text_dim * d                                # Caption projection.
  macs += d * d if spec.pooled_text else 0                        # Pooled caption into the adaLN conditioning.
  if spec.adaln_lora_rank:                                        # adaLN modulation (per example, not per token).
    r = spec.adaln_lora_rank
    macs += d * 6 * d + spec.depth * (d * r + r * 6 * d)
  else:
    macs += spec.depth * d * 6 * d
  for kind in spec.attention_pattern * spec.num_super_blocks:
    macs += 4 * n * d * d                                         # q, k, v and output projections.
    macs += 2 * n * _window_tokens(kind, grid, spec.window) * d   # QK^T and AV within each window.
    if spec.cross_attention:
      macs += 2 * n * d * d + 2 * text * d * d                    # Cross-attention q, out; k, v of the caption.
      macs += 2 * n * text * d                                    # Cross-attention QK^T and AV.
    macs += 2 * n * d * spec.mlp_hidden                           # MLP.
    macs += n * spec.mlp_conv ** 2 * d                            # Its depthwise conv (0 when off).
  macs += d * 2 * d + n * d * patch * spec.out_channels           # Final adaLN and projection.
  return int(macs)


def forward_flops(model_config: Mapping[str, Any] | DiTSpec, latent_shape: Sequence[int], text_len: int = 0) -> int:
  """Forward FLOPs (2 per multiply-add) of a VideoDiT on one example.

  Args:
    model_config: a VideoDiT config (`config.dit`) or `DiTSpec`.
    latent_shape: `(T, H, W)` or `(T, H, W, C)` of the latent fed to the model (any size the patch divides).
    text_len: caption tokens for cross-attention (ignored when the model has no text conditioning).

  Returns:
    FLOPs as an int: patch embedding, timestep MLP, caption projection, adaLN (or AdaLN-LoRA), per block the
    qkv/out projections, attention scores and weighted sums within each window, cross-attention, the MLP (and its
    depthwise conv), and the final layer.
  """
  return 2 * forward_macs(model_config, latent_shape, text_len)


def param_count(model_config: Mapping[str, Any] | DiTSpec) -> int:
  """Number of trainable parameters, computed abstractly (no weights are materialised)."""
  spec = DiTSpec.from_config(model_config)
  model = nnx.eval_shape(lambda: VideoDiT(spec, rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)))
