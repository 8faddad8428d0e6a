"""Frechet distance against a direct scipy computation, and streaming FeatureStats against np.mean / np.cov."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from vidgen.errors import InputError
from vidgen.metrics.frechet import FeatureStats, frechet_distance


def _spd(rng, d, scale=1.0):
  a = rng.normal(size=(d, d))
  return scale * (a @ a.T / d + 0.1 * np.eye(d))


def _direct(mu1, s1, mu2, s2):
  """The formula written out, with scipy's sqrtm of the product."""
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2.0 * np.real(scipy.linalg.sqrtm(s1 @ s2))))


@pytest.mark.parametrize("d", [1, 5, 64])
def test_frechet_distance_equals_direct_sqrtm(d):
  rng = np.random.default_rng(d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = _spd(rng, d), _spd(rng, d, scale=3.0)
  got = frechet_distance(mu1, s1, mu2, s2)
  assert isinstance(got, float) and got > 0
  np.testing.assert_allclose(got, _direct(mu1, s1, mu2, s2), rtol=1e-6)
  # JAX float32 inputs are accepted and computed in float64.
  np.testing.assert_allclose(frechet_distance(jnp.asarray(mu1), jnp.asarray(s1), jnp.asarray(mu2), jnp.asarray(s2)),
                             _direct(*(np.float64(np.float32(a)) for a in (mu1, s1, mu2, s2))), rtol=1e-6)


def test_frechet_distance_closed_form_for_commuting_covariances():
  # Diagonal covariances: tr sqrtm(s1 s2) = sum sqrt(a_i b_i), so d^2 = |dmu|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
  a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  expected = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  np.testing.assert_allclose(frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), expected, rtol=1e-12)


def test_identical_statistics_give_zero():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(500, 32)) * rng.uniform(0.1, 3.0, size=32) + 5.0
  stats = FeatureStats().update(x)
  assert abs(frechet_distance(stats, stats)) < 1e-8
  assert abs(frechet_distance(stats.mean, stats.cov, stats.mean, stats.cov)) < 1e-8


def test_singular_covariances_give_the_regularized_distance():
  # Fewer rows than dimensions: both covariances are singular, yet the distance is finite and equals the one of
  # slightly regularized covariances.
  rng = np.random.default_rng(1)
  a, b = FeatureStats().update(rng.normal(size=(10, 40))), FeatureStats().update(rng.normal(size=(10, 40)) + 0.5)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
    got = frechet_distance(a, b)
  eye = 1e-6 * np.eye(40)
  assert np.isfinite(got)
  np.testing.assert_allclose(got, _direct(a.mean, a.cov + eye, b.mean, b.cov + eye), rtol=1e-4)


@pytest.mark.parametrize("failure", [np.nan, 0.5j])
def test_unusable_square_root_retried_with_eps(monkeypatch, failure):
  """A product whose sqrtm comes back non-finite or far from real is retried with eps * I on both covariances."""
  calls = []
  real_sqrtm = scipy.linalg.sqrtm

  def sqrtm(a):
    calls.append(a)
    return real_sqrtm(a) + (failure if len(calls) == 1 else 0.0)

  monkeypatch.setattr(scipy.linalg, "sqrtm", sqrtm)
  rng = np.random.default_rng(2)
  mu1, mu2, s1, s2 = rng.normal(size=4), rng.normal(size=4), _spd(rng, 4), _spd(rng, 4)
  got = frechet_distance(mu1, s1, mu2, s2, eps=1e-3)
  assert len(calls) == 2
  eye = 1e-3 * np.eye(4)
  np.testing.assert_allclose(calls[1], (s1 + eye) @ (s2 + eye), rtol=1e-12)
  # As in the reference code, only the square root's product is regularized, not the traces of the covariances.
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2.0 * np.trace(np.real(real_sqrtm(calls[1])))
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_large_imaginary_part_refused():
  # An indefinite "covariance": sqrtm of the product has an imaginary diagonal of 1, with or without eps.
  with pytest.raises(ValueError, match="imaginary"):
    frechet_distance(np.zeros(2), np.diag([-1.0, 1.0]), np.zeros(2), np.eye(2))


@pytest.mark.parametrize("args,match", [
    ((np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)), "different dimensions"),
    ((np.zeros(3), np.eye(4), np.zeros(3), np.eye(3)), "sigma1 must be a \\[d, d\\]"),
    ((np.zeros((3, 1)), np.eye(3), np.zeros(3), np.eye(3)), "mu1 must be a vector"),
    ((np.zeros(3), np.eye(3), np.zeros(3), np.ones((3, 3, 1))), "sigma2 must be"),
    ((np.full(3, np.nan), np.eye(3), np.zeros(3), np.eye(3)), "NaN"),
    ((np.zeros(3), np.eye(3)), "needs mu1, sigma1, mu2 and sigma2"),
    ((FeatureStats(), np.eye(3)), "either two FeatureStats"),
])
def test_bad_inputs_refused(args, match):
  with pytest.raises(InputError, match=match):
    frechet_distance(*args)


def _rows(seed=0, n=257, d=48, offset=0.0):
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(d, d)) / np.sqrt(d)
  return rng.normal(size=(n, d)) @ mix + offset + rng.uniform(-1, 1, size=d)


def _assert_matches_numpy(stats, rows, rtol=1e-10):
  ref_cov = np.cov(rows, rowvar=False)
  assert stats.count == rows.shape[0]
  np.testing.assert_allclose(stats.mean, rows.mean(axis=0), rtol=rtol, atol=rtol * np.abs(rows.mean(axis=0)).max())
  np.testing.assert_allclose(stats.cov, ref_cov, rtol=rtol, atol=rtol * np.abs(ref_cov).max())


def test_streaming_uneven_chunks_equals_numpy():
  rows = _rows()
  stats = FeatureStats(dim=48)
  for lo, hi in [(0, 1), (1, 1), (1, 30), (30, 31), (31, 200), (200, 257)]:  # includes an empty chunk
    stats.update(rows[lo:hi])
  _assert_matches_numpy(stats, rows)
  # JAX arrays (float32 on the device) are accepted like numpy.
  rows32 = rows.astype(np.float32)
  stats32 = FeatureStats().update(jnp.asarray(rows32[:100])).update(rows32[100:])
  _assert_matches_numpy(stats32, rows32.astype(np.float64))


def test_merge_equals_numpy():
  rows = _rows(seed=1, offset=3.0)
  parts = [FeatureStats().update(rows[:5]), FeatureStats().update(rows[5:90]).update(rows[90:91]), FeatureStats(),
           FeatureStats().update(rows[91:])]
  merged = FeatureStats()
  for part in parts:
    merged.merge(part)
  _assert_matches_numpy(merged, rows)
  # Merging into a non-empty accumulator with a different shift.
  _assert_matches_numpy(FeatureStats().update(rows[200:]).merge(FeatureStats().update(rows[:200])),
                        np.concatenate([rows[200:], rows[:200]]))


def test_shifted_accumulation_survives_a_large_mean():
  """Why the sums are kept around a shift: with a mean 1e6 times the spread, the raw sums' formula loses every digit."""
  rows = _rows(seed=2, n=300, d=8, offset=1e6)
  stats = FeatureStats()
  for chunk in np.array_split(rows, 7):
    stats.update(chunk)
  _assert_matches_numpy(stats, rows, rtol=1e-8)
  n, total = rows.shape[0], rows.sum(axis=0)
  naive = (rows.T @ rows - np.outer(total, total) / n) / (n - 1)
  ref = np.cov(rows, rowvar=False)
  assert np.abs(naive - ref).max() > 1e-3 * np.abs(ref).max()


def test_save_load_round_trip_and_continue(tmp_path):
  rows = _rows(seed=3)
  stats = FeatureStats().update(rows[:150])
  path = tmp_path / "ref_stats"  # no .npz suffix: written at exactly this path
  stats.save(path)
  assert path.is_file()
  with np.load(path) as data:  # pytorch-fid reads the same keys
    np.testing.assert_array_equal(data["mu"], stats.mean)
    np.testing.assert_array_equal(data["sigma"], stats.cov)
  loaded = FeatureStats.load(path)
  assert loaded.count == 150 and loaded.dim == rows.shape[1]
  np.testing.assert_allclose(loaded.cov, stats.cov, rtol=1e-14)
  _assert_matches_numpy(loaded.update(rows[150:]), rows)


def test_statistics_errors(tmp_path):
  stats = FeatureStats(dim=4)
  with pytest.raises(InputError, match=r"features must be \[n, d\]"):
    stats.update(np.zeros(4))
  with pytest.raises(InputError, match="feature size 5, but these FeatureStats hold size 4"):
    stats.update(np.zeros((2, 5)))
  with pytest.raises(InputError, match="NaN"):
    stats.update(np.array([[0.0, np.inf, 0.0, 0.0]]))
  with pytest.raises(InputError, match="feature size 3"):
    stats.merge(FeatureStats().update(np.zeros((2, 3))))
  with pytest.raises(InputError, match="at least 1 row"):
    _ = stats.mean
  stats.update(np.ones((1, 4)))
  with pytest.raises(InputError, match="at least 2 rows"):
    _ = stats.cov
  with pytest.raises(InputError, match="at least 2 rows"):
    stats.save(tmp_path / "one_row.npz")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    FeatureStats.load(tmp_path / "missing.npz")
  np.savez(tmp_path / "pytorch_fid.npz", mu=np.zeros(4), sigma=np.eye(4))
  with pytest.raises(InputError, match="no 'count'"):
    FeatureStats.load(tmp_path / "pytorch_fid.npz")
  np.savez(tmp_path / "other.npz", x=np.zeros(4))
  with pytest.raises(InputError, match="not a feature statistics file"):
    FeatureStats.load(tmp_path / "other.npz")
