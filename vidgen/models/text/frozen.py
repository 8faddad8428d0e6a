"""Which text encoder a text-conditioned run uses (`config.text.encoder`), and running the frozen pretrained one.

  config.text.encoder = "small"   (the default when absent): a `SmallTextEncoder` trained with the DiT; the rest of
                                  config.text is `small_text_config(...)`.
  config.text.encoder = "hf"      a Hugging Face T5 / UMT5 / CLIP checkpoint, frozen: `hf_text_config(path, ...)`.
                                  It is not among the run's trained networks; captions are encoded once (into the
                                  latent cache, by `encode_captions`) and the DiT cross-attends to them.

Either way `config.dit.text_dim` must equal `text_width(config.text)`. Validation reads only the checkpoint's
config.json, so a bad run config fails in seconds, before any weight is loaded.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from vidgen.config import require
from vidgen.errors import ConfigError
from vidgen.layers.precision import DTYPES
from vidgen.models.text.clip import CLIPTextSpec
from vidgen.models.text.hf import TextEncoder, load_text_encoder, read_text_spec
from vidgen.models.text.small import validate_small_text_config
from vidgen.models.text.t5 import T5Spec

TEXT_ENCODERS = ("small", "hf")
HF_FIELDS = ("encoder", "path", "max_length", "dtype")


def hf_text_config(path: str, max_length: int, dtype: str = "float32") -> ml_collections.ConfigDict:
  """`config.text` of a run conditioned on a frozen Hugging Face encoder: checkpoint dir, tokens per caption, dtype."""
  return ml_collections.ConfigDict(dict(encoder="hf", path=path, max_length=max_length, dtype=dtype))


def text_encoder_kind(text_config: Mapping[str, Any]) -> str:
  """"small" (trained with the DiT; the default) or "hf" (frozen pretrained checkpoint)."""
  return text_config.get("encoder", "small")


def validate_text_config(text_config: Mapping[str, Any], *, prefix: str = "text") -> None:
  """ConfigError naming `config.<prefix>.<field>` for any value the run cannot use; reads no weights."""
  kind = text_encoder_kind(text_config)
  require(kind in TEXT_ENCODERS, f"{prefix}.encoder", f"must be one of {TEXT_ENCODERS}, got {kind!r}")
  if kind == "small":
    _validate_small(text_config, prefix)
    return
  unknown = sorted(set(text_config.keys()) - set(HF_FIELDS))
  require(not unknown, prefix, f"fields {unknown} are not used by encoder 'hf'; allowed: {list(HF_FIELDS)}")
  require(text_config.get("dtype", "float32") in DTYPES, f"{prefix}.dtype",
          f"must be one of {DTYPES}, got {text_config.get('dtype')!r}")
  spec = _hf_spec(text_config, prefix)
  length = text_config.get("max_length")
  require(not isinstance(length, bool) and isinstance(length, (int, np.integer)) and length >= 1,
          f"{prefix}.max_length", f"must be an integer >= 1 (tokens per caption), got {length!r}")
  if isinstance(spec, CLIPTextSpec):
    require(length <= spec.max_length, f"{prefix}.max_length",
            f"{length} exceeds the CLIP checkpoint's max_position_embeddings {spec.max_length}")


def text_width(text_config: Mapping[str, Any], *, prefix: str = "text") -> int:
  """Width D of the caption tokens the DiT cross-attends to (what `config.dit.text_dim` must be)."""
  if text_encoder_kind(text_config) == "hf":
    return _hf_spec(text_config, prefix).width
  return int(text_config["width"])


def load_frozen_text_encoder(text_config: Mapping[str, Any]) -> TextEncoder:
  """The "hf" encoder of `config.text`, weights loaded in `config.text.dtype`."""
  require(text_encoder_kind(text_config) == "hf", "text.encoder",
          f"a frozen encoder needs encoder 'hf', got {text_encoder_kind(text_config)!r}")
  return load_text_encoder(text_config["path"], dtype=text_config.get("dtype", "float32"))


def encode_captions(encoder: TextEncoder, captions: Sequence[str], max_length: int,
                    *, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """captions -> (hidden float32 `[n, max_length, D]`, mask bool `[n, max_length]`), as host arrays.

  Runs `batch_size` captions at a time; the last batch is padded with copies of the last caption, so every call
  runs one compiled shape whatever n is. Row i equals `encoder.encode([captions[i]], max_length)`.
  """
  captions = list(captions)
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
  hidden = np.zeros((len(captions), max_length, encoder.width), np.float32)
  mask = np.zeros((len(captions), max_length), bool)
  for start in range(0, len(captions), batch_size):
    chunk = captions[start:start + batch_size]
    n = len(chunk)
    h, m = encoder.encode(chunk + chunk[-1:] * (batch_size - n), max_length)
    hidden[start:start + n], mask[start:start + n] = np.asarray(h)[:n], np.asarray(m)[:n]
  return hidden, mask


def _validate_small(text_config: Mapping[str, Any], prefix: str) -> None:
  """`validate_small_text_config`, its errors re-raised as ConfigError naming `config.<prefix>.<field>`."""
  try:
    validate_small_text_config(text_config)
  except KeyError as e:  # ConfigDict quotes the key in its KeyError, a dict does not.
    field = str(e.args[0]).strip(chr(39))
    raise ConfigError(f"config.{prefix}.{field}: is missing (the small text encoder needs the fields of "
                      "small_text_config)") from None
  except ValueError as e:
    field = re.search(r"field '(\w+)'", str(e))
    raise ConfigError(f"config.{prefix}{'.' + field.group(1) if field else ''}: {e}") from None


def _hf_spec(text_config: Mapping[str, Any], prefix: str) -> T5Spec | CLIPTextSpec:
  """The checkpoint's spec from its config.json, any problem a ConfigError naming `config.<prefix>.path`."""
  path = text_config.get("path")
  require(isinstance(path, (str, pathlib.Path)) and str(path), f"{prefix}.path",
          f"must be a Hugging Face checkpoint directory (config.json + weights + tokenizer), got {path!r}")
  try:
    return read_text_spec(path, dtype=text_config.get("dtype", "float32"))
  except (OSError, ValueError, TypeError) as e:
    raise ConfigError(f"config.{prefix}.path = {str(path)!r}: {e}") from None
