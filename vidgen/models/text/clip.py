"""The CLIP text tower (`transformers.CLIPTextModel`) in Flax NNX.

Pre-LayerNorm blocks with causal self-attention and learned positions; the pooled output is the hidden state at the
EOS token. Weights come from a Hugging Face checkpoint through `vidgen.models.text.hf.load_text_encoder`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from vidgen.layers.attention import full_attention
from vidgen.layers.precision import resolve_dtype
from vidgen.layers.scan import run_stacked, stacked
from vidgen.models.text.common import ACTIVATIONS, RESIDUAL, check_activation, check_ids, dense, layer_norm
from vidgen.parallel.sharding import constrain, logical


@dataclasses.dataclass(frozen=True)
class CLIPTextSpec:
  """Architecture of a CLIP text tower (the fields of `transformers.CLIPTextConfig` that the encoder uses)."""

  vocab_size: int = 49408
  width: int = 512
  mlp_dim: int = 2048
  num_layers: int = 12
  num_heads: int = 8
  max_length: int = 77            # max_position_embeddings.
  activation: str = "quick_gelu"
  eps: float = 1e-5
  eos_token_id: int = 49407       # 2 selects the legacy pooling (the highest token id), as transformers does.
  dtype: str = "float32"
  param_dtype: str = "float32"

  @classmethod
  def from_hf_config(cls, config: Mapping[str, Any], *, dtype: str = "float32") -> "CLIPTextSpec":
    """`config.json` of a clip_text_model checkpoint, or the `text_config` of a full clip one -> spec."""
    d = cls()
    get = lambda key, default: config.get(key, default)  # noqa: E731
    eos = get("eos_token_id", d.eos_token_id)
    if isinstance(eos, bool) or not isinstance(eos, int):
      raise ValueError(f"config.json field 'eos_token_id' must be one integer (it picks the pooled token), got {eos!r}")
    return cls(
        vocab_size=int(get("vocab_size", d.vocab_size)), width=int(get("hidden_size", d.width)),
        mlp_dim=int(get("intermediate_size", d.mlp_dim)), num_layers=int(get("num_hidden_layers", d.num_layers)),
        num_heads=int(get("num_attention_heads", d.num_heads)),
        max_length=int(get("max_position_embeddings", d.max_length)),
        activation=check_activation(str(get("hidden_act", d.activation)), "hidden_act"),
        eps=float(get("layer_norm_eps", d.eps)), eos_token_id=int(eos), dtype=dtype, param_dtype=dtype)


class CLIPBlock(nnx.Module):
  """CLIP encoder layer: x + Attn(LN(x), causal & padding mask), x + MLP(LN(x)) with quick-GELU or GELU."""

  def __init__(self, spec: CLIPTextSpec, *, rngs: nnx.Rngs):
    if spec.width % spec.num_heads:
      raise ValueError(f"CLIP hidden_size {spec.width} is not divisible by num_attention_heads {spec.num_heads}")
    dtype, pdtype = resolve_dtype(spec.dtype), resolve_dtype(spec.param_dtype)
    d, h = spec.width, spec.num_heads
    kw = dict(bias=True, dtype=dtype, param_dtype=pdtype, rngs=rngs)
    self.dtype = dtype
    self.activation = spec.activation
    self.ln1 = layer_norm(d, spec.eps, pdtype, rngs)
    self.q = dense(d, (h, d // h), ("embed", "heads", "kv"), **kw)
    self.k = dense(d, (h, d // h), ("embed", "heads", "kv"), **kw)
    self.v = dense(d, (h, d // h), ("embed", "heads", "kv"), **kw)
    self.o = dense((h, d // h), d, ("heads", "kv", "embed"), **kw)
    self.ln2 = layer_norm(d, spec.eps, pdtype, rngs)
    self.fc1 = dense(d, spec.mlp_dim, ("embed", "mlp"), **kw)
    self.fc2 = dense(spec.mlp_dim, d, ("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array, mask4: jax.Array) -> jax.Array:
    """x `[B, L, width]` float32, mask4 `[B, 1, L, L]` bool -> `[B, L, width]` float32."""
    h = self.ln1(x).astype(self.dtype)
    y = full_attention(self.q(h), self.k(h), self.v(h), mask=mask4)
    x = constrain(x + self.o(y).astype(jnp.float32), RESIDUAL)
    h = self.ln2(x).astype(self.dtype)
    a = constrain(ACTIVATIONS[self.activation](self.fc1(h)), ("act_batch", "act_len", "act_mlp"))
    return constrain(x + self.fc2(a).astype(jnp.float32), RESIDUAL)


class CLIPTextEncoder(nnx.Module):
  """The CLIP text tower (`transformers.CLIPTextModel`) in Flax NNX.

  token + learned position embeddings -> depth x pre-LN block with causal self-attention (combined with the padding
  mask) -> final LayerNorm. Returns the last hidden state and the pooled output: the hidden state at the first
  `eos_token_id` of each row (or, for legacy configs with `eos_token_id == 2`, at the highest token id).
  """

  def __init__(self, spec: CLIPTextSpec, *, rngs: nnx.Rngs):
    self.spec = spec
    pdtype = resolve_dtype(spec.param_dtype)
    self.token_embed = nnx.Embed(spec.vocab_size, spec.width, param_dtype=pdtype,
                                 embedding_init=logical(nnx.initializers.normal(0.02), "vocab", "embed"), rngs=rngs)
    self.pos_embed = nnx.Param(logical(nnx.initializers.normal(0.01), None, "embed")(
        rngs.params(), (spec.max_length, spec.width), pdtype))
    self.blocks = stacked(lambda r: CLIPBlock(spec, rngs=r), spec.num_layers, rngs)
    self.final_norm = layer_norm(spec.width, spec.eps, pdtype, rngs)

  def __call__(self, ids: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """ids `[B, L]` int (L <= max_length), mask `[B, L]` bool or None (all real).

    Returns:
      (last hidden state `[B, L, width]` float32, pooled `[B, width]` float32).
    """
    spec = self.spec
    ids = jnp.asarray(ids)
    mask = jnp.ones(ids.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)
    check_ids(ids, mask, spec.vocab_size, spec.max_length)
    length = ids.shape[1]
    x = self.token_embed(ids).astype(jnp.float32) + self.pos_embed[...][:length].astype(jnp.float32)[None]
    x = constrain(x, RESIDUAL)
    causal = jnp.tril(jnp.ones((length, length), bool))
    mask4 = causal[None, None] & mask[:, None, None, :]
    x = self.final_norm(run_stacked(self.blocks, x, mask4)).astype(jnp.float32)
    if spec.eos_token_id == 2:
      # Checkpoints converted before transformers fixed eos_token_id: their EOS is the largest id in the vocabulary.
      eos_pos = jnp.argmax(ids, axis=-1)
    else:
      # The first EOS: the pad token may equal the EOS token, so later occurrences can be padding.
      eos_pos = jnp.argmax(ids == spec.eos_token_id, axis=-1)
    pooled = jnp.take_along_axis(x, eos_pos[:, None, None], axis=1)[:, 0]
    return x, pooled
