"""VideoDiT: a latent video diffusion transformer (DiT, arXiv 2212.09748; W.A.L.T, arXiv 2312.06662) in Flax NNX.

    z_t [B,T,H,W,C] (+ task channels, + self-conditioning estimate, concatenated on channels)
      -> spacetime patchify (pt, ph, pw) + Linear -> tokens [B, N, D] + spacetime positions (time + space, summed)
      -> depth x block: adaLN-Zero(c) around self-attention (full / spatial / spatiotemporal window per layer),
         cross-attention to text tokens (optional), tanh-GELU MLP
      -> final adaLN + Linear (zero-initialised) -> unpatchify -> v_hat [B,T,H,W,C_out]

`c = t_emb(t) + label_emb(label)`; labels use id `num_classes` as the "null" class for guidance dropout. A label
made of attributes can be embedded as the sum of one row per attribute (`class_factors`), and those rows can also be
the cross-attention context (`class_tokens`), as caption tokens are for a text model. With
AdaLN-LoRA (W.A.L.T) the per-block modulation is `A_1 + W_b^i W_a^i SiLU(c)` with `A_1 = Linear(SiLU(c))` shared.

Depth is run as a `jax.lax.scan` over stacked "super-blocks" (one block per entry of `attention_pattern`;
`vidgen.layers.scan`), so compile time does not grow with depth; `remat` picks the rematerialisation policy.

Build from a config (fields, variants and validation live in `vidgen.models.dit_config`):
`VideoDiT(dit_config("XL/2", num_classes=1000), rngs=nnx.Rngs(0))`, or `VideoDiT.from_variant("WALT-L", text_dim=4096,
rngs=...)`.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen.layers.attention import CrossAttention, SelfAttention
from vidgen.layers.embeddings import LabelEmbedder, PatchEmbed, SpacetimePosEmbed, TimestepEmbedder, unpatchify
from vidgen.layers.mlp import Mlp
from vidgen.layers.norms import RMSNorm
from vidgen.layers.scan import run_stacked, stacked
from vidgen.models.dit_config import DiTSpec, dit_config
from vidgen.parallel.sharding import constrain, logical

_RESIDUAL = ("act_batch", "act_len", "act_embed")


# ----------------------------------------------------------------------------------------------------------------------
# Conditioning.


@flax.struct.dataclass
class Conditioning:
  """Everything the DiT is conditioned on besides (z_t, t). Any field may be None.

  Attributes:
    labels: `[B]` int class ids; `num_classes` is the null class. None = all null (unconditional).
    text: `[B, L, text_dim]` text-encoder tokens. None = no caption (same as an all-padding caption).
    text_mask: `[B, L]` bool, True = real token. None = all real.
    task: `[B, T, H, W, task_channels]` task conditioning (e.g. mask * known latents, mask). None = zeros (no task).
    self_cond: `[B, T, H, W, C]` previous x estimate for self-conditioning. None = zeros (first pass).
  """

  labels: jax.Array | None = None
  text: jax.Array | None = None
  text_mask: jax.Array | None = None
  task: jax.Array | None = None
  self_cond: jax.Array | None = None


def null_conditioning(cond: Conditioning, num_classes: int) -> Conditioning:
  """The unconditional counterpart of `cond` for classifier-free guidance: null labels, all-padding text.

  Task and self-conditioning inputs are kept: guidance is on the class / caption; the task has its own dropout.
  """
  labels = None if cond.labels is None else jnp.full_like(cond.labels, num_classes)
  text_mask = None
  if cond.text is not None:
    text_mask = jnp.zeros(cond.text.shape[:2], bool)
  return cond.replace(labels=labels, text_mask=text_mask)


def drop_conditioning(cond: Conditioning, drop: jax.Array, num_classes: int) -> Conditioning:
  """Per-example guidance dropout: where `drop` (bool [B]) is True the example's label / caption becomes null.

  The caller draws `drop` (e.g. `jax.random.bernoulli(key, p, (B,))`) for the whole batch, so splitting the batch
  into micro-batches does not change which examples are dropped.
  """
  labels = cond.labels
  if labels is not None:
    labels = jnp.where(drop, num_classes, labels)
  text_mask = cond.text_mask
  if cond.text is not None:
    text_mask = jnp.ones(cond.text.shape[:2], bool) if text_mask is None else text_mask
    text_mask = text_mask & ~drop[:, None]
  return cond.replace(labels=labels, text_mask=text_mask)


# ----------------------------------------------------------------------------------------------------------------------
# Blocks.


def _layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """LayerNorm without affine over the last axis, in float32 (returns float32)."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array, dtype) -> jax.Array:
  """adaLN: `LN(x) * (1 + scale) + shift` in float32; x `[B, N, D]`, shift/scale `[B, D]`."""
  y = _layer_norm(x) * (1.0 + scale[:, None, :]) + shift[:, None, :]
  return y.astype(dtype)


class DiTBlock(nnx.Module):
  """adaLN-Zero transformer block: self-attention (of one `kind`), optional cross-attention, MLP."""

  def __init__(self, spec: DiTSpec, kind: str, *, rngs: nnx.Rngs):
    d, dtype, pdtype = spec.width, spec.compute_dtype, spec.params_dtype
    self.dtype = dtype
    self.attn = SelfAttention(d, spec.num_heads, kind=kind, window=spec.window, qk_norm=spec.qk_norm,
                              backend=spec.attention_backend, dtype=dtype, param_dtype=pdtype, rngs=rngs)
    self.cross = nnx.data(None)
    if spec.cross_attention:
      self.cross = CrossAttention(d, spec.num_heads, qk_norm=spec.qk_norm, backend=spec.attention_backend,
                                  dtype=dtype, param_dtype=pdtype, rngs=rngs)
    self.mlp = Mlp(d, spec.mlp_hidden, conv_kernel=spec.mlp_conv, dtype=dtype, param_dtype=pdtype, rngs=rngs)
    zeros = nnx.initializers.zeros_init()
    self.lora_rank = spec.adaln_lora_rank
    if self.lora_rank:
      # W.A.L.T AdaLN-LoRA: this block only adds a rank-r correction to the shared modulation. Zero "up" keeps the
      # block the identity at init (adaLN-Zero), random "down" lets the correction learn.
      self.ada_down = nnx.Param(logical(nnx.initializers.xavier_uniform(), "embed", None)(
          rngs.params(), (d, self.lora_rank), pdtype))
      self.ada_up = nnx.Param(logical(zeros, None, "mlp")(rngs.params(), (self.lora_rank, 6 * d), pdtype))
    else:
      self.ada = nnx.Linear(d, 6 * d, param_dtype=pdtype, kernel_init=logical(zeros, "embed", "mlp"),
                            bias_init=logical(zeros, "mlp"), rngs=rngs)

  def modulation(self, c_act: jax.Array, ada_shared: jax.Array | None) -> jax.Array:
    """SiLU(c) `[B, D]` (+ shared `[B, 6D]`) -> `[B, 6D]` float32 (shift, scale, gate for attention and MLP)."""
    if self.lora_rank:
      down = c_act @ self.ada_down[...].astype(jnp.float32)
      return ada_shared + down @ self.ada_up[...].astype(jnp.float32)
    return self.ada(c_act)

  def __call__(self, x: jax.Array, c_act: jax.Array, ada_shared: jax.Array | None, grid: tuple[int, int, int],
               context: jax.Array | None, context_mask: jax.Array | None) -> jax.Array:
    """x: `[B, N, D]` residual stream on `grid`; context: `[B, L, D]`, context_mask `[B, L]` -> `[B, N, D]`."""
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(self.modulation(c_act, ada_shared), 6, axis=-1)
    h = self.attn(_modulate(x, shift1, scale1, self.dtype), grid)
    x = x + (gate1[:, None, :] * h).astype(x.dtype)
    if self.cross is not None:
      x = x + self.cross(_layer_norm(x).astype(self.dtype), context, context_mask).astype(x.dtype)
    h = self.mlp(_modulate(x, shift2, scale2, self.dtype), grid)
    x = x + (gate2[:, None, :] * h).astype(x.dtype)
    return constrain(x, _RESIDUAL)


class SuperBlock(nnx.Module):
  """One block per entry of the attention pattern, run in order: the unit that is stacked and scanned."""

  def __init__(self, spec: DiTSpec, *, rngs: nnx.Rngs):
    self.layers = nnx.List([DiTBlock(spec, kind, rngs=rngs) for kind in spec.attention_pattern])

  def __call__(self, x, c_act, ada_shared, grid, context, context_mask):
    for block in self.layers:
      x = block(x, c_act, ada_shared, grid, context, context_mask)
    return x


class FinalLayer(nnx.Module):
  """adaLN (shift, scale) + Linear to patch outputs, both zero-initialised so the model outputs zeros at init."""

  def __init__(self, spec: DiTSpec, *, rngs: nnx.Rngs):
    d, pdtype = spec.width, spec.params_dtype
    zeros = nnx.initializers.zeros_init()
    self.dtype = spec.compute_dtype
    self.ada = nnx.Linear(d, 2 * d, param_dtype=pdtype, kernel_init=logical(zeros, "embed", "mlp"),
                          bias_init=logical(zeros, "mlp"), rngs=rngs)
    out = int(np.prod(spec.patch_size)) * spec.out_channels
    self.proj = nnx.Linear(d, out, dtype=self.dtype, param_dtype=pdtype, kernel_init=logical(zeros, "embed", None),
                           bias_init=logical(zeros, None), rngs=rngs)

  def __call__(self, x: jax.Array, c_act: jax.Array) -> jax.Array:
    """x `[B, N, D]`, SiLU(c) `[B, D]` -> `[B, N, pt*ph*pw*C_out]`."""
    shift, scale = jnp.split(self.ada(c_act), 2, axis=-1)
    return self.proj(_modulate(x, shift, scale, self.dtype))


# ----------------------------------------------------------------------------------------------------------------------
# The model.


class VideoDiT(nnx.Module):
  """Latent video diffusion transformer. `v_hat = dit(z_t, t, cond)`, `v_hat` shaped like `z_t`.

  Built from a VideoDiT config (`dit_config(...)`, usually `config.dit`), validated before any parameter is made.
  """

  def __init__(self, config: Mapping[str, Any] | DiTSpec, *, rngs: nnx.Rngs):
    spec = DiTSpec.from_config(config)
    self.spec = spec
    d, dtype, pdtype = spec.width, spec.compute_dtype, spec.params_dtype
    self.patch_embed = PatchEmbed(spec.input_channels, spec.patch_size, d, dtype=dtype, param_dtype=pdtype,
                                  rngs=rngs)
    self.pos_embed = SpacetimePosEmbed(spec.token_grid, d, kind=spec.pos_embedding, param_dtype=pdtype, rngs=rngs)
    self.t_embed = TimestepEmbedder(d, freq_dim=spec.freq_dim, time_scale=spec.time_scale, param_dtype=pdtype,
                                    rngs=rngs)
    self.label_embed = (LabelEmbedder(spec.num_classes, d, factors=spec.class_factors, param_dtype=pdtype, rngs=rngs)
                        if spec.num_classes else None)
    # Label rows start at std 0.02 (DiT's table init, sized for adding to c); as cross-attention tokens they are
    # RMS-normalised, as a text encoder's final norm does for caption tokens, so their values matter from step 0.
    self.label_token_norm = RMSNorm(d, param_dtype=pdtype, axis_name="embed") if spec.class_tokens else None
    self.text_proj = nnx.data(None)
    if spec.text_dim:
      self.text_proj = nnx.Linear(
          spec.text_dim, d, dtype=dtype, param_dtype=pdtype,
          kernel_init=logical(nnx.initializers.xavier_uniform(), None, "embed"),
          bias_init=logical(nnx.initializers.zeros_init(), "embed"), rngs=rngs)
    self.text_pool = nnx.data(None)
    if spec.pooled_text:
      # Zero-initialised: a pooled caption starts with no effect, so the model still starts as DiT's identity map.
      self.text_pool = nnx.Linear(d, d, param_dtype=pdtype,
                                  kernel_init=logical(nnx.initializers.zeros_init(), "embed", "mlp"),
                                  bias_init=logical(nnx.initializers.zeros_init(), "mlp"), rngs=rngs)
    self.ada_shared = nnx.data(None)
    if spec.adaln_lora_rank:
      zeros = nnx.initializers.zeros_init()
      self.ada_shared = nnx.Linear(d, 6 * d, param_dtype=pdtype, kernel_init=logical(zeros, "embed", "mlp"),
                                   bias_init=logical(zeros, "mlp"), rngs=rngs)

    # Stacked super-blocks: every parameter gets a leading "layers" axis of size depth / len(pattern).
    self.blocks = stacked(lambda r: SuperBlock(spec, rngs=r), spec.num_super_blocks, rngs)
    self.final = FinalLayer(spec, rngs=rngs)

  @classmethod
  def from_variant(cls, variant: str, *, rngs: nnx.Rngs, **overrides: Any) -> "VideoDiT":
    """`VideoDiT.from_variant("XL/2", num_classes=1000, rngs=nnx.Rngs(0))`."""
    return cls(dit_config(variant, **overrides), rngs=rngs)

  @property
  def null_label(self) -> int:
    return self.spec.num_classes

  def _inputs(self, z_t: jax.Array, cond: Conditioning) -> jax.Array:
    """z_t `[B, T, H, W, C]` (+ self-conditioning, + task channels) -> `[B, T, H, W, input_channels]`."""
    spec = self.spec
    parts = [z_t]
    if spec.self_condition:
      sc = jnp.zeros_like(z_t) if cond.self_cond is None else cond.self_cond
      if sc.shape != z_t.shape:
        raise ValueError(f"cond.self_cond must have the shape of z_t {z_t.shape}; got {sc.shape}")
      parts.append(sc.astype(z_t.dtype))
    elif cond.self_cond is not None:
      raise ValueError("cond.self_cond was given but the model was built with self_condition=False")
    if spec.task_channels:
      shape = (*z_t.shape[:4], spec.task_channels)
      task = jnp.zeros(shape, z_t.dtype) if cond.task is None else cond.task
      if task.shape != shape:
        raise ValueError(f"cond.task must have shape [B, T, H, W, task_channels] = {shape}; got {task.shape}")
      parts.append(task.astype(z_t.dtype))
    elif cond.task is not None:
      raise ValueError("cond.task was given but the model was built with task_channels=0")
    return jnp.concatenate(parts, axis=-1) if len(parts) > 1 else z_t

  def _context(self, batch: int, cond: Conditioning) -> tuple[jax.Array | None, jax.Array | None]:
    """Text tokens projected to the model width `[B, L, D]` and their mask `[B, L]`."""
    if self.text_proj is None:
      if cond.text is not None:
        raise ValueError("cond.text was given but the model was built with text_dim=0")
      return None, None
    text, mask = cond.text, cond.text_mask
    if text is None:
      # No caption = one padding token: cross-attention then contributes nothing, exactly like a null caption.
      text = jnp.zeros((batch, 1, self.spec.text_dim), self.spec.compute_dtype)
      mask = jnp.zeros((batch, 1), bool)
    if text.ndim != 3 or text.shape[0] != batch or text.shape[2] != self.spec.text_dim:
      raise ValueError(f"cond.text must be [B, L, text_dim] with B={batch}, text_dim={self.spec.text_dim}; "
                       f"got {text.shape}")
    if mask is None:
      mask = jnp.ones(text.shape[:2], bool)
    context = self.text_proj(text)
    return constrain(context, _RESIDUAL), mask.astype(bool)

  def __call__(self, z_t: jax.Array, t: jax.Array, cond: Conditioning | None = None) -> jax.Array:
    """Predicts v (or whatever the objective trains) for noisy latents.

    Args:
      z_t: `[B, T, H, W, C]` noisy latents; T, H, W divisible by the patch size (any size: positions interpolate).
      t: `[B]` (or scalar) continuous time in [0, 1].
      cond: `Conditioning`; None = unconditional.

    Returns:
      `[B, T, H, W, out_channels]` in the dtype of `z_t` (same shape as `z_t` when out_channels == C).
    """
    spec = self.spec
    cond = Conditioning() if cond is None else cond
    if z_t.ndim != 5 or z_t.shape[-1] != spec.in_channels:
      raise ValueError(f"z_t must be [B, T, H, W, {spec.in_channels}]; got {z_t.shape}")
    batch = z_t.shape[0]
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))

    x, grid = self.patch_embed(self._inputs(z_t, cond))
    x = x + self.pos_embed(grid)[None].astype(x.dtype)
    x = constrain(x, _RESIDUAL)

    c = self.t_embed(t)
    context, context_mask = self._context(batch, cond)
    if self.label_embed is not None:
      labels = jnp.full((batch,), spec.num_classes, jnp.int32) if cond.labels is None else cond.labels
      label_tokens = self.label_embed.tokens(labels)
      c = c + jnp.sum(label_tokens, axis=1)
      if spec.class_tokens:
        # Every row is a learned vector, the null ones included, so no token is masked.
        context = constrain(self.label_token_norm(label_tokens).astype(spec.compute_dtype), _RESIDUAL)
        context_mask = jnp.ones(label_tokens.shape[:2], bool)
    elif cond.labels is not None:
      raise ValueError("cond.labels was given but the model was built with num_classes=0")
    if self.text_pool is not None:
      # Mean over real caption tokens; an all-padding (null) caption pools to zero and adds only the bias.
      weights = context_mask.astype(jnp.float32)[..., None]
      pooled = jnp.sum(context.astype(jnp.float32) * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
      c = c + self.text_pool(pooled)
    c_act = jax.nn.silu(c)
    ada_shared = None if self.ada_shared is None else self.ada_shared(c_act)

    x = run_stacked(self.blocks, x, c_act, ada_shared, grid, context, context_mask, remat=spec.remat,
                    scan=spec.scan_layers)
    out = self.final(x, c_act)
    out = unpatchify(out, grid, spec.patch_size, spec.out_channels)
    return out.astype(z_t.dtype)
