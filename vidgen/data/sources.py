"""The dataset a run reads, chosen by `config.data.name`, and what generic code may ask of it.

Trainers, the pipeline and `vidgen eval` never import a particular dataset: they ask the run's source for clips, the
caption vocabulary, the classes and how a prompt maps to one, and the dataset's own evaluation. The embedded moving
shapes (`"shapes"`) are the one source today; an unknown name is refused when the config is validated.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol

from vidgen.config import require
from vidgen.data.clips import ClipDataset
from vidgen.data.shapes.source import ShapesSource


class DataSource(Protocol):
  """What a dataset offers to generic code (see the module docstring)."""

  num_classes: int  # classes for class-conditional training (0: none)
  class_factors: tuple[int, ...]  # the mixed-radix digits of a class id when a class is made of attributes, or ()

  def dataset(self, split: str, **overrides: Any) -> ClipDataset:
    """A split ("train", "validation", ...); `overrides` replace config.data fields (num_frames, crop_size, ...)."""

  def fingerprint(self) -> dict:
    """JSON description of everything that decides which clips `dataset("train")` yields (for the latent cache)."""

  def caption_tokenizer(self, max_length: int) -> Any:
    """A word-level tokenizer (vidgen.models.text.WordTokenizer) over every word this source's captions hold."""

  def class_of(self, prompt: str) -> int:
    """The class id a prompt names; raises vidgen.errors.InputError for a prompt that names none."""

  def validate_eval(self, config: Any) -> None:
    """Checks `config.eval` for `evaluate` (called with the run's other checks, before anything trains)."""

  def evaluate(self, pipe: Any, config: Any, workdir: str | None) -> dict[str, float]:
    """The source's evaluation of a DiT run through its VideoPipeline (details to workdir); flat scalar metrics."""


SOURCES = {"shapes": ShapesSource}


def get_source(data: Mapping[str, Any]) -> DataSource:
  """The source `config.data` names (validating the name and the source's own fields)."""
  name = data.get("name")
  require(name in SOURCES, "data.name", f"unknown data source {name!r}; allowed: {sorted(SOURCES)}")
  return SOURCES[name](data)
