"""vidgen.benchmarks.super_resolution's measures: sharpness, interpolation and the summaries."""

import numpy as np

from vidgen.benchmarks.super_resolution import interpolate, sharpness, summary


def test_sharpness_is_the_gradient_energy():
  flat = np.full((2, 3, 8, 8, 3), 0.3, np.float32)
  np.testing.assert_allclose(sharpness(flat), 0.0)
  edge = np.zeros((1, 1, 8, 8, 3), np.float32)
  edge[:, :, :, 4:] = 1.0  # a vertical edge: a jump of 1 in one of the 7 columns of differences
  np.testing.assert_allclose(sharpness(edge), [1.0 / 7.0], rtol=1e-6)
  soft = edge.copy()
  soft[:, :, :, 4] = 0.5  # the same edge over two columns: half the energy
  np.testing.assert_allclose(sharpness(soft), [0.5 / 7.0], rtol=1e-6)
  np.testing.assert_allclose(sharpness(np.swapaxes(soft, 2, 3)), sharpness(soft), rtol=1e-6)
  blurred = interpolate(edge[:, :, ::2, ::2], 2, "linear")
  assert sharpness(blurred)[0] < sharpness(interpolate(edge[:, :, ::2, ::2], 2, "nearest"))[0]


def test_interpolation_keeps_constants_and_smooth_ramps():
  flat = np.full((1, 2, 4, 6, 3), 128 / 127.5 - 1, np.float32)
  for method in ("linear", "cubic"):
    up = interpolate(flat, 2, method)
    assert up.shape == (1, 2, 8, 12, 3)
    np.testing.assert_allclose(up, flat[0, 0, 0, 0, 0], atol=1e-6)
  ramp = np.broadcast_to(np.linspace(-0.5, 0.5, 8, dtype=np.float32)[None, None, None, :, None], (1, 1, 8, 8, 3))
  up = interpolate(ramp, 2, "linear")
  np.testing.assert_allclose(np.diff(up[0, 0, 4, 2:-2, 0]), (1 / 7) / 2, atol=2 / 255)  # the ramp, at half the step


def test_summary_gives_the_mean_and_its_standard_error():
  s = summary(np.array([1.0, 2.0, 3.0]))
  assert s["n"] == 3 and s["mean"] == 2.0
  np.testing.assert_allclose(s["se"], 1.0 / np.sqrt(3.0))
