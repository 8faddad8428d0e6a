"""Embeddings for diffusion transformers: timesteps, class labels, spacetime positions, and (un)patchify.

Shapes: videos/latents are `[B, T, H, W, C]`; tokens are `[B, N, D]` with `N = T' * H' * W'` in (t, h, w) raster
order, where `(T', H', W') = (T / pt, H / ph, W / pw)` is the token grid.
"""

from __future__ import annotations

import math
from typing import Sequence

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen.layers.layout import grid_positions
from vidgen.parallel.sharding import logical

POS_EMBEDDINGS = ("learned", "sincos", "rope")


# ----------------------------------------------------------------------------------------------------------------------
# Patchify.


def token_grid(shape: Sequence[int], patch: Sequence[int]) -> tuple[int, int, int]:
  """Token grid `(T/pt, H/ph, W/pw)` of a `(T, H, W)` latent; ValueError when a patch size does not divide."""
  if len(shape) != 3 or len(patch) != 3:
    raise ValueError(f"shape and patch must be (t, h, w) triples; got {tuple(shape)} and {tuple(patch)}")
  for axis, s, p in zip("thw", shape, patch):
    if s % p:
      raise ValueError(f"patch size {tuple(patch)} does not divide the latent size {tuple(shape)} along {axis}")
  return tuple(int(s) // int(p) for s, p in zip(shape, patch))  # type: ignore[return-value]


def patchify(x: jax.Array, patch: Sequence[int]) -> tuple[jax.Array, tuple[int, int, int]]:
  """`[B, T, H, W, C]` -> (tokens `[B, N, pt*ph*pw*C]`, grid `(T', H', W')`); patch vectors ordered (pt, ph, pw, c)."""
  if x.ndim != 5:
    raise ValueError(f"patchify expects [B, T, H, W, C]; got shape {x.shape}")
  grid = token_grid(x.shape[1:4], patch)
  pt, ph, pw = patch
  tokens = einops.rearrange(x, "b (t pt) (h ph) (w pw) c -> b (t h w) (pt ph pw c)", pt=pt, ph=ph, pw=pw)
  return tokens, grid


def unpatchify(tokens: jax.Array, grid: Sequence[int], patch: Sequence[int], channels: int) -> jax.Array:
  """Inverse of `patchify`: tokens `[B, N, pt*ph*pw*C]` on `grid` -> `[B, T'*pt, H'*ph, W'*pw, C]`."""
  t, h, w = grid
  pt, ph, pw = patch
  return einops.rearrange(
      tokens, "b (t h w) (pt ph pw c) -> b (t pt) (h ph) (w pw) c", t=t, h=h, w=w, pt=pt, ph=ph, pw=pw, c=channels)


class PatchEmbed(nnx.Module):
  """Linear map of flattened `(pt, ph, pw, C)` patches to the model width (a strided Conv3D written as a matmul)."""

  def __init__(self, in_channels: int, patch: Sequence[int], width: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.patch = tuple(int(p) for p in patch)
    self.dtype = dtype
    features = in_channels * int(np.prod(self.patch))
    # Xavier on the flattened conv kernel, as DiT initialises its patch projection.
    self.proj = nnx.Linear(
        features, width, dtype=dtype, param_dtype=param_dtype,
        kernel_init=logical(nnx.initializers.xavier_uniform(), None, "embed"),
        bias_init=logical(nnx.initializers.zeros_init(), "embed"), rngs=rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, tuple[int, int, int]]:
    """x: `[B, T, H, W, C]` -> (tokens `[B, N, width]`, token grid)."""
    tokens, grid = patchify(x.astype(self.dtype), self.patch)
    return self.proj(tokens), grid


# ----------------------------------------------------------------------------------------------------------------------
# Timesteps and labels.


def timestep_embedding(t: jax.Array, dim: int, *, max_period: float = 10000.0, freq_shift: float = 0.0) -> jax.Array:
  """Sinusoidal features of (scaled) timesteps: `[B]` -> `[B, dim]` float32, `[cos | sin]` halves.

  Frequencies `max_period^(-i / (dim/2 - freq_shift))`, i = 0 .. dim/2 - 1, fall geometrically from 1, so inputs on
  the 0..1000 scale are resolved at every granularity; callers with t in [0, 1] scale it first (see
  `TimestepEmbedder.time_scale`). freq_shift 0 is DiT's / ADM's spacing, 1 that of diffusers' DiT port.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimestepEmbedder(nnx.Module):
  """Continuous t in [0, 1] -> `time_scale * t + time_offset` -> `freq_dim` sinusoid -> Linear -> SiLU -> Linear ->
  `[B, width]`.

  The output is float32: it feeds adaLN, whose modulation is applied in float32.
  """

  def __init__(self, width: int, *, freq_dim: int = 256, time_scale: float = 1000.0, time_offset: float = 0.0,
               freq_shift: float = 0.0, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.freq_dim = freq_dim
    self.time_scale = time_scale
    self.time_offset = time_offset
    self.freq_shift = freq_shift
    init = nnx.initializers.normal(0.02)  # DiT's timestep-MLP init.
    self.fc1 = nnx.Linear(freq_dim, width, param_dtype=param_dtype, kernel_init=logical(init, None, "embed"),
                          bias_init=logical(nnx.initializers.zeros_init(), "embed"), rngs=rngs)
    self.fc2 = nnx.Linear(width, width, param_dtype=param_dtype, kernel_init=logical(init, "mlp", "embed"),
                          bias_init=logical(nnx.initializers.zeros_init(), "embed"), rngs=rngs)

  def __call__(self, t: jax.Array) -> jax.Array:
    """t: `[B]` float in [0, 1] -> `[B, width]` float32."""
    emb = timestep_embedding(jnp.asarray(t, jnp.float32) * self.time_scale + self.time_offset, self.freq_dim,
                             freq_shift=self.freq_shift)
    return self.fc2(jax.nn.silu(self.fc1(emb)))


class LabelEmbedder(nnx.Module):
  """Class label -> `[B, width]`, with one extra "null" entry (id `num_classes`) for classifier-free guidance.

  `factors = (n_0, ..., n_k)` (product `num_classes`) reads a class id as mixed-radix digits, most significant
  first (`id = (d_0 * n_1 + d_1) * n_2 + d_2` for three), and sums one embedding per digit, each from its own
  `n_i + 1` rows (the last one null). A class made of attributes, such as color x shape x direction, then shares
  each attribute's row with every class that has it: a row learns from `1 / n_i` of the data instead of
  `1 / num_classes`, and a combination never seen in training is still the sum of trained rows. `()` = one row per
  class (the DiT paper's table). The null label maps to every factor's null row.
  """

  def __init__(self, num_classes: int, width: int, *, factors: tuple[int, ...] = (), param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    factors = tuple(int(f) for f in factors) or (num_classes,)
    if any(f < 1 for f in factors) or math.prod(factors) != num_classes:
      raise ValueError(f"label factors {factors} must be positive with product num_classes={num_classes}")
    self.num_classes = num_classes
    self.factors = factors
    # All factors in one table (rows of factor i start at offsets[i]): one parameter, one gather.
    self.offsets = tuple(int(o) for o in np.cumsum((0,) + tuple(f + 1 for f in factors[:-1])))
    self.table = nnx.Embed(
        sum(f + 1 for f in factors), width, param_dtype=param_dtype,
        embedding_init=logical(nnx.initializers.normal(0.02), "vocab", "embed"), rngs=rngs)

  @property
  def null_label(self) -> int:
    return self.num_classes

  def rows(self, labels: jax.Array) -> jax.Array:
    """`[B]` labels -> `[B, len(factors)]` table rows (the null label -> each factor's null row)."""
    labels = jnp.asarray(labels, jnp.int32)
    rows, rest = [], labels
    for factor, offset in zip(reversed(self.factors), reversed(self.offsets)):
      rows.append(offset + jnp.where(labels == self.num_classes, factor, rest % factor))
      rest = rest // factor
    return jnp.stack(rows[::-1], axis=-1)

  def tokens(self, labels: jax.Array) -> jax.Array:
    """labels: `[B]` -> `[B, len(factors), width]` float32, one row per factor (a context for cross-attention)."""
    return self.table(self.rows(labels)).astype(jnp.float32)

  def __call__(self, labels: jax.Array) -> jax.Array:
    """labels: `[B]` int in `[0, num_classes]` (num_classes = null) -> `[B, width]` float32."""
    return jnp.sum(self.tokens(labels), axis=-2)


# ----------------------------------------------------------------------------------------------------------------------
# Positions.


def sincos_1d(positions: jax.Array, dim: int) -> jax.Array:
  """`[n]` float positions -> `[n, dim]` `[sin | cos]` features (MAE / DiT convention), float32."""
  if dim % 2:
    raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
  omega = 1.0 / (10000.0 ** (jnp.arange(dim // 2, dtype=jnp.float32) / (dim / 2.0)))
  args = jnp.asarray(positions, jnp.float32)[:, None] * omega[None]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def resample_positions(size: int, base: int) -> jax.Array:
  """Fractional positions on a `base`-long axis for a `size`-long axis (half-pixel centres, as image resizing).

  `size == base` gives exactly `0, 1, ..., base - 1`, so embeddings at the trained size are the trained ones.
  """
  return _resampled(jnp.arange(size, dtype=jnp.float32), jnp.asarray(size), base)


def _resampled(index: jax.Array, size: jax.Array, base: int) -> jax.Array:
  # Per element: index on a `size`-long axis -> position on the `base`-long one (unchanged where size == base).
  size = jnp.asarray(size, jnp.float32)
  return jnp.where(size == base, index, (index + 0.5) * (base / size) - 0.5)


def _time_positions(index: jax.Array, size: jax.Array, base: int) -> jax.Array:
  # Frames keep their index when the clip is shorter than the trained one: an image (T = 1) is frame 0 of a video,
  # which is also how the causal VAE encodes it. Longer clips are resampled into the trained span.
  return jnp.where(size <= base, index, _resampled(index, size, base))


def _linear_lookup(table: jax.Array, positions: jax.Array) -> jax.Array:
  """Rows of `table` `[n, ...]` linearly interpolated at fractional `positions` `[m]` (clamped at the ends)."""
  n = table.shape[0]
  pos = jnp.clip(positions, 0.0, n - 1.0)
  lo = jnp.floor(pos).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, n - 1)
  frac = (pos - lo).reshape(-1, *([1] * (table.ndim - 1)))
  return table[lo] * (1.0 - frac) + table[hi] * frac


def _bilinear_lookup(table: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """`table` `[n, m, D]` bilinearly interpolated at fractional `(rows, cols)` `[k]` each (clamped) -> `[k, D]`."""

  def corners(pos, n):
    pos = jnp.clip(pos, 0.0, n - 1.0)
    lo = jnp.floor(pos).astype(jnp.int32)
    return lo, jnp.minimum(lo + 1, n - 1), (pos - lo)[:, None]

  r0, r1, fr = corners(rows, table.shape[0])
  c0, c1, fc = corners(cols, table.shape[1])
  top = table[r0, c0] * (1.0 - fc) + table[r0, c1] * fc
  bottom = table[r1, c0] * (1.0 - fc) + table[r1, c1] * fc
  return top * (1.0 - fr) + bottom * fr


def rope_angles(positions: jax.Array, head_dim: int, *, theta: float = 10000.0) -> jax.Array:
  """3-D rotary angles `[..., head_dim / 2]` (float32) for token coordinates `[..., 3]` (t, h, w).

  The head's rotation pairs are split between the axes: a third each to h and w, the rest to t; each axis uses
  RoFormer's frequencies `theta^(-i / pairs_axis)`. Dot products of rotated queries and keys then depend only on the
  offsets between tokens, so any grid size and any packing gives the same attention pattern.
  """
  if head_dim % 2:
    raise ValueError(f"rotary positions need an even head dim, got {head_dim}")
  pairs = head_dim // 2
  space = pairs // 3
  angles = []
  for axis, n in enumerate((pairs - 2 * space, space, space)):
    freqs = theta ** (-jnp.arange(n, dtype=jnp.float32) / max(n, 1))
    angles.append(jnp.asarray(positions[..., axis], jnp.float32)[..., None] * freqs)
  return jnp.concatenate(angles, axis=-1)


def apply_rope(x: jax.Array, angles: jax.Array) -> jax.Array:
  """Rotates `x` `[B, N, heads, d]` by `angles` `[B|1, N, d / 2]` (first half of d paired with the second), in float32;
  returns the dtype of `x`."""
  half = x.shape[-1] // 2
  cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


class SpacetimePosEmbed(nnx.Module):
  """Absolute spacetime positions, W.A.L.T style: a time table `[T0, D]` plus a space table `[H0, W0, D]`, summed.

  `kind="learned"`: trainable tables on the trained token grid `(T0, H0, W0)`. `kind="sincos"`: fixed 1-D sin-cos
  over time plus 2-D sin-cos over space (half the channels for h, half for w, as DiT), no parameters.

  Other grids: spatial axes are linearly resampled onto the trained extent (learned tables interpolated, sin-cos
  evaluated at the same fractional positions); time keeps frame indices for clips up to `T0` frames and is resampled
  for longer ones. At the trained grid the output equals the tables exactly.
  """

  def __init__(self, grid: Sequence[int], width: int, *, kind: str = "learned", param_dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    if kind not in POS_EMBEDDINGS:
      raise ValueError(f"position embedding {kind!r} is not known; allowed: {POS_EMBEDDINGS}")
    if kind == "sincos" and width % 4:
      raise ValueError(f"sin-cos spacetime positions need a width divisible by 4, got {width}")
    self.grid = tuple(int(g) for g in grid)
    self.width = width
    self.kind = kind
    if kind == "learned":
      if rngs is None:
        raise ValueError("learned position embeddings need rngs")
      t0, h0, w0 = self.grid
      init = nnx.initializers.normal(0.02)
      self.time = nnx.Param(logical(init, None, "embed")(rngs.params(), (t0, width), param_dtype))
      self.space = nnx.Param(logical(init, None, None, "embed")(rngs.params(), (h0, w0, width), param_dtype))

  def __call__(self, grid: Sequence[int]) -> jax.Array:
    """grid `(T, H, W)` -> `[T*H*W, width]` float32 in raster order."""
    positions = grid_positions(grid)
    return self.at(positions, np.broadcast_to(np.asarray(grid, np.int32), positions.shape))

  def at(self, positions: jax.Array, grids: jax.Array) -> jax.Array:
    """Per token: coordinates `[..., 3]` (t, h, w) in a clip whose token grid is `grids` `[..., 3]` -> `[..., width]`
    float32; the same values `__call__(grid)` gives that token (what packed rows of several sizes use)."""
    positions = jnp.asarray(positions, jnp.float32)
    grids = jnp.asarray(grids, jnp.float32)
    lead = positions.shape[:-1]
    positions, grids = positions.reshape(-1, 3), grids.reshape(-1, 3)
    t0, h0, w0 = self.grid
    tpos = _time_positions(positions[:, 0], grids[:, 0], t0)
    hpos = _resampled(positions[:, 1], grids[:, 1], h0)
    wpos = _resampled(positions[:, 2], grids[:, 2], w0)
    if self.kind == "learned":
      time = _linear_lookup(self.time[...].astype(jnp.float32), tpos)
      space = _bilinear_lookup(self.space[...].astype(jnp.float32), hpos, wpos)
    else:
      half = self.width // 2
      time = sincos_1d(tpos, self.width)
      space = jnp.concatenate([sincos_1d(hpos, half), sincos_1d(wpos, half)], axis=-1)
    return (time + space).reshape(*lead, self.width)
