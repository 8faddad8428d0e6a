"""Transformer MLP: Linear -> tanh-GELU -> Linear, with logical axis names on weights and the hidden activation.

Optionally a depthwise spatial convolution on the MLP's input (as in ConvNeXt blocks; SegFormer's and SANA's Mix-FFN
put it on the hidden activation): every token then mixes its features with those of its k x k neighbours in the same
frame, with a separate weight per offset. Attention does that only through position embeddings; the convolution gives
local detail (edges, corners) an inductive bias at about k^2 / (2 x hidden) of the MLP's FLOPs. It sits on the input
rather than the 4x wider hidden activation, which would cost 4x the work.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vidgen.parallel.sharding import constrain, logical


def _identity_depthwise_init(key, shape, dtype=jnp.float32):
  """Depthwise kernel `[k, k, C]` that passes every channel through unchanged (1 at the centre tap)."""
  del key
  kh, kw = shape[0], shape[1]
  return jnp.zeros(shape, dtype).at[kh // 2, kw // 2].set(1.0)


class Mlp(nnx.Module):
  """`[..., N, width]` -> `[..., N, width]` through a `hidden`-wide layer (DiT: hidden = 4 x width, tanh-GELU).

  `conv_kernel=k > 0` adds a k x k depthwise convolution over each frame's token grid before the first Linear,
  initialised to the identity, so at initialisation the block computes exactly the plain MLP.
  """

  def __init__(self, width: int, hidden: int, *, conv_kernel: int = 0, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    if conv_kernel < 0 or (conv_kernel and conv_kernel % 2 == 0):
      raise ValueError(f"conv_kernel must be 0 (off) or an odd size (3, 5, ...) so tokens stay centred; "
                       f"got {conv_kernel}")
    self.dtype = dtype
    self.fc1 = nnx.Linear(
        width, hidden, dtype=dtype, param_dtype=param_dtype,
        kernel_init=logical(nnx.initializers.xavier_uniform(), "embed", "mlp"),
        bias_init=logical(nnx.initializers.zeros_init(), "mlp"), rngs=rngs)
    self.conv_kernel = conv_kernel
    self.conv_weight = nnx.data(None)
    self.conv_bias = nnx.data(None)
    if conv_kernel:
      self.conv_weight = nnx.Param(logical(_identity_depthwise_init, None, None, "embed")(
          rngs.params(), (conv_kernel, conv_kernel, width), param_dtype))
      self.conv_bias = nnx.Param(logical(nnx.initializers.zeros_init(), "embed")(rngs.params(), (width,), param_dtype))
    self.fc2 = nnx.Linear(
        hidden, width, dtype=dtype, param_dtype=param_dtype,
        kernel_init=logical(nnx.initializers.xavier_uniform(), "mlp", "embed"),
        bias_init=logical(nnx.initializers.zeros_init(), "embed"), rngs=rngs)

  def __call__(self, x: jax.Array, grid: tuple[int, int, int] | None = None) -> jax.Array:
    """x: `[B, N, width]` -> `[B, N, width]` in the compute dtype; `grid` = (T, H, W) with N = T*H*W (raster order)
    is needed only with the convolution."""
    x = x.astype(self.dtype)
    if self.conv_weight is not None:
      if grid is None or x.shape[1] != grid[0] * grid[1] * grid[2]:
        raise ValueError(f"Mlp with a convolution needs the token grid (T, H, W) with T*H*W = N = {x.shape[1]}; "
                         f"got {grid}")
      x = self._depthwise_conv(x, grid)
    h = self.fc1(x)
    h = jax.nn.gelu(h, approximate=True)
    h = constrain(h, ("act_batch", "act_len", "act_mlp"))
    return self.fc2(h)

  def _depthwise_conv(self, h: jax.Array, grid: tuple[int, int, int]) -> jax.Array:
    """`[B, N, C]` on `grid` -> the k x k depthwise convolution of every frame, zero-padded ("SAME").

    Written as k^2 shifted multiply-adds, which XLA fuses into elementwise passes; a grouped convolution
    (feature_group_count = C) is much slower on CPU (docs/results.md).
    """
    batch, _, channels = h.shape
    k, r = self.conv_kernel, self.conv_kernel // 2
    frames = h.reshape(batch, grid[0], grid[1], grid[2], channels)
    padded = jnp.pad(frames, ((0, 0), (0, 0), (r, r), (r, r), (0, 0)))
    weight = self.conv_weight[...].astype(h.dtype)
    out = self.conv_bias[...].astype(h.dtype)
    for dy in range(k):
      for dx in range(k):
        out = out + padded[:, :, dy:dy + grid[1], dx:dx + grid[2]] * weight[dy, dx]
    return out.reshape(batch, -1, channels)
