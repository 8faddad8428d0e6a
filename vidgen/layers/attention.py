"""Attention: full and windowed (spatial / spatiotemporal) dot-product attention, one backend dispatch point.

Tokens of a video live in a `(T, H, W)` grid flattened in raster order, `N = T * H * W`. A *window* `(wt, wh, ww)` cuts
the grid into non-overlapping boxes and every token attends exactly to the tokens of its own box (W.A.L.T,
arXiv 2312.06662). A spatial layer is the window `(1, H, W)` (one frame), a spatiotemporal layer a local box such as
`(5, 8, 8)`; both are the same function. Windows are regrouped into the batch dimension, so the cost is `N x window`
and no `N x N` mask is ever built.

Backends (`backend=`), chosen at one place (`full_attention`, which `windowed_attention` calls per window batch):
  * `"xla"`: reference einsum + float32 softmax; runs everywhere (the default, and the path the CPU tests run).
  * `"cudnn"`: `jax.nn.dot_product_attention(..., implementation="cudnn")` (flash attention on NVIDIA GPUs; needs
    bfloat16/float16 inputs and a head dim that is a multiple of 8 and at most 128).
  * `"splash"`: Pallas splash attention on TPU (`jax.experimental.pallas.ops.tpu.splash_attention`); the CPU tests
    check its wrapper in the Pallas interpreter.
  * `"auto"`: cudnn on GPU when the inputs qualify, splash on TPU, xla otherwise.

Masks are boolean, `True` = may attend. A query whose every key is masked (e.g. an all-padding "null" caption used for
classifier-free guidance) gets a zero output instead of NaN or an average over padding: "no context" adds nothing.
An optional additive `bias` on the logits (T5's relative positions) goes through the same path (xla / cudnn).
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen.layers.embeddings import apply_rope, rope_angles
from vidgen.layers.layout import Layout, PackedLayout, WindowGather, grid_positions
from vidgen.layers.norms import RMSNorm
from vidgen.parallel.sharding import constrain, logical

Backend = Literal["auto", "xla", "cudnn", "splash"]
BACKENDS = ("auto", "xla", "cudnn", "splash")
ATTENTION_KINDS = ("full", "spatial", "spatiotemporal")

# Large finite negative instead of -inf: a fully masked row stays finite (it is zeroed afterwards) and gradients of
# masked logits are exactly zero.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def resolve_backend(backend: str, dtype=None, head_dim: int | None = None) -> str:
  """Turns `"auto"` into a concrete backend for the current platform (and the inputs' dtype / head dim)."""
  if backend not in BACKENDS:
    raise ValueError(f"attention backend {backend!r} is not known; allowed: {BACKENDS}")
  if backend != "auto":
    return backend
  platform = jax.default_backend()
  if platform == "tpu":
    return "splash"
  if platform == "gpu" and _cudnn_supports(dtype, head_dim):
    return "cudnn"
  return "xla"


def _cudnn_supports(dtype, head_dim: int | None) -> bool:
  # cuDNN flash attention only takes half-precision inputs and head dims in multiples of 8 up to 128; anything else
  # would fail inside the custom call, so "auto" falls back to XLA instead.
  ok_dtype = dtype is not None and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  ok_dim = head_dim is not None and head_dim % 8 == 0 and head_dim <= 128
  return ok_dtype and ok_dim


def _normalize_mask(mask: jax.Array | None, batch: int, q_len: int, k_len: int) -> jax.Array | None:
  """Key-padding mask `[B, Nk]` or a full mask broadcastable to `[B, heads, Nq, Nk]` -> 4-D boolean."""
  if mask is None:
    return None
  mask = jnp.asarray(mask, dtype=bool)
  if mask.ndim == 2:
    if mask.shape != (batch, k_len):
      raise ValueError(f"key mask must have shape [B, Nk] = {(batch, k_len)}, got {mask.shape}")
    return mask[:, None, None, :]
  if mask.ndim != 4:
    raise ValueError(f"mask must be [B, Nk] or broadcastable to [B, heads, Nq, Nk]; got shape {mask.shape}")
  return mask


def full_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    backend: Backend = "xla",
    scale: float | None = None,
) -> jax.Array:
  """Multi-head dot-product attention of every query over every key.

  Args:
    q: queries `[B, Nq, heads, d]`.
    k: keys `[B, Nk, heads, d]`.
    v: values `[B, Nk, heads, d]`.
    mask: optional boolean, `True` = attend: a key-padding mask `[B, Nk]` (e.g. text padding for cross-attention)
      or a full mask broadcastable to `[B, heads, Nq, Nk]` (xla / cudnn only).
    bias: optional float logit bias broadcastable to `[B, heads, Nq, Nk]`, added after scaling and before the mask
      (xla / cudnn only).
    backend: "xla" (default), "cudnn", "splash" or "auto" (see the module docstring).
    scale: logit scale; default `1 / sqrt(d)`.

  Returns:
    `[B, Nq, heads, d]` in the dtype of `v`. Queries with no unmasked key get zeros.
  """
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"q, k, v must be [B, N, heads, d]; got {q.shape}, {k.shape}, {v.shape}")
  batch, q_len, _, head_dim = q.shape
  k_len = k.shape[1]
  scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
  mask4 = _normalize_mask(mask, batch, q_len, k_len)
  bias4 = None if bias is None else _normalize_bias(bias)
  impl = resolve_backend(backend, q.dtype, head_dim)
  if impl == "xla":
    out = _xla_attention(q, k, v, mask4, bias4, scale)
  elif impl == "cudnn":
    out = _cudnn_attention(q, k, v, mask4, bias4, scale)
  else:
    if mask is not None and jnp.ndim(mask) != 2:
      raise ValueError("the splash backend takes only key-padding masks [B, Nk]")
    if bias is not None:
      raise ValueError("the splash backend takes no logit bias; use backend='xla' or 'cudnn'")
    out = _splash_attention(q, k, v, None if mask is None else jnp.asarray(mask, bool), scale)
  if mask4 is not None:
    # [B, 1|heads, Nq] -> [B, Nq, 1|heads, 1]: zero the queries that had nothing to attend to.
    has_key = jnp.any(mask4, axis=-1)
    has_key = jnp.broadcast_to(has_key, (batch, has_key.shape[1], q_len))
    out = out * jnp.transpose(has_key, (0, 2, 1))[..., None].astype(out.dtype)
  return out


def _normalize_bias(bias: jax.Array) -> jax.Array:
  """A logit bias broadcastable to `[B, heads, Nq, Nk]` -> 4-D float32 (leading size-1 dims added)."""
  bias = jnp.asarray(bias, jnp.float32)
  if not 2 <= bias.ndim <= 4:
    raise ValueError(f"bias must be broadcastable to [B, heads, Nq, Nk]; got shape {bias.shape}")
  return bias.reshape((1,) * (4 - bias.ndim) + bias.shape)


def _xla_attention(q, k, v, mask4, bias4, scale):
  """Reference path: logits accumulated, biased and normalised in float32 whatever the compute dtype."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if bias4 is not None:
    logits = logits + bias4
  if mask4 is not None:
    logits = jnp.where(mask4, logits, _MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


def _cudnn_attention(q, k, v, mask4, bias4, scale):
  """cuDNN flash attention (GPU). The boolean mask is turned into a bias by JAX; layout stays BTNH."""
  if not _cudnn_supports(q.dtype, q.shape[-1]):
    raise ValueError(
        f"the cudnn backend needs bfloat16/float16 inputs and a head dim that is a multiple of 8 and <= 128; got "
        f"dtype {q.dtype}, head dim {q.shape[-1]} (use backend='xla' or 'auto')")
  if mask4 is not None:
    # cuDNN takes the mask as a bias whose last two dims must be exactly [Nq, Nk] (no broadcasting there).
    mask4 = jnp.broadcast_to(mask4, (*mask4.shape[:2], q.shape[1], k.shape[1]))
  if bias4 is not None:
    # Same rule for the bias, which cuDNN also takes in the inputs' dtype.
    bias4 = jnp.broadcast_to(bias4, (*bias4.shape[:2], q.shape[1], k.shape[1])).astype(q.dtype)
  return jax.nn.dot_product_attention(q, k, v, bias=bias4, mask=mask4, scale=scale, implementation="cudnn")


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _splash_block(length: int) -> int:
  # Splash tiles must be multiples of 128 lanes; larger tiles amortise the per-step overhead when they divide.
  for block in (512, 256, 128):
    if length % block == 0:
      return block
  raise AssertionError(length)


def _splash_attention(q, k, v, key_mask, scale, *, interpret: bool = False):
  """Pallas splash attention (TPU), one kernel per batch element via vmap.

  Sequence lengths are padded to multiples of 128 and the head dim to a multiple of 128 (zeros: they change neither
  logits nor outputs). Padding and the key mask are expressed as segment ids: real keys are segment 1, masked or
  padded keys segment 0, every query segment 1, so the static mask stays `FullMask` and padded query rows (sliced
  off) still see real keys. Runs as a single-program kernel: under a multi-device mesh it must be wrapped in
  `shard_map` by the caller (not done here). `interpret=True` runs the kernel in the Pallas interpreter (any
  platform; used by the CPU tests to check this wrapper).
  """
  if jax.default_backend() != "tpu" and not interpret:
    raise ValueError(f"the splash backend needs a TPU; this process runs on {jax.default_backend()!r}")
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=g-import-not-at-top

  batch, q_len, heads, head_dim = q.shape
  k_len = k.shape[1]
  q_pad, k_pad, d_pad = _round_up(q_len, 128), _round_up(k_len, 128), _round_up(head_dim, 128)
  # Splash does not scale logits itself.
  q = q * jnp.asarray(scale, q.dtype)

  def pad(x, length, to_len):
    return jnp.pad(x, ((0, 0), (0, to_len - length), (0, 0), (0, d_pad - head_dim)))

  q, k, v = pad(q, q_len, q_pad), pad(k, k_len, k_pad), pad(v, k_len, k_pad)
  valid = jnp.arange(k_pad) < k_len
  kv_ids = jnp.broadcast_to(valid, (batch, k_pad))
  if key_mask is not None:
    kv_ids = kv_ids & jnp.pad(key_mask, ((0, 0), (0, k_pad - k_len)))
    # A row with no key at all would divide by zero inside the kernel (NaN survives the later zeroing), so an
    # all-masked example keeps key 0 visible; `full_attention` zeroes its output afterwards.
    kv_ids = kv_ids | ((jnp.arange(k_pad) == 0)[None] & ~jnp.any(kv_ids, axis=1, keepdims=True))
  kv_ids = kv_ids.astype(jnp.int32)
  q_ids = jnp.ones((batch, q_pad), jnp.int32)

  bq, bkv = _splash_block(q_pad), _splash_block(k_pad)
  block_sizes = splash.BlockSizes(
      block_q=bq, block_kv=bkv, block_kv_compute=bkv,
      block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
      block_q_dq=bq, block_kv_dq=bkv)
  mask = splash.MultiHeadMask([splash.FullMask((q_pad, k_pad)) for _ in range(heads)])
  kernel = splash.make_splash_mha_single_device(mask=mask, block_sizes=block_sizes, interpret=interpret)

  def one(qb, kb, vb, qid, kid):
    # Kernel layout is [heads, N, d].
    out = kernel(qb.swapaxes(0, 1), kb.swapaxes(0, 1), vb.swapaxes(0, 1), splash.SegmentIds(q=qid, kv=kid))
    return out.swapaxes(0, 1)

  out = jax.vmap(one)(q, k, v, q_ids, kv_ids)
  return out[:, :q_len, :, :head_dim].astype(v.dtype)


def clamp_window(grid: Sequence[int], window: Sequence[int]) -> tuple[int, int, int]:
  """Clamps a window to the token grid per axis: an axis shorter than the window is attended as a whole.

  This is what lets an image (T = 1) pass through a spatiotemporal layer, attending within its own frame.
  """
  if len(grid) != 3 or len(window) != 3:
    raise ValueError(f"grid and window must be (t, h, w) triples; got grid={tuple(grid)}, window={tuple(window)}")
  if any(int(w) < 1 for w in window):
    raise ValueError(f"window sizes must be >= 1; got window={tuple(window)}")
  return tuple(min(int(w), int(g)) for g, w in zip(grid, window))  # type: ignore[return-value]


def windowed_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    grid: Sequence[int],
    window: Sequence[int],
    backend: Backend = "xla",
    scale: float | None = None,
) -> jax.Array:
  """Attention within non-overlapping `(wt, wh, ww)` boxes of a `(T, H, W)` token grid.

  Boxes start at the grid's origin; where the window does not tile the grid, the last box along an axis is partial:
  the grid is padded to whole boxes and padded keys are masked, so every token attends exactly to the real tokens of
  its own box.

  Args:
    q, k, v: `[B, N, heads, d]`, `N = T * H * W` tokens in (t, h, w) raster order.
    grid: `(T, H, W)`.
    window: `(wt, wh, ww)`; each size larger than the grid along its axis is clamped to the grid.
    backend: see `full_attention`.
    scale: logit scale; default `1 / sqrt(d)`.

  Returns:
    `[B, N, heads, d]` in raster order.
  """
  t, h, w = (int(g) for g in grid)
  if q.shape[1] != t * h * w or k.shape[1] != q.shape[1] or v.shape[1] != q.shape[1]:
    raise ValueError(
        f"windowed attention needs N = T*H*W = {t * h * w} tokens for grid {tuple(grid)} in q, k and v; got "
        f"{q.shape[1]}, {k.shape[1]}, {v.shape[1]}")
  wt, wh, ww = clamp_window((t, h, w), window)
  if (wt, wh, ww) == (t, h, w):
    return full_attention(q, k, v, backend=backend, scale=scale)
  padded = (_round_up(t, wt), _round_up(h, wh), _round_up(w, ww))
  sizes = dict(nt=padded[0] // wt, nh=padded[1] // wh, nw=padded[2] // ww, wt=wt, wh=wh, ww=ww)
  to_windows = "b (nt wt nh wh nw ww) n d -> (b nt nh nw) (wt wh ww) n d"
  pad = [(0, p - g) for p, g in zip(padded, (t, h, w))]
  mask = None
  if padded != (t, h, w):
    valid = np.pad(np.ones((t, h, w), bool), pad).reshape(-1)
    mask = np.tile(einops.rearrange(valid, "(nt wt nh wh nw ww) -> (nt nh nw) (wt wh ww)", **sizes), (q.shape[0], 1))

  def windows(x):
    x = x.reshape(x.shape[0], t, h, w, *x.shape[2:])
    x = jnp.pad(x, [(0, 0), *pad, (0, 0), (0, 0)])
    return einops.rearrange(x.reshape(x.shape[0], -1, *x.shape[4:]), to_windows, **sizes)

  out = full_attention(*(windows(x) for x in (q, k, v)), mask=mask, backend=backend, scale=scale)
  out = einops.rearrange(out, "(b nt nh nw) (wt wh ww) n d -> b nt wt nh wh nw ww n d", **sizes)
  out = out.reshape(out.shape[0], *padded, *out.shape[-2:])[:, :t, :h, :w]
  return out.reshape(q.shape)


def packed_window(kind: str, window: Sequence[int] | None) -> tuple[int | None, ...] | None:
  """The window of an attention `kind` in packed rows, where grids differ per clip: None = the whole clip, a None
  axis = the whole axis (a spatial window is one whole frame)."""
  if kind not in ATTENTION_KINDS:
    raise ValueError(f"attention kind {kind!r} is not known; allowed: {ATTENTION_KINDS}")
  return {"full": None, "spatial": (1, None, None), "spatiotemporal": None if window is None else tuple(window)}[kind]


def window_groups(positions: jax.Array, window: Sequence[int | None] | None) -> jax.Array:
  """Per-token window coordinates `[..., 3]` (int32) from token coordinates `[..., 3]` (t, h, w) within a clip:
  `None` = full attention (all zeros), a None axis = the whole axis (a spatial window is `(1, None, None)`).

  Two tokens of one clip share a window exactly when their coordinates are equal; boxes start at the clip's origin,
  as in `windowed_attention`, so packed and unpacked windows are the same sets of tokens."""
  positions = jnp.asarray(positions, jnp.int32)
  if window is None:
    return jnp.zeros_like(positions)
  sizes = [1 if w is None else int(w) for w in window]
  coords = [jnp.zeros_like(positions[..., i]) if w is None else positions[..., i] // sizes[i]
            for i, w in enumerate(window)]
  return jnp.stack(coords, axis=-1)


def segment_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    segment_ids: jax.Array,
    groups: jax.Array | None = None,
    backend: Backend = "xla",
    scale: float | None = None,
) -> jax.Array:
  """Self-attention of packed rows (Patch n' Pack): a token attends to the tokens of its own segment and, with
  `groups`, of its own window.

  Args:
    q, k, v: `[B, L, heads, d]`.
    segment_ids: `[B, L]` int, 0 = padding (attends to nothing, outputs zeros), 1, 2, ... = the clip a token is of.
    groups: optional `[B, L, G]` int window coordinates (`window_groups`); tokens attend only where all are equal.
    backend: "xla" or "cudnn" (both take the boolean mask), or "auto" (cuDNN on GPU where it qualifies, else XLA).
    scale: logit scale; default `1 / sqrt(d)`.
  """
  segment_ids = jnp.asarray(segment_ids)
  mask = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids > 0)[:, None, :]
  if groups is not None:
    mask = mask & jnp.all(groups[:, :, None, :] == groups[:, None, :, :], axis=-1)
  if backend == "splash":
    raise ValueError("packed attention needs a token-pair mask, which the splash wrapper does not take; use "
                     "backend='auto' (XLA on TPU for packed rows) or 'xla'")
  if resolve_backend(backend, q.dtype, q.shape[-1]) == "splash":
    backend = "xla"
  return full_attention(q, k, v, mask=mask[:, None], backend=backend, scale=scale)


def gathered_attention(q: jax.Array, k: jax.Array, v: jax.Array, gather: WindowGather, *, valid: jax.Array,
                       backend: Backend = "xla", scale: float | None = None) -> jax.Array:
  """Self-attention of packed rows within the windows `gather` lists (`vidgen.layers.layout.window_gather`): tokens
  are gathered into `[B * windows, window_size]` blocks, attend within their block (unused entries masked), and are
  put back. Equal to `segment_attention` with the same windows, at `windows x window_size^2` cost.

  Args:
    q, k, v: `[B, L, heads, d]`.
    gather: the row's window blocks.
    valid: `[B, L]` bool, False for padding tokens (their output is zero).
  """
  batch, length, heads, dim = q.shape
  _, windows, size = gather.tokens.shape
  index = gather.tokens.reshape(batch, windows * size)[:, :, None, None]
  blocks = [jnp.take_along_axis(x, index, axis=1).reshape(batch * windows, size, heads, dim) for x in (q, k, v)]
  out = full_attention(*blocks, mask=gather.valid.reshape(batch * windows, size), backend=backend, scale=scale)
  out = jnp.take_along_axis(out.reshape(batch, windows * size, heads, dim), gather.slot[:, :, None, None], axis=1)
  return out * valid[:, :, None, None].astype(out.dtype)


def heads_projection(in_features: int, shape: tuple[int, ...], *, dtype, param_dtype, rngs: nnx.Rngs
                     ) -> nnx.LinearGeneral:
  """[..., in_features] -> [..., *shape] with shape (..., heads, head_dim), e.g. (3, heads, head_dim) for fused q/k/v;
  Xavier-uniform kernel and zero bias, sharded over heads."""
  extra = (None,) * (len(shape) - 2)
  return nnx.LinearGeneral(
      in_features, shape, dtype=dtype, param_dtype=param_dtype,
      kernel_init=logical(nnx.initializers.xavier_uniform(), "embed", *extra, "heads", "kv"),
      bias_init=logical(nnx.initializers.zeros_init(), *extra, "heads", "kv"), rngs=rngs)


def output_projection(num_heads: int, head_dim: int, width: int, *, zero_init: bool = False, dtype, param_dtype,
                      rngs: nnx.Rngs) -> nnx.LinearGeneral:
  """[..., heads, head_dim] -> [..., width]: the attention output projection (Xavier-uniform or zero kernel)."""
  kernel_init = nnx.initializers.zeros_init() if zero_init else nnx.initializers.xavier_uniform()
  return nnx.LinearGeneral(
      (num_heads, head_dim), width, axis=(-2, -1), dtype=dtype, param_dtype=param_dtype,
      kernel_init=logical(kernel_init, "heads", "kv", "embed"),
      bias_init=logical(nnx.initializers.zeros_init(), "embed"), rngs=rngs)


class SelfAttention(nnx.Module):
  """Multi-head self-attention over a token grid: full, spatial (one frame) or spatiotemporal (local box) windows.

  Projections: a fused qkv `[embed, 3, heads, kv]` and an output `[heads, kv, embed]`. Optional qk-norm (RMS over the
  head dim, as in W.A.L.T / ViT-22B) keeps logits bounded when training in low precision.
  """

  def __init__(
      self,
      width: int,
      num_heads: int,
      *,
      kind: str = "full",
      window: Sequence[int] | None = None,
      qk_norm: bool = False,
      rope: bool = False,
      backend: Backend = "xla",
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      rngs: nnx.Rngs,
  ):
    if kind not in ATTENTION_KINDS:
      raise ValueError(f"attention kind {kind!r} is not known; allowed: {ATTENTION_KINDS}")
    if width % num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
    if kind == "spatiotemporal" and window is None:
      raise ValueError("a spatiotemporal attention layer needs a window (wt, wh, ww)")
    head_dim = width // num_heads
    self.kind = kind
    self.window = None if window is None else tuple(int(w) for w in window)
    self.rope = rope
    self.backend = backend
    self.dtype = dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.qkv = heads_projection(width, (3, num_heads, head_dim), **kw)
    self.out = output_projection(num_heads, head_dim, width, **kw)
    self.q_norm = RMSNorm(head_dim, param_dtype=param_dtype, axis_name="kv") if qk_norm else None
    self.k_norm = RMSNorm(head_dim, param_dtype=param_dtype, axis_name="kv") if qk_norm else None

  @property
  def packed_window(self) -> tuple[int | None, ...] | None:
    return packed_window(self.kind, self.window)

  def window_for(self, grid: Sequence[int]) -> tuple[int, int, int] | None:
    """The attention window on a concrete token grid; None means full attention."""
    if self.kind == "full":
      return None
    if self.kind == "spatial":
      return (1, int(grid[1]), int(grid[2]))
    return clamp_window(grid, self.window)

  def __call__(self, x: jax.Array, layout: Layout) -> jax.Array:
    """x: `[B, N, width]` tokens of a `layout` -> `[B, N, width]`.

    `layout` is a token grid `(T, H, W)` (tokens in raster order) or a `PackedLayout` (packed rows of clips, where
    every token attends within its own clip and its own window of that clip).
    """
    qkv = self.qkv(x.astype(self.dtype))
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    packed = isinstance(layout, PackedLayout)
    if self.rope:
      positions = layout.positions if packed else jnp.asarray(grid_positions(layout))[None]
      angles = rope_angles(positions, q.shape[-1])
      q, k = apply_rope(q, angles), apply_rope(k, angles)
    names = ("act_batch", "act_len", "act_heads", None)
    q, k, v = constrain(q, names), constrain(k, names), constrain(v, names)
    if packed and layout.gathers and self.kind in layout.gathers:
      y = gathered_attention(q, k, v, layout.gathers[self.kind], valid=layout.valid, backend=self.backend)
    elif packed:
      groups = window_groups(layout.positions, self.packed_window)
      y = segment_attention(q, k, v, segment_ids=layout.segment_ids, groups=groups, backend=self.backend)
    else:
      window = self.window_for(layout)
      if window is None:
        y = full_attention(q, k, v, backend=self.backend)
      else:
        y = windowed_attention(q, k, v, grid=layout, window=window, backend=self.backend)
    y = constrain(y, names)
    return self.out(y)


class CrossAttention(nnx.Module):
  """Multi-head cross-attention from video tokens to context tokens (text), honouring a context padding mask.

  The output projection is zero-initialised so that a fresh block is the identity on the residual stream (the
  adaLN-Zero property extended to the un-gated cross-attention branch).
  """

  def __init__(
      self,
      width: int,
      num_heads: int,
      *,
      context_dim: int | None = None,
      qk_norm: bool = False,
      backend: Backend = "xla",
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      rngs: nnx.Rngs,
  ):
    if width % num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
    head_dim = width // num_heads
    context_dim = width if context_dim is None else context_dim
    self.backend = backend
    self.dtype = dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q = heads_projection(width, (num_heads, head_dim), **kw)
    self.kv = heads_projection(context_dim, (2, num_heads, head_dim), **kw)
    # Zero-initialised: a new cross-attention layer adds nothing to the residual stream until it has learned to.
    self.out = output_projection(num_heads, head_dim, width, zero_init=True, **kw)
    self.q_norm = RMSNorm(head_dim, param_dtype=param_dtype, axis_name="kv") if qk_norm else None
    self.k_norm = RMSNorm(head_dim, param_dtype=param_dtype, axis_name="kv") if qk_norm else None

  def __call__(self, x: jax.Array, context: jax.Array, context_mask: jax.Array | None = None) -> jax.Array:
    """x: `[B, N, width]`; context: `[B, L, context_dim]`; context_mask: `[B, L]` bool (True = real token), or a
    per-query mask broadcastable to `[B, heads, N, L]` (packed rows: each clip reads only its own caption)."""
    q = self.q(x.astype(self.dtype))
    kv = self.kv(context.astype(self.dtype))
    k, v = kv[:, :, 0], kv[:, :, 1]
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    q = constrain(q, ("act_batch", "act_len", "act_heads", None))
    y = full_attention(q, k, v, mask=context_mask, backend=self.backend)
    y = constrain(y, ("act_batch", "act_len", "act_heads", None))
    return self.out(y)
