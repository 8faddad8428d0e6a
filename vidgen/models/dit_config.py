"""VideoDiT config: the fields, model-size variants (DiT and W.A.L.T tables), validation, and the typed `DiTSpec`.

`dit_config("XL/2", num_classes=1000)` gives a full, validated config (ml-collections, so a run can override fields from
the command line); `DiTSpec.from_config(config)` is the hashable form that `VideoDiT` and the FLOP counter read.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import ml_collections
import numpy as np

from vidgen.config import ConfigError, require
from vidgen.layers.attention import ATTENTION_KINDS, BACKENDS, packed_window
from vidgen.layers.embeddings import POS_EMBEDDINGS, token_grid
from vidgen.layers.precision import COMPUTE_DTYPES, DTYPES, resolve_dtype
from vidgen.layers.scan import REMAT_POLICIES

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


def _base_config() -> ml_collections.ConfigDict:
  """Every VideoDiT field with its default; one comment per field says what it is."""
  c = ml_collections.ConfigDict()
  c.variant = ""                      # Where the defaults came from; informational.
  c.input_size = (5, 16, 16)          # Latent (T, H, W) the position tables are built for; other sizes run too.
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
  # "learned" | "sincos" (added to the tokens, resampled onto input_size for other grids) | "rope" (3-D rotary in
  # self-attention, on absolute token coordinates: no table, any grid).
  c.pos_embedding = "learned"
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
  c.time_offset = 0.0                 # Added after time_scale: -1 for DDPM-step models (DiT sees k = N t - 1).
  c.freq_shift = 0.0                  # Sinusoid frequencies 10000^(-i / (freq_dim/2 - freq_shift)); diffusers' DiT: 1.
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
  time_offset: float
  freq_shift: float
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
  def packed_windows(self) -> dict[str, tuple[int | None, ...] | None]:
    """{attention kind: its window in packed rows} for the kinds this model uses (`vidgen.data.packing.pack`)."""
    return {kind: packed_window(kind, self.window) for kind in dict.fromkeys(self.attention_pattern)}

  @property
  def num_super_blocks(self) -> int:
    return self.depth // len(self.attention_pattern)

  @property
  def compute_dtype(self):
    return resolve_dtype(self.dtype)

  @property
  def params_dtype(self):
    return resolve_dtype(self.param_dtype)


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
  if pos == "rope":
    head_dim = width // heads
    require(head_dim % 2 == 0 and head_dim >= 6, "dit.num_heads",
            f"rotary positions need an even head dim (width / num_heads) of at least 6 (a rotation pair for each of "
            f"t, h, w), got {head_dim}")
  require(get("dtype") in COMPUTE_DTYPES, "dit.dtype", f"must be one of {COMPUTE_DTYPES}, got {get('dtype')!r}")
  require(get("param_dtype") in DTYPES, "dit.param_dtype", f"must be one of {DTYPES}, got {get('param_dtype')!r}")
  require(get("remat") in REMAT_POLICIES, "dit.remat", f"must be one of {REMAT_POLICIES}, got {get('remat')!r}")
  require(get("attention_backend") in BACKENDS, "dit.attention_backend",
          f"must be one of {BACKENDS}, got {get('attention_backend')!r}")
  require(float(get("time_scale")) > 0, "dit.time_scale", f"must be positive, got {get('time_scale')!r}")
  shift = float(get("freq_shift"))
  require(0.0 <= shift < get("freq_dim") // 2, "dit.freq_shift",
          f"must be in [0, freq_dim / 2 = {get('freq_dim') // 2}), got {get('freq_shift')!r}")
