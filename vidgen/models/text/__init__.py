"""Text encoders for text-to-video: a small one trained from scratch, and pretrained T5 / CLIP loaded from checkpoints.

Two ways to turn a prompt into the `[B, L, D]` tokens (+ `[B, L]` padding mask) that the DiT cross-attends to:

  * `WordTokenizer` + `SmallTextEncoder` (`tokenizer.py`, `small.py`): a closed-vocabulary word tokenizer and a small
    bidirectional transformer, trained jointly with the DiT (the embedded shapes data's tokenizer is
    `vidgen.data.shapes.shapes_tokenizer`).
  * `load_text_encoder(directory)` (`hf.py`): a Hugging Face checkpoint (T5 / UMT5 encoder, CLIP text tower) converted
    on load into our own Flax NNX modules (`T5Encoder` in `t5.py`, `CLIPTextEncoder` in `clip.py`), bundled with the
    checkpoint's own tokenizer as a `TextEncoder`.

A run picks one with `config.text.encoder` ("small" or "hf", `frozen.py`): the small encoder trains with the DiT, a
pretrained one stays frozen and its caption embeddings are computed once (`encode_captions`).

Every encoder honours the padding mask: outputs at real tokens do not depend on how much padding follows them or on
the padding ids, so a batch can be padded to any fixed length (static shapes) without changing its conditioning.
"""

from vidgen.models.text.clip import CLIPBlock, CLIPTextEncoder, CLIPTextSpec
from vidgen.models.text.common import ACTIVATIONS
from vidgen.models.text.frozen import (
    TEXT_ENCODERS,
    encode_captions,
    hf_text_config,
    load_frozen_text_encoder,
    text_encoder_kind,
    text_width,
    validate_text_config,
)
from vidgen.models.text.hf import MODEL_TYPES, WEIGHT_FILES, TextEncoder, load_text_encoder, read_text_spec
from vidgen.models.text.small import SmallTextEncoder, small_text_config, validate_small_text_config
from vidgen.models.text.t5 import T5Block, T5Encoder, T5Spec, t5_relative_buckets
from vidgen.models.text.tokenizer import WordTokenizer, load_hf_tokenizer

__all__ = ["ACTIVATIONS", "CLIPBlock", "CLIPTextEncoder", "CLIPTextSpec", "MODEL_TYPES", "SmallTextEncoder", "T5Block",
           "T5Encoder", "T5Spec", "TEXT_ENCODERS", "TextEncoder", "WEIGHT_FILES", "WordTokenizer", "encode_captions",
           "hf_text_config", "load_frozen_text_encoder", "load_hf_tokenizer", "load_text_encoder", "read_text_spec",
           "small_text_config", "t5_relative_buckets", "text_encoder_kind", "text_width", "validate_small_text_config",
           "validate_text_config"]
