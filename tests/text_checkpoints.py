"""Tiny Hugging Face text-encoder checkpoints (T5 family, CLIP) and word-level tokenizers, built locally for tests.

Random weights from PyTorch `transformers` saved with `save_pretrained`, so no hub access is needed. `make_t5` /
`make_clip` also return the PyTorch model's forward pass, the reference that parity tests compare against.
"""

import numpy as np

WORDS = ["a", "red", "blue", "cat", "dog", "sat", "on", "the", "mat", "under", "tree", "big"]
# Every word of the embedded shapes captions ("a {color} {shape} moving {direction}"), so they encode without <unk>.
SHAPES_WORDS = ["moving", "green", "yellow", "magenta", "cyan", "white", "circle", "square", "triangle", "left",
                "right", "up", "down"]
T5_SPECIALS = dict(specials=["<pad>", "</s>", "<unk>"], template="$A </s>", pad="<pad>", eos="</s>", unk="<unk>")


def save_word_tokenizer(directory, *, specials, template, pad, eos, unk, eos_id=None, bos=None, words=WORDS):
  """A tiny WordLevel tokenizer saved as tokenizer.json + tokenizer_config.json (what AutoTokenizer reads)."""
  import transformers
  from tokenizers import Tokenizer, models, pre_tokenizers, processors

  vocab = {tok: i for i, tok in enumerate(specials)}
  vocab.update({w: len(specials) + i for i, w in enumerate(words)})
  if eos_id is not None:  # Put EOS at a chosen id (legacy CLIP configs need it to be the largest id).
    vocab[eos] = eos_id
  tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[(t, vocab[t]) for t in specials
                                                                                      if t in template])
  kwargs = dict(pad_token=pad, eos_token=eos, unk_token=unk)
  if bos:
    kwargs["bos_token"] = bos
  transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs).save_pretrained(directory)
  return vocab


def as_torch_bin(model, directory, *, prefix=""):
  """Replaces model.safetensors by a legacy pytorch_model.bin (transformers 5 only writes safetensors)."""
  import torch

  (directory / "model.safetensors").unlink()
  torch.save({prefix + k: v for k, v in model.state_dict().items()}, directory / "pytorch_model.bin")


def make_t5(directory, kind, fmt):
  """A tiny T5-family checkpoint in `directory`: kind "t5:{feed_forward_proj}", "umt5", "mt5" or "t5-full" (encoder-
  decoder); fmt "safetensors" or "bin". Returns the PyTorch encoder as `(ids, mask) -> hidden`."""
  import torch
  import transformers

  torch.manual_seed(0)
  common = dict(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                relative_attention_num_buckets=8, relative_attention_max_distance=16)
  if kind == "umt5":
    model = transformers.UMT5EncoderModel(transformers.UMT5Config(feed_forward_proj="gated-gelu", **common))
  elif kind == "mt5":
    model = transformers.MT5EncoderModel(transformers.MT5Config(feed_forward_proj="gated-gelu", **common))
  elif kind == "t5-full":
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(feed_forward_proj="relu", **common))
  else:
    model = transformers.T5EncoderModel(transformers.T5Config(feed_forward_proj=kind.split(":")[1], **common))
  model.eval().save_pretrained(directory)
  if fmt == "bin":
    as_torch_bin(model, directory)
  save_word_tokenizer(directory, **T5_SPECIALS)
  encoder = model.get_encoder() if kind == "t5-full" else model

  def reference(ids, mask):
    with torch.no_grad():
      return encoder(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64))
                     ).last_hidden_state.numpy()

  return reference


def save_tiny_t5(directory) -> int:
  """A tiny random T5 encoder (safetensors) whose tokenizer knows every shapes-caption word; returns its width."""
  import torch
  import transformers

  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                 feed_forward_proj="gated-gelu")
  transformers.T5EncoderModel(config).eval().save_pretrained(directory)
  save_word_tokenizer(directory, **T5_SPECIALS, words=WORDS + SHAPES_WORDS)
  return config.d_model


def make_clip(directory, kind, fmt):
  """A tiny CLIP checkpoint in `directory`: kind "clip:{act}[:legacy]" (CLIPTextModel) or "clip-full:{act}" (CLIPModel);
  fmt "safetensors" or "bin". Returns the PyTorch text tower as `(ids, mask) -> (hidden, pooled)`."""
  import torch
  import transformers

  torch.manual_seed(0)
  act, legacy = kind.split(":")[1], kind.endswith("legacy")
  specials = ["<|startoftext|>", "<|endoftext|>", "<unk>", "<pad>"]
  # New-style configs: EOS is id 1 and also the pad token (as in openai/clip), so pooling must take the first EOS.
  # Legacy configs (eos_token_id == 2): EOS must be the largest id, which is what legacy pooling picks.
  eos_id = 99 if legacy else 1
  pad = "<pad>" if legacy else "<|endoftext|>"
  text_cfg = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=16, hidden_act=act, bos_token_id=0, eos_token_id=2 if legacy else eos_id,
                  pad_token_id=3 if legacy else eos_id)
  if kind.startswith("clip-full"):
    config = transformers.CLIPConfig(text_config=text_cfg, vision_config=dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=8, patch_size=4),
        projection_dim=8)
    model = transformers.CLIPModel(config)
    text_model = model.text_model
  else:
    model = text_model = transformers.CLIPTextModel(transformers.CLIPTextConfig(**text_cfg))
  model.eval().save_pretrained(directory)
  if fmt == "bin":  # transformers 4 CLIPTextModel checkpoints carry a "text_model." prefix.
    as_torch_bin(model, directory, prefix="" if kind.startswith("clip-full") else "text_model.")
  save_word_tokenizer(directory, specials=specials, template="<|startoftext|> $A <|endoftext|>", pad=pad,
                      eos="<|endoftext|>", unk="<unk>", bos="<|startoftext|>", eos_id=eos_id)

  def reference(ids, mask):
    with torch.no_grad():
      out = text_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)))
    return out.last_hidden_state.numpy(), out.pooler_output.numpy()

  return reference
