"""Loading Hugging Face text-encoder checkpoints (T5 / mT5 / UMT5 encoder, CLIP text tower) into our NNX modules.

transformers 5 ships no Flax models, so a checkpoint's tensors are converted on load: each of our parameters names the
checkpoint weights it comes from (`_Source`), the module is built abstractly and filled, and every missing,
unexpected or mis-shaped weight is reported by name. `load_text_encoder` bundles the module with the checkpoint's own
tokenizer as a `TextEncoder`. Parity with the PyTorch `transformers` models is tested.
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
import numpy as np
from flax import nnx

from vidgen.layers.precision import DTYPES
from vidgen.models.text.clip import CLIPTextEncoder, CLIPTextSpec
from vidgen.models.text.common import check_ids
from vidgen.models.text.t5 import T5Encoder, T5Spec
from vidgen.models.text.tokenizer import load_hf_tokenizer
from vidgen.models.weights import read_safetensors, safetensors_shapes, shard_files, to_numpy, torch_load


# ----------------------------------------------------------------------------------------------------------------------
# Reading a checkpoint into a module.


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

  safetensors files are read lazily (shapes from their headers, a tensor when asked for), so a full encoder-decoder
  checkpoint costs only the encoder's tensors; bfloat16 tensors come back as float32 (see `vidgen.models.weights`).
  """

  def __init__(self, directory: pathlib.Path):
    path = next((directory / f for f in WEIGHT_FILES if (directory / f).is_file()), None)
    if path is None:
      raise FileNotFoundError(f"no weights file in {directory}; expected one of {list(WEIGHT_FILES)}")
    self.path = path
    self._shapes: dict[str, tuple[int, ...]] = {}
    self._where: dict[str, tuple[pathlib.Path, Any]] = {}  # name -> (file, its torch tensor; None for safetensors)
    for file in shard_files(path) if path.name.endswith(".index.json") else [path]:
      if file.suffix == ".safetensors":
        shapes, tensors = safetensors_shapes(file), {}
      else:  # a pickle is in memory once loaded; its tensors are converted when asked for.
        tensors = torch_load(file)
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
      self._shapes.update(shapes)
      self._where.update((k, (file, tensors.get(k))) for k in shapes)

  def names(self) -> list[str]:
    return list(self._where)

  def shape(self, name: str) -> tuple[int, ...]:
    return self._shapes[name]

  def get(self, name: str) -> np.ndarray:
    file, tensor = self._where[name]
    return to_numpy(tensor) if tensor is not None else read_safetensors(file, [name])[name]


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


# ----------------------------------------------------------------------------------------------------------------------
# Name tables: our parameter paths -> checkpoint weight names.


def _t5_sources(spec: T5Spec) -> dict[tuple[str, ...], _Source]:
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


def _clip_sources(spec: CLIPTextSpec) -> dict[tuple[str, ...], _Source]:
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
# The loaded encoder.


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
    check_ids(jnp.asarray(ids), jnp.asarray(mask), self.spec.vocab_size,
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


def read_text_spec(directory: str | pathlib.Path, *, dtype: str = "float32") -> T5Spec | CLIPTextSpec:
  """The encoder's spec from a checkpoint directory's `config.json` alone (no weight is read), fully checked.

  Raises FileNotFoundError for a missing directory or config.json, ValueError for an unsupported model_type, dtype or
  config field, so a run's config can be validated before anything is loaded.
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
  try:
    config = json.loads(config_path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{config_path} is not valid JSON: {e}") from e
  model_type = config.get("model_type") if isinstance(config, dict) else None
  if model_type not in MODEL_TYPES:
    raise ValueError(f"{config_path}: model_type {model_type!r} is not a supported text encoder; allowed: "
                     f"{MODEL_TYPES}")
  if model_type == "clip":  # A full CLIP config keeps the text tower's fields under text_config.
    return CLIPTextSpec.from_hf_config(config.get("text_config") or {}, dtype=dtype)
  if model_type == "clip_text_model":
    return CLIPTextSpec.from_hf_config(config, dtype=dtype)
  return T5Spec.from_hf_config(config, dtype=dtype)


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
  spec = read_text_spec(directory, dtype=dtype)  # The config is checked completely before any weight is read.
  checkpoint = _Checkpoint(directory)
  if isinstance(spec, CLIPTextSpec):
    module = _load_module(lambda: CLIPTextEncoder(spec, rngs=nnx.Rngs(0)), _clip_sources(spec), checkpoint,
                          _clip_names(checkpoint.names()), _CLIP_IGNORED, f"a CLIP text encoder {spec}")
  else:
    module = _load_module(lambda: T5Encoder(spec, rngs=nnx.Rngs(0)), _t5_sources(spec), checkpoint,
                          _t5_names(checkpoint.names()), _T5_IGNORED, f"a {spec.model_type} encoder {spec}")
  tokenizer = load_hf_tokenizer(tokenizer_directory if tokenizer_directory else directory)
  return TextEncoder(module, spec, tokenizer, directory=str(directory))
