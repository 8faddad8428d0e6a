"""SpacetimeVAE: shapes, causality, first frame alone, streaming, latent statistics and input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import experiment_config, tiny_vae_config
from flax import nnx

from vidgen.config import ConfigError
from vidgen.models.vae import DiagonalGaussian, SpacetimeVAE


def _video(shape, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)


def _with_random_head(vae):
  """The output layer starts at zero (a constant decoder); give it weights so decoder tests can see dependencies."""
  kernel = vae.decoder.head.conv.kernel
  kernel[...] = 0.1 * jax.random.normal(jax.random.key(7), kernel[...].shape)
  return vae


# Both norms, and the shipped shapes_vae layout: a 4x stem and no encoder residual blocks outside the middle.
@pytest.fixture(scope="module", params=[dict(norm="none"), dict(norm="group"), dict(num_res_blocks=0, stem_patch=4)],
                ids=["none", "group", "shapes_vae_layout"])
def vae(request):
  return _with_random_head(SpacetimeVAE(tiny_vae_config(**request.param), rngs=nnx.Rngs(0)))


def test_untrained_decoder_outputs_zeros():
  vae = SpacetimeVAE(tiny_vae_config(), rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(vae.decode(jnp.ones((1, 2, 4, 4, 8))), 0.0)


@pytest.mark.parametrize("overrides,video_shape,latent_shape", [
    ({}, (1, 17, 64, 64, 3), (1, 5, 8, 8, 8)),
    ({}, (1, 1, 64, 64, 3), (1, 1, 8, 8, 8)),
    ({}, (2, 9, 32, 48, 3), (2, 3, 4, 6, 8)),
    ({"latent_channels": 16}, (1, 5, 16, 16, 3), (1, 2, 2, 2, 16)),
    ({"norm": "group"}, (1, 5, 16, 16, 3), (1, 2, 2, 2, 8)),
    ({"temporal_downsample": 2, "spatial_downsample": 4}, (1, 7, 16, 16, 3), (1, 4, 4, 4, 8)),
    ({"temporal_downsample": 1, "channels": (8, 16, 16, 16), "spatial_downsample": 16}, (1, 3, 32, 32, 3),
     (1, 3, 2, 2, 8)),
])
def test_shapes_round_trip(overrides, video_shape, latent_shape):
  vae = SpacetimeVAE(tiny_vae_config(**overrides), rngs=nnx.Rngs(0))
  post = vae.encode(_video(video_shape))
  assert post.mean.shape == latent_shape == vae.latent_shape(video_shape)
  assert vae.decode(post.sample(jax.random.key(0))).shape == video_shape


@pytest.mark.parametrize("name,arg,vae_key", [
    ("shapes_vae", None, "vae"),
    ("shapes_t2v", None, "vae_stage.vae"), ("shapes_t2v", "runlocal", "vae_stage.vae")])
def test_experiment_vaes_encode_to_what_their_users_expect(name, arg, vae_key):
  """The shipped configs' encoders, traced (not just their factors): shapes_vae's default gives the issue's 8x8x8
  latents of a 17x64x64 clip, and each text-to-video DiT's grid and channels equal its VAE stage's latents."""
  config = experiment_config(name, arg)
  vae_config = config
  for key in vae_key.split("."):
    vae_config = vae_config[key]
  vae = SpacetimeVAE(vae_config, rngs=nnx.Rngs(0))
  data = config.data
  frames, size = (17, 64) if name == "shapes_vae" else (data.num_frames, data.height)
  latent = jax.eval_shape(lambda x: vae.encode(x).mean, jax.ShapeDtypeStruct((1, frames, size, size, 3), jnp.float32))
  image = jax.eval_shape(lambda x: vae.encode(x).mean, jax.ShapeDtypeStruct((1, 1, size, size, 3), jnp.float32))
  if name == "shapes_vae":
    assert latent.shape == (1, 5, 8, 8, 8) and image.shape == (1, 1, 8, 8, 8)
  else:
    assert latent.shape[1:] == (*config.dit.input_size, config.dit.in_channels)
    # One DiT token covers 8x8 pixels whatever the VAE's spatial factor.
    assert all(p * vae_config.spatial_downsample == 8 for p in config.dit.patch_size[1:])


def test_causal_in_time_exactly(vae):
  x = _video((1, 17, 32, 32, 3))
  base = vae.encode(x).mean
  for k in (1, 5, 9, 16):
    changed = vae.encode(x.at[:, k].set(-x[:, k])).mean
    unaffected = 1 + (k - 1) // 4  # latent frame j sees frames <= 4j
    np.testing.assert_array_equal(changed[:, :unaffected], base[:, :unaffected])
    assert not np.allclose(changed[:, unaffected], base[:, unaffected])


def test_decoder_is_causal(vae):
  z = jax.random.normal(jax.random.key(0), (1, 4, 4, 4, 8))
  base = vae.decode(z)
  changed = vae.decode(z.at[:, 2].add(1.0))
  np.testing.assert_array_equal(changed[:, :1 + 4 * 1], base[:, :5])  # frames of latents 0 and 1
  assert not np.allclose(changed[:, 5:9], base[:, 5:9])


def test_first_frame_is_encoded_alone(vae):
  x = _video((2, 9, 32, 32, 3))
  video_latents = vae.encode(x).mean
  image_latents = vae.encode(x[:, :1]).mean
  assert image_latents.shape[1] == 1
  # Equal up to float summation order (an image's convolutions sum their temporal taps first).
  np.testing.assert_allclose(image_latents[:, 0], video_latents[:, 0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(vae.decode(video_latents[:, :1])[:, 0], vae.decode(video_latents)[:, 0], atol=1e-5)


@pytest.mark.parametrize("chunk", [4, 8, 12])
def test_streaming_encode_equals_whole(vae, chunk):
  x = _video((1, 25, 32, 32, 3))  # 24 frames after the first: full chunks only (the next test covers a remainder)
  whole = vae.encode(x)
  streamed = vae.encode(x, chunk_frames=chunk)
  np.testing.assert_allclose(streamed.mean, whole.mean, atol=1e-5)
  np.testing.assert_allclose(streamed.logvar, whole.logvar, atol=1e-5)


@pytest.mark.parametrize("frames,chunk", [(25, 16), (21, 8), (9, 16)])
def test_streaming_encode_with_a_shorter_last_chunk_equals_whole(vae, frames, chunk):
  """(T - 1) not a multiple of chunk_frames: the encoder's last, shorter chunk continues from the full chunks' causal
  states (for 9 frames in chunks of 16 there is no full chunk: the remainder follows frame 0 directly)."""
  assert (frames - 1) % chunk, "the parameters must leave a remainder"
  x = _video((1, frames, 32, 32, 3), seed=frames)
  whole = vae.encode(x)
  streamed = vae.encode(x, chunk_frames=chunk)
  np.testing.assert_allclose(streamed.mean, whole.mean, atol=1e-5)
  np.testing.assert_allclose(streamed.std, whole.std, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_streaming_decode_equals_whole(vae, chunk):
  z = jax.random.normal(jax.random.key(0), (1, 7, 4, 4, 8))
  np.testing.assert_allclose(vae.decode(z, chunk_frames=chunk), vae.decode(z), atol=1e-5)


def test_streaming_memory_does_not_grow_with_length(vae):
  graph, state = nnx.split(vae)

  def temp_bytes(frames, chunk):
    fn = jax.jit(lambda s, x: nnx.merge(graph, s).encode(x, chunk_frames=chunk).mean)
    shape = jax.ShapeDtypeStruct((1, frames, 32, 32, 3), jnp.float32)
    return fn.lower(state, shape).compile().memory_analysis().temp_size_in_bytes

  short, long = temp_bytes(1 + 4 * 4, 4), temp_bytes(1 + 4 * 32, 4)
  whole_long = temp_bytes(1 + 4 * 32, None)
  # Streaming: 8x the frames needs about the same scratch memory; one pass needs several times more.
  assert long < 1.5 * short, (short, long)
  assert whole_long > 3 * long, (whole_long, long)


def test_posterior_kl_matches_closed_form():
  mean = jnp.array([[0.5, -1.0]])
  logvar = jnp.array([[0.2, -0.3]])
  post = DiagonalGaussian(mean, logvar)
  expected = 0.5 * np.sum(np.array([0.25, 1.0]) + np.exp([0.2, -0.3]) - 1 - np.array([0.2, -0.3]))
  np.testing.assert_allclose(post.kl(), [expected], rtol=1e-6)
  samples = jax.vmap(lambda k: post.sample(k))(jax.random.split(jax.random.key(0), 20000))
  np.testing.assert_allclose(samples.mean(0), mean, atol=0.03)
  np.testing.assert_allclose(samples.std(0), np.exp(0.5 * logvar), atol=0.03)
  np.testing.assert_array_equal(post.mode(), mean)


def test_latent_normalization_round_trip():
  vae = SpacetimeVAE(tiny_vae_config(), rngs=nnx.Rngs(0))
  vae.set_latent_stats(jnp.arange(8.0), jnp.linspace(0.5, 2.0, 8))
  z = jax.random.normal(jax.random.key(0), (1, 2, 4, 4, 8))
  np.testing.assert_allclose(vae.denormalize(vae.normalize(z)), z, atol=1e-5)
  np.testing.assert_allclose(vae.normalize(z)[..., 3], (z[..., 3] - 3.0) / vae.latent_scale[...][3], atol=1e-6)


def test_pixel_normalization_is_an_affine_map_around_the_network():
  """pixel_mean/pixel_std: the encoder sees the normalized video and the decoder output is mapped back, nothing else."""
  mean, std = (-0.9, -0.8, -0.7), (0.4, 0.4, 0.5)
  plain = _with_random_head(SpacetimeVAE(tiny_vae_config(), rngs=nnx.Rngs(0)))
  normed = _with_random_head(SpacetimeVAE(tiny_vae_config(pixel_mean=mean, pixel_std=std), rngs=nnx.Rngs(0)))
  video = _video((2, 5, 16, 16, 3))
  pixel_mean, pixel_std = jnp.asarray(mean), jnp.asarray(std)
  np.testing.assert_allclose(normed.encode(video).mean, plain.encode((video - pixel_mean) / pixel_std).mean,
                             rtol=1e-5, atol=1e-5)
  z = jax.random.normal(jax.random.key(1), (2, 2, 2, 2, 8))
  np.testing.assert_allclose(normed.decode(z), plain.decode(z) * pixel_std + pixel_mean, rtol=1e-5, atol=1e-5)
  # The untrained decoder's output is the pixel mean (the zero-initialised head outputs 0 before the inverse map).
  untrained = SpacetimeVAE(tiny_vae_config(pixel_mean=mean, pixel_std=std), rngs=nnx.Rngs(0))
  np.testing.assert_allclose(untrained.decode(z)[0, 0, 0, 0], mean, atol=1e-6)


@pytest.mark.parametrize("shape,dtype,match", [
    ((17, 64, 64, 3), jnp.float32, "rank 5"),
    ((1, 16, 64, 64, 3), jnp.float32, "T = 1 \\+ 4k"),
    ((1, 17, 60, 64, 3), jnp.float32, "divisible by 8"),
    ((1, 17, 64, 64, 4), jnp.float32, "3 channels"),
    ((1, 17, 64, 64, 3), jnp.uint8, "floating video"),
])
def test_bad_video_raises(vae, shape, dtype, match):
  with pytest.raises(ValueError, match=match):
    vae.encode(jnp.zeros(shape, dtype))


def test_bad_latents_and_chunks_raise(vae):
  with pytest.raises(ValueError, match="latents"):
    vae.decode(jnp.zeros((1, 2, 4, 4, 3)))
  with pytest.raises(ValueError, match="multiple of 4"):
    vae.encode(jnp.zeros((1, 9, 32, 32, 3)), chunk_frames=6)


@pytest.mark.parametrize("overrides,field", [
    ({"spatial_downsample": 6}, "vae.spatial_downsample"),
    ({"channels": (8, 16)}, "vae.channels"),
    ({"temporal_kernel": 1}, "vae.temporal_kernel"),
    ({"dtype": "float33"}, "vae.dtype"),
    ({"norm": "batch"}, "vae.norm"),
    ({"pixel_mean": (0.0, 0.0)}, "vae.pixel_mean"),
    ({"pixel_std": (1.0, 0.0, 1.0)}, "vae.pixel_std"),
    ({"num_res_blocks": -1}, "vae.num_res_blocks"),
])
def test_bad_config_names_the_field(overrides, field):
  with pytest.raises((ConfigError, ValueError), match=field):
    SpacetimeVAE(tiny_vae_config(**overrides), rngs=nnx.Rngs(0))
