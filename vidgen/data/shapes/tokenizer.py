"""The word tokenizer of the embedded shapes captions `"a {color} {shape} moving {direction}"`."""

from __future__ import annotations

from typing import Sequence

from vidgen.data.shapes.dataset import COLOR_NAMES, DIRECTION_NAMES, SHAPES
from vidgen.models.text import WordTokenizer


def shapes_tokenizer(max_length: int = 8, extra_colors: Sequence[str] = ()) -> WordTokenizer:
  """A `WordTokenizer` over every word the shapes captions can hold (colors, shapes, directions, "a", "moving").

  Vocabulary order is fixed (caption words, then colors, shapes and directions in the dataset's order), so ids are
  stable across runs and machines. `extra_colors` (the names of a dataset's extra colors) come last, so every other
  word keeps its id and a model trained without them reads the extended vocabulary's old ids unchanged.
  """
  return WordTokenizer(("a", "moving", *COLOR_NAMES, *SHAPES, *DIRECTION_NAMES, *extra_colors), max_length)
