"""Config-file helpers shared by every `experiments/*.py`: argument parsing and validation errors.

Experiment files define `get_config(arg: str | None)`. The argument is a comma-separated list of `key=value` pairs and
bare flags, e.g. `"variant=XL/2,runlocal"` (big_vision convention). `parse_arg` turns it into a ConfigDict with typed
defaults so a typo in a key fails loudly instead of being ignored.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from vidgen.errors import ConfigError, RunNotFoundError


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses `"k1=v1,flag,k2=v2"` against `defaults` (which fix the allowed keys and their types).

  A bare `flag` sets a boolean default to True. Values are cast to the type of the default.
  """
  out = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return out
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f"config argument {key!r} is not known; allowed: {sorted(defaults)}")
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise ConfigError(f"config argument {key!r} needs a value ({key}=...)")
      out[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
        raise ConfigError(f"config argument {key!r} must be a boolean, got {value!r}")
      out[key] = value.lower() in ("1", "true", "yes")
    elif default is None:
      out[key] = value
    else:
      try:
        out[key] = type(default)(value)
      except ValueError as e:
        raise ConfigError(f"config argument {key!r} must be {type(default).__name__}, got {value!r}") from e
  return out


def require(condition: bool, field: str, message: str) -> None:
  """Raises ConfigError naming `field` unless `condition` holds."""
  if not condition:
    raise ConfigError(f"config.{field}: {message}")


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in `workdir/config.json` (written by `vidgen train` when the run starts)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise RunNotFoundError(f"{workdir}: not a vidgen run directory (no config.json); train one first with "
                            "`vidgen train --config experiments/NAME.py --workdir DIR`")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of an experiment file, e.g. to embed one run's config as a stage of another."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(f"vidgen_config_{os.path.basename(path)[:-3]}", path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such experiment config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
