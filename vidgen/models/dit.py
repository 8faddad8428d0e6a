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
from vidgen.layers.layout import Layout, PackedLayout, per_clip
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
  """adaLN: `LN(x) * (1 + scale) + shift` in float32; x `[B, N, D]`, shift/scale `[B, 1|N, D]`."""
  y = _layer_norm(x) * (1.0 + scale) + shift
  return y.astype(dtype)


def _per_token(modulation: jax.Array, layout: Layout) -> jax.Array:
  """Per-clip modulation `[B, S, K]` -> what the tokens of `layout` read: `[B, 1, K]` for a grid (S = 1), `[B, L, K]`
  for packed rows (each token its clip's row)."""
  return per_clip(modulation, layout) if isinstance(layout, PackedLayout) else modulation


class DiTBlock(nnx.Module):
  """adaLN-Zero transformer block: self-attention (of one `kind`), optional cross-attention, MLP."""

  def __init__(self, spec: DiTSpec, kind: str, *, rngs: nnx.Rngs):
    d, dtype, pdtype = spec.width, spec.compute_dtype, spec.params_dtype
    self.dtype = dtype
    self.attn = SelfAttention(d, spec.num_heads, kind=kind, window=spec.window, qk_norm=spec.qk_norm,
                              rope=spec.pos_embedding == "rope", backend=spec.attention_backend, dtype=dtype,
                              param_dtype=pdtype, rngs=rngs)
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
    """SiLU(c) `[B, S, D]` (+ shared `[B, S, 6D]`) -> `[B, S, 6D]` float32 (shift, scale, gate for attention and
    MLP), one row per clip."""
    if self.lora_rank:
      down = c_act @ self.ada_down[...].astype(jnp.float32)
      return ada_shared + down @ self.ada_up[...].astype(jnp.float32)
    return self.ada(c_act)

  def __call__(self, x: jax.Array, c_act: jax.Array, ada_shared: jax.Array | None, layout: Layout,
               context: jax.Array | None, context_mask: jax.Array | None) -> jax.Array:
    """x: `[B, N, D]` residual stream on `layout`; c_act `[B, S, D]` per clip; context: `[B, L, D]`, context_mask
    `[B, L]` or per query `[B, 1, N, L]` -> `[B, N, D]`."""
    modulation = _per_token(self.modulation(c_act, ada_shared), layout)
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(modulation, 6, axis=-1)
    h = self.attn(_modulate(x, shift1, scale1, self.dtype), layout)
    x = x + (gate1 * h).astype(x.dtype)
    if self.cross is not None:
      x = x + self.cross(_layer_norm(x).astype(self.dtype), context, context_mask).astype(x.dtype)
    grid = None if isinstance(layout, PackedLayout) else layout
    h = self.mlp(_modulate(x, shift2, scale2, self.dtype), grid)
    x = x + (gate2 * h).astype(x.dtype)
    return constrain(x, _RESIDUAL)


class SuperBlock(nnx.Module):
  """One block per entry of the attention pattern, run in order: the unit that is stacked and scanned."""

  def __init__(self, spec: DiTSpec, *, rngs: nnx.Rngs):
    self.layers = nnx.List([DiTBlock(spec, kind, rngs=rngs) for kind in spec.attention_pattern])

  def __call__(self, x, c_act, ada_shared, layout, context, context_mask):
    for block in self.layers:
      x = block(x, c_act, ada_shared, layout, context, context_mask)
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

  def __call__(self, x: jax.Array, c_act: jax.Array, layout: Layout) -> jax.Array:
    """x `[B, N, D]`, SiLU(c) `[B, S, D]` -> `[B, N, pt*ph*pw*C_out]`."""
    shift, scale = jnp.split(_per_token(self.ada(c_act), layout), 2, axis=-1)
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
    # Rotary positions act inside self-attention; the others are added to the tokens here.
    self.pos_embed = nnx.data(None)
    if spec.pos_embedding != "rope":
      self.pos_embed = SpacetimePosEmbed(spec.token_grid, d, kind=spec.pos_embedding, param_dtype=pdtype, rngs=rngs)
    self.t_embed = TimestepEmbedder(d, freq_dim=spec.freq_dim, time_scale=spec.time_scale,
                                    time_offset=spec.time_offset, freq_shift=spec.freq_shift, param_dtype=pdtype,
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
    """z_t `[..., C]` (+ self-conditioning, + task channels, shaped like z_t but for channels) -> `[..., input_channels]`.

    z_t is a latent `[B, T, H, W, C]` or packed patches `[B, L, P, C]`: either way the extra inputs join on channels.
    """
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
      shape = (*z_t.shape[:-1], spec.task_channels)
      task = jnp.zeros(shape, z_t.dtype) if cond.task is None else cond.task
      if task.shape != shape:
        raise ValueError(f"cond.task must have the shape of z_t with task_channels={spec.task_channels} channels, "
                         f"{shape}; got {task.shape}")
      parts.append(task.astype(z_t.dtype))
    elif cond.task is not None:
      raise ValueError("cond.task was given but the model was built with task_channels=0")
    return jnp.concatenate(parts, axis=-1) if len(parts) > 1 else z_t

  def _clip_conditioning(self, t: jax.Array, cond: Conditioning
                         ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """Per clip: t `[B, S]`, labels `[B, S]`, text `[B, S, L, text_dim]`, text_mask `[B, S, L]` ->
    (c `[B, S, D]` float32, context `[B, S, Lc, D]` or None, context mask `[B, S, Lc]` or None)."""
    spec = self.spec
    batch, clips = t.shape
    c = self.t_embed(t.reshape(-1)).reshape(batch, clips, -1)
    context = mask = None
    if self.text_proj is not None:
      text, mask = cond.text, cond.text_mask
      if text is None:
        # No caption = one padding token: cross-attention then contributes nothing, exactly like a null caption.
        text = jnp.zeros((batch, clips, 1, spec.text_dim), spec.compute_dtype)
        mask = jnp.zeros((batch, clips, 1), bool)
      if mask is None:
        mask = jnp.ones(text.shape[:3], bool)
      context, mask = self.text_proj(text), mask.astype(bool)
    elif cond.text is not None:
      raise ValueError("cond.text was given but the model was built with text_dim=0")
    if self.label_embed is not None:
      labels = jnp.full((batch, clips), spec.num_classes, jnp.int32) if cond.labels is None else cond.labels
      label_tokens = self.label_embed.tokens(labels)  # [B, S, factors, D]
      c = c + jnp.sum(label_tokens, axis=-2)
      if spec.class_tokens:
        # Every row is a learned vector, the null ones included, so no token is masked.
        context = self.label_token_norm(label_tokens).astype(spec.compute_dtype)
        mask = jnp.ones(label_tokens.shape[:3], bool)
    elif cond.labels is not None:
      raise ValueError("cond.labels was given but the model was built with num_classes=0")
    if self.text_pool is not None:
      # Mean over real caption tokens; an all-padding (null) caption pools to zero and adds only the bias.
      weights = mask.astype(jnp.float32)[..., None]
      pooled = jnp.sum(context.astype(jnp.float32) * weights, axis=-2) / jnp.maximum(jnp.sum(weights, axis=-2), 1.0)
      c = c + self.text_pool(pooled)
    return c, context, mask

  def _transform(self, x: jax.Array, layout: Layout, c: jax.Array, context: jax.Array | None,
                 context_mask: jax.Array | None) -> jax.Array:
    """Tokens `[B, N, D]` with positions added, per-clip c `[B, S, D]` -> patch outputs `[B, N, pt*ph*pw*C_out]`."""
    x = constrain(x, _RESIDUAL)
    context = None if context is None else constrain(context, _RESIDUAL)
    c_act = jax.nn.silu(c)
    ada_shared = None if self.ada_shared is None else self.ada_shared(c_act)
    x = run_stacked(self.blocks, x, c_act, ada_shared, layout, context, context_mask, remat=self.spec.remat,
                    scan=self.spec.scan_layers)
    return self.final(x, c_act, layout)

  def __call__(self, z_t: jax.Array, t: jax.Array, cond: Conditioning | None = None) -> jax.Array:
    """Predicts v (or whatever the objective trains) for noisy latents.

    Args:
      z_t: `[B, T, H, W, C]` noisy latents; T, H, W divisible by the patch size (any size: positions interpolate or
        rotate, windows that do not tile the grid end in partial windows).
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
    if cond.text is not None and (cond.text.ndim != 3 or cond.text.shape[0] != batch
                                  or cond.text.shape[2] != spec.text_dim):
      raise ValueError(f"cond.text must be [B, L, text_dim] with B={batch}, text_dim={spec.text_dim}; "
                       f"got {cond.text.shape}")

    x, grid = self.patch_embed(self._inputs(z_t, cond))
    if self.pos_embed is not None:
      x = x + self.pos_embed(grid)[None].astype(x.dtype)
    one_clip = lambda a: None if a is None else a[:, None]  # noqa: E731  a batch row is one clip
    c, context, mask = self._clip_conditioning(
        t[:, None], cond.replace(labels=one_clip(cond.labels), text=one_clip(cond.text),
                                 text_mask=one_clip(cond.text_mask)))
    if context is not None:
      context, mask = context[:, 0], mask[:, 0]
    out = self._transform(x, grid, c, context, mask)
    out = unpatchify(out, grid, spec.patch_size, spec.out_channels)
    return out.astype(z_t.dtype)

  def packed(self, patches: jax.Array, t: jax.Array, layout: PackedLayout,
             cond: Conditioning | None = None) -> jax.Array:
    """The model on packed rows (Patch n' Pack): several clips of any size and duration per row, each exactly as if
    it ran alone (`vidgen.data.packing` builds the rows and takes the outputs back apart).

    Args:
      patches: `[B, L, P, C]` noisy latent patches, `P = pt * ph * pw` values per channel in (pt, ph, pw) order.
      t: `[B, S]` time of each clip slot (S = most clips in a row).
      layout: `PackedLayout` of the rows.
      cond: per clip: labels `[B, S]`, text `[B, S, Lt, text_dim]`, text_mask `[B, S, Lt]`; per token: task
        `[B, L, P, task_channels]`, self_cond `[B, L, P, C]`. None = unconditional.

    Returns:
      `[B, L, P, out_channels]` in the dtype of `patches`; padding tokens hold values that mean nothing.
    """
    spec = self.spec
    cond = Conditioning() if cond is None else cond
    batch, length = layout.segment_ids.shape
    patch_values = int(np.prod(spec.patch_size))
    if patches.shape != (batch, length, patch_values, spec.in_channels):
      raise ValueError(f"patches must be [B, L, P, C] = {(batch, length, patch_values, spec.in_channels)} for this "
                       f"layout and patch size {spec.patch_size}; got {patches.shape}")
    if spec.mlp_conv:
      raise ValueError("packed rows need dit.mlp_conv = 0: the MLP's convolution runs over whole frames")
    t = jnp.asarray(t, jnp.float32)
    if t.ndim != 2 or t.shape[0] != batch:
      raise ValueError(f"t must be [B, S] (one time per clip slot) with B={batch}; got {t.shape}")
    inputs = self._inputs(patches, cond)
    x = self.patch_embed.proj(inputs.reshape(batch, length, -1).astype(spec.compute_dtype))
    if self.pos_embed is not None:
      x = x + self.pos_embed.at(layout.positions, layout.grids).astype(x.dtype)
    c, context, mask = self._clip_conditioning(t, cond)
    if context is not None:
      clips, context_len = context.shape[1:3]
      context = context.reshape(batch, clips * context_len, -1)
      # Each token reads only its own clip's caption tokens.
      owner = jnp.repeat(jnp.arange(clips), context_len)
      mask = ((layout.segment_index[:, :, None] == owner[None, None, :]) & layout.valid[:, :, None]
              & mask.reshape(batch, 1, -1))[:, None]
    out = self._transform(x, layout, c, context, mask)
    return out.reshape(batch, length, patch_values, spec.out_channels).astype(patches.dtype)
