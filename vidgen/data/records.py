"""The records of a `"files"` data source: a directory of media files, or a manifest listing them.

  directory   every video / image below it (hidden files skipped, sorted paths); a caption is read from the sidecar
              `NAME.txt` next to `NAME.mp4` when there is one. When every file lies in a first-level sub-folder
              (ImageNet layout: `DIR/CLASS/file.jpg`), the folder names are the classes, sorted.
  .csv/.jsonl a manifest with a `path` per row (relative paths are relative to the manifest) and optional `caption`,
              `start` / `end` (seconds), `fps` and `label` (an integer id or a class name; names are sorted into ids).

Rows that cannot be used (no path, a file that does not exist, a number that is not one) are reported in
`Catalog.problems` with the place and the reason; a listing with no usable record is a ConfigError naming the path.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Any

from vidgen.data.decode import MEDIA_EXTENSIONS, is_media
from vidgen.errors import ConfigError

MANIFEST_EXTENSIONS = (".csv", ".jsonl")


@dataclasses.dataclass(frozen=True)
class Record:
  path: str
  caption: str = ""
  label: int = -1  # -1: no class
  start: float | None = None
  end: float | None = None
  fps: float | None = None


@dataclasses.dataclass(frozen=True)
class Catalog:
  records: tuple[Record, ...]
  class_names: tuple[str, ...]  # () when records have no classes, or integer labels only
  num_classes: int
  problems: tuple[tuple[str, str], ...]  # (where, why) for each listing entry that was left out


def scan(path: str, *, field: str = "data.path") -> Catalog:
  """The records of a directory or manifest; ConfigError (naming `config.<field>`) when there are none."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(path):
    catalog = _scan_directory(path)
  elif os.path.isfile(path) and os.path.splitext(path)[1].lower() in MANIFEST_EXTENSIONS:
    catalog = _read_manifest(path)
  elif os.path.exists(path):
    raise ConfigError(f"config.{field}: {path} is neither a directory nor a manifest "
                      f"({', '.join(MANIFEST_EXTENSIONS)})")
  else:
    raise ConfigError(f"config.{field}: {path} does not exist")
  if not catalog.records:
    reasons = "; ".join(f"{where}: {why}" for where, why in catalog.problems[:5])
    raise ConfigError(f"config.{field}: {path} holds no usable video or image ({', '.join(MEDIA_EXTENSIONS)})"
                      + (f"; left out: {reasons}" if reasons else ""))
  return catalog


def _scan_directory(root: str) -> Catalog:
  files = []
  for directory, subdirs, names in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    files += [os.path.join(directory, n) for n in sorted(names) if not n.startswith(".") and is_media(n)]
  relative = [os.path.relpath(f, root) for f in files]
  by_class = bool(relative) and all(r.count(os.sep) >= 1 for r in relative)
  class_names = tuple(sorted({r.split(os.sep)[0] for r in relative})) if by_class else ()
  records = []
  for file, rel in zip(files, relative):
    label = class_names.index(rel.split(os.sep)[0]) if by_class else -1
    records.append(Record(path=file, caption=_sidecar_caption(file), label=label))
  return Catalog(tuple(records), class_names, len(class_names), ())


def _sidecar_caption(file: str) -> str:
  sidecar = os.path.splitext(file)[0] + ".txt"
  if not os.path.isfile(sidecar):
    return ""
  with open(sidecar, encoding="utf-8", errors="replace") as f:
    return " ".join(f.read().split())


def _manifest_rows(path: str) -> list[tuple[str, dict[str, Any] | None, str]]:
  """(where, row or None, why not) for each row of a .csv or .jsonl manifest."""
  rows = []
  with open(path, encoding="utf-8", errors="replace", newline="") as f:
    if path.lower().endswith(".csv"):
      for i, row in enumerate(csv.DictReader(f), start=2):  # line 1 is the header
        rows.append((f"{path}:{i}", {k.strip(): v for k, v in row.items() if k}, ""))
    else:
      for i, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          rows.append((f"{path}:{i}", None, f"not JSON ({e.msg})"))
          continue
        rows.append((f"{path}:{i}", row if isinstance(row, dict) else None, "" if isinstance(row, dict) else
                     "not a JSON object"))
  return rows


def _number(row: dict, key: str) -> float | None:
  value = row.get(key)
  if value is None or value == "":
    return None
  number = float(value)  # ValueError for text
  if not math.isfinite(number) or number < 0:
    raise ValueError(f"{key}={value!r} must be a finite number >= 0")
  return number


def _read_manifest(path: str) -> Catalog:
  base = os.path.dirname(path)
  kept, problems = [], []
  for where, row, why in _manifest_rows(path):
    if row is None:
      problems.append((where, why))
      continue
    file = str(row.get("path") or "").strip()
    if not file:
      problems.append((where, "no path"))
      continue
    file = os.path.normpath(os.path.join(base, os.path.expanduser(file)))
    if not os.path.isfile(file):
      problems.append((where, f"{file}: file not found"))
      continue
    try:
      start, end, fps = _number(row, "start"), _number(row, "end"), _number(row, "fps")
    except ValueError as e:
      problems.append((where, str(e)))
      continue
    if start is not None and end is not None and end <= start:
      problems.append((where, f"end={end:g} is not after start={start:g}"))
      continue
    label = row.get("label")
    kept.append((Record(path=file, caption=" ".join(str(row.get("caption") or "").split()), start=start, end=end,
                        fps=fps or None), label))
  names = sorted({str(label) for _, label in kept if label not in (None, "") and not _is_int(label)})
  ints = [int(label) for _, label in kept if label not in (None, "") and _is_int(label)]
  if names and ints:
    raise ConfigError(f"config.data.path: {path} mixes integer labels and class names in its label column")
  records = tuple(dataclasses.replace(r, label=-1 if label in (None, "") else
                                      (int(label) if _is_int(label) else names.index(str(label))))
                  for r, label in kept)
  num_classes = len(names) if names else (max(ints) + 1 if ints else 0)
  return Catalog(records, tuple(names), num_classes, tuple(problems))


def _is_int(value: Any) -> bool:
  if isinstance(value, bool):
    return False
  if isinstance(value, int):
    return value >= 0
  return isinstance(value, str) and value.strip().isdigit()


__all__ = ["Catalog", "MANIFEST_EXTENSIONS", "Record", "scan"]
