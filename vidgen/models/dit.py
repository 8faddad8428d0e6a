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

Depth is run as a `jax.lax.scan` over stacked "super-blocks" (one block per entry of `attention_pattern`), so compile
time does not grow with depth; `remat` picks the rematerialisation policy of the scanned body.

Build from a config: `VideoDiT(dit_config("XL/2", num_classes=1000), rngs=nnx.Rngs(0))`, or
`VideoDiT.from_variant("WALT-L", text_dim=4096, rngs=...)`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidgen.config import ConfigError, require
from vidgen.layers.attention import ATTENTION_KINDS, BACKENDS, CrossAttention, RMSNorm, SelfAttention, check_window
from vidgen.layers.embeddings import (
    POS_EMBEDDINGS,
    LabelEmbedder,
    PatchEmbed,
    SpacetimePosEmbed,
    TimestepEmbedder,
    token_grid,
    unpatchify,
)
from vidgen.layers.mlp import Mlp
from vidgen.parallel.sharding import constrain, logical

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16", "float16")
COMPUTE_DTYPES = ("auto", *DTYPES)  # "auto": bfloat16 on TPU / GPU, float32 on CPU (params stay param_dtype)
_RESIDUAL = ("act_batch", "act_len", "act_embed")

# name -> (depth, width, heads). DiT sizes from the paper's Table 1; "mu" and "Ti" are small sizes for smoke runs.
DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "mu": (2, 64, 4),
    "Ti": (12, 192, 3),
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
WALT_SIZES: dict[str, tuple[int, int, int]] = {
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}


# ----------------------------------------------------------------------------------------------------------------------
# Config.


def _base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.variant = ""                      # Where the defaults came from; informational.
  c.input_size = (5, 16, 16)          # Latent (T, H, W) the model is built for (learned positions, window checks).
  c.in_channels = 8                   # Latent channels C of z_t.
  c.out_channels = 0                  # 0 = in_channels (v-prediction); 2 x C for DiT's learned-sigma head.
  c.patch_size = (1, 1, 1)            # (pt, ph, pw).
  c.width = 1152
  c.depth = 28
  c.num_heads = 16
  c.mlp_ratio = 4.0
  c.mlp_conv = 0                      # k > 0: k x k depthwise conv per frame on every MLP input; 0 = off.
  c.attention_pattern = ("spatial", "spatiotemporal")   # Repeated over depth; entries in ATTENTION_KINDS.
  c.window = (5, 8, 8)                # Spatiotemporal window in tokens (wt, wh, ww), clamped to the token grid.
  c.qk_norm = True
  c.adaln_lora_rank = 2               # 0 = a full Linear(6D) adaLN per block (DiT).
  c.pos_embedding = "learned"         # "learned" | "sincos".
  c.num_classes = 0                   # 0 = no class conditioning; otherwise a table of num_classes + 1 (null).
  c.class_factors = ()                # () = one row per class; (n_0, ..., n_k): summed attribute rows (LabelEmbedder).
  c.class_tokens = False              # Also cross-attend to the label's rows (one token per factor); needs text_dim=0.
  c.text_dim = 0                      # 0 = no cross-attention; otherwise the width of the text-encoder tokens.
  c.pooled_text = False               # Also add the mean caption token (projected) to the adaLN conditioning.
  c.task_channels = 0                 # Extra latent channels for task conditioning (mask + known latents); 0 = off.
  # Concatenate the previous x estimate (C channels) on the input (W.A.L.T). The DiT trainer trains it with
  # `diffusion.self_conditioned` (probability `diffusion.self_condition_prob`); VideoPipeline samples with
  # `diffusion.sample(..., self_condition=True)`.
  c.self_condition = False
  c.freq_dim = 256                    # Sinusoidal timestep features.
  c.time_scale = 1000.0               # t in [0, 1] is multiplied by this before the sinusoid.
  c.dtype = "auto"                    # Compute dtype; "auto" = bfloat16 on TPU / GPU, float32 on CPU.
  c.param_dtype = "float32"
  c.remat = "none"                    # REMAT_POLICIES.
  c.scan_layers = True                # False unrolls depth (same weights): debugging, and shallow models on CPU.
  c.attention_backend = "auto"        # BACKENDS.
  return c


def decode_variant(variant: str) -> dict[str, Any]:
  """Model-size string -> config fields (big_vision style).

  DiT: `"XL/2"`, `"DiT-B/4"` (1-frame, patch (1, p, p)), or an explicit `"L/1x2x2"` (pt x ph x pw).
  W.A.L.T: `"WALT-L"`, `"WALT-XL"` (patch 1, AdaLN-LoRA r=2, qk-norm, alternating spatial/spatiotemporal windows),
  optionally with a patch suffix (`"WALT-L/1x2x2"`).
  """
  m = re.fullmatch(r"(?:(DiT|WALT|W\.A\.L\.T)-)?([A-Za-z]+)(?:/(\d+(?:x\d+x\d+)?))?", variant.strip())
  if not m:
    raise ConfigError(f"config.dit.variant: cannot parse {variant!r}; expected e.g. 'XL/2', 'B/1x2x2' or 'WALT-L'")
  family, size, patch = m.group(1), m.group(2), m.group(3)
  walt = family in ("WALT", "W.A.L.T")
  sizes = WALT_SIZES if walt else DIT_SIZES
  if size not in sizes:
    raise ConfigError(f"config.dit.variant: size {size!r} is not known for {'W.A.L.T' if walt else 'DiT'}; "
                      f"allowed: {sorted(sizes)}")
  if patch is None:
    if not walt:
      raise ConfigError(f"config.dit.variant: {variant!r} needs a patch size, e.g. '{size}/2'")
    patch_size = (1, 1, 1)
  elif "x" in patch:
    patch_size = tuple(int(p) for p in patch.split("x"))
  else:
    patch_size = (1, int(patch), int(patch))
  depth, width, heads = sizes[size]
  fields: dict[str, Any] = dict(variant=variant, depth=depth, width=width, num_heads=heads, patch_size=patch_size)
  if walt:
    fields.update(input_size=(5, 16, 16), in_channels=8, attention_pattern=("spatial", "spatiotemporal"),
                  window=(5, 8, 8), qk_norm=True, adaln_lora_rank=2, pos_embedding="learned")
  else:
    # The DiT paper model: one 32x32x4 latent frame, full attention, fixed sin-cos positions, per-block adaLN.
    fields.update(input_size=(1, 32, 32), in_channels=4, attention_pattern=("full",), qk_norm=False,
                  adaln_lora_rank=0, pos_embedding="sincos")
  return fields


def dit_config(variant: str | None = None, **overrides: Any) -> ml_collections.ConfigDict:
  """Full VideoDiT config: defaults, then the fields of `variant` (see `decode_variant`), then `overrides`.

  Unknown override names raise ConfigError (typos must not be silently ignored).
  """
  config = _base_config()
  if variant:
    for key, value in decode_variant(variant).items():
      config[key] = value
  for key, value in overrides.items():
    if key not in config:
      raise ConfigError(f"config.dit.{key}: not a VideoDiT field; allowed: {sorted(config.keys())}")
    try:
      config[key] = tuple(value) if isinstance(value, list) else value
    except TypeError as e:  # ConfigDict refuses a value of another type than the default.
      raise ConfigError(f"config.dit.{key}: {e}") from None
  validate_config(config)
  return config


@dataclasses.dataclass(frozen=True)
class DiTSpec:
  """The validated, typed, hashable form of a VideoDiT config (what modules keep as static attributes)."""

  input_size: tuple[int, int, int]
  in_channels: int
  out_channels: int
  patch_size: tuple[int, int, int]
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float
  mlp_conv: int
  attention_pattern: tuple[str, ...]
  window: tuple[int, int, int]
  qk_norm: bool
  adaln_lora_rank: int
  pos_embedding: str
  num_classes: int
  class_factors: tuple[int, ...]
  class_tokens: bool
  text_dim: int
  pooled_text: bool
  task_channels: int
  self_condition: bool
  freq_dim: int
  time_scale: float
  dtype: str
  param_dtype: str
  remat: str
  scan_layers: bool
  attention_backend: str

  @classmethod
  def from_config(cls, config: Mapping[str, Any] | "DiTSpec") -> "DiTSpec":
    if isinstance(config, DiTSpec):
      return config
    validate_config(config)
    base = _base_config()
    kwargs = {}
    for field in dataclasses.fields(cls):
      value = config[field.name] if field.name in config else base[field.name]
      if field.name == "attention_pattern":
        kwargs[field.name] = tuple(str(v) for v in value)
      elif isinstance(base[field.name], tuple):
        kwargs[field.name] = tuple(int(v) for v in value)
      else:  # Cast to the default's type: values from JSON or the command line may arrive as other numerics.
        kwargs[field.name] = type(base[field.name])(value)
    kwargs["out_channels"] = kwargs["out_channels"] or kwargs["in_channels"]
    return cls(**kwargs)

  @property
  def input_channels(self) -> int:
    """Channels entering the patch embedding: latent + task slot + self-conditioning estimate."""
    return self.in_channels + self.task_channels + (self.in_channels if self.self_condition else 0)

  @property
  def cross_attention(self) -> bool:
    """Blocks cross-attend: to caption tokens (text_dim) or to the class label's rows (class_tokens)."""
    return bool(self.text_dim) or self.class_tokens

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def mlp_hidden(self) -> int:
    return int(self.width * self.mlp_ratio)

  @property
  def token_grid(self) -> tuple[int, int, int]:
    return token_grid(self.input_size, self.patch_size)

  @property
  def num_super_blocks(self) -> int:
    return self.depth // len(self.attention_pattern)

  @property
  def compute_dtype(self):
    if self.dtype == "auto":
      return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self):
    return jnp.dtype(self.param_dtype)


def validate_config(config: Mapping[str, Any]) -> None:
  """Checks every VideoDiT field before anything is built; ConfigError names the field and the allowed values."""
  base = _base_config()
  unknown = sorted(set(config.keys()) - set(base.keys()))
  require(not unknown, f"dit.{unknown[0] if unknown else ''}", f"not a VideoDiT field; allowed: {sorted(base.keys())}")
  get = lambda k: config[k] if k in config else base[k]  # noqa: E731

  def integer(name, minimum):
    value = get(name)
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum
    require(ok, f"dit.{name}", f"must be an integer >= {minimum}{' (0 = off)' if minimum == 0 else ''}, "
            f"got {value!r}")
    return int(value)

  def triple(name):
    value = get(name)
    ok = (isinstance(value, (tuple, list)) and len(value) == 3
          and all(isinstance(v, (int, np.integer)) and v >= 1 for v in value))
    require(ok, f"dit.{name}", f"must be three positive integers (t, h, w), got {value!r}")
    return tuple(int(v) for v in value)

  input_size, patch, window = triple("input_size"), triple("patch_size"), triple("window")
  for axis, s, p in zip("thw", input_size, patch):
    require(s % p == 0, "dit.patch_size",
            f"{patch} must divide dit.input_size {input_size} (along {axis}: {s} % {p} != 0)")
  for name in ("in_channels", "freq_dim"):
    integer(name, 1)
  for name in ("out_channels", "num_classes", "text_dim", "task_channels", "adaln_lora_rank"):
    integer(name, 0)
  factors = get("class_factors")
  if factors:
    ok = (isinstance(factors, (tuple, list))
          and all(isinstance(f, (int, np.integer)) and not isinstance(f, bool) and f >= 1 for f in factors))
    require(ok and get("num_classes") > 0 and math.prod(factors) == get("num_classes"), "dit.class_factors",
            f"must be positive integers whose product is dit.num_classes={get('num_classes')} (or () for one row "
            f"per class), got {factors!r}")
  mlp_conv = integer("mlp_conv", 0)
  require(mlp_conv == 0 or mlp_conv % 2 == 1, "dit.mlp_conv", f"must be 0 (off) or odd (3, 5, ...), got {mlp_conv}")
  width, heads, depth = integer("width", 1), integer("num_heads", 1), integer("depth", 1)
  require(width % heads == 0, "dit.num_heads", f"{heads} must divide dit.width {width}")
  require(float(get("mlp_ratio")) > 0, "dit.mlp_ratio", f"must be positive, got {get('mlp_ratio')!r}")
  pattern = tuple(get("attention_pattern"))
  require(len(pattern) >= 1 and all(k in ATTENTION_KINDS for k in pattern), "dit.attention_pattern",
          f"must be a non-empty sequence of {ATTENTION_KINDS}, got {pattern!r}")
  require(depth % len(pattern) == 0, "dit.depth",
          f"{depth} must be a multiple of len(dit.attention_pattern) = {len(pattern)} (blocks are scanned in groups)")
  if "spatiotemporal" in pattern:
    grid = tuple(s // p for s, p in zip(input_size, patch))
    try:
      check_window(grid, window)
    except ValueError as e:
      raise ConfigError(f"config.dit.window: {e}") from None
  if get("class_tokens"):
    require(get("num_classes") > 0 and get("text_dim") == 0, "dit.class_tokens",
            f"needs class labels and no captions (num_classes > 0, text_dim = 0), got num_classes="
            f"{get('num_classes')}, text_dim={get('text_dim')}")
  if get("pooled_text"):
    require(get("text_dim") > 0, "dit.pooled_text", "needs captions (dit.text_dim > 0)")
  pos = get("pos_embedding")
  require(pos in POS_EMBEDDINGS, "dit.pos_embedding", f"must be one of {POS_EMBEDDINGS}, got {pos!r}")
  if pos == "sincos":
    require(width % 4 == 0, "dit.width", f"sin-cos positions need a width divisible by 4, got {width}")
  require(get("dtype") in COMPUTE_DTYPES, "dit.dtype", f"must be one of {COMPUTE_DTYPES}, got {get('dtype')!r}")
  require(get("param_dtype") in DTYPES, "dit.param_dtype", f"must be one of {DTYPES}, got {get('param_dtype')!r}")
  require(get("remat") in REMAT_POLICIES, "dit.remat", f"must be one of {REMAT_POLICIES}, got {get('remat')!r}")
  require(get("attention_backend") in BACKENDS, "dit.attention_backend",
          f"must be one of {BACKENDS}, got {get('attention_backend')!r}")
  require(float(get("time_scale")) > 0, "dit.time_scale", f"must be positive, got {get('time_scale')!r}")


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


def drop_conditioning(cond: Conditioning, key: jax.Array, prob: float, num_classes: int) -> Conditioning:
  """Per-example guidance dropout: with probability `prob` an example's label / caption becomes null."""
  batch = None
  for x in (cond.labels, cond.text):
    if x is not None:
      batch = x.shape[0]
  if batch is None or prob <= 0:
    return cond
  drop = jax.random.bernoulli(key, prob, (batch,))
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


def _remat_policy(name: str):
  return {
      "full": None,  # Save nothing but the block inputs: recompute everything in the backward pass.
      "dots": jax.checkpoint_policies.checkpoint_dots,
      "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  }[name]


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
    self.label_token_norm = (RMSNorm(d, param_dtype=pdtype, axis_name="embed") if spec.class_tokens else None)
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
    @nnx.split_rngs(splits=spec.num_super_blocks)
    @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=spec.num_super_blocks,
              transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_blocks(rngs: nnx.Rngs) -> SuperBlock:
      return SuperBlock(spec, rngs=rngs)

    self.blocks = make_blocks(rngs)
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

  def _run_blocks(self, x, c_act, ada_shared, grid, context, context_mask):
    spec = self.spec
    graphdef, state = nnx.split(self.blocks)

    def body(h, layer_state):
      block = nnx.merge(graphdef, layer_state)
      return block(h, c_act, ada_shared, grid, context, context_mask), None

    if spec.remat != "none":
      # prevent_cse only matters outside scan (scan already stops CSE across iterations) and costs performance there.
      body = jax.checkpoint(body, policy=_remat_policy(spec.remat), prevent_cse=not spec.scan_layers)
    if spec.scan_layers:
      x, _ = jax.lax.scan(body, x, state)
    else:
      for i in range(spec.num_super_blocks):
        x, _ = body(x, jax.tree.map(lambda a: a[i], state))
    return x

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

    x = self._run_blocks(x, c_act, ada_shared, grid, context, context_mask)
    out = self.final(x, c_act)
    out = unpatchify(out, grid, spec.patch_size, spec.out_channels)
    return out.astype(z_t.dtype)
