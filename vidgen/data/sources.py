"""The dataset a run reads, chosen by `config.data.name`, and what generic code may ask of it.

Trainers, the pipeline and `vidgen eval` never import a particular dataset: they ask the run's source for a stream of
training batches, fixed evaluation clips, the caption vocabulary, the classes and how a prompt maps to one, and the
dataset's own evaluation. Sources:
  "shapes"  the embedded moving shapes (procedural, no download; the default)      vidgen.data.shapes
  "files"   a directory of videos / images or a .csv / .jsonl manifest              vidgen.data.files
  "tfds"    a TensorFlow Datasets video or image dataset                             vidgen.data.tfds
An unknown name is refused when the config is validated; `check()` reads what a source needs to refuse unusable data
before anything compiles.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterator, Mapping, Protocol

import numpy as np

from vidgen.config import require


class BatchIterator(Protocol):
  """Infinite batches {"video": uint8 [n, T, H, W, 3], "caption": [n], "label": int32 [n]} with a JSON state."""

  def __next__(self) -> dict[str, np.ndarray]: ...

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...

  def get_state(self) -> dict[str, Any]: ...

  def set_state(self, state: dict[str, Any]) -> None: ...


class DataSource(Protocol):
  """What a dataset offers to generic code (see the module docstring)."""

  num_classes: int  # classes for class-conditional training (0: none)
  class_factors: tuple[int, ...]  # the mixed-radix digits of a class id when a class is made of attributes, or ()

  def check(self) -> None:
    """Reads the listing / metadata now; raises ConfigError naming the field when there is nothing usable."""

  def iterator(self, split: str, *, global_batch: int, shard_index: int = 0, shard_count: int = 1,
               **overrides: Any) -> BatchIterator:
    """Batches of shard `shard_index` of `shard_count` (global_batch // shard_count clips each) of a split
    ("train", "validation", ...); `overrides` replace config.data fields (num_frames, crop_size, ...)."""

  def clips(self, split: str, count: int, **overrides: Any) -> dict[str, np.ndarray]:
    """`count` fixed clips of a split (evaluation): the same on every call and every process."""

  def fingerprint(self) -> dict:
    """JSON description of everything that decides which clips the training stream yields (for the latent cache)."""

  def caption_tokenizer(self, max_length: int) -> Any:
    """A word-level tokenizer (vidgen.models.text.WordTokenizer) over every word this source's captions hold."""

  def class_of(self, prompt: str) -> int:
    """The class id a prompt names; raises vidgen.errors.InputError for a prompt that names none."""

  def validate_eval(self, config: Any) -> None:
    """Checks `config.eval` for `evaluate` (called with the run's other checks, before anything trains)."""

  def evaluate(self, pipe: Any, config: Any, workdir: str | None) -> dict[str, float]:
    """The source's evaluation of a DiT run through its VideoPipeline (details to workdir); flat scalar metrics."""


# Each source is imported only when named: it pulls in its own readers (grain, PyAV, tensorflow_datasets).
SOURCES = {"shapes": "vidgen.data.shapes.source:ShapesSource", "files": "vidgen.data.files:FilesSource",
           "tfds": "vidgen.data.tfds:TFDSSource"}


def get_source(data: Mapping[str, Any]) -> DataSource:
  """The source `config.data` names (validating the name and the source's own fields)."""
  name = data.get("name")
  require(name in SOURCES, "data.name", f"unknown data source {name!r}; allowed: {list(SOURCES)}")
  module, cls = SOURCES[name].split(":")
  return getattr(importlib.import_module(module), cls)(data)
