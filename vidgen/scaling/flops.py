"""Analytic cost of a VideoDiT run: forward FLOPs per example, training FLOPs per step, and parameter counts.

FLOPs count matrix multiplies only, 2 per multiply-add (the DiT paper's "Gflops" column counts a multiply-add once,
so its numbers are half of these). Elementwise work (norms, softmax, GELU, modulation, the optimizer and EMA updates)
is left out, as in the paper and in the usual `6 N D` accounting; it is a few percent at the sizes where compute
matters (tests/unit/test_scaling.py checks the count against XLA's cost analysis of the compiled training step).

Training compute per example is ~3x the forward (forward + backward); a rematerialised forward is not counted again
(these are model FLOPs, what MFU divides by, not hardware FLOPs).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from flax import nnx

from vidgen.layers.attention import clamp_window
from vidgen.layers.embeddings import SpacetimePosEmbed, token_grid
from vidgen.models.dit import VideoDiT
from vidgen.models.dit_config import DiTSpec
from vidgen.models.text.frozen import text_encoder_kind
from vidgen.models.text.small import SmallTextEncoder, validate_small_text_config

PHASES = ("video", "image")


def _attention_pairs(kind: str, grid: Sequence[int], window: Sequence[int]) -> int:
  """(query, key) pairs a self-attention layer of `kind` computes on token `grid`: windows that do not tile the grid
  are padded to whole windows (`vidgen.layers.attention.windowed_attention`), and the padding is computed too."""
  t, h, w = grid
  if kind == "full":
    return (t * h * w) ** 2
  if kind == "spatial":
    return t * (h * w) ** 2
  box = clamp_window(grid, window)
  windows = int(np.prod([-(-g // b) for g, b in zip(grid, box)]))
  return windows * int(np.prod(box)) ** 2


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
    macs += 2 * _attention_pairs(kind, grid, spec.window) * d     # QK^T and AV within each window.
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


def text_encoder_forward_macs(text_config: Mapping[str, Any], text_len: int) -> int:
  """Multiply-adds of one `SmallTextEncoder` forward pass on one caption (see `text_encoder_forward_flops`)."""
  validate_small_text_config(text_config)
  length, d = int(text_len), int(text_config["width"])
  if not 1 <= length <= int(text_config["max_length"]):
    raise ValueError(f"text_len must be in [1, max_length={text_config['max_length']}], got {text_len}")
  hidden = int(d * float(text_config["mlp_ratio"]))
  per_block = (4 * length * d * d          # q, k, v and output projections.
               + 2 * length * length * d    # QK^T and AV over the caption.
               + 2 * length * d * hidden)   # MLP.
  return int(text_config["depth"]) * per_block


def text_encoder_forward_flops(text_config: Mapping[str, Any], text_len: int) -> int:
  """Forward FLOPs (2 per multiply-add) of the small text encoder trained with the DiT, on one caption.

  Args:
    text_config: a `small_text_config(...)` (`config.text` of a run with `text.encoder = "small"`).
    text_len: caption tokens per example (the trainer pads every caption to `text.max_length`).

  Returns:
    FLOPs as an int: per block the qkv/out projections, attention over the caption and the MLP. The token and
    position embeddings are lookups (0 FLOPs).
  """
  return 2 * text_encoder_forward_macs(text_config, text_len)


def train_flops_per_step(config: Mapping[str, Any], phase: str) -> int:
  """Model FLOPs of one training step of a DiT run config (what `DiTTrainer` logs and MFU divides by).

  Per example: 3 x the DiT forward (forward + backward) on the phase's latent grid, + 1 forward for
  self-conditioning's gradient-free first pass, + 3 x the forward of a small text encoder trained jointly
  (`conditioning = "text"`, `text.encoder = "small"`; a frozen encoder's embeddings are precomputed in the latent
  cache and cost the step nothing). Times `batch_size`: gradient accumulation splits the batch, not the work.
  Matmuls only (see the module docstring): the optimizer and EMA updates (O(params), a few tens of FLOPs per
  parameter) are left out like the other elementwise work.

  Args:
    config: a DiT run config (`config.dit`, `config.batch_size`, `config.conditioning`, `config.text`).
    phase: "video" (the latent grid `dit.input_size`) or "image" (one latent frame of it).

  Returns:
    FLOPs of one step over the whole global batch, as an int.
  """
  if phase not in PHASES:
    raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
  spec = DiTSpec.from_config(config["dit"])
  grid = (1, *spec.input_size[1:]) if phase == "image" else tuple(spec.input_size)
  return int(config["batch_size"]) * train_flops_per_example(config, grid)


def train_flops_per_example(config: Mapping[str, Any], latent_grid: Sequence[int]) -> int:
  """Model FLOPs of training on one example of latent size `latent_grid` (T, H, W) (see `train_flops_per_step`)."""
  spec = DiTSpec.from_config(config["dit"])
  captions = config["conditioning"] == "text"
  text_len = int(config["text"]["max_length"]) if captions else 0
  dit_passes = 4 if spec.self_condition else 3
  per_example = dit_passes * forward_flops(spec, tuple(latent_grid), text_len)
  if captions and text_encoder_kind(config["text"]) == "small":
    per_example += 3 * text_encoder_forward_flops(config["text"], text_len)
  return per_example


def _counts(model: nnx.Module) -> dict[str, int]:
  """{"total", "non_embedding"} parameters of an (abstract) module; lookup tables are the embedding part."""
  lookups = [tuple(path) for path, node in nnx.iter_graph(model) if isinstance(node, (nnx.Embed, SpacetimePosEmbed))]
  total = embedding = 0
  for path, param in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    size = int(np.prod(param.shape))
    total += size
    # A learned position table held directly as a Param (the text encoder's `pos_embed`) is a lookup too.
    if path[-1] == "pos_embed" or any(path[:len(m)] == m for m in lookups):
      embedding += size
  return {"total": total, "non_embedding": total - embedding}


def param_counts(model_config: Mapping[str, Any] | DiTSpec) -> dict[str, int]:
  """Trainable parameters of a VideoDiT, total and non-embedding, computed abstractly (nothing is materialised).

  Non-embedding as in Kaplan et al. (arXiv 2001.08361): every parameter except lookup tables, which cost no FLOPs:
  learned position tables (`pos_embedding = "learned"`; sin-cos positions have no parameters) and the class-label
  table. Everything a matmul reads counts, including the patch embedding, the timestep MLP and the final layer.

  Args:
    model_config: a VideoDiT config (`config.dit`) or `DiTSpec`.

  Returns:
    {"total": int, "non_embedding": int}.
  """
  spec = DiTSpec.from_config(model_config)
  return _counts(nnx.eval_shape(lambda: VideoDiT(spec, rngs=nnx.Rngs(0))))


def text_encoder_param_counts(text_config: Mapping[str, Any]) -> dict[str, int]:
  """Trainable parameters of a `SmallTextEncoder`, total and non-embedding (abstractly, as `param_counts`).

  Args:
    text_config: a `small_text_config(...)`.

  Returns:
    {"total": int, "non_embedding": int}; the token and position tables are the embedding part.
  """
  return _counts(nnx.eval_shape(lambda: SmallTextEncoder(text_config, rngs=nnx.Rngs(0))))


def param_count(model_config: Mapping[str, Any] | DiTSpec) -> int:
  """Number of trainable parameters of a VideoDiT (`param_counts(model_config)["total"]`)."""
  return param_counts(model_config)["total"]
