"""The embedded moving shapes as a data source (`config.data.name = "shapes"`; see vidgen.data.sources)."""

from __future__ import annotations

from typing import Any, Mapping

from vidgen.config import require
from vidgen.data.clips import ClipIterator
from vidgen.data.shapes import evaluation
from vidgen.data.shapes.dataset import (
    CLASS_FACTORS,
    GEOMETRY_FIELDS,
    NUM_CLASSES,
    ShapesDataset,
    check_extra_colors,
    class_id,
    parse_combination,
)
from vidgen.data.shapes.tokenizer import shapes_tokenizer
from vidgen.errors import ConfigError, InputError
from vidgen.models.text import WordTokenizer


FIXED_TRAIN_CLIPS_START = 10_000_000


class ShapesSource:
  """Clips, captions and classes of the embedded data, from a `config.data` block."""

  num_classes = NUM_CLASSES
  class_factors = CLASS_FACTORS

  def __init__(self, data: Mapping[str, Any]):
    for field in ("num_frames", "height", "width", "held_out", "seed"):
      require(field in data, f"data.{field}", "is missing (the shapes source needs num_frames, height, width, "
                                              "held_out and seed)")
    self.data = data
    try:
      self.extra_colors = check_extra_colors(data.get("extra_colors", None) or {})
    except ValueError as e:
      raise ConfigError(f"config.data.extra_colors: {e}") from None

  def dataset(self, split: str, **overrides: Any) -> ShapesDataset:
    return ShapesDataset.from_config(self.data, split, **overrides)

  def check(self) -> None:
    self.dataset("train")  # raises on a geometry or held-out list that leaves nothing to draw

  def iterator(self, split: str, *, global_batch: int, shard_index: int = 0, shard_count: int = 1,
               **overrides: Any) -> ClipIterator:
    return ClipIterator(self.dataset(split, **overrides), global_batch=global_batch, process_index=shard_index,
                        process_count=shard_count)

  def clips(self, split: str, count: int, **overrides: Any) -> dict:
    # Fixed training clips (e.g. for the VAE's latent statistics) come from far along the endless stream, not from
    # the first training batches; other splits start at clip 0.
    start = FIXED_TRAIN_CLIPS_START if split == "train" else 0
    return self.dataset(split, **overrides).batch(start, count)

  def fingerprint(self) -> dict:
    d = self.data
    return {"name": "shapes", "split": "train", "num_frames": d["num_frames"], "height": d["height"],
            "width": d["width"], "held_out": list(d["held_out"]), "seed": d["seed"],
            **{name: d[name] for name in GEOMETRY_FIELDS if name in d},
            # Only where set, so that the fingerprints of caches built before extra colors existed stay the same.
            **({"extra_colors": {k: list(v) for k, v in self.extra_colors.items()},
                "extra_color_fraction": d.get("extra_color_fraction", None)} if self.extra_colors else {})}

  def caption_tokenizer(self, max_length: int) -> WordTokenizer:
    return shapes_tokenizer(max_length, tuple(self.extra_colors))

  def class_of(self, prompt: str) -> int:
    try:
      return class_id(*parse_combination(prompt))
    except ValueError as e:
      raise InputError(f"prompt {prompt!r}: this class-conditional model takes captions of the embedded data "
                       f"('a {{color}} {{shape}} moving {{direction}}'): {e}") from None

  def validate_eval(self, config) -> None:
    evaluation.validate_eval_config(config)

  def evaluate(self, pipe, config, workdir: str | None) -> dict[str, float]:
    """Prompt-following of a DiT run on every combination, and VAE PSNR (workdir/eval.json); flat metrics."""
    return evaluation.summary(evaluation.evaluate(pipe, config, workdir))
