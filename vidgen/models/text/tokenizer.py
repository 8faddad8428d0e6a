"""Tokenizers: the closed-vocabulary `WordTokenizer` of the small encoder, and loading a checkpoint's Hugging Face one.

`WordTokenizer` serves data with a small fixed vocabulary (e.g. the embedded shapes captions, `vidgen.data.shapes`);
a pretrained encoder comes with its own tokenizer, loaded by `load_hf_tokenizer` with `transformers.AutoTokenizer`.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from vidgen.errors import InputError


class WordTokenizer:
  """Closed-vocabulary, whitespace word tokenizer. id 0 = padding; ids 1..len(vocab) = words in vocab order.

  Prompts are lower-cased and split on whitespace; every word must be in the vocabulary (there is no "unknown" id: a
  word the encoder was never trained on would silently condition on nothing, so it is an error instead). A prompt that
  cannot be tokenized raises `vidgen.errors.InputError`; a bad vocabulary raises ValueError.
  """

  PAD_ID = 0

  def __init__(self, vocab: Sequence[str], max_length: int):
    if isinstance(vocab, str) or not isinstance(vocab, Sequence):
      raise ValueError(f"vocab must be a sequence of words, got {vocab!r}")
    words = tuple(vocab)
    if not words:
      raise ValueError("vocab must hold at least one word, got an empty sequence")
    for w in words:
      if not isinstance(w, str) or not w or w != w.lower() or len(w.split()) != 1 or w.strip() != w:
        raise ValueError(f"vocab word {w!r} is not allowed: words must be non-empty lower-case strings without "
                         f"whitespace")
    duplicates = sorted({w for w in words if words.count(w) > 1})
    if duplicates:
      raise ValueError(f"vocab words must be unique; repeated: {duplicates}")
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
      raise ValueError(f"max_length must be an integer >= 1, got {max_length!r}")
    self.vocab: tuple[str, ...] = words
    self.max_length: int = int(max_length)
    self._ids = {w: i + 1 for i, w in enumerate(words)}

  @property
  def vocab_size(self) -> int:
    """Size of the id space, padding included (what `SmallTextEncoder`'s `vocab_size` must be)."""
    return len(self.vocab) + 1

  def __repr__(self) -> str:
    return f"WordTokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"

  def __eq__(self, other: object) -> bool:
    return isinstance(other, WordTokenizer) and (self.vocab, self.max_length) == (other.vocab, other.max_length)

  def __hash__(self) -> int:
    return hash((self.vocab, self.max_length))

  def encode_one(self, prompt: str) -> list[int]:
    """One prompt -> its word ids (no padding). InputError for anything `__call__` refuses."""
    if not isinstance(prompt, str):
      raise InputError(f"prompt must be a string, got {type(prompt).__name__} {prompt!r}")
    words = prompt.lower().split()
    if not words:
      raise InputError(f"prompt {prompt!r} is empty; a prompt needs 1 to {self.max_length} words")
    if len(words) > self.max_length:
      raise InputError(f"prompt {prompt!r} has {len(words)} words; at most max_length={self.max_length} are allowed")
    for w in words:
      if w not in self._ids:
        raise InputError(f"prompt {prompt!r}: word {w!r} is not in the vocabulary; allowed words: {list(self.vocab)}")
    return [self._ids[w] for w in words]

  def __call__(self, prompts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Prompts -> (ids int32 `[B, max_length]`, mask bool `[B, max_length]`, True = real token); a str gives B = 1."""
    if isinstance(prompts, str):
      prompts = [prompts]
    elif not isinstance(prompts, Sequence) and not isinstance(prompts, np.ndarray):
      raise InputError(f"prompts must be a string or a sequence of strings, got {type(prompts).__name__} {prompts!r}")
    prompts = list(prompts)
    ids = np.zeros((len(prompts), self.max_length), np.int32)
    for row, prompt in enumerate(prompts):
      tokens = self.encode_one(prompt)
      ids[row, :len(tokens)] = tokens
    return ids, ids != self.PAD_ID

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Word ids of one prompt -> the (lower-cased) prompt; padding ids are skipped."""
    words = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if not 0 <= i <= len(self.vocab):
        raise InputError(f"token id {i} is out of range; allowed: 0 (padding) to {len(self.vocab)}")
      if i != self.PAD_ID:
        words.append(self.vocab[i - 1])
    return " ".join(words)

  def to_dict(self) -> dict[str, Any]:
    """JSON-serializable description (stored in a run's workdir so sampling uses the exact training vocabulary)."""
    return {"kind": "word", "vocab": list(self.vocab), "max_length": self.max_length}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "WordTokenizer":
    if not isinstance(d, Mapping) or "vocab" not in d or "max_length" not in d:
      raise ValueError(f"a WordTokenizer dict needs keys 'vocab' and 'max_length', got {d!r}")
    if d.get("kind", "word") != "word":
      raise ValueError(f"tokenizer dict has kind {d['kind']!r}; allowed: 'word'")
    return cls(tuple(d["vocab"]), int(d["max_length"]))

  def to_json(self) -> str:
    return json.dumps(self.to_dict())

  @classmethod
  def from_json(cls, text: str) -> "WordTokenizer":
    return cls.from_dict(json.loads(text))


def load_hf_tokenizer(directory: str | pathlib.Path):
  """The tokenizer saved in a Hugging Face checkpoint directory (`transformers.AutoTokenizer`, imported on use)."""
  import transformers  # pylint: disable=g-import-not-at-top

  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(f"tokenizer directory {directory} does not exist")
  try:
    return transformers.AutoTokenizer.from_pretrained(str(directory))
  except (OSError, ValueError) as e:
    raise FileNotFoundError(
        f"no tokenizer could be loaded from {directory} ({e}); expected the checkpoint's tokenizer files there "
        f"(tokenizer.json + tokenizer_config.json, or spiece.model for T5, or vocab.json + merges.txt for CLIP); "
        f"pass tokenizer_directory= if they live elsewhere") from e
