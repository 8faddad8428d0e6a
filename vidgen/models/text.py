"""Text encoders for text-to-video: a small one trained from scratch, and pretrained T5 / CLIP loaded from checkpoints.

Two ways to turn a prompt into the `[B, L, D]` tokens (+ `[B, L]` padding mask) that the DiT cross-attends to:

  * `WordTokenizer` + `SmallTextEncoder`: a closed-vocabulary word tokenizer and a small bidirectional transformer,
    trained jointly with the DiT. This is what the embedded shapes dataset uses (`shapes_tokenizer()`): its captions
    have a 16-word vocabulary, so a pretrained encoder would add gigabytes and nothing to learn from.
  * `load_text_encoder(directory)`: a Hugging Face checkpoint (T5 / UMT5 encoder, CLIP text tower) converted on load
    into our own Flax NNX modules (`T5Encoder`, `CLIPTextEncoder`; transformers 5 ships no Flax models), bundled with
    the checkpoint's own tokenizer as a `TextEncoder`. Parity with the PyTorch `transformers` models is tested.

Every encoder honours the padding mask: outputs at real tokens do not depend on how much padding follows them or on
the padding ids, so a batch can be padded to any fixed length (static shapes) without changing its conditioning.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidgen.layers.attention import full_attention, heads_projection, output_projection
from vidgen.layers.mlp import Mlp
from vidgen.parallel.sharding import constrain, logical

DTYPES = ("float32", "bfloat16", "float16")
_RESIDUAL = ("act_batch", "act_len", "act_embed")


# ----------------------------------------------------------------------------------------------------------------------
# Word tokenizer.


class WordTokenizer:
  """Closed-vocabulary, whitespace word tokenizer. id 0 = padding; ids 1..len(vocab) = words in vocab order.

  Prompts are lower-cased and split on whitespace; every word must be in the vocabulary (there is no "unknown" id: a
  word the encoder was never trained on would silently condition on nothing, so it is an error instead).
  """

  PAD_ID = 0

  def __init__(self, vocab: Sequence[str], max_length: int):
    if isinstance(vocab, str) or not isinstance(vocab, Sequence):
      raise ValueError(f"vocab must be a sequence of words, got {vocab!r}")
    words = tuple(vocab)
    if not words:
      raise ValueError("vocab must hold at least one word, got an empty sequence")
    for w in words:
      if not isinstance(w, str) or not w or w != w.lower() or len(w.split()) != 1 or w.strip() != w:
        raise ValueError(f"vocab word {w!r} is not allowed: words must be non-empty lower-case strings without "
                         f"whitespace")
    duplicates = sorted({w for w in words if words.count(w) > 1})
    if duplicates:
      raise ValueError(f"vocab words must be unique; repeated: {duplicates}")
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
      raise ValueError(f"max_length must be an integer >= 1, got {max_length!r}")
    self.vocab: tuple[str, ...] = words
    self.max_length: int = int(max_length)
    self._ids = {w: i + 1 for i, w in enumerate(words)}

  @property
  def vocab_size(self) -> int:
    """Size of the id space, padding included (what `SmallTextEncoder`'s `vocab_size` must be)."""
    return len(self.vocab) + 1

  def __repr__(self) -> str:
    return f"WordTokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"

  def __eq__(self, other: object) -> bool:
    return isinstance(other, WordTokenizer) and (self.vocab, self.max_length) == (other.vocab, other.max_length)

  def __hash__(self) -> int:
    return hash((self.vocab, self.max_length))

  def encode_one(self, prompt: str) -> list[int]:
    """One prompt -> its word ids (no padding). ValueError for anything `__call__` refuses."""
    if not isinstance(prompt, str):
      raise ValueError(f"prompt must be a string, got {type(prompt).__name__} {prompt!r}")
    words = prompt.lower().split()
    if not words:
      raise ValueError(f"prompt {prompt!r} is empty; a prompt needs 1 to {self.max_length} words")
    if len(words) > self.max_length:
      raise ValueError(f"prompt {prompt!r} has {len(words)} words; at most max_length={self.max_length} are allowed")
    for w in words:
      if w not in self._ids:
        raise ValueError(f"prompt {prompt!r}: word {w!r} is not in the vocabulary; allowed words: {list(self.vocab)}")
    return [self._ids[w] for w in words]

  def __call__(self, prompts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Prompts -> (ids int32 `[B, max_length]`, mask bool `[B, max_length]`, True = real token); a str gives B = 1."""
    if isinstance(prompts, str):
      prompts = [prompts]
    elif not isinstance(prompts, Sequence) and not isinstance(prompts, np.ndarray):
      raise ValueError(f"prompts must be a string or a sequence of strings, got {type(prompts).__name__} {prompts!r}")
    prompts = list(prompts)
    ids = np.zeros((len(prompts), self.max_length), np.int32)
    for row, prompt in enumerate(prompts):
      tokens = self.encode_one(prompt)
      ids[row, :len(tokens)] = tokens
    return ids, ids != self.PAD_ID

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Word ids of one prompt -> the (lower-cased) prompt; padding ids are skipped."""
    words = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if not 0 <= i <= len(self.vocab):
        raise ValueError(f"token id {i} is out of range; allowed: 0 (padding) to {len(self.vocab)}")
      if i != self.PAD_ID:
        words.append(self.vocab[i - 1])
    return " ".join(words)

  def to_dict(self) -> dict[str, Any]:
    """JSON-serializable description (stored in a run's workdir so sampling uses the exact training vocabulary)."""
    return {"kind": "word", "vocab": list(self.vocab), "max_length": self.max_length}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "WordTokenizer":
    if not isinstance(d, Mapping) or "vocab" not in d or "max_length" not in d:
      raise ValueError(f"a WordTokenizer dict needs keys 'vocab' and 'max_length', got {d!r}")
    if d.get("kind", "word") != "word":
      raise ValueError(f"tokenizer dict has kind {d['kind']!r}; allowed: 'word'")
    return cls(tuple(d["vocab"]), int(d["max_length"]))

  def to_json(self) -> str:
    return json.dumps(self.to_dict())

  @classmethod
  def from_json(cls, text: str) -> "WordTokenizer":
    return cls.from_dict(json.loads(text))


def shapes_tokenizer(max_length: int = 8) -> WordTokenizer:
  """The tokenizer for the embedded shapes dataset's captions `"a {color} {shape} moving {direction}"`.

  Vocabulary order is fixed (caption words, then colors, shapes and directions in the dataset's order), so ids are
  stable across runs and machines.
  """
  from vidgen.data.shapes import COLOR_NAMES, DIRECTION_NAMES, SHAPES  # pylint: disable=g-import-not-at-top

  return WordTokenizer(("a", "moving", *COLOR_NAMES, *SHAPES, *DIRECTION_NAMES), max_length)


# ----------------------------------------------------------------------------------------------------------------------
# Small text encoder (trained from scratch).


def small_text_config(**overrides: Any) -> ml_collections.ConfigDict:
  """Config of a `SmallTextEncoder`; defaults fit the shapes tokenizer. Unknown override names raise ValueError."""
  c = ml_collections.ConfigDict()
  c.vocab_size = shapes_tokenizer().vocab_size
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


def _check_ids(ids: jax.Array, mask: jax.Array | None, vocab_size: int, max_length: int) -> None:
  """Static checks of encoder inputs; value checks only when the ids are concrete (not traced under jit)."""
  if ids.ndim != 2:
    raise ValueError(f"ids must be [B, L] token ids; got shape {ids.shape}")
  if ids.shape[1] > max_length:
    raise ValueError(f"ids have length L={ids.shape[1]}; the encoder takes at most max_length={max_length} tokens")
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"ids must be integers, got dtype {ids.dtype}")
  if mask is not None and tuple(mask.shape) != tuple(ids.shape):
    raise ValueError(f"mask must have the shape of ids {tuple(ids.shape)}; got {tuple(mask.shape)}")
  if not isinstance(ids, jax.core.Tracer) and ids.size:
    lo, hi = int(np.min(ids)), int(np.max(ids))
    if lo < 0 or hi >= vocab_size:
      bad = lo if lo < 0 else hi
      raise ValueError(f"token id {bad} is out of range; allowed: 0 to vocab_size - 1 = {vocab_size - 1}")


class _SmallBlock(nnx.Module):
  """Pre-LayerNorm transformer block: x + Attn(LN(x), padding mask); x + MLP(LN(x))."""

  def __init__(self, width: int, num_heads: int, hidden: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    head_dim = width // num_heads
    self.dtype = dtype
    self.ln1 = _layer_norm_module(width, 1e-6, param_dtype, rngs)
    self.qkv = heads_projection(width, (3, num_heads, head_dim), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.out = output_projection(num_heads, head_dim, width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.ln2 = _layer_norm_module(width, 1e-6, param_dtype, rngs)
    self.mlp = Mlp(width, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """x `[B, L, D]` float32 residual stream, mask `[B, L]` bool -> `[B, L, D]` float32."""
    qkv = self.qkv(self.ln1(x).astype(self.dtype))
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    # Keys are masked, queries are not: a padding query still gets an output (ignored downstream), but no real
    # token ever reads a padding key, which is what makes outputs at real tokens independent of the padding.
    h = self.out(full_attention(q, k, v, mask=mask))
    x = constrain(x + h.astype(x.dtype), _RESIDUAL)
    x = x + self.mlp(self.ln2(x).astype(self.dtype)).astype(x.dtype)
    return constrain(x, _RESIDUAL)


def _layer_norm_module(width: int, eps: float, param_dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Statistics in float32 whatever the compute dtype (the precision policy of DESIGN.md).
  return nnx.LayerNorm(width, epsilon=eps, dtype=jnp.float32, param_dtype=param_dtype,
                       scale_init=logical(nnx.initializers.ones_init(), "embed"),
                       bias_init=logical(nnx.initializers.zeros_init(), "embed"), rngs=rngs)


def _stacked(make, depth: int, rngs: nnx.Rngs):
  """`depth` copies of `make(rngs)` with parameters stacked on a leading "layers" axis (run with `_scan_blocks`)."""

  @nnx.split_rngs(splits=depth)
  @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=depth, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def build(rngs: nnx.Rngs):
    return make(rngs)

  return build(rngs)


def _scan_blocks(blocks: nnx.Module, x: jax.Array, *args) -> jax.Array:
  """Runs stacked blocks over depth with `lax.scan`: compile time does not grow with the number of layers."""
  graphdef, state = nnx.split(blocks)

  def body(h, layer_state):
    return nnx.merge(graphdef, layer_state)(h, *args), None

  x, _ = jax.lax.scan(body, x, state)
  return x


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
    self.dtype = jnp.dtype(config["dtype"])
    pdtype = jnp.dtype(config["param_dtype"])
    num_heads, hidden = int(config["num_heads"]), int(width * float(config["mlp_ratio"]))
    self.token_embed = nnx.Embed(self.vocab_size, width, param_dtype=pdtype,
                                 embedding_init=logical(nnx.initializers.normal(0.02), "vocab", "embed"), rngs=rngs)
    self.pos_embed = nnx.Param(logical(nnx.initializers.normal(0.02), None, "embed")(
        rngs.params(), (self.max_length, width), pdtype))
    self.blocks = _stacked(
        lambda r: _SmallBlock(width, num_heads, hidden, dtype=self.dtype, param_dtype=pdtype, rngs=r),
        self.depth, rngs)
    self.final_norm = _layer_norm_module(width, 1e-6, pdtype, rngs)

  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """ids `[B, L]` int (L <= max_length), mask `[B, L]` bool (True = real token) -> `[B, L, width]` float32."""
    ids = jnp.asarray(ids)
    mask = jnp.asarray(mask)
    _check_ids(ids, mask, self.vocab_size, self.max_length)
    length = ids.shape[1]
    x = self.token_embed(ids).astype(jnp.float32) + self.pos_embed[...][:length].astype(jnp.float32)[None]
    x = constrain(x, _RESIDUAL)
    x = _scan_blocks(self.blocks, x, mask.astype(bool))
    return self.final_norm(x).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------------------------
# Pretrained encoders: shared pieces.

# Large finite negative instead of -inf (as in layers/attention.py): a fully masked row stays finite and is zeroed.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def _quick_gelu(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(1.702 * x)


# Hugging Face activation names -> functions. "gelu" is the exact (erf) GELU; "gelu_new" / "gelu_pytorch_tanh" /
# "gelu_fast" are all the tanh approximation.
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": _quick_gelu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def _check_activation(name: str, field: str) -> str:
  if name not in ACTIVATIONS:
    raise ValueError(f"config.json field {field!r} names activation {name!r}, which is not supported; allowed: "
                     f"{sorted(ACTIVATIONS)}")
  return name


def _dense(in_dims, out_dims, names, *, bias: bool, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.LinearGeneral:
  """A LinearGeneral from `in_dims` to `out_dims` whose kernel carries the logical axis `names` (input dims first)."""
  in_dims = (in_dims,) if isinstance(in_dims, int) else tuple(in_dims)
  out_dims = (out_dims,) if isinstance(out_dims, int) else tuple(out_dims)
  axis = tuple(range(-len(in_dims), 0))
  return nnx.LinearGeneral(
      in_dims, out_dims, axis=axis, use_bias=bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=logical(nnx.initializers.lecun_normal(), *names),
      bias_init=logical(nnx.initializers.zeros_init(), *names[len(in_dims):]), rngs=rngs)


class _RMSNorm(nnx.Module):
  """T5 layer norm: `x / rms(x) * scale`, no mean subtraction, no bias; float32 statistics."""

  def __init__(self, dim: int, eps: float, param_dtype):
    self.eps = eps
    self.scale = nnx.Param(logical(nnx.initializers.ones_init(), "embed")(None, (dim,), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    """x `[..., dim]` -> float32 `[..., dim]`."""
    x = x.astype(jnp.float32)
    y = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return y * self.scale[...].astype(jnp.float32)


def _biased_attention(q, k, v, *, mask: jax.Array, bias: jax.Array | None, scale: float) -> jax.Array:
  """Attention with an additive logit bias (T5's relative positions), which `full_attention` has no slot for.

  q, k, v `[B, L, heads, d]`; mask `[B, Lk]` bool (True = real key); bias `[heads, Lq, Lk]` float32 or None.
  Logits and softmax in float32; queries without any real key get zeros (same convention as `full_attention`).
  """
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias[None]
  mask4 = mask[:, None, None, :]
  probs = jax.nn.softmax(jnp.where(mask4, logits, _MASK_VALUE), axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
  has_key = jnp.any(mask, axis=-1)[:, None, None, None]
  return out * has_key.astype(out.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# T5 / mT5 / UMT5 encoder.


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
    _check_activation(activation, "feed_forward_proj")
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


class T5Block(nnx.Module):
  """T5 encoder layer: x + Attn(RMSNorm(x)) (unscaled logits + relative bias), x + FF(RMSNorm(x))."""

  def __init__(self, spec: T5Spec, *, rngs: nnx.Rngs):
    dtype, pdtype = jnp.dtype(spec.dtype), jnp.dtype(spec.param_dtype)
    d, h, dk, ff = spec.d_model, spec.num_heads, spec.d_kv, spec.d_ff
    kw = dict(bias=False, dtype=dtype, param_dtype=pdtype, rngs=rngs)
    self.dtype = dtype
    self.activation = spec.activation
    self.attn_norm = _RMSNorm(d, spec.eps, pdtype)
    self.q = _dense(d, (h, dk), ("embed", "heads", "kv"), **kw)
    self.k = _dense(d, (h, dk), ("embed", "heads", "kv"), **kw)
    self.v = _dense(d, (h, dk), ("embed", "heads", "kv"), **kw)
    self.o = _dense((h, dk), d, ("heads", "kv", "embed"), **kw)
    self.rel_bias = nnx.data(None)
    if spec.per_layer_bias:
      self.rel_bias = nnx.Param(logical(nnx.initializers.normal(0.02), None, "heads")(
          rngs.params(), (spec.num_buckets, h), pdtype))
    self.ff_norm = _RMSNorm(d, spec.eps, pdtype)
    self.wi = _dense(d, ff, ("embed", "mlp"), **kw)
    self.wi_gate = _dense(d, ff, ("embed", "mlp"), **kw) if spec.gated else nnx.data(None)
    self.wo = _dense(ff, d, ("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array, mask: jax.Array, buckets: np.ndarray, shared_bias: jax.Array | None) -> jax.Array:
    """x `[B, L, d_model]` float32, mask `[B, L]`, buckets `[L, L]`, shared_bias `[heads, L, L]` or None."""
    h = self.attn_norm(x).astype(self.dtype)
    q, k, v = self.q(h), self.k(h), self.v(h)
    bias = shared_bias
    if self.rel_bias is not None:
      bias = jnp.transpose(self.rel_bias[...].astype(jnp.float32)[buckets], (2, 0, 1))
    # T5 folds the usual 1/sqrt(d) into its initialisation, so logits are not scaled.
    y = _biased_attention(q, k, v, mask=mask, bias=bias, scale=1.0)
    x = constrain(x + self.o(y).astype(jnp.float32), _RESIDUAL)
    h = self.ff_norm(x).astype(self.dtype)
    a = ACTIVATIONS[self.activation](self.wi(h))
    if self.wi_gate is not None:
      a = a * self.wi_gate(h)
    a = constrain(a, ("act_batch", "act_len", "act_mlp"))
    return constrain(x + self.wo(a).astype(jnp.float32), _RESIDUAL)


class T5Encoder(nnx.Module):
  """The encoder of T5 / mT5 / UMT5 (`transformers.T5EncoderModel`, `UMT5EncoderModel`) in Flax NNX.

  ids -> token embedding (no position embedding: positions enter as a bucketed relative bias on the logits, computed
  from layer 0's table and shared by all layers, or per layer for UMT5) -> depth x pre-RMSNorm block -> final RMSNorm.
  Usually built by `load_text_encoder`; `T5Encoder(spec, rngs=...)` gives random weights.
  """

  def __init__(self, spec: T5Spec, *, rngs: nnx.Rngs):
    self.spec = spec
    pdtype = jnp.dtype(spec.param_dtype)
    self.embed = nnx.Embed(spec.vocab_size, spec.d_model, param_dtype=pdtype,
                           embedding_init=logical(nnx.initializers.normal(1.0), "vocab", "embed"), rngs=rngs)
    self.rel_bias = nnx.data(None)
    if not spec.per_layer_bias:
      self.rel_bias = nnx.Param(logical(nnx.initializers.normal(0.02), None, "heads")(
          rngs.params(), (spec.num_buckets, spec.num_heads), pdtype))
    self.blocks = _stacked(lambda r: T5Block(spec, rngs=r), spec.num_layers, rngs)
    self.final_norm = _RMSNorm(spec.d_model, spec.eps, pdtype)

  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """ids `[B, L]` int, mask `[B, L]` bool (True = real token) -> last hidden state `[B, L, d_model]` float32."""
    spec = self.spec
    ids, mask = jnp.asarray(ids), jnp.asarray(mask).astype(bool)
    _check_ids(ids, mask, spec.vocab_size, ids.shape[-1] if ids.ndim == 2 else 0)
    length = ids.shape[1]
    buckets = t5_relative_buckets(length, length, spec.num_buckets, spec.max_distance)
    shared = None
    if self.rel_bias is not None:
      shared = jnp.transpose(self.rel_bias[...].astype(jnp.float32)[buckets], (2, 0, 1))
    x = constrain(self.embed(ids).astype(jnp.float32), _RESIDUAL)
    x = _scan_blocks(self.blocks, x, mask, buckets, shared)
    return self.final_norm(x)


def _t5_sources(spec: T5Spec) -> dict[tuple[str, ...], "_Source"]:
  """Our parameter paths -> Hugging Face weight names (encoder part of T5ForConditionalGeneration / T5EncoderModel)."""
  layers = range(spec.num_layers)

  def per_layer(suffix: str, kind: str, in_dims: int = 1) -> _Source:
    return _Source(tuple(f"encoder.block.{i}.{suffix}" for i in layers), kind, in_dims, stacked=True)

  attn, ff = "layer.0.SelfAttention", "layer.1.DenseReluDense"
  sources = {
      ("embed", "embedding"): _Source(("shared.weight",), "copy"),
      ("final_norm", "scale"): _Source(("encoder.final_layer_norm.weight",), "vector"),
      ("blocks", "attn_norm", "scale"): per_layer("layer.0.layer_norm.weight", "vector"),
      ("blocks", "q", "kernel"): per_layer(f"{attn}.q.weight", "linear"),
      ("blocks", "k", "kernel"): per_layer(f"{attn}.k.weight", "linear"),
      ("blocks", "v", "kernel"): per_layer(f"{attn}.v.weight", "linear"),
      ("blocks", "o", "kernel"): per_layer(f"{attn}.o.weight", "linear", in_dims=2),
      ("blocks", "ff_norm", "scale"): per_layer("layer.1.layer_norm.weight", "vector"),
      ("blocks", "wo", "kernel"): per_layer(f"{ff}.wo.weight", "linear"),
  }
  if spec.gated:
    sources[("blocks", "wi", "kernel")] = per_layer(f"{ff}.wi_0.weight", "linear")
    sources[("blocks", "wi_gate", "kernel")] = per_layer(f"{ff}.wi_1.weight", "linear")
  else:
    sources[("blocks", "wi", "kernel")] = per_layer(f"{ff}.wi.weight", "linear")
  if spec.per_layer_bias:
    sources[("blocks", "rel_bias")] = per_layer(f"{attn}.relative_attention_bias.weight", "copy")
  else:
    sources[("rel_bias",)] = _Source((f"encoder.block.0.{attn}.relative_attention_bias.weight",), "copy")
  return sources


# Weights of a full encoder-decoder checkpoint that an encoder does not use.
_T5_IGNORED = (r"^decoder\.", r"^lm_head\.")


def _t5_names(names: Sequence[str]) -> dict[str, str]:
  """Checkpoint names -> canonical names. The token table is `shared.weight`; T5EncoderModel checkpoints may hold it
  only under its tied alias `encoder.embed_tokens.weight` (or under both, in which case the alias is a copy)."""
  out = {}
  for name in names:
    if name == "encoder.embed_tokens.weight":
      if "shared.weight" in names:
        continue
      out["shared.weight"] = name
    else:
      out[name] = name
  return out


# ----------------------------------------------------------------------------------------------------------------------
# CLIP text encoder.


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
        activation=_check_activation(str(get("hidden_act", d.activation)), "hidden_act"),
        eps=float(get("layer_norm_eps", d.eps)), eos_token_id=int(eos), dtype=dtype, param_dtype=dtype)


class CLIPBlock(nnx.Module):
  """CLIP encoder layer: x + Attn(LN(x), causal & padding mask), x + MLP(LN(x)) with quick-GELU or GELU."""

  def __init__(self, spec: CLIPTextSpec, *, rngs: nnx.Rngs):
    if spec.width % spec.num_heads:
      raise ValueError(f"CLIP hidden_size {spec.width} is not divisible by num_attention_heads {spec.num_heads}")
    dtype, pdtype = jnp.dtype(spec.dtype), jnp.dtype(spec.param_dtype)
    d, h = spec.width, spec.num_heads
    kw = dict(bias=True, dtype=dtype, param_dtype=pdtype, rngs=rngs)
    self.dtype = dtype
    self.activation = spec.activation
    self.ln1 = _layer_norm_module(d, spec.eps, pdtype, rngs)
    self.q = _dense(d, (h, d // h), ("embed", "heads", "kv"), **kw)
    self.k = _dense(d, (h, d // h), ("embed", "heads", "kv"), **kw)
    self.v = _dense(d, (h, d // h), ("embed", "heads", "kv"), **kw)
    self.o = _dense((h, d // h), d, ("heads", "kv", "embed"), **kw)
    self.ln2 = _layer_norm_module(d, spec.eps, pdtype, rngs)
    self.fc1 = _dense(d, spec.mlp_dim, ("embed", "mlp"), **kw)
    self.fc2 = _dense(spec.mlp_dim, d, ("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array, mask4: jax.Array) -> jax.Array:
    """x `[B, L, width]` float32, mask4 `[B, 1, L, L]` bool -> `[B, L, width]` float32."""
    h = self.ln1(x).astype(self.dtype)
    y = full_attention(self.q(h), self.k(h), self.v(h), mask=mask4)
    x = constrain(x + self.o(y).astype(jnp.float32), _RESIDUAL)
    h = self.ln2(x).astype(self.dtype)
    a = constrain(ACTIVATIONS[self.activation](self.fc1(h)), ("act_batch", "act_len", "act_mlp"))
    return constrain(x + self.fc2(a).astype(jnp.float32), _RESIDUAL)


class CLIPTextEncoder(nnx.Module):
  """The CLIP text tower (`transformers.CLIPTextModel`) in Flax NNX.

  token + learned position embeddings -> depth x pre-LN block with causal self-attention (combined with the padding
  mask) -> final LayerNorm. Returns the last hidden state and the pooled output: the hidden state at the first
  `eos_token_id` of each row (or, for legacy configs with `eos_token_id == 2`, at the highest token id).
  """

  def __init__(self, spec: CLIPTextSpec, *, rngs: nnx.Rngs):
    self.spec = spec
    pdtype = jnp.dtype(spec.param_dtype)
    self.token_embed = nnx.Embed(spec.vocab_size, spec.width, param_dtype=pdtype,
                                 embedding_init=logical(nnx.initializers.normal(0.02), "vocab", "embed"), rngs=rngs)
    self.pos_embed = nnx.Param(logical(nnx.initializers.normal(0.01), None, "embed")(
        rngs.params(), (spec.max_length, spec.width), pdtype))
    self.blocks = _stacked(lambda r: CLIPBlock(spec, rngs=r), spec.num_layers, rngs)
    self.final_norm = _layer_norm_module(spec.width, spec.eps, pdtype, rngs)

  def __call__(self, ids: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """ids `[B, L]` int (L <= max_length), mask `[B, L]` bool or None (all real).

    Returns:
      (last hidden state `[B, L, width]` float32, pooled `[B, width]` float32).
    """
    spec = self.spec
    ids = jnp.asarray(ids)
    mask = jnp.ones(ids.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)
    _check_ids(ids, mask, spec.vocab_size, spec.max_length)
    length = ids.shape[1]
    x = self.token_embed(ids).astype(jnp.float32) + self.pos_embed[...][:length].astype(jnp.float32)[None]
    x = constrain(x, _RESIDUAL)
    causal = jnp.tril(jnp.ones((length, length), bool))
    mask4 = causal[None, None] & mask[:, None, None, :]
    x = self.final_norm(_scan_blocks(self.blocks, x, mask4)).astype(jnp.float32)
    if spec.eos_token_id == 2:
      # Checkpoints converted before transformers fixed eos_token_id: their EOS is the largest id in the vocabulary.
      eos_pos = jnp.argmax(ids, axis=-1)
    else:
      # The first EOS: the pad token may equal the EOS token, so later occurrences can be padding.
      eos_pos = jnp.argmax(ids == spec.eos_token_id, axis=-1)
    pooled = jnp.take_along_axis(x, eos_pos[:, None, None], axis=1)[:, 0]
    return x, pooled


def _clip_sources(spec: CLIPTextSpec) -> dict[tuple[str, ...], "_Source"]:
  """Our parameter paths -> canonical (prefix-free) CLIPTextModel weight names."""
  layers = range(spec.num_layers)

  def per_layer(suffix: str, kind: str, in_dims: int = 1) -> _Source:
    return _Source(tuple(f"encoder.layers.{i}.{suffix}" for i in layers), kind, in_dims, stacked=True)

  sources = {
      ("token_embed", "embedding"): _Source(("embeddings.token_embedding.weight",), "copy"),
      ("pos_embed",): _Source(("embeddings.position_embedding.weight",), "copy"),
      ("final_norm", "scale"): _Source(("final_layer_norm.weight",), "vector"),
      ("final_norm", "bias"): _Source(("final_layer_norm.bias",), "vector"),
  }
  for ours, theirs in (("ln1", "layer_norm1"), ("ln2", "layer_norm2")):
    sources[("blocks", ours, "scale")] = per_layer(f"{theirs}.weight", "vector")
    sources[("blocks", ours, "bias")] = per_layer(f"{theirs}.bias", "vector")
  for ours, theirs, in_dims in (("q", "self_attn.q_proj", 1), ("k", "self_attn.k_proj", 1),
                                ("v", "self_attn.v_proj", 1), ("o", "self_attn.out_proj", 2),
                                ("fc1", "mlp.fc1", 1), ("fc2", "mlp.fc2", 1)):
    sources[("blocks", ours, "kernel")] = per_layer(f"{theirs}.weight", "linear", in_dims)
    sources[("blocks", ours, "bias")] = per_layer(f"{theirs}.bias", "vector")
  return sources


# The vision tower, the projection heads and the temperature of a full CLIP checkpoint; old checkpoints also saved
# the position-ids buffer.
_CLIP_IGNORED = (r"^vision_model\.", r"^visual_projection\.", r"^text_projection\.", r"^logit_scale$",
                 r"position_ids$")


def _clip_names(names: Sequence[str]) -> dict[str, str]:
  """Checkpoint names -> canonical names: transformers 5 saves CLIPTextModel without the `text_model.` prefix that
  full CLIPModel / CLIPTextModelWithProjection checkpoints (and transformers 4 CLIPTextModel ones) carry."""
  return {name.removeprefix("text_model."): name for name in names}


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoint loading.


@dataclasses.dataclass(frozen=True)
class _Source:
  """Where one of our parameters comes from in a Hugging Face checkpoint.

  `names`: one weight name, or one per layer when the parameter is stacked over depth (`stacked`). `kind`: "copy"
  (same layout), "vector" (a flat vector reshaped, e.g. a bias to `[heads, head_dim]`) or "linear" (a torch Linear
  weight `[out, in]`, transposed to our `[in..., out...]` kernel, whose first `in_dims` dims are inputs).
  """

  names: tuple[str, ...]
  kind: str
  in_dims: int = 1
  stacked: bool = False

  def hf_shape(self, ours: tuple[int, ...]) -> tuple[int, ...]:
    """The checkpoint shape that converts to our (per-layer) shape `ours`."""
    if self.kind == "linear":
      return (math.prod(ours[self.in_dims:]), math.prod(ours[:self.in_dims]))
    if self.kind == "vector":
      return (math.prod(ours),)
    return tuple(ours)

  def convert(self, weight: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
    if self.kind == "linear":
      return weight.T.reshape(ours)
    return weight.reshape(ours)


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


class _Checkpoint:
  """Read-only view of a checkpoint's tensors by name, over one file or the shards listed in an index.

  safetensors files are read lazily, so a full encoder-decoder checkpoint costs only the encoder's tensors; numpy
  cannot hold bfloat16, so bfloat16 tensors are read through safetensors' flax backend (still no torch needed).
  """

  def __init__(self, directory: pathlib.Path):
    path = next((directory / f for f in WEIGHT_FILES if (directory / f).is_file()), None)
    if path is None:
      raise FileNotFoundError(f"no weights file in {directory}; expected one of {list(WEIGHT_FILES)}")
    self.path = path
    if path.name.endswith(".index.json"):
      weight_map = json.loads(path.read_text())["weight_map"]
      files = sorted(set(weight_map.values()))
    else:
      files = [path.name]
    self._where: dict[str, tuple[pathlib.Path, Any]] = {}
    for name in files:
      file = directory / name
      if not file.is_file():
        raise FileNotFoundError(f"weights shard {file} listed in {path} does not exist")
      if file.suffix == ".safetensors":
        from safetensors import safe_open  # pylint: disable=g-import-not-at-top

        try:
          with safe_open(str(file), framework="numpy") as f:
            for key in f.keys():
              self._where[key] = (file, None)
        except Exception as e:  # safetensors raises its own SafetensorError type for corrupt or truncated files.
          raise ValueError(f"{file} is not a readable safetensors file: {e}") from e
      else:
        for key, tensor in _torch_load(file).items():
          self._where[key] = (file, tensor)

  def names(self) -> list[str]:
    return list(self._where)

  def shape(self, name: str) -> tuple[int, ...]:
    file, tensor = self._where[name]
    if tensor is not None:
      return tuple(tensor.shape)
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top

    with safe_open(str(file), framework="numpy") as f:
      return tuple(f.get_slice(name).get_shape())

  def get(self, name: str) -> np.ndarray:
    file, tensor = self._where[name]
    if tensor is not None:
      import torch  # pylint: disable=g-import-not-at-top

      tensor = tensor.detach()
      return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top

    with safe_open(str(file), framework="numpy") as f:
      if f.get_slice(name).get_dtype() != "BF16":
        return f.get_tensor(name)
    with safe_open(str(file), framework="flax") as f:
      return np.asarray(f.get_tensor(name))


def _torch_load(file: pathlib.Path) -> dict[str, Any]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"{file} is a PyTorch pickle; reading it needs torch (pip install torch), or convert the "
                      f"checkpoint to model.safetensors") from e
  state = torch.load(str(file), map_location="cpu", weights_only=True)
  if not isinstance(state, Mapping):
    raise ValueError(f"{file} does not hold a state dict (name -> tensor); got {type(state).__name__}")
  return dict(state)


def _short_list(names: Sequence[str], limit: int = 20) -> str:
  names = sorted(names)
  more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
  return f"{names[:limit]}{more}"


def _load_module(make, sources: Mapping[tuple[str, ...], _Source], checkpoint: _Checkpoint,
                 canonical: Mapping[str, str], ignored: Sequence[str], what: str) -> nnx.Module:
  """Builds the module abstractly (no random init) and fills every parameter from the checkpoint.

  Args:
    make: `() -> module`; only traced with `nnx.eval_shape`.
    sources: our parameter path -> `_Source` (canonical checkpoint names).
    checkpoint: the weights.
    canonical: canonical name -> name in the checkpoint, for every checkpoint tensor.
    ignored: regexes of canonical names that are legitimately unused (e.g. a decoder).
    what: the model, for error messages.
  """
  graphdef, abstract = nnx.split(nnx.eval_shape(make))
  flat = nnx.traversals.flatten_mapping(nnx.to_pure_dict(abstract))
  unmapped = sorted(set(flat) - set(sources))
  if unmapped:  # A mismatch between a module and its name table is a bug here, not a user error.
    raise AssertionError(f"{what}: parameters without a checkpoint source: {unmapped}")
  wanted = {name for src in sources.values() for name in src.names}
  missing = sorted(wanted - set(canonical))
  unexpected = [n for n in canonical if n not in wanted and not any(re.search(p, n) for p in ignored)]
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"missing weights ({len(missing)}): {_short_list(missing)}")
    if unexpected:
      parts.append(f"unexpected weights ({len(unexpected)}): {_short_list([canonical[n] for n in unexpected])}")
    raise ValueError(f"{checkpoint.path} does not match {what}: " + "; ".join(parts))
  bad = []
  for path, src in sources.items():
    ours = tuple(flat[path].shape[1:] if src.stacked else flat[path].shape)
    expected = src.hf_shape(ours)
    for name in src.names:
      got = checkpoint.shape(canonical[name])
      if got != expected:
        bad.append(f"{canonical[name]}: expected {expected}, got {got}")
  if bad:
    raise ValueError(f"{checkpoint.path}: weight shapes do not match {what} (name: expected, got): " + "; ".join(bad))
  arrays = {}
  for path, src in sources.items():
    target = flat[path]
    ours = tuple(target.shape[1:] if src.stacked else target.shape)
    parts = [src.convert(checkpoint.get(canonical[n]), ours).astype(target.dtype) for n in src.names]
    arrays[path] = jnp.asarray(np.stack(parts) if src.stacked else parts[0])
  nnx.replace_by_pure_dict(abstract, nnx.traversals.unflatten_mapping(arrays))
  return nnx.merge(graphdef, abstract)


class TextEncoder:
  """A pretrained text encoder ready to use: the NNX module, its spec and the checkpoint's tokenizer.

  `encode(prompts, max_length)` tokenizes (padding to `max_length`, truncating longer prompts) and runs the module
  under `jax.jit` as a pure function of its current weights (`nnx.split` at each call, so edits to `module` count).
  """

  def __init__(self, module: nnx.Module, spec: T5Spec | CLIPTextSpec, tokenizer: Any, *, directory: str = ""):
    self.module = module
    self.spec = spec
    self.tokenizer = tokenizer
    self.directory = directory
    graphdef = nnx.graphdef(module)
    self._apply = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state)(ids, mask))

  def __repr__(self) -> str:
    return f"TextEncoder({type(self.module).__name__}, width={self.width}, directory={self.directory!r})"

  @property
  def kind(self) -> str:
    """"t5" (also mT5 / UMT5) or "clip"."""
    return "clip" if isinstance(self.spec, CLIPTextSpec) else "t5"

  @property
  def width(self) -> int:
    """Width D of the hidden states (what the DiT's `text_dim` must be)."""
    return self.spec.width

  def tokenize(self, prompts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """prompts -> (ids int32 `[B, max_length]`, mask bool `[B, max_length]`), padded and truncated."""
    if isinstance(prompts, str):
      raise ValueError(f"prompts must be a list of strings, got the string {prompts!r} (wrap it in a list)")
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
      raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
      raise ValueError(f"max_length must be an integer >= 1, got {max_length!r}")
    if self.kind == "clip" and max_length > self.spec.max_length:
      raise ValueError(f"max_length {max_length} exceeds the CLIP model's max_position_embeddings "
                       f"{self.spec.max_length}")
    out = self.tokenizer(prompts, padding="max_length", max_length=int(max_length), truncation=True,
                         return_tensors="np")
    return np.asarray(out["input_ids"], np.int32), np.asarray(out["attention_mask"]).astype(bool)

  def __call__(self, ids: jax.Array, mask: jax.Array):
    """Token ids `[B, L]` and mask `[B, L]` -> the module's output (CLIP: (hidden, pooled); T5: hidden)."""
    _check_ids(jnp.asarray(ids), jnp.asarray(mask), self.spec.vocab_size,
               self.spec.max_length if self.kind == "clip" else np.shape(ids)[-1])
    return self._apply(nnx.state(self.module), jnp.asarray(ids, jnp.int32), jnp.asarray(mask, bool))

  def encode(self, prompts: Sequence[str], max_length: int, *, return_pooled: bool = False):
    """prompts -> (hidden float32 `[B, max_length, D]`, mask bool `[B, max_length]`) [, pooled `[B, D]` (CLIP)]."""
    if return_pooled and self.kind != "clip":
      raise ValueError(f"return_pooled=True needs a CLIP encoder; this one is {self.spec.model_type!r}, which has no "
                       f"pooled output")
    ids, mask = self.tokenize(prompts, max_length)
    out = self(ids, mask)
    hidden, pooled = out if self.kind == "clip" else (out, None)
    hidden = hidden.astype(jnp.float32)
    return (hidden, mask, pooled.astype(jnp.float32)) if return_pooled else (hidden, mask)


MODEL_TYPES = ("t5", "mt5", "umt5", "clip", "clip_text_model")


def load_text_encoder(directory: str | pathlib.Path, *, dtype: str = "float32",
                      tokenizer_directory: str | pathlib.Path | None = None) -> TextEncoder:
  """Loads a Hugging Face T5 / mT5 / UMT5 encoder or CLIP text tower into our Flax modules, with its tokenizer.

  Args:
    directory: a `save_pretrained` directory: `config.json` (model_type in MODEL_TYPES; a full "clip" config uses its
      `text_config`) and `model.safetensors` or `pytorch_model.bin` (or a sharded `*.index.json`). Full encoder-
      decoder T5 checkpoints and full CLIP checkpoints work: the decoder / vision weights are skipped.
    dtype: parameter and compute dtype, one of DTYPES; norms, softmax and the returned hidden states are float32.
    tokenizer_directory: where the tokenizer files are, if not in `directory` (diffusers keeps them in a sibling
      `tokenizer/` folder).

  Returns:
    A `TextEncoder`.
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(f"text encoder directory {directory} does not exist; expected a Hugging Face checkpoint "
                            f"directory with config.json and one of {list(WEIGHT_FILES)}")
  config_path = directory / "config.json"
  if not config_path.is_file():
    raise FileNotFoundError(f"{config_path} does not exist; a text encoder directory needs config.json "
                            f"(model_type one of {MODEL_TYPES})")
  if dtype not in DTYPES:
    raise ValueError(f"dtype {dtype!r} is not supported; allowed: {DTYPES}")
  config = json.loads(config_path.read_text())
  model_type = config.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"{config_path}: model_type {model_type!r} is not a supported text encoder; allowed: "
                     f"{MODEL_TYPES}")
  # The config is checked completely before any weight is read.
  if model_type in ("clip", "clip_text_model"):
    text_config = (config.get("text_config") or {}) if model_type == "clip" else config
    spec = CLIPTextSpec.from_hf_config(text_config, dtype=dtype)
    checkpoint = _Checkpoint(directory)
    module = _load_module(lambda: CLIPTextEncoder(spec, rngs=nnx.Rngs(0)), _clip_sources(spec), checkpoint,
                          _clip_names(checkpoint.names()), _CLIP_IGNORED, f"a CLIP text encoder {spec}")
  else:
    spec = T5Spec.from_hf_config(config, dtype=dtype)
    checkpoint = _Checkpoint(directory)
    module = _load_module(lambda: T5Encoder(spec, rngs=nnx.Rngs(0)), _t5_sources(spec), checkpoint,
                          _t5_names(checkpoint.names()), _T5_IGNORED, f"a {model_type} encoder {spec}")
  tokenizer = _load_tokenizer(pathlib.Path(tokenizer_directory) if tokenizer_directory else directory)
  return TextEncoder(module, spec, tokenizer, directory=str(directory))


def _load_tokenizer(directory: pathlib.Path):
  import transformers  # pylint: disable=g-import-not-at-top

  if not directory.is_dir():
    raise FileNotFoundError(f"tokenizer directory {directory} does not exist")
  try:
    return transformers.AutoTokenizer.from_pretrained(str(directory))
  except (OSError, ValueError) as e:
    raise FileNotFoundError(
        f"no tokenizer could be loaded from {directory} ({e}); expected the checkpoint's tokenizer files there "
        f"(tokenizer.json + tokenizer_config.json, or spiece.model for T5, or vocab.json + merges.txt for CLIP); "
        f"pass tokenizer_directory= if they live elsewhere") from e
