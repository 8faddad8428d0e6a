"""The official DiT checkpoints (arXiv 2212.09748) as VideoDiTs: the PyTorch release and diffusers' layout.

  dit = load_dit_checkpoint("DiT-XL-2-256x256.pt")              # size, classes and resolution read from the weights
  dit = load_dit_checkpoint("DiT-XL-2-256/transformer")          # a diffusers DiTTransformer2DModel folder

A converted model computes what the checkpoint's own code computes, on 1-frame videos: noise (eps) and, in the second
half of `out_channels = 2C`, the learned variance, at DDPM steps k = 1000 t - 1 (`dit.time_offset = -1`); sample it
with `diffusion.objective = "eps"` on the linear schedule (`vidgen.diffusion.sample(..., prediction="eps")` on the
first C output channels, as diffusers' DiTPipeline does with DDIM / DPM-Solver).

Conventions that differ are absorbed by the conversion, not by special cases in the model:
  - DiT's 2-D sin-cos table holds w in its first half and h in its second; vidgen's holds h first and adds a time row
    (its value at frame 0). The residual channels are permuted (halves swapped) in every weight that reads or writes
    them, and the time row is folded into the patch projection's bias: an exact reparameterization, checked against
    the table when the checkpoint stores one.
  - diffusers' port repeats the timestep and label embedders in every block (equal copies after conversion; unequal
    copies are refused) and spaces its timestep frequencies by half - 1 instead of half (`dit.freq_shift = 1`).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen.errors import InputError
from vidgen.layers.embeddings import SpacetimePosEmbed
from vidgen.models.dit import VideoDiT
from vidgen.models.dit_config import DIT_SIZES, dit_config
from vidgen.models.weights import read_state_dict, to_numpy, torch_load

__all__ = ["dit_checkpoint_config", "dit_params_from_state_dict", "load_dit_checkpoint", "read_dit_state_dict"]

_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


# ----------------------------------------------------------------------------------------------------------------------
# Reading.


def _read_file(path: str) -> dict[str, np.ndarray]:
  """A DiT weights file as float32 numpy; a training checkpoint (model / ema / opt) gives its EMA weights, the released
  ones. Read errors become InputErrors, which the CLI prints as one line."""
  try:
    if path.endswith(".safetensors"):
      return read_state_dict(path, dtype=np.float32)
    state = torch_load(path)
    if isinstance(state.get("ema"), dict):
      state = state["ema"]
    return {k: to_numpy(v, np.float32) for k, v in state.items()}
  except (ImportError, ValueError) as e:
    raise InputError(str(e)) from e


def read_dit_state_dict(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
  """A DiT checkpoint -> (state dict in the official DiT names, float32 numpy; the diffusers config or None).

  `path`: the official release file (.pt, or .safetensors with the same names), or a diffusers
  `DiTTransformer2DModel` folder (config.json + diffusion_pytorch_model.safetensors / .bin).
  """
  if not os.path.exists(path):
    raise InputError(f"{path}: no such DiT checkpoint (a DiT-XL-2-256x256.pt file or a diffusers transformer folder)")
  if os.path.isdir(path):
    config_file = os.path.join(path, "config.json")
    weights = [os.path.join(path, f) for f in _DIFFUSERS_WEIGHTS if os.path.exists(os.path.join(path, f))]
    if not os.path.exists(config_file) or not weights:
      raise InputError(f"{path}: a diffusers DiT folder needs config.json and one of {_DIFFUSERS_WEIGHTS}")
    with open(config_file) as f:
      config = json.load(f)
    if config.get("_class_name") not in (None, "DiTTransformer2DModel", "Transformer2DModel"):
      raise InputError(f"{config_file}: holds a {config.get('_class_name')}, not a DiTTransformer2DModel")
    return _official_names(_read_file(weights[0]), path), config
  return _read_file(path), None


def _official_names(sd: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
  """diffusers' DiTTransformer2DModel names -> the official DiT names (the embedders of block 0, checked equal in every
  block; q, k, v fused)."""
  sd = dict(sd)
  out: dict[str, np.ndarray] = {}

  def take(name: str) -> np.ndarray:
    if name not in sd:
      raise InputError(f"{where}: the diffusers DiT weights lack {name!r}")
    return sd.pop(name)

  for kind in ("weight", "bias"):
    out[f"x_embedder.proj.{kind}"] = take(f"pos_embed.proj.{kind}")
    out[f"final_layer.adaLN_modulation.1.{kind}"] = take(f"proj_out_1.{kind}")
    out[f"final_layer.linear.{kind}"] = take(f"proj_out_2.{kind}")
  depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"transformer_blocks\.(\d+)\.", k))), default=-1)
  embedders = {"norm1.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
               "norm1.emb.timestep_embedder.linear_2": "t_embedder.mlp.2",
               "norm1.emb.class_embedder.embedding_table": "y_embedder.embedding_table"}
  for i in range(depth):
    b = f"transformer_blocks.{i}"
    for src, dst in embedders.items():
      for kind in ("weight", "bias") if "table" not in src else ("weight",):
        value = take(f"{b}.{src}.{kind}")
        if i == 0:
          out[f"{dst}.{kind}"] = value
        elif not np.array_equal(value, out[f"{dst}.{kind}"]):
          raise InputError(f"{where}: {b}.{src}.{kind} differs from block 0's; a DiT shares one timestep and label "
                           "embedder across blocks, so this is not a converted DiT checkpoint")
    for kind in ("weight", "bias"):
      out[f"blocks.{i}.adaLN_modulation.1.{kind}"] = take(f"{b}.norm1.linear.{kind}")
      out[f"blocks.{i}.attn.qkv.{kind}"] = np.concatenate([take(f"{b}.attn1.to_{x}.{kind}") for x in "qkv"])
      out[f"blocks.{i}.attn.proj.{kind}"] = take(f"{b}.attn1.to_out.0.{kind}")
      out[f"blocks.{i}.mlp.fc1.{kind}"] = take(f"{b}.ff.net.0.proj.{kind}")
      out[f"blocks.{i}.mlp.fc2.{kind}"] = take(f"{b}.ff.net.2.{kind}")
  if sd:
    raise InputError(f"{where}: weights a DiT does not have: {sorted(sd)[:8]}{' ...' if len(sd) > 8 else ''}")
  return out


# ----------------------------------------------------------------------------------------------------------------------
# Config.


def dit_checkpoint_config(sd: Mapping[str, np.ndarray], diffusers_config: Mapping[str, Any] | None = None,
                          variant: str | None = None, **overrides: Any):
  """The VideoDiT config of a DiT state dict (official names): size from the weights (heads from the DiT table or
  the diffusers config), or checked against `variant` ("XL/2") when given."""
  for name in ("x_embedder.proj.weight", "y_embedder.embedding_table.weight", "final_layer.linear.weight"):
    if name not in sd:
      raise InputError(f"the DiT state dict lacks {name!r}; is this a DiT checkpoint?")
  width, in_channels, patch, _ = sd["x_embedder.proj.weight"].shape
  depth = sum(1 for k in sd if re.fullmatch(r"blocks\.\d+\.attn\.qkv\.weight", k))
  if diffusers_config is not None:
    heads = int(diffusers_config["num_attention_heads"])
    side = int(diffusers_config["sample_size"]) // patch
  else:
    heads = next((h for d, w, h in DIT_SIZES.values() if (d, w) == (depth, width)), None)
    tokens = sd["pos_embed"].shape[-2] if "pos_embed" in sd else None
    side = int(round(np.sqrt(tokens))) if tokens else None
    if side is None or side * side != tokens:
      raise InputError(f"the DiT state dict has no square 'pos_embed' table to read the resolution from "
                       f"(shape {None if tokens is None else sd['pos_embed'].shape})")
  name = variant or next((f"{n}/{patch}" for n, (d, w, _) in DIT_SIZES.items() if (d, w) == (depth, width)), None)
  if name is None or heads is None:
    raise InputError(f"depth {depth} x width {width} is not a DiT size of the paper's table {sorted(DIT_SIZES)}; "
                     "pass variant= with the size, e.g. 'XL/2'")
  out_channels = sd["final_layer.linear.weight"].shape[0] // (patch * patch)
  fields = dict(input_size=(1, side * patch, side * patch), in_channels=int(in_channels),
                out_channels=int(out_channels), num_classes=sd["y_embedder.embedding_table.weight"].shape[0] - 1,
                time_offset=-1.0, freq_shift=1.0 if diffusers_config is not None else 0.0)
  config = dit_config(name, **{**fields, **overrides})
  got = (config.depth, config.width, config.num_heads, tuple(config.patch_size))
  want = (depth, int(width), heads, (1, int(patch), int(patch)))
  if got != want:
    raise InputError(f"variant {name!r} is (depth, width, heads, patch) {got}, the weights are {want}")
  return config


# ----------------------------------------------------------------------------------------------------------------------
# Weights.


def _dit_position_table(side: int, width: int) -> np.ndarray:
  """DiT's fixed 2-D sin-cos table `[side^2, width]` (raster order): w coordinates in the first half, h in the second,
  each half [sin | cos] of width / 4 frequencies 10000^(-i / (width / 4))."""
  freqs = 1.0 / 10000.0 ** (np.arange(width // 4, dtype=np.float64) / (width // 4))
  h, w = np.meshgrid(np.arange(side, dtype=np.float64), np.arange(side, dtype=np.float64), indexing="ij")
  half = lambda pos: np.concatenate([np.sin(pos.reshape(-1, 1) * freqs), np.cos(pos.reshape(-1, 1) * freqs)], 1)
  return np.concatenate([half(w), half(h)], axis=1).astype(np.float32)


def dit_params_from_state_dict(sd: Mapping[str, np.ndarray], config) -> dict[str, Any]:
  """Official DiT weights -> the pure-dict `nnx.Param` state of `VideoDiT(config)` (see the module docstring)."""
  d, p = config.width, config.patch_size[1]
  heads = config.num_heads
  side = config.input_size[1] // p
  perm = (np.arange(d) + d // 2) % d  # vidgen residual channel i is DiT channel perm[i]
  sd = {k: np.asarray(v, np.float32) for k, v in sd.items()}
  used = set()

  def get(name: str) -> np.ndarray:
    if name not in sd:
      raise InputError(f"the DiT state dict lacks {name!r}")
    used.add(name)
    return sd[name]

  def chunks(w: np.ndarray, b: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """A Linear whose output is n residual-space chunks (adaLN): kernel [in, n * D], columns permuted per chunk."""
    return {"kernel": w.T.reshape(-1, n, d)[:, :, perm].reshape(-1, n * d), "bias": b.reshape(n, d)[:, perm].ravel()}

  # Positions: DiT adds table[n]; vidgen adds ours[n] (h-first space + the frame-0 time row). Their permuted difference
  # must be one vector, which goes into the patch bias.
  dit_table = sd["pos_embed"].reshape(-1, d) if "pos_embed" in sd else _dit_position_table(side, d)
  used.add("pos_embed")
  ours = np.asarray(SpacetimePosEmbed((1, side, side), d, kind="sincos")((1, side, side)))
  offset = dit_table[:, perm] - ours
  if dit_table.shape != ours.shape or np.abs(offset - offset[:1]).max() > 1e-4:
    raise InputError(f"the checkpoint's pos_embed {sd['pos_embed'].shape} is not DiT's 2-D sin-cos table on a "
                     f"{side}x{side} grid of width {d}")
  conv = get("x_embedder.proj.weight")  # [D, C, p, p]
  patch_embed = {"kernel": conv.transpose(2, 3, 1, 0).reshape(-1, d)[:, perm],
                 "bias": get("x_embedder.proj.bias")[perm] + offset[0]}
  linear = lambda name: {"kernel": get(f"{name}.weight").T, "bias": get(f"{name}.bias")}  # noqa: E731

  blocks = []
  for i in range(config.depth):
    b = f"blocks.{i}"
    qkv_w, qkv_b = get(f"{b}.attn.qkv.weight"), get(f"{b}.attn.qkv.bias")
    proj_w, fc1_w, fc2_w = get(f"{b}.attn.proj.weight"), get(f"{b}.mlp.fc1.weight"), get(f"{b}.mlp.fc2.weight")
    blocks.append({
        "ada": chunks(get(f"{b}.adaLN_modulation.1.weight"), get(f"{b}.adaLN_modulation.1.bias"), 6),
        "attn": {"qkv": {"kernel": qkv_w.T[perm].reshape(d, 3, heads, d // heads),
                         "bias": qkv_b.reshape(3, heads, d // heads)},
                 "out": {"kernel": proj_w.T[:, perm].reshape(heads, d // heads, d),
                         "bias": get(f"{b}.attn.proj.bias")[perm]}},
        "mlp": {"fc1": {"kernel": fc1_w.T[perm], "bias": get(f"{b}.mlp.fc1.bias")},
                "fc2": {"kernel": fc2_w.T[:, perm], "bias": get(f"{b}.mlp.fc2.bias")[perm]}},
    })
  final_w = get("final_layer.linear.weight")
  state = {
      "patch_embed": {"proj": patch_embed},
      "t_embed": {"fc1": linear("t_embedder.mlp.0"), "fc2": linear("t_embedder.mlp.2")},
      "label_embed": {"table": {"embedding": get("y_embedder.embedding_table.weight")}},
      "blocks": {"layers": {0: jax.tree.map(lambda *xs: np.stack(xs), *blocks)}},
      "final": {"ada": chunks(get("final_layer.adaLN_modulation.1.weight"), get("final_layer.adaLN_modulation.1.bias"),
                              2),
                "proj": {"kernel": final_w.T[perm], "bias": get("final_layer.linear.bias")}},
  }
  unused = sorted(set(sd) - used)
  if unused:
    raise InputError(f"the DiT state dict has weights a {config.variant} does not: {unused[:8]}")
  return state


def load_dit_checkpoint(path: str, variant: str | None = None, **overrides: Any) -> VideoDiT:
  """A published DiT checkpoint as a `VideoDiT` (float32 parameters; `overrides` set other config fields, e.g.
  dtype="bfloat16" or attention_backend="cudnn").

  Args:
    path: `DiT-XL-2-256x256.pt` / `-512x512.pt` (official release; needs torch to read) or a diffusers
      DiTTransformer2DModel folder (the `transformer/` of facebook/DiT-XL-2-256).
    variant: the model size ("XL/2"); default: read from the weights.
  """
  sd, diffusers_config = read_dit_state_dict(path)
  config = dit_checkpoint_config(sd, diffusers_config, variant, **overrides)
  model = nnx.eval_shape(lambda: VideoDiT(config, rngs=nnx.Rngs(0)))
  graph, abstract, rest = nnx.split(model, nnx.Param, ...)
  values = dit_params_from_state_dict(sd, config)
  expected = nnx.to_pure_dict(abstract)
  flat_expected = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
  flat_values = dict(jax.tree_util.tree_flatten_with_path(values)[0])
  for key, leaf in flat_expected.items():
    value = flat_values.get(key)
    if value is None or value.shape != leaf.shape:
      raise InputError(f"{path}: parameter {jax.tree_util.keystr(key)} of shape {leaf.shape} got "
                       f"{None if value is None else value.shape}")
  params = jax.tree.map(lambda leaf, v: jnp.asarray(v, leaf.dtype), expected, values)
  nnx.replace_by_pure_dict(abstract, params)
  return nnx.merge(graph, abstract, rest)
