"""Reading checkpoint weight files into numpy, without torch for safetensors.

  read_state_dict("diffusion_pytorch_model.safetensors")         # {name: np.ndarray}
  read_state_dict("model.safetensors.index.json")                 # the shards an index lists, merged
  read_state_dict("DiT-XL-2-256x256.pt", dtype=np.float32)        # a PyTorch pickle (needs torch), cast

The format follows the extension: `.safetensors`, a sharded checkpoint's `*.index.json`, else a PyTorch pickle
(.pt / .pth / .bin / .ckpt). numpy has no bfloat16, so bfloat16 tensors come back as float32 (read through safetensors'
flax backend, or torch); every other dtype is kept unless `dtype` is given. torch is imported only when a pickle is
read (a test extra, not an install dependency), and pickles are loaded with `weights_only=True`, so a file runs no code.
The smaller pieces (`safetensors_shapes`, `read_safetensors`, `torch_load`, `to_numpy`, `shard_files`) serve loaders
that read tensors lazily or unwrap training checkpoints.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Iterable, Mapping

import numpy as np

__all__ = ["read_safetensors", "read_state_dict", "safetensors_shapes", "shard_files", "to_numpy", "torch_load"]


def _existing(path: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such weights file")
  return path


def shard_files(index: str | os.PathLike) -> list[pathlib.Path]:
  """The files a sharded checkpoint's `*.index.json` lists (its `weight_map` values, sorted), checked to exist."""
  index = _existing(index)
  names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
  files = [index.parent / name for name in names]
  for file in files:
    if not file.is_file():
      raise FileNotFoundError(f"weights shard {file} listed in {index} does not exist")
  return files


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
  """name -> shape of every tensor in a safetensors file, from its header alone (no tensor is read)."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top

  path = _existing(path)
  try:
    with safe_open(str(path), framework="numpy") as f:
      return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
  except Exception as e:  # safetensors raises its own SafetensorError type for corrupt or truncated files.
    raise ValueError(f"{path} is not a readable safetensors file: {e}") from e


def read_safetensors(path: str | os.PathLike, names: Iterable[str] | None = None, *,
                     dtype=None) -> dict[str, np.ndarray]:
  """The tensors `names` (default: all, in file order) of a safetensors file; bfloat16 -> float32, others kept or cast
  to `dtype`."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top

  path = _existing(path)
  try:
    with safe_open(str(path), framework="numpy") as f:
      names = list(f.keys() if names is None else names)
      bf16 = {k for k in names if f.get_slice(k).get_dtype() == "BF16"}
      out = {k: f.get_tensor(k) for k in names if k not in bf16}
    if bf16:  # numpy cannot hold bfloat16: the flax backend gives jax arrays, widened here.
      with safe_open(str(path), framework="flax") as f:
        out.update({k: np.asarray(f.get_tensor(k), np.float32) for k in bf16})
  except Exception as e:  # safetensors raises its own SafetensorError type for corrupt or truncated files.
    raise ValueError(f"{path} is not a readable safetensors file: {e}") from e
  return {k: out[k] if dtype is None else out[k].astype(dtype, copy=False) for k in names}


def torch_load(path: str | os.PathLike) -> dict[str, Any]:
  """A PyTorch pickle's top-level mapping as stored (torch tensors, or sub-dicts in a training checkpoint)."""
  path = _existing(path)
  try:
    import torch  # pylint: disable=g-import-not-at-top  (a test extra, not an install dependency)
  except ImportError as e:
    raise ImportError(f"{path} is a PyTorch pickle; reading it needs torch (pip install torch, the CPU build is "
                      "enough), or convert it to .safetensors") from e
  try:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises several types (UnpicklingError, RuntimeError) for a corrupt or foreign file.
    raise ValueError(f"{path} is not a readable PyTorch state dict: {e}") from e
  if not isinstance(state, Mapping):
    raise ValueError(f"{path} does not hold a state dict (name -> tensor); got {type(state).__name__}")
  return dict(state)


def to_numpy(value: Any, dtype=None) -> np.ndarray:
  """A torch tensor (bfloat16 -> float32), jax or numpy array -> numpy, kept or cast to `dtype`; torch not imported."""
  if hasattr(value, "detach"):  # torch.Tensor
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":
      value = value.float()
    value = value.numpy()
  return np.asarray(value) if dtype is None else np.asarray(value, dtype)


def read_state_dict(path: str | os.PathLike, *, dtype=None) -> dict[str, np.ndarray]:
  """A weights file -> {name: array}, the format by extension (see the module docstring).

  Args:
    path: a `.safetensors` file, a `*.index.json` of shards, or a PyTorch pickle holding a flat state dict.
    dtype: None keeps each tensor's dtype (bfloat16 becomes float32); e.g. np.float32 casts every tensor.

  Raises FileNotFoundError for a missing file or shard, ValueError for an unreadable file or a pickle that is not a
  mapping, ImportError for a pickle when torch is not installed.
  """
  path = pathlib.Path(path)
  if path.name.endswith(".index.json"):
    return {k: v for file in shard_files(path) for k, v in read_state_dict(file, dtype=dtype).items()}
  if path.suffix == ".safetensors":
    return read_safetensors(path, dtype=dtype)
  return {k: to_numpy(v, dtype) for k, v in torch_load(path).items()}
