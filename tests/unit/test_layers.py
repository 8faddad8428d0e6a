"""Causal conv streaming state, depth shuffles and the channel norm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidgen.layers.conv import CausalConv3d, conv3d_by_frames, depth_to_space, space_to_depth
from vidgen.layers.norms import FrameGroupNorm


@pytest.mark.parametrize("kernel,stride", [((3, 3, 3), (1, 1, 1)), ((3, 3, 3), (2, 2, 2)), ((4, 1, 1), (2, 1, 1)),
                                           ((2, 3, 3), (1, 1, 1))])
def test_causal_conv_chunked_equals_whole(kernel, stride):
  conv = CausalConv3d(3, 4, kernel, stride=stride, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 9, 8, 8, 3))
  whole, _ = conv(x)
  # First frame alone, then chunks whose lengths are multiples of the temporal stride.
  pieces, state = [], None
  for a, b in [(0, 1), (1, 5), (5, 7), (7, 9)]:
    y, state = conv(x[:, a:b], state)
    pieces.append(y)
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), whole, atol=1e-5)
  assert whole.shape[1] == 1 + 8 // stride[0]


@pytest.mark.parametrize("kernel,strides,padding", [((3, 3, 3), (1, 1, 1), ((1, 1), (1, 1))),
                                                    ((2, 3, 3), (2, 2, 2), ((0, 1), (1, 1))),
                                                    ((4, 1, 1), (2, 1, 1), "VALID"), ((1, 3, 3), (1, 1, 1), "SAME")])
def test_conv3d_by_frames_equals_xla_3d_conv(kernel, strides, padding):
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 7, 3))
  w = jax.random.normal(jax.random.key(1), (*kernel, 3, 5))
  # The 3D reference pads space only ("SAME" for a 3x3 kernel at stride 1 is one pixel each side).
  spatial = {"VALID": [(0, 0), (0, 0)], "SAME": [(1, 1), (1, 1)]}.get(padding, padding)
  reference = jax.lax.conv_general_dilated(x, w, strides, [(0, 0), *spatial],
                                           dimension_numbers=("NTHWC", "THWIO", "NTHWC"))
  np.testing.assert_allclose(conv3d_by_frames(x, w, strides, padding), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [(1, 1, 1), (2, 2, 2)])
def test_causal_conv_of_an_image_equals_a_still_video(stride):
  conv = CausalConv3d(3, 4, (3, 3, 3), stride=stride, rngs=nnx.Rngs(0))
  image = jax.random.normal(jax.random.key(1), (2, 1, 8, 8, 3))
  still = jnp.repeat(image, 3, axis=1)  # what the causal padding feeds the first output frame
  y, state = conv(image)
  pad = (1, 1) if stride[1] == 1 else (0, 1)  # 'same' output size ceil(8 / s), the odd pixel on the far side
  reference = jax.lax.conv_general_dilated(still, conv.kernel[...], (1, *stride[1:]), [(0, 0), pad, pad],
                                           dimension_numbers=("NTHWC", "THWIO", "NTHWC")) + conv.bias[...]
  np.testing.assert_allclose(y, reference, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(state, still[:, stride[0]:])


def test_causal_conv_is_causal():
  conv = CausalConv3d(2, 2, (3, 3, 3), rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (1, 6, 4, 4, 2))
  y, _ = conv(x)
  y2, _ = conv(x.at[:, 3].add(1.0))
  np.testing.assert_array_equal(y[:, :3], y2[:, :3])
  assert not np.allclose(y[:, 3:], y2[:, 3:])


def test_causal_conv_spatial_stride_shape_and_errors():
  conv = CausalConv3d(1, 1, 3, stride=(1, 2, 2), rngs=nnx.Rngs(0))
  assert conv(jnp.ones((1, 1, 7, 9, 1)))[0].shape == (1, 1, 4, 5, 1)
  with pytest.raises(ValueError, match="temporal kernel"):
    CausalConv3d(1, 1, (1, 3, 3), stride=(2, 1, 1), rngs=nnx.Rngs(0))


def test_depth_shuffles_are_inverse():
  x = jax.random.normal(jax.random.key(0), (2, 3, 8, 12, 5))
  np.testing.assert_array_equal(depth_to_space(space_to_depth(x, 4), 1, 4), x)
  y = depth_to_space(jnp.arange(2 * 1 * 1 * 1 * 8).reshape(2, 1, 1, 1, 8), 2, 2)
  assert y.shape == (2, 2, 2, 2, 1)
  with pytest.raises(ValueError, match="divisible"):
    space_to_depth(x, 5)


def test_frame_group_norm_is_per_frame():
  norm = FrameGroupNorm(16, groups=4, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 5, 16)) * 10 + 3
  y = norm(x)
  groups = y.reshape(2, 3, 5, 5, 4, 4)
  np.testing.assert_allclose(groups.mean(axis=(2, 3, 5)), 0.0, atol=1e-4)
  np.testing.assert_allclose(groups.std(axis=(2, 3, 5)), 1.0, atol=1e-3)
  # Changing one frame changes no other frame's output: no statistics across time.
  y2 = norm(x.at[:, 2].multiply(3.0).at[:, 2, 0, 0].add(5.0))
  np.testing.assert_array_equal(y[:, :2], y2[:, :2])
  assert not np.allclose(y[:, 2], y2[:, 2])


def test_patch_discriminator_equals_its_3d_convolution_definition():
  from vidgen.models.discriminator import PatchDiscriminator3D, default_discriminator_config

  config = default_discriminator_config()
  config.channels = (4, 8)
  disc = PatchDiscriminator3D(config, rngs=nnx.Rngs(0))
  video = jax.random.normal(jax.random.key(0), (2, 5, 16, 16, 3))
  conv = lambda h, w: jax.lax.conv_general_dilated(h, w, (1, 1, 1), "SAME",
                                                   dimension_numbers=("NTHWC", "THWIO", "NTHWC"))
  h = video
  for kernel, bias in zip(disc.kernels, disc.biases):
    h = jax.nn.leaky_relu(conv(space_to_depth(h, 2), kernel[...]) + bias[...], 0.2)
  reference = conv(h, disc.head[...])[..., 0]
  logits = disc(video)
  assert logits.shape == (2, 5, 4, 4)
  np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-5)


def _mlp_pair():
  """A plain Mlp and a conv Mlp (3x3) sharing fc1 / fc2 weights."""
  from vidgen.layers.mlp import Mlp

  plain = Mlp(8, 16, rngs=nnx.Rngs(0))
  conv = Mlp(8, 16, conv_kernel=3, rngs=nnx.Rngs(1))
  conv.fc1, conv.fc2 = plain.fc1, plain.fc2
  return plain, conv


def test_conv_mlp_is_the_plain_mlp_at_init():
  plain, conv = _mlp_pair()
  grid = (2, 4, 5)
  x = jax.random.normal(jax.random.key(0), (3, 40, 8))
  np.testing.assert_allclose(conv(x, grid), plain(x), rtol=1e-6, atol=1e-6)


def test_conv_mlp_equals_shifted_sum_reference_and_stays_in_its_frame():
  plain, conv = _mlp_pair()
  rng = np.random.default_rng(0)
  conv.conv_weight[...] = jnp.asarray(rng.standard_normal((3, 3, 8)), jnp.float32)
  conv.conv_bias[...] = jnp.asarray(rng.standard_normal(8), jnp.float32)
  grid = (2, 4, 5)
  x = jax.random.normal(jax.random.key(0), (3, 40, 8))
  # Reference: zero-padded shifts of the input, one weight vector per offset, per frame, then the plain MLP.
  padded = np.pad(np.asarray(x).reshape(3, *grid, 8), ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
  kernel = np.asarray(conv.conv_weight[...])
  mixed = sum(padded[:, :, dy:dy + 4, dx:dx + 5] * kernel[dy, dx] for dy in range(3) for dx in range(3))
  mixed = mixed + np.asarray(conv.conv_bias[...])
  reference = plain(jnp.asarray(mixed.reshape(3, 40, 8)))
  np.testing.assert_allclose(conv(x, grid), reference, rtol=1e-5, atol=1e-5)
  # A token reaches its 3x3 neighbourhood in its own frame and nothing else.
  y = np.asarray(conv(x, grid)).reshape(3, *grid, 8)
  y2 = np.asarray(conv(x.at[:, 5 * 1 + 2].add(1.0), grid)).reshape(3, *grid, 8)  # frame 0, row 1, column 2
  changed = np.abs(y2 - y).max(axis=(0, 4)) > 0
  expected = np.zeros(grid, bool)
  expected[0, 0:3, 1:4] = True
  np.testing.assert_array_equal(changed, expected)


def test_conv_mlp_errors():
  from vidgen.layers.mlp import Mlp

  with pytest.raises(ValueError, match="odd"):
    Mlp(8, 16, conv_kernel=2, rngs=nnx.Rngs(0))
  _, conv = _mlp_pair()
  with pytest.raises(ValueError, match="token grid"):
    conv(jnp.zeros((1, 40, 8)), (2, 4, 4))
