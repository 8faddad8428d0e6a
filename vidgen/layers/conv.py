"""Causal 3D convolution with a streaming state, and the space/time depth shuffles used around it.

Layout is channels-last video `[B, T, H, W, C]`. Causality: frame t of the output depends on input frames <= t only,
because all temporal padding goes on the past side. The past of the very first frame is filled by repeating that frame
(so an image is processed as a still video and "encode one frame" equals "first latent frame of a video").

Streaming: `__call__(x, state)` returns `(y, new_state)`. `state=None` means "this is the start of the video" (pad by
replication); otherwise `state` holds the input frames that the next output window still needs, taken from the end of
the previous chunk. Feeding a video chunk by chunk, threading the state, gives exactly the windows of the whole-video
call, so results agree to float tolerance, and memory is that of one chunk.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vidgen.parallel import logical


def _triple(v) -> tuple[int, int, int]:
  if isinstance(v, int):
    return (v, v, v)
  if len(v) != 3:
    raise ValueError(f"expected an int or 3 ints (time, height, width), got {v!r}")
  return tuple(int(a) for a in v)


class CausalConv3d(nnx.Module):
  """Conv3d over `[B, T, H, W, Cin]`: causal in time (past-side padding), 'same'-style zero padding in space.

  With spatial stride s the output size is ceil(H / s); with temporal stride s_t and a fresh start the output has
  1 + (T - 1) // s_t frames for T = 1 + s_t * k (the first frame is its own window).
  """

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int] = 3, *,
               stride: int | Sequence[int] = 1, dtype=jnp.float32, param_dtype=jnp.float32,
               kernel_init=nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
               rngs: nnx.Rngs):
    self.kernel_size = _triple(kernel_size)
    self.stride = _triple(stride)
    kt, kh, kw = self.kernel_size
    if kt < self.stride[0]:
      raise ValueError(f"temporal kernel {kt} must be >= temporal stride {self.stride[0]} (frames would be skipped)")
    self.dtype = dtype
    self.kernel = nnx.Param(logical(kernel_init, None, None, None, "conv_in", "conv_out")(
        rngs.params(), (kt, kh, kw, in_channels, out_channels), param_dtype))
    self.bias = nnx.Param(logical(nnx.initializers.zeros, "conv_out")(rngs.params(), (out_channels,), param_dtype))

  def __call__(self, x: jax.Array, state: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """x: [B, T, H, W, Cin]; state: [B, S, H, W, Cin] or None. Returns (y [B, T', H', W', Cout], new state)."""
    kt, kh, kw = self.kernel_size
    st, sh, sw = self.stride
    if state is None:
      past = jnp.repeat(x[:, :1], kt - 1, axis=1)
    else:
      past = state.astype(x.dtype)
    padded = jnp.concatenate([past, x], axis=1)
    num_out = (padded.shape[1] - kt) // st + 1
    if num_out < 1:
      raise ValueError(f"chunk of {x.shape[1]} frames is too short for a temporal kernel of {kt} with stride {st}")
    # The next chunk's first window starts at frame num_out * st of this padded input: keep everything from there.
    new_state = padded[:, num_out * st:]
    # Spatial padding that gives ceil(H / s) outputs, with the extra pixel on the far side for even kernels.
    pads = []
    for size, k, s in ((x.shape[2], kh, sh), (x.shape[3], kw, sw)):
      out = -(-size // s)
      total = max((out - 1) * s + k - size, 0)
      pads.append((total // 2, total - total // 2))
    kernel = self.kernel[...].astype(self.dtype)
    if state is None and x.shape[1] == 1:
      # An image: its window is kt copies of the one frame, so the temporal taps can be summed first (kt x less work).
      y = conv3d_by_frames(x.astype(self.dtype), jnp.sum(kernel, axis=0, keepdims=True), (1, sh, sw), pads)
    else:
      y = conv3d_by_frames(padded.astype(self.dtype), kernel, (st, sh, sw), pads)
    y = y + self.bias[...].astype(self.dtype)
    return y, new_state


def conv3d_by_frames(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                     spatial_padding: Sequence[tuple[int, int]] | str) -> jax.Array:
  """A 3D convolution with no temporal padding, computed as one 2D convolution over frames.

  x: [B, T, H, W, Cin] (already padded in time); kernel: [kt, kh, kw, Cin, Cout]; strides: (st, sh, sw);
  spatial_padding: ((top, bottom), (left, right)) or "SAME" / "VALID". Returns [B, (T - kt) // st + 1, H', W', Cout].

  Equal to `lax.conv_general_dilated` in 3D up to float summation order. The kt input frames of each output frame
  are stacked on channels, so the work is a single 2D convolution with kt * Cin input channels, because XLA's CPU
  backend runs 2D convolutions much faster than 3D ones (docs/results.md).
  """
  kt, kh, kw, cin, cout = kernel.shape
  st = strides[0]
  num_out = (x.shape[1] - kt) // st + 1
  if num_out < 1:
    raise ValueError(f"{x.shape[1]} frames are too few for a temporal kernel of {kt}")
  span = st * (num_out - 1) + 1
  taps = jnp.concatenate([x[:, i:i + span:st] for i in range(kt)], axis=-1) if kt > 1 else x[:, :span:st]
  b, t = taps.shape[:2]
  kernel_2d = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kt * cin, cout)
  y = jax.lax.conv_general_dilated(taps.reshape(b * t, *taps.shape[2:]), kernel_2d, tuple(strides[1:]),
                                   spatial_padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y.reshape(b, t, *y.shape[1:])


def space_to_depth(x: jax.Array, factor: int) -> jax.Array:
  """[B, T, H, W, C] -> [B, T, H/f, W/f, f*f*C] (pixel unshuffle)."""
  b, t, h, w, c = x.shape
  if h % factor or w % factor:
    raise ValueError(f"height and width ({h}, {w}) must be divisible by {factor}")
  x = x.reshape(b, t, h // factor, factor, w // factor, factor, c)
  return x.transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, t, h // factor, w // factor, factor * factor * c)


def depth_to_space(x: jax.Array, time_factor: int, space_factor: int) -> jax.Array:
  """[B, T, H, W, ft*fs*fs*C] -> [B, T*ft, H*fs, W*fs, C] (pixel shuffle in time and space)."""
  b, t, h, w, c = x.shape
  ft, fs = time_factor, space_factor
  out_c = c // (ft * fs * fs)
  if out_c * ft * fs * fs != c:
    raise ValueError(f"{c} channels cannot be split into {ft}x{fs}x{fs} blocks")
  x = x.reshape(b, t, h, w, ft, fs, fs, out_c)
  return x.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, t * ft, h * fs, w * fs, out_c)
