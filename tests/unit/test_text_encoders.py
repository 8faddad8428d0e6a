"""Text encoders: the word tokenizer, the small from-scratch encoder, and T5 / CLIP parity with PyTorch transformers."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from text_checkpoints import T5_SPECIALS, make_clip, make_t5, save_word_tokenizer
from vidgen.data.shapes import shapes_tokenizer
from vidgen.errors import InputError
from vidgen.layers.attention import full_attention
from vidgen.models import text
from vidgen.models.text.t5 import position_bias


def tiny_small_config(**overrides):
  """A SmallTextEncoder that compiles and runs in well under a second on CPU."""
  base = dict(vocab_size=shapes_tokenizer().vocab_size, max_length=8, width=32, depth=2, num_heads=4)
  base.update(overrides)
  return text.small_text_config(**base)


# ----------------------------------------------------------------------------------------------------------------------
# WordTokenizer.


def test_word_tokenizer_ids_mask_and_round_trip():
  tok = text.WordTokenizer(["a", "red", "circle"], max_length=5)
  assert tok.vocab == ("a", "red", "circle") and tok.max_length == 5 and tok.vocab_size == 4
  ids, mask = tok(["A  Red circle", "circle"])
  assert ids.dtype == np.int32 and mask.dtype == np.bool_ and ids.shape == mask.shape == (2, 5)
  np.testing.assert_array_equal(ids, [[1, 2, 3, 0, 0], [3, 0, 0, 0, 0]])
  np.testing.assert_array_equal(mask, ids != 0)
  ids1, mask1 = tok("red circle")
  assert ids1.shape == (1, 5) and mask1.sum() == 2
  assert tok.decode(ids[0]) == "a red circle"
  restored = text.WordTokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
  assert restored == tok and restored.vocab_size == tok.vocab_size
  np.testing.assert_array_equal(restored(["a red circle"])[0], tok(["a red circle"])[0])


@pytest.mark.parametrize("prompt, needles", [
    ("", ["''", "empty"]),
    ("   \t", ["'   \\t'", "empty"]),
    ("a red red red circle", ["'a red red red circle'", "5 words", "max_length=4"]),
    ("a blue circle", ["'blue'", "'a blue circle'", "['a', 'red', 'circle']"]),
    (7, ["7", "int", "string"]),
])
def test_word_tokenizer_errors_name_the_bad_value(prompt, needles):
  tok = text.WordTokenizer(["a", "red", "circle"], max_length=4)
  with pytest.raises(ValueError) as info:
    tok([prompt])
  for needle in needles:
    assert needle in str(info.value), (needle, str(info.value))


@pytest.mark.parametrize("prompt", ["", "a red red red circle", "a blue circle"])
def test_word_tokenizer_prompt_mistakes_are_input_errors(prompt):
  tok = text.WordTokenizer(["a", "red", "circle"], max_length=4)
  with pytest.raises(InputError, match=repr(prompt)):
    tok(prompt)


def test_word_tokenizer_rejects_bad_vocabularies():
  with pytest.raises(ValueError, match="repeated.*'a'"):
    text.WordTokenizer(["a", "b", "a"], 4)
  with pytest.raises(ValueError, match="'two words'"):
    text.WordTokenizer(["two words"], 4)
  with pytest.raises(ValueError, match="max_length.*0"):
    text.WordTokenizer(["a"], 0)


def test_every_shapes_caption_tokenizes():
  from vidgen.data import shapes

  tok = shapes_tokenizer()
  assert tok == shapes_tokenizer()  # deterministic vocabulary order
  captions = [shapes.caption(c, s, d) for c in shapes.COLOR_NAMES for s in shapes.SHAPES
              for d in shapes.DIRECTION_NAMES]
  ids, mask = tok(captions)
  assert ids.shape == (len(captions), 8) and (mask.sum(axis=1) == 5).all()
  assert len({tuple(r) for r in ids}) == len(captions)
  assert [tok.decode(r) for r in ids] == captions
  # The dataset's own clips carry these captions.
  clip = shapes.ShapesDataset(num_frames=1, height=16, width=16)[0]
  tok([clip.caption])


# ----------------------------------------------------------------------------------------------------------------------
# SmallTextEncoder.


def test_small_encoder_shapes_and_padding_invariance():
  config = tiny_small_config()
  model = text.SmallTextEncoder(config, rngs=nnx.Rngs(0))
  tok = text.WordTokenizer(shapes_tokenizer().vocab, max_length=6)
  ids, mask = tok(["a red circle moving left", "a blue square"])
  out = model(ids, mask)
  assert out.shape == (2, 6, config.width) and out.dtype == jnp.float32
  # Longer padding and arbitrary ids at padding positions leave the real tokens' outputs unchanged.
  ids8 = np.pad(ids, ((0, 0), (0, 2)))
  mask8 = np.pad(mask, ((0, 0), (0, 2)))
  noisy = np.where(mask8, ids8, np.random.default_rng(0).integers(1, config.vocab_size, ids8.shape)).astype(np.int32)
  out8 = model(noisy, mask8)
  for b in range(2):
    n = int(mask[b].sum())
    np.testing.assert_allclose(out8[b, :n], out[b, :n], rtol=1e-5, atol=1e-5)
  # The encoder does read the words.
  other, _ = tok(["a blue circle moving left", "a blue square"])
  assert not np.allclose(model(other, mask)[0, :5], out[0, :5])


def test_small_encoder_gradients_reach_every_parameter_and_jit():
  config = tiny_small_config()
  model = text.SmallTextEncoder(config, rngs=nnx.Rngs(1))
  ids, mask = shapes_tokenizer()(["a red circle moving left", "a green triangle moving up"])
  graphdef, params = nnx.split(model, nnx.Param)

  def loss(p):
    out = nnx.merge(graphdef, p)(ids, mask)
    return jnp.sum(jnp.where(mask[..., None], out, 0.0) * jnp.arange(config.width))

  grads = jax.jit(jax.grad(loss))(params)
  flat = jax.tree.leaves_with_path(grads)
  assert flat
  missing = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.asarray(g) != 0)]
  # Only embedding rows of unused words may get zero gradient; every array must receive some.
  assert not missing, missing

  @jax.jit
  def apply(p, ids, mask):
    return nnx.merge(graphdef, p)(ids, mask)

  np.testing.assert_allclose(apply(params, ids, mask), model(ids, mask), rtol=1e-5, atol=1e-5)
  stacked = params["blocks"]["qkv"]["kernel"]
  assert stacked.shape[0] == config.depth


def test_small_encoder_bfloat16_compute():
  model = text.SmallTextEncoder(tiny_small_config(dtype="bfloat16"), rngs=nnx.Rngs(0))
  reference = text.SmallTextEncoder(tiny_small_config(), rngs=nnx.Rngs(0))  # the same weights, float32 compute
  ids, mask = shapes_tokenizer()(["a red circle moving left", "a blue square moving up"])
  out, want = np.asarray(model(ids, mask)), np.asarray(reference(ids, mask))
  assert out.dtype == np.float32
  # bfloat16 keeps 8 significant bits (relative rounding 2^-8 per op); a few layers of matmuls and norms stay within a
  # few percent of the float32 result, while any wrong weight or op would be off by order one.
  error = np.sqrt(np.mean((out - want) ** 2) / np.mean(want ** 2))
  assert error < 0.03, error


def test_small_encoder_input_errors():
  model = text.SmallTextEncoder(tiny_small_config(), rngs=nnx.Rngs(0))
  ids, mask = shapes_tokenizer()(["a red circle moving left"])
  with pytest.raises(ValueError, match="token id 99 .*vocab_size - 1 = 16"):
    model(np.where(mask, ids, 99), mask)
  with pytest.raises(ValueError, match=r"\[B, L\].*\(8,\)"):
    model(ids[0], mask[0])
  with pytest.raises(ValueError, match="L=9.*max_length=8"):
    model(np.pad(ids, ((0, 0), (0, 1))), np.pad(mask, ((0, 0), (0, 1))))
  with pytest.raises(ValueError, match="num_heads.*5.*width.*32"):
    tiny_small_config(num_heads=5)
  with pytest.raises(ValueError, match="'widht'"):
    text.small_text_config(widht=3)


# ----------------------------------------------------------------------------------------------------------------------
# The encoders' attention (layers.attention with a logit bias and masks) against a plain reference.


def reference_attention(q, k, v, allowed, bias, scale):
  """float64 einsum softmax attention; `allowed` [B, 1, Lq, Lk] bool; queries with no allowed key give zeros."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale + np.asarray(bias, np.float64)
  logits = np.where(allowed, logits, -np.inf)
  top = logits.max(-1, keepdims=True)
  p = np.exp(logits - np.where(np.isfinite(top), top, 0.0))
  total = p.sum(-1, keepdims=True)
  p = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
  return np.einsum("bhqk,bkhd->bqhd", p, v)


def test_encoder_attention_equals_reference():
  rng = np.random.default_rng(0)
  batch, length, heads, dim = 3, 9, 4, 8
  q, k, v = (jnp.asarray(rng.standard_normal((batch, length, heads, dim)), jnp.float32) for _ in range(3))
  padding = np.ones((batch, length), bool)
  padding[1, 5:] = False
  padding[2, :] = False  # An all-padding (null) prompt: every query gets zeros.
  # T5: unscaled logits + relative-position bias from a bucket table, key-padding mask.
  table = jnp.asarray(rng.standard_normal((8, heads)), jnp.float32)
  bias = position_bias(table, text.t5_relative_buckets(length, length, 8, 16))
  ours = full_attention(q, k, v, mask=jnp.asarray(padding), bias=bias, scale=1.0)
  want = reference_attention(q, k, v, np.broadcast_to(padding[:, None, None], (batch, 1, length, length)),
                             np.asarray(bias)[None], 1.0)
  np.testing.assert_allclose(ours, want, rtol=0, atol=1e-5)
  assert not np.any(np.asarray(ours[2]))
  # CLIP: scaled logits, causal and padding mask, no bias.
  allowed = np.tril(np.ones((length, length), bool))[None, None] & padding[:, None, None, :]
  ours = full_attention(q, k, v, mask=jnp.asarray(allowed))
  want = reference_attention(q, k, v, allowed, 0.0, 1 / np.sqrt(dim))
  np.testing.assert_allclose(ours, want, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Pretrained encoders vs PyTorch transformers, on tiny checkpoints built by tests/text_checkpoints.py (no hub access).

PROMPTS = ["a red cat sat on the mat", "the big dog", "a blue dog sat under the big tree on a mat"]


def relative_error(ours, ref, mask):
  ours, ref = np.asarray(ours), np.asarray(ref)
  return np.abs(ours - ref)[mask].max() / np.abs(ref[mask]).max()


@pytest.mark.parametrize("kind, fmt", [
    ("t5:relu", "safetensors"),
    ("t5:gated-gelu", "bin"),
    ("umt5", "safetensors"),
    ("mt5", "bin"),
    ("t5-full", "safetensors"),
])
def test_t5_parity_with_transformers(tmp_path, kind, fmt):
  reference = make_t5(tmp_path, kind, fmt)
  encoder = text.load_text_encoder(tmp_path)
  assert encoder.kind == "t5" and encoder.width == 32
  assert encoder.spec.per_layer_bias == (kind == "umt5")
  # Token ids with padding (and garbage ids under the padding): real positions must match PyTorch.
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 100, (3, 20)).astype(np.int32)
  mask = np.ones(ids.shape, bool)
  mask[1, 9:] = False
  mask[2, 1:] = False
  hidden = encoder(ids, mask)
  assert hidden.shape == (3, 20, 32) and hidden.dtype == jnp.float32
  assert relative_error(hidden, reference(np.where(mask, ids, 0), mask), mask) <= 1e-4
  # End to end through the checkpoint's own tokenizer, with padding and truncation.
  hidden, mask = encoder.encode(PROMPTS, max_length=8)
  ids = encoder.tokenizer(PROMPTS, padding="max_length", max_length=8, truncation=True, return_tensors="np")
  np.testing.assert_array_equal(mask, ids["attention_mask"].astype(bool))
  assert mask.sum(1).tolist() == [8, 4, 8]
  assert relative_error(hidden, reference(ids["input_ids"], ids["attention_mask"].astype(bool)), mask) <= 1e-4


@pytest.mark.parametrize("kind, fmt", [
    ("clip:quick_gelu", "safetensors"),
    ("clip:gelu:legacy", "bin"),
    ("clip-full:quick_gelu", "safetensors"),
])
def test_clip_parity_with_transformers(tmp_path, kind, fmt):
  reference = make_clip(tmp_path, kind, fmt)
  encoder = text.load_text_encoder(tmp_path)
  assert encoder.kind == "clip" and encoder.width == 32
  assert encoder.spec.eos_token_id == (2 if kind.endswith("legacy") else 1)
  hidden, mask, pooled = encoder.encode(PROMPTS, max_length=10, return_pooled=True)
  ids = encoder.tokenizer(PROMPTS, padding="max_length", max_length=10, truncation=True, return_tensors="np")
  np.testing.assert_array_equal(mask, ids["attention_mask"].astype(bool))
  ref_hidden, ref_pooled = reference(ids["input_ids"], ids["attention_mask"].astype(bool))
  assert hidden.shape == (3, 10, 32) and pooled.shape == (3, 32)
  assert relative_error(hidden, ref_hidden, mask) <= 1e-4
  assert relative_error(pooled, ref_pooled, np.ones(pooled.shape, bool)) <= 1e-4
  # The pooled token is the EOS (last real token here), not a padding position.
  np.testing.assert_allclose(pooled, hidden[np.arange(3), mask.sum(1) - 1], rtol=1e-6, atol=1e-6)


def test_t5_relative_buckets_match_transformers():
  from transformers.models.t5.modeling_t5 import T5Attention
  import torch

  for num_buckets, max_distance in ((32, 128), (8, 16)):
    ours = text.t5_relative_buckets(300, 300, num_buckets, max_distance)
    rel = torch.arange(300)[None, :] - torch.arange(300)[:, None]
    ref = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=num_buckets,
                                                max_distance=max_distance).numpy()
    np.testing.assert_array_equal(ours, ref)


def test_t5_bfloat16_checkpoint_and_compute(tmp_path):
  import torch
  import transformers

  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                 feed_forward_proj="gated-gelu")
  model = transformers.T5EncoderModel(config).eval()
  ids = np.random.default_rng(0).integers(3, 100, (2, 7))
  mask = np.ones(ids.shape, bool)
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids)).last_hidden_state.numpy()
  model.to(torch.bfloat16).save_pretrained(tmp_path)  # bfloat16 safetensors: read without torch
  save_word_tokenizer(tmp_path, **T5_SPECIALS)
  encoder = text.load_text_encoder(tmp_path, dtype="bfloat16")
  assert encoder.module.blocks.q.kernel[...].dtype == jnp.bfloat16
  hidden = encoder(ids, mask)
  assert hidden.dtype == jnp.float32
  assert relative_error(hidden, ref, mask) <= 0.05


def test_loaded_params_carry_logical_axes(tmp_path):
  make_t5(tmp_path, "umt5", "safetensors")
  encoder = text.load_text_encoder(tmp_path)
  specs = nnx.get_partition_spec(nnx.state(encoder.module))
  assert tuple(specs["blocks"]["q"]["kernel"]) == ("layers", "embed", "heads", "kv")
  assert tuple(specs["blocks"]["rel_bias"]) == ("layers", None, "heads")
  assert tuple(specs["embed"]["embedding"]) == ("vocab", "embed")


def test_sharded_safetensors_checkpoint(tmp_path):
  from safetensors.numpy import load_file, save_file

  reference = make_t5(tmp_path, "t5:gated-gelu", "safetensors")
  weights = load_file(tmp_path / "model.safetensors")
  (tmp_path / "model.safetensors").unlink()
  names = sorted(weights)
  shards = {"model-00001-of-00002.safetensors": names[:len(names) // 2],
            "model-00002-of-00002.safetensors": names[len(names) // 2:]}
  for file, keys in shards.items():
    save_file({k: weights[k] for k in keys}, tmp_path / file)
  index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
  encoder = text.load_text_encoder(tmp_path)
  hidden, mask = encoder.encode(PROMPTS, max_length=12)
  ids, _ = encoder.tokenize(PROMPTS, 12)
  assert relative_error(hidden, reference(ids, mask), mask) <= 1e-4


# ----------------------------------------------------------------------------------------------------------------------
# Loading errors.


def test_wrong_shape_missing_and_unexpected_weights_are_named(tmp_path):
  from safetensors.numpy import load_file, save_file

  make_t5(tmp_path, "t5:relu", "safetensors")
  path = tmp_path / "model.safetensors"
  weights = load_file(path)
  name = "encoder.block.1.layer.0.SelfAttention.q.weight"

  bad = dict(weights, **{name: np.zeros((32, 30), np.float32)})
  save_file(bad, path)
  with pytest.raises(ValueError, match=rf"{name}: expected \(32, 32\), got \(32, 30\)"):
    text.load_text_encoder(tmp_path)

  save_file({k: v for k, v in weights.items() if k != name}, path)
  with pytest.raises(ValueError, match=rf"missing weights \(1\): \['{name}'\]"):
    text.load_text_encoder(tmp_path)

  save_file(dict(weights, **{"encoder.block.0.extra.weight": np.zeros(3, np.float32)}), path)
  with pytest.raises(ValueError, match=r"unexpected weights \(1\): \['encoder.block.0.extra.weight'\]"):
    text.load_text_encoder(tmp_path)


def test_missing_files_and_bad_configs(tmp_path, monkeypatch):
  import sys

  with pytest.raises(FileNotFoundError, match="nowhere.*config.json"):
    text.load_text_encoder(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="config.json"):
    text.load_text_encoder(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
  with pytest.raises(ValueError, match="'bert'.*'t5'.*'clip'"):
    text.load_text_encoder(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
  with pytest.raises(FileNotFoundError, match="no weights file.*model.safetensors.*pytorch_model.bin"):
    text.load_text_encoder(tmp_path)
  with pytest.raises(ValueError, match="dtype 'int8'.*allowed"):
    text.load_text_encoder(tmp_path, dtype="int8")
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "feed_forward_proj": "gated-mish"}))
  (tmp_path / "model.safetensors").write_bytes(b"")
  with pytest.raises(ValueError, match="'mish'.*allowed"):
    text.load_text_encoder(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
  with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
    text.load_text_encoder(tmp_path)

  # A torch pickle without torch installed: ImportError that says what to install.
  (tmp_path / "model.safetensors").unlink()
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
  (tmp_path / "pytorch_model.bin").write_bytes(b"")
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match="pip install torch"):
    text.load_text_encoder(tmp_path)


def test_missing_tokenizer_and_bad_prompts(tmp_path):
  make_clip(tmp_path, "clip:quick_gelu", "safetensors")
  encoder = text.load_text_encoder(tmp_path)
  with pytest.raises(ValueError, match="max_length 17 exceeds.*16"):
    encoder.encode(PROMPTS, max_length=17)
  with pytest.raises(ValueError, match="the string 'a cat'"):
    encoder.encode("a cat", max_length=8)
  with pytest.raises(ValueError, match=r"\['a cat', 7\]"):
    encoder.encode(["a cat", 7], max_length=8)
  for f in ("tokenizer.json", "tokenizer_config.json"):
    (tmp_path / f).unlink()
  with pytest.raises(FileNotFoundError, match="tokenizer"):
    text.load_text_encoder(tmp_path)
