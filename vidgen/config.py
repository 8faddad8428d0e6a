"""Config-file helpers shared by every `experiments/*.py`: argument parsing and validation errors.

Experiment files define `get_config(arg: str | None)`. The argument is a comma-separated list of `key=value` pairs and
bare flags, e.g. `"variant=XL/2,runlocal"` (big_vision convention). `parse_arg` turns it into a ConfigDict with typed
defaults so a typo in a key fails loudly instead of being ignored.
"""

from __future__ import annotations

from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config field holds a value that the run cannot use. The message names the field and the allowed values."""


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
