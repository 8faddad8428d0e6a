"""The T5 / mT5 / UMT5 encoder (`transformers.T5EncoderModel`, `UMT5EncoderModel`) in Flax NNX.

Pre-RMSNorm blocks whose attention logits are unscaled and carry a bucketed relative-position bias (no position
embedding). Weights come from a Hugging Face checkpoint through `vidgen.models.text.hf.load_text_encoder`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen.layers.attention import full_attention
from vidgen.layers.norms import RMSNorm
from vidgen.layers.precision import resolve_dtype
from vidgen.layers.scan import run_stacked, stacked
from vidgen.models.text.common import ACTIVATIONS, RESIDUAL, check_activation, check_ids, dense
from vidgen.parallel.sharding import constrain, logical


@dataclasses.dataclass(frozen=True)
class T5Spec:
  """Architecture of a T5-family encoder (the fields of `transformers.T5Config` that the encoder uses)."""

  vocab_size: int
  d_model: int
  d_kv: int
  d_ff: int
  num_layers: int
  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  eps: float = 1e-6
  activation: str = "relu"        # ACTIVATIONS key; T5 v1.0 "relu", v1.1 / mT5 / UMT5 "gelu_new" (gated).
  gated: bool = False             # Gated feed-forward (wi_0, wi_1) as in T5 v1.1.
  per_layer_bias: bool = False    # UMT5: every layer has its own relative-position table; T5: layer 0's is shared.
  model_type: str = "t5"
  dtype: str = "float32"
  param_dtype: str = "float32"

  @classmethod
  def from_hf_config(cls, config: Mapping[str, Any], *, dtype: str = "float32") -> "T5Spec":
    """`config.json` of a t5 / mt5 / umt5 checkpoint -> spec (missing fields take transformers' defaults)."""
    model_type = config.get("model_type", "t5")
    defaults = _T5_DEFAULTS["t5" if model_type == "t5" else "mt5"]
    get = lambda key: config.get(key, defaults[key])  # noqa: E731
    proj = str(get("feed_forward_proj"))
    parts = proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
      raise ValueError(f"config.json field 'feed_forward_proj' = {proj!r} is not valid; allowed: '{{act}}' or "
                       f"'gated-{{act}}' with act in {sorted(ACTIVATIONS)}")
    # transformers maps "gated-gelu" to the tanh GELU for backward compatibility with the original T5 v1.1 code.
    activation = "gelu_new" if proj == "gated-gelu" else parts[-1]
    check_activation(activation, "feed_forward_proj")
    if config.get("is_decoder", False):
      raise ValueError("config.json has is_decoder=true; only encoders (bidirectional attention) can be loaded")
    return cls(
        vocab_size=int(get("vocab_size")), d_model=int(get("d_model")), d_kv=int(get("d_kv")), d_ff=int(get("d_ff")),
        num_layers=int(get("num_layers")), num_heads=int(get("num_heads")),
        num_buckets=int(get("relative_attention_num_buckets")),
        max_distance=int(get("relative_attention_max_distance")), eps=float(get("layer_norm_epsilon")),
        activation=activation, gated=len(parts) == 2, per_layer_bias=model_type == "umt5", model_type=model_type,
        dtype=dtype, param_dtype=dtype)

  @property
  def width(self) -> int:
    return self.d_model


# Defaults of transformers' T5Config and MT5Config / UMT5Config, for config.json files that omit fields.
_T5_DEFAULTS = {
    "t5": dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
               relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
               feed_forward_proj="relu"),
    "mt5": dict(vocab_size=250112, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6,
                relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
                feed_forward_proj="gated-gelu"),
}


def t5_relative_buckets(q_len: int, k_len: int, num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
  """Bidirectional T5 relative-position buckets `[q_len, k_len]` int32 for `key - query` offsets (Mesh TF scheme).

  Half the buckets are for keys after the query, half for keys at or before it; within each half, offsets below
  `num_buckets / 4` get one bucket each and larger ones logarithmically wider buckets up to `max_distance`. Computed
  with numpy in float32 like the reference (lengths are static, so this is a constant of the compiled program).
  """
  rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
  half = num_buckets // 2
  buckets = (rel > 0).astype(np.int32) * half
  n = np.abs(rel)
  max_exact = half // 2
  ratio = np.maximum(n, 1).astype(np.float32) / np.float32(max_exact)
  log_ratio = np.log(ratio) / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
  large = np.minimum(max_exact + log_ratio.astype(np.int32), half - 1)
  return (buckets + np.where(n < max_exact, n, large)).astype(np.int32)


def position_bias(table: jax.Array, buckets: np.ndarray) -> jax.Array:
  """Relative-position table `[num_buckets, heads]` and buckets `[Lq, Lk]` -> the logit bias `[heads, Lq, Lk]` f32."""
  return jnp.transpose(table.astype(jnp.float32)[buckets], (2, 0, 1))


class T5Block(nnx.Module):
  """T5 encoder layer: x + Attn(RMSNorm(x)) (unscaled logits + relative bias), x + FF(RMSNorm(x))."""

  def __init__(self, spec: T5Spec, *, rngs: nnx.Rngs):
    dtype, pdtype = resolve_dtype(spec.dtype), resolve_dtype(spec.param_dtype)
    d, h, dk, ff = spec.d_model, spec.num_heads, spec.d_kv, spec.d_ff
    kw = dict(bias=False, dtype=dtype, param_dtype=pdtype, rngs=rngs)
    self.dtype = dtype
    self.activation = spec.activation
    self.attn_norm = RMSNorm(d, eps=spec.eps, param_dtype=pdtype, axis_name="embed")
    self.q = dense(d, (h, dk), ("embed", "heads", "kv"), **kw)
    self.k = dense(d, (h, dk), ("embed", "heads", "kv"), **kw)
    self.v = dense(d, (h, dk), ("embed", "heads", "kv"), **kw)
    self.o = dense((h, dk), d, ("heads", "kv", "embed"), **kw)
    self.rel_bias = nnx.data(None)
    if spec.per_layer_bias:
      self.rel_bias = nnx.Param(logical(nnx.initializers.normal(0.02), None, "heads")(
          rngs.params(), (spec.num_buckets, h), pdtype))
    self.ff_norm = RMSNorm(d, eps=spec.eps, param_dtype=pdtype, axis_name="embed")
    self.wi = dense(d, ff, ("embed", "mlp"), **kw)
    self.wi_gate = dense(d, ff, ("embed", "mlp"), **kw) if spec.gated else nnx.data(None)
    self.wo = dense(ff, d, ("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array, mask: jax.Array, buckets: np.ndarray, shared_bias: jax.Array | None) -> jax.Array:
    """x `[B, L, d_model]` float32, mask `[B, L]`, buckets `[L, L]`, shared_bias `[heads, L, L]` or None."""
    h = self.attn_norm(x).astype(self.dtype)
    q, k, v = self.q(h), self.k(h), self.v(h)
    bias = shared_bias if self.rel_bias is None else position_bias(self.rel_bias[...], buckets)
    # T5 folds the usual 1/sqrt(d) into its initialisation, so logits are not scaled.
    y = full_attention(q, k, v, mask=mask, bias=bias, scale=1.0)
    x = constrain(x + self.o(y).astype(jnp.float32), RESIDUAL)
    h = self.ff_norm(x).astype(self.dtype)
    a = ACTIVATIONS[self.activation](self.wi(h))
    if self.wi_gate is not None:
      a = a * self.wi_gate(h)
    a = constrain(a, ("act_batch", "act_len", "act_mlp"))
    return constrain(x + self.wo(a).astype(jnp.float32), RESIDUAL)


class T5Encoder(nnx.Module):
  """The encoder of T5 / mT5 / UMT5 (`transformers.T5EncoderModel`, `UMT5EncoderModel`) in Flax NNX.

  ids -> token embedding (no position embedding: positions enter as a bucketed relative bias on the logits, computed
  from layer 0's table and shared by all layers, or per layer for UMT5) -> depth x pre-RMSNorm block -> final RMSNorm.
  Usually built by `load_text_encoder`; `T5Encoder(spec, rngs=...)` gives random weights.
  """

  def __init__(self, spec: T5Spec, *, rngs: nnx.Rngs):
    self.spec = spec
    pdtype = resolve_dtype(spec.param_dtype)
    self.embed = nnx.Embed(spec.vocab_size, spec.d_model, param_dtype=pdtype,
                           embedding_init=logical(nnx.initializers.normal(1.0), "vocab", "embed"), rngs=rngs)
    self.rel_bias = nnx.data(None)
    if not spec.per_layer_bias:
      self.rel_bias = nnx.Param(logical(nnx.initializers.normal(0.02), None, "heads")(
          rngs.params(), (spec.num_buckets, spec.num_heads), pdtype))
    self.blocks = stacked(lambda r: T5Block(spec, rngs=r), spec.num_layers, rngs)
    self.final_norm = RMSNorm(spec.d_model, eps=spec.eps, param_dtype=pdtype, axis_name="embed")

  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """ids `[B, L]` int, mask `[B, L]` bool (True = real token) -> last hidden state `[B, L, d_model]` float32."""
    spec = self.spec
    ids, mask = jnp.asarray(ids), jnp.asarray(mask).astype(bool)
    check_ids(ids, mask, spec.vocab_size, ids.shape[-1] if ids.ndim == 2 else 0)
    length = ids.shape[1]
    buckets = t5_relative_buckets(length, length, spec.num_buckets, spec.max_distance)
    shared = None if self.rel_bias is None else position_bias(self.rel_bias[...], buckets)
    x = constrain(self.embed(ids).astype(jnp.float32), RESIDUAL)
    x = run_stacked(self.blocks, x, mask, buckets, shared)
    return self.final_norm(x)
