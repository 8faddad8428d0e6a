"""The InceptionV3 network of FID (the 2015-12-05 TensorFlow graph, as ported by pytorch-fid), in Flax NNX.

    images [..., H, W, 3] uint8, or float in [-1, 1]
      --preprocess--> [..., 299, 299, 3] in [-1, 1]  (bilinear, align_corners=False, no antialiasing)
      --FIDInception--> pool3 features [B, 2048]  (--logits--> [B, 1008])

This is torchvision's InceptionV3 with the TF graph's differences that pytorch-fid patches in: the average pools of the
Mixed_5*, Mixed_6b-e and Mixed_7b blocks leave the zero padding out of their averages, Mixed_7c's pool branch is a max
pool, BatchNorm eps is 1e-3, and the classifier has 1008 classes. Features equal pytorch-fid's only with its weights:
`load_fid_inception` reads `pt_inception-2015-12-05-6726825d.pth` (a torch state dict, named as in pytorch-fid) into
the module, whose submodules carry the same names. Layout is channels-last; parity with a PyTorch reference of the
network is tested.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen.errors import InputError
from vidgen.models.weights import read_state_dict, to_numpy

__all__ = ["FID_WEIGHTS_URL", "FIDInception", "fid_inception_from_state_dict", "load_fid_inception", "preprocess"]

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
INPUT_SIZE = 299
MIN_INPUT_SIZE = 75  # the smallest input whose feature map survives the five stride-2 stages
FEATURES = 2048
NUM_CLASSES = 1008
_BN_EPS = 1e-3
_PRECISION = jax.lax.Precision.HIGHEST


def _filled(shape: tuple[int, ...], value: float) -> jax.Array:
  # From host memory: jnp.zeros would compile one fill program per distinct shape (seconds for this network).
  return jnp.asarray(np.full(shape, value, np.float32))


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


class Conv2d(nnx.Module):
  """A bias-free convolution, kernel [kh, kw, in, out], with torch's symmetric padding."""

  def __init__(self, in_channels: int, out_channels: int, kernel: int | Sequence[int], *, stride: int = 1,
               padding: int | Sequence[int] = 0):
    kh, kw = _pair(kernel)
    ph, pw = _pair(padding)
    # Zeros, not a random init: the network only means something with its trained weights, and building it draws
    # no random numbers (drawing them for ~100 layers is slow, in eval_shape as well as eagerly).
    self.kernel = nnx.Param(_filled((kh, kw, in_channels, out_channels), 0.0))
    self.stride = stride
    self.padding = ((ph, ph), (pw, pw))

  def __call__(self, x: jax.Array) -> jax.Array:
    # Full float32, where GPU / TPU defaults would round to TF32 / bf16: FID compares features across runs and codes.
    return jax.lax.conv_general_dilated(x, self.kernel[...], (self.stride, self.stride), self.padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_PRECISION)


class FrozenBatchNorm(nnx.Module):
  """Inference BatchNorm with the trained statistics: (x - mean) / sqrt(var + eps) * scale + bias."""

  def __init__(self, channels: int):
    self.scale = nnx.Param(_filled((channels,), 1.0))
    self.bias = nnx.Param(_filled((channels,), 0.0))
    self.mean = nnx.BatchStat(_filled((channels,), 0.0))
    self.var = nnx.BatchStat(_filled((channels,), 1.0))

  def __call__(self, x: jax.Array) -> jax.Array:
    return (x - self.mean[...]) * (self.scale[...] * jax.lax.rsqrt(self.var[...] + _BN_EPS)) + self.bias[...]


class BasicConv(nnx.Module):
  """Conv (no bias) -> BatchNorm -> ReLU: every convolution of the network."""

  def __init__(self, in_channels: int, out_channels: int, kernel: int | Sequence[int], *, stride: int = 1,
               padding: int | Sequence[int] = 0):
    self.conv = Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding)
    self.bn = FrozenBatchNorm(out_channels)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn(self.conv(x)))


class Linear(nnx.Module):
  """The classifier: x [B, in] -> x @ kernel + bias [B, out]."""

  def __init__(self, in_features: int, out_features: int):
    self.kernel = nnx.Param(_filled((in_features, out_features), 0.0))
    self.bias = nnx.Param(_filled((out_features,), 0.0))

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.dot(x, self.kernel[...], precision=_PRECISION) + self.bias[...]


def _avg_pool_same(x: jax.Array) -> jax.Array:
  # TF's average pool divides by the number of real pixels in the window, not 9 (count_include_pad=False).
  return nnx.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_same(x: jax.Array) -> jax.Array:
  return nnx.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))


def _max_pool_down(x: jax.Array) -> jax.Array:
  return nnx.max_pool(x, (3, 3), (2, 2), "VALID")


class InceptionA(nnx.Module):
  """Mixed_5b-d, 35x35: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 -> 224 + pool_features channels."""

  def __init__(self, in_channels: int, pool_features: int):
    self.branch1x1 = BasicConv(in_channels, 64, 1)
    self.branch5x5_1 = BasicConv(in_channels, 48, 1)
    self.branch5x5_2 = BasicConv(48, 64, 5, padding=2)
    self.branch3x3dbl_1 = BasicConv(in_channels, 64, 1)
    self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = BasicConv(96, 96, 3, padding=1)
    self.branch_pool = BasicConv(in_channels, pool_features, 1)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([
        self.branch1x1(x),
        self.branch5x5_2(self.branch5x5_1(x)),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        self.branch_pool(_avg_pool_same(x)),
    ], axis=-1)


class InceptionB(nnx.Module):
  """Mixed_6a, 35x35 -> 17x17: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 -> 480 + in_channels channels."""

  def __init__(self, in_channels: int):
    self.branch3x3 = BasicConv(in_channels, 384, 3, stride=2)
    self.branch3x3dbl_1 = BasicConv(in_channels, 64, 1)
    self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = BasicConv(96, 96, 3, stride=2)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([
        self.branch3x3(x),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        _max_pool_down(x),
    ], axis=-1)


class InceptionC(nnx.Module):
  """Mixed_6b-e, 17x17: 1x1 | factorized 7x7 | doubly factorized 7x7 | avgpool-1x1 -> 768 channels."""

  def __init__(self, in_channels: int, channels_7x7: int):
    c7 = channels_7x7
    self.branch1x1 = BasicConv(in_channels, 192, 1)
    self.branch7x7_1 = BasicConv(in_channels, c7, 1)
    self.branch7x7_2 = BasicConv(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7_3 = BasicConv(c7, 192, (7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = BasicConv(in_channels, c7, 1)
    self.branch7x7dbl_2 = BasicConv(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = BasicConv(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = BasicConv(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = BasicConv(c7, 192, (1, 7), padding=(0, 3))
    self.branch_pool = BasicConv(in_channels, 192, 1)

  def __call__(self, x: jax.Array) -> jax.Array:
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    d7 = self.branch7x7dbl_1(x)
    for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
      d7 = layer(d7)
    return jnp.concatenate([self.branch1x1(x), b7, d7, self.branch_pool(_avg_pool_same(x))], axis=-1)


class InceptionD(nnx.Module):
  """Mixed_7a, 17x17 -> 8x8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 -> 512 + in_channels channels."""

  def __init__(self, in_channels: int):
    self.branch3x3_1 = BasicConv(in_channels, 192, 1)
    self.branch3x3_2 = BasicConv(192, 320, 3, stride=2)
    self.branch7x7x3_1 = BasicConv(in_channels, 192, 1)
    self.branch7x7x3_2 = BasicConv(192, 192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = BasicConv(192, 192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = BasicConv(192, 192, 3, stride=2)

  def __call__(self, x: jax.Array) -> jax.Array:
    b7 = x
    for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
      b7 = layer(b7)
    return jnp.concatenate([self.branch3x3_2(self.branch3x3_1(x)), b7, _max_pool_down(x)], axis=-1)


class InceptionE(nnx.Module):
  """Mixed_7b-c, 8x8: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1 -> 2048 channels.

  `pool`: "avg" (padding left out of the average) for Mixed_7b, "max" for Mixed_7c, as in the TF graph.
  """

  def __init__(self, in_channels: int, pool: str):
    if pool not in ("avg", "max"):
      raise ValueError(f"InceptionE pool must be 'avg' or 'max', got {pool!r}")
    self.pool = pool
    self.branch1x1 = BasicConv(in_channels, 320, 1)
    self.branch3x3_1 = BasicConv(in_channels, 384, 1)
    self.branch3x3_2a = BasicConv(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3_2b = BasicConv(384, 384, (3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = BasicConv(in_channels, 448, 1)
    self.branch3x3dbl_2 = BasicConv(448, 384, 3, padding=1)
    self.branch3x3dbl_3a = BasicConv(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = BasicConv(384, 384, (3, 1), padding=(1, 0))
    self.branch_pool = BasicConv(in_channels, 192, 1)

  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.branch3x3_1(x)
    d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pooled = _avg_pool_same(x) if self.pool == "avg" else _max_pool_same(x)
    return jnp.concatenate([
        self.branch1x1(x),
        self.branch3x3_2a(b3), self.branch3x3_2b(b3),
        self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3),
        self.branch_pool(pooled),
    ], axis=-1)


class FIDInception(nnx.Module):
  """FID's InceptionV3 up to pool3: images [B, H, W, 3] in [-1, 1] -> features [B, 2048].

  FID is defined at H = W = 299 (use `preprocess`); any H, W >= 75 runs. Constructed with zero weights: get the trained
  network from `load_fid_inception`. Attribute names follow pytorch-fid's state dict (`Mixed_5b.branch1x1.conv`, ...),
  so weights map by name. Call under `nnx.jit`.
  """

  def __init__(self):
    self.Conv2d_1a_3x3 = BasicConv(3, 32, 3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv(32, 32, 3)
    self.Conv2d_2b_3x3 = BasicConv(32, 64, 3, padding=1)
    self.Conv2d_3b_1x1 = BasicConv(64, 80, 1)
    self.Conv2d_4a_3x3 = BasicConv(80, 192, 3)
    self.Mixed_5b = InceptionA(192, 32)
    self.Mixed_5c = InceptionA(256, 64)
    self.Mixed_5d = InceptionA(288, 64)
    self.Mixed_6a = InceptionB(288)
    self.Mixed_6b = InceptionC(768, 128)
    self.Mixed_6c = InceptionC(768, 160)
    self.Mixed_6d = InceptionC(768, 160)
    self.Mixed_6e = InceptionC(768, 192)
    self.Mixed_7a = InceptionD(768)
    self.Mixed_7b = InceptionE(1280, "avg")
    self.Mixed_7c = InceptionE(2048, "max")
    # The classifier is not part of the FID features; it is in the weight file and gives the 1008 logits.
    self.fc = Linear(FEATURES, NUM_CLASSES)

  def __call__(self, images: jax.Array) -> jax.Array:
    """images [B, H, W, 3] in [-1, 1] (H, W >= 75; 299 for FID) -> pool3 features [B, 2048] float32."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise InputError(f"FIDInception takes images [B, H, W, 3], got shape {images.shape}")
    if min(images.shape[1:3]) < MIN_INPUT_SIZE:
      raise InputError(f"FIDInception needs H, W >= {MIN_INPUT_SIZE}, got {images.shape[1:3]}; FID uses "
                       f"{INPUT_SIZE}x{INPUT_SIZE} (see preprocess)")
    x = images.astype(jnp.float32)
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = _max_pool_down(x)
    x = _max_pool_down(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                  self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
      x = block(x)
    return jnp.mean(x, axis=(1, 2))

  def logits(self, features: jax.Array) -> jax.Array:
    """pool3 features [B, 2048] -> class logits [B, 1008] (the TF graph's classes; for the Inception Score)."""
    return self.fc(features)


def preprocess(images: Any) -> jax.Array:
  """Images [..., H, W, 3] of any size -> FID's input [..., 299, 299, 3] float32 in [-1, 1].

  uint8 images are read as pytorch-fid reads image files (x / 255, resized, then 2x - 1); float images must already be
  in [-1, 1] (checked when not traced). The resize is bilinear with half-pixel centres and no antialiasing, like
  `torch.nn.functional.interpolate(..., mode="bilinear", align_corners=False)`.
  """
  x = jnp.asarray(images)
  if x.ndim < 4 or x.shape[-1] != 3:
    raise InputError(f"preprocess takes RGB images [..., H, W, 3] with at least one leading (batch) axis, got shape "
                     f"{x.shape}")
  from_uint8 = x.dtype == jnp.uint8
  if from_uint8:
    x = x.astype(jnp.float32) / 255.0
  elif jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
    if not isinstance(x, jax.core.Tracer):
      lo, hi = float(jnp.min(x)), float(jnp.max(x))
      if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
        raise InputError(f"float images must be in [-1, 1], got values in [{lo:.4g}, {hi:.4g}]; clip them, or pass "
                         f"uint8 images")
  else:
    raise InputError(f"images must be uint8 or float in [-1, 1], got dtype {x.dtype}")
  lead, (h, w) = x.shape[:-3], x.shape[-3:-1]
  if (h, w) != (INPUT_SIZE, INPUT_SIZE):
    flat = x.reshape(-1, h, w, 3)
    flat = jax.image.resize(flat, (flat.shape[0], INPUT_SIZE, INPUT_SIZE, 3), "linear", antialias=False)
    x = flat.reshape(*lead, INPUT_SIZE, INPUT_SIZE, 3)
  # Resizing commutes with the affine map to [-1, 1]; uint8 images follow pytorch-fid's order of operations exactly.
  return 2.0 * x - 1.0 if from_uint8 else x


# ----------------------------------------------------------------------------------------------------------------------
# Weights.


# The last two parts of our variable paths -> the last part of pytorch-fid's names (the module names are the same).
_TORCH_LEAF = {("conv", "kernel"): "weight", ("bn", "scale"): "weight", ("bn", "bias"): "bias",
               ("bn", "mean"): "running_mean", ("bn", "var"): "running_var", ("fc", "kernel"): "weight",
               ("fc", "bias"): "bias"}


def _torch_name(path: tuple[str, ...]) -> str:
  leaf = _TORCH_LEAF[path[-2:]]
  return ".".join((*path[:-1], leaf))


def _from_torch_layout(path: tuple[str, ...], weight: np.ndarray) -> np.ndarray:
  if path[-2:] == ("conv", "kernel"):
    return weight.transpose(2, 3, 1, 0)  # [out, in, kh, kw] -> [kh, kw, in, out]
  if path[-2:] == ("fc", "kernel"):
    return weight.T  # [out, in] -> [in, out]
  return weight


def _torch_shape(path: tuple[str, ...], ours: tuple[int, ...]) -> tuple[int, ...]:
  if path[-2:] == ("conv", "kernel"):
    return (ours[3], ours[2], ours[0], ours[1])
  if path[-2:] == ("fc", "kernel"):
    return (ours[1], ours[0])
  return ours


def _short_list(names: Sequence[str], limit: int = 12) -> str:
  names = sorted(names)
  more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def fid_inception_from_state_dict(state_dict: Mapping[str, Any], *, source: str = "the state dict") -> FIDInception:
  """Builds FIDInception from pytorch-fid's weights (name -> torch tensor or array, torch layouts).

  The module is built abstractly (no random init) and every parameter filled; BatchNorm's `num_batches_tracked`
  counters are ignored. Missing, unexpected or mis-shaped weights raise ValueError naming them (`source` says where
  the weights came from).
  """
  graphdef, abstract = nnx.split(nnx.eval_shape(FIDInception))
  flat = nnx.traversals.flatten_mapping(nnx.to_pure_dict(abstract))
  names = {_torch_name(path): path for path in flat}
  given = {k for k in state_dict if not k.endswith(".num_batches_tracked")}
  missing, unexpected = sorted(set(names) - given), sorted(given - set(names))
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"missing weights ({len(missing)}): {_short_list(missing)}")
    if unexpected:
      parts.append(f"unexpected weights ({len(unexpected)}): {_short_list(unexpected)}")
    raise ValueError(f"{source} does not hold pytorch-fid's FID InceptionV3 weights (pt_inception-2015-12-05): "
                     + "; ".join(parts))
  arrays, bad = {}, []
  for name, path in names.items():
    weight = to_numpy(state_dict[name])
    expected = _torch_shape(path, tuple(flat[path].shape))
    if weight.shape != expected:
      bad.append(f"{name}: expected {expected}, got {weight.shape}")
      continue
    arrays[path] = jnp.asarray(_from_torch_layout(path, weight).astype(flat[path].dtype))
  if bad:
    raise ValueError(f"{source}: weight shapes do not match FID InceptionV3 (name: expected, got): "
                     f"{_short_list(bad)}")
  nnx.replace_by_pure_dict(abstract, nnx.traversals.unflatten_mapping(arrays))
  return nnx.merge(graphdef, abstract)


def load_fid_inception(path: str | os.PathLike) -> FIDInception:
  """Reads pytorch-fid's weight file `pt_inception-2015-12-05-6726825d.pth` into FIDInception. Needs torch."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"FID Inception weights {path} do not exist; download pt_inception-2015-12-05-6726825d.pth "
                            f"from {FID_WEIGHTS_URL}")
  return fid_inception_from_state_dict(read_state_dict(path), source=str(path))
