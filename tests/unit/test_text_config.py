"""Choosing a run's text encoder (config.text.encoder "small" / "hf"): validation, width, caption encoding, pipeline."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import experiment_config
from text_checkpoints import save_tiny_t5
from vidgen import runs
from vidgen.errors import ConfigError
from vidgen.models import text


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
  """(directory, width) of a tiny random T5 checkpoint whose tokenizer knows the shapes captions."""
  directory = tmp_path_factory.mktemp("t5")
  return str(directory), save_tiny_t5(directory)


def write_config(directory, **fields):
  """A checkpoint directory holding only config.json: validation and width must not need the weights."""
  directory.mkdir(exist_ok=True)
  (directory / "config.json").write_text(json.dumps(fields))
  return str(directory)


# ----------------------------------------------------------------------------------------------------------------------
# Validation and width, from config.json alone.


def test_small_is_the_default_and_its_errors_name_the_field():
  config = text.small_text_config(vocab_size=17, width=32, num_heads=4)
  assert text.text_encoder_kind(config) == "small" and text.text_width(config) == 32
  text.validate_text_config(config)
  config.num_heads = 5
  with pytest.raises(ConfigError, match=r"config\.text\.num_heads: .*'num_heads' = 5 must divide 'width' = 32"):
    text.validate_text_config(config)
  del config["vocab_size"]
  with pytest.raises(ConfigError, match=r"config\.stage\.text\.vocab_size: is missing"):
    text.validate_text_config(config, prefix="stage.text")
  config.encoder = "bert"
  with pytest.raises(ConfigError, match=r"config\.text\.encoder: must be one of \('small', 'hf'\), got 'bert'"):
    text.validate_text_config(config)


@pytest.mark.parametrize("fields, width", [
    (dict(model_type="t5", d_model=48), 48),
    (dict(model_type="umt5", d_model=40, feed_forward_proj="gated-gelu"), 40),
    (dict(model_type="t5"), 512),  # transformers' T5Config default
    (dict(model_type="clip_text_model", hidden_size=24), 24),
    (dict(model_type="clip", text_config=dict(hidden_size=40), vision_config=dict(hidden_size=99)), 40),
])
def test_hf_width_is_read_from_config_json(tmp_path, fields, width):
  config = text.hf_text_config(write_config(tmp_path / "ckpt", **fields), max_length=8)
  text.validate_text_config(config)
  assert text.text_encoder_kind(config) == "hf" and text.text_width(config) == width


def test_hf_errors_name_the_field(tmp_path):
  t5 = write_config(tmp_path / "t5", model_type="t5")
  clip = write_config(tmp_path / "clip", model_type="clip_text_model", max_position_embeddings=16)
  nowhere = str(tmp_path / "nowhere")
  cases = [
      (text.hf_text_config(nowhere, 8), rf"config\.text\.path = '{nowhere}': .*does not exist"),
      (text.hf_text_config(str(tmp_path), 8), r"config\.text\.path = .*config\.json does not exist"),
      (text.hf_text_config(write_config(tmp_path / "bert", model_type="bert"), 8),
       r"config\.text\.path = .*'bert' is not a supported text encoder.*'t5'"),
      (text.hf_text_config("", 8), r"config\.text\.path: must be a Hugging Face checkpoint directory"),
      (text.hf_text_config(t5, 0), r"config\.text\.max_length: must be an integer >= 1.*got 0"),
      (text.hf_text_config(t5, 8.0), r"config\.text\.max_length: must be an integer"),
      (text.hf_text_config(t5, 8, dtype="int8"), r"config\.text\.dtype: must be one of .*'int8'"),
      (text.hf_text_config(clip, 17), r"config\.text\.max_length: 17 exceeds .*max_position_embeddings 16"),
  ]
  for config, pattern in cases:
    with pytest.raises(ConfigError, match=pattern):
      text.validate_text_config(config)
  text.validate_text_config(text.hf_text_config(clip, 16))
  stray = text.hf_text_config(t5, 8)
  stray.width = 64  # a small-encoder field: does nothing here, so it is an error rather than silently ignored
  with pytest.raises(ConfigError, match=r"config\.text: fields \['width'\] are not used by encoder 'hf'"):
    text.validate_text_config(stray)
  with pytest.raises(ConfigError, match=r"config\.text\.path = .*nowhere"):
    text.text_width(text.hf_text_config(nowhere, 8))


# ----------------------------------------------------------------------------------------------------------------------
# Loading and encoding captions.


def test_encode_captions_equals_encode_row_by_row(tiny_t5):
  path, width = tiny_t5
  config = text.hf_text_config(path, max_length=8)
  encoder = text.load_frozen_text_encoder(config)
  assert encoder.kind == "t5" and encoder.width == width == text.text_width(config)
  captions = ["a red circle moving left", "a blue square moving up", "the big dog", "a cyan triangle moving down",
              "a white circle moving right"]
  hidden, mask = text.encode_captions(encoder, captions, 8, batch_size=2)  # 2 + 2 + 1 (padded to 2)
  assert isinstance(hidden, np.ndarray) and hidden.dtype == np.float32 and hidden.shape == (5, 8, width)
  assert isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.shape == (5, 8)
  for i, caption in enumerate(captions):
    h, m = encoder.encode([caption], 8)
    np.testing.assert_array_equal(mask[i], m[0])
    np.testing.assert_allclose(hidden[i], h[0], rtol=1e-5, atol=1e-5)
  assert mask.sum(1).tolist() == [6, 6, 4, 6, 6]  # words + </s>, then padding
  assert encoder.tokenizer.unk_token_id not in encoder.tokenize(captions, 8)[0]  # save_tiny_t5 knows shapes words
  empty_hidden, empty_mask = text.encode_captions(encoder, [], 8)
  assert empty_hidden.shape == (0, 8, width) and empty_mask.shape == (0, 8)
  with pytest.raises(ConfigError, match=r"config\.text\.encoder: .*needs encoder 'hf', got 'small'"):
    text.load_frozen_text_encoder(text.small_text_config(vocab_size=17))


# ----------------------------------------------------------------------------------------------------------------------
# A text-to-video run on a frozen encoder: networks and pipeline.


def hf_run_config(path, width):
  config = experiment_config("shapes_t2v", "runlocal")
  config.text = text.hf_text_config(path, max_length=8)
  config.dit.text_dim = width
  return config


def test_dit_models_train_no_text_encoder_for_hf():
  config = experiment_config("shapes_t2v", "runlocal")
  assert set(nnx.eval_shape(lambda: runs.dit_models(config, nnx.Rngs(0)))) == {"dit", "text"}
  config = hf_run_config("/not/read/here", 16)
  assert set(nnx.eval_shape(lambda: runs.dit_models(config, nnx.Rngs(0)))) == {"dit"}


def test_pipeline_conditions_on_the_frozen_encoder(tiny_t5):
  from vidgen.models.vae import SpacetimeVAE
  from vidgen.pipeline import VideoPipeline

  path, width = tiny_t5
  config = hf_run_config(path, width)
  text.validate_text_config(config.text)
  graph, params = nnx.split(runs.dit_models(config, nnx.Rngs(0))["dit"], nnx.Param)
  # Zero-initialized output and gate layers would make a fresh DiT ignore its conditioning; perturb every weight.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(treedef, [p + 0.05 * jax.random.normal(k, p.shape, p.dtype)
                                        for p, k in zip(leaves, keys)])
  vae = SpacetimeVAE(config.vae_stage.vae, rngs=nnx.Rngs(0))
  encoder = text.load_frozen_text_encoder(config.text)
  pipe = VideoPipeline(config, {"dit": (graph, params)}, vae, text_encoder=encoder)
  assert pipe.text_encoder is encoder and pipe.tokenizer is None
  prompts = ["a red circle moving left", "a blue square moving up"]
  inputs = pipe._condition_inputs(prompts)
  hidden, mask = text.encode_captions(encoder, prompts, 8)  # the latent cache holds these (as float16)
  np.testing.assert_array_equal(inputs["mask"], mask)
  np.testing.assert_allclose(inputs["text"], hidden.astype(np.float16).astype(np.float32), rtol=2e-3, atol=1e-4)

  kwargs = dict(output="latent", steps=2, seed=0, num_frames=config.data.num_frames)
  red = pipe([prompts[0]], **kwargs)
  assert red.shape[0] == 1 and red.dtype == np.float32 and np.isfinite(red).all()
  np.testing.assert_array_equal(pipe([prompts[0]], **kwargs), red)
  blue = pipe([prompts[1]], **kwargs)
  assert np.abs(blue - red).max() > 1e-3  # the same noise: only the caption differs
  # Without an encoder given, the pipeline loads the run's own from config.text.path.
  lazy = VideoPipeline(config, {"dit": (graph, params)}, vae)
  assert lazy.text_encoder.directory == path and lazy.text_encoder.width == width
