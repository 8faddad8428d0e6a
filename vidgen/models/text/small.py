"""The small text encoder: a bidirectional transformer trained from scratch together with the DiT.

For data with a small closed vocabulary (such as the embedded shapes captions), where a pretrained encoder would add
gigabytes and nothing to learn from. Pair it with a `WordTokenizer`; build it from `small_text_config(...)`.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidgen.layers.attention import full_attention, heads_projection, output_projection
from vidgen.layers.mlp import Mlp
from vidgen.layers.precision import DTYPES, resolve_dtype
from vidgen.layers.scan import run_stacked, stacked
from vidgen.models.text.common import RESIDUAL, check_ids, layer_norm
from vidgen.parallel.sharding import constrain, logical


def small_text_config(**overrides: Any) -> ml_collections.ConfigDict:
  """Config of a `SmallTextEncoder`. `vocab_size` has no default: it is the tokenizer's (padding included).

  Unknown override names raise ValueError.
  """
  c = ml_collections.ConfigDict()
  c.vocab_size = None
  c.max_length = 8
  c.width = 128
  c.depth = 2
  c.num_heads = 4
  c.mlp_ratio = 4.0
  c.dtype = "float32"        # Compute dtype; LayerNorm statistics and softmax are float32 whatever it is.
  c.param_dtype = "float32"
  for key, value in overrides.items():
    if key not in c:
      raise ValueError(f"small text encoder config has no field {key!r}; allowed: {sorted(c.keys())}")
    c[key] = value
  validate_small_text_config(c)
  return c


def validate_small_text_config(config: Mapping[str, Any]) -> None:
  """ValueError naming the field and the allowed values, before any parameter is made."""
  if config["vocab_size"] is None:
    raise ValueError("text config field 'vocab_size' is not set; it must be the tokenizer's vocab_size (an integer "
                     ">= 2, padding included)")
  for name in ("vocab_size", "max_length", "width", "depth", "num_heads"):
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"text config field {name!r} must be an integer >= 1, got {value!r}")
  if config["vocab_size"] < 2:
    raise ValueError(f"text config field 'vocab_size' must be >= 2 (padding + one word), got {config['vocab_size']}")
  if config["width"] % config["num_heads"]:
    raise ValueError(f"text config field 'num_heads' = {config['num_heads']} must divide 'width' = {config['width']}")
  if not float(config["mlp_ratio"]) > 0:
    raise ValueError(f"text config field 'mlp_ratio' must be positive, got {config['mlp_ratio']!r}")
  for name in ("dtype", "param_dtype"):
    if config[name] not in DTYPES:
      raise ValueError(f"text config field {name!r} must be one of {DTYPES}, got {config[name]!r}")


class _SmallBlock(nnx.Module):
  """Pre-LayerNorm transformer block: x + Attn(LN(x), padding mask); x + MLP(LN(x))."""

  def __init__(self, width: int, num_heads: int, hidden: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    head_dim = width // num_heads
    self.dtype = dtype
    self.ln1 = layer_norm(width, 1e-6, param_dtype, rngs)
    self.qkv = heads_projection(width, (3, num_heads, head_dim), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.out = output_projection(num_heads, head_dim, width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.ln2 = layer_norm(width, 1e-6, param_dtype, rngs)
    self.mlp = Mlp(width, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """x `[B, L, D]` float32 residual stream, mask `[B, L]` bool -> `[B, L, D]` float32."""
    qkv = self.qkv(self.ln1(x).astype(self.dtype))
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    # Keys are masked, queries are not: a padding query still gets an output (ignored downstream), but no real
    # token ever reads a padding key, which is what makes outputs at real tokens independent of the padding.
    h = self.out(full_attention(q, k, v, mask=mask))
    x = constrain(x + h.astype(x.dtype), RESIDUAL)
    x = x + self.mlp(self.ln2(x).astype(self.dtype)).astype(x.dtype)
    return constrain(x, RESIDUAL)


class SmallTextEncoder(nnx.Module):
  """A small bidirectional transformer text encoder trained from scratch together with the DiT.

  token embedding + learned positions -> depth x pre-LN block (self-attention over real tokens, tanh-GELU MLP)
  -> final LayerNorm. Built from `small_text_config(...)`.
  """

  def __init__(self, config: Mapping[str, Any], *, rngs: nnx.Rngs):
    validate_small_text_config(config)
    self.vocab_size = int(config["vocab_size"])
    self.max_length = int(config["max_length"])
    self.width = width = int(config["width"])
    self.depth = int(config["depth"])
    self.dtype = resolve_dtype(config["dtype"])
    pdtype = resolve_dtype(config["param_dtype"])
    num_heads, hidden = int(config["num_heads"]), int(width * float(config["mlp_ratio"]))
    self.token_embed = nnx.Embed(self.vocab_size, width, param_dtype=pdtype,
                                 embedding_init=logical(nnx.initializers.normal(0.02), "vocab", "embed"), rngs=rngs)
    self.pos_embed = nnx.Param(logical(nnx.initializers.normal(0.02), None, "embed")(
        rngs.params(), (self.max_length, width), pdtype))
    self.blocks = stacked(
        lambda r: _SmallBlock(width, num_heads, hidden, dtype=self.dtype, param_dtype=pdtype, rngs=r),
        self.depth, rngs)
    self.final_norm = layer_norm(width, 1e-6, pdtype, rngs)

  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """ids `[B, L]` int (L <= max_length), mask `[B, L]` bool (True = real token) -> `[B, L, width]` float32."""
    ids = jnp.asarray(ids)
    mask = jnp.asarray(mask)
    check_ids(ids, mask, self.vocab_size, self.max_length)
    length = ids.shape[1]
    x = self.token_embed(ids).astype(jnp.float32) + self.pos_embed[...][:length].astype(jnp.float32)[None]
    x = constrain(x, RESIDUAL)
    x = run_stacked(self.blocks, x, mask.astype(bool))
    return self.final_norm(x).astype(jnp.float32)
