"""The Frechet distance between two Gaussians fitted to features (FID, FVD), and streaming feature statistics.

    d^2 = ||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2))

`frechet_distance` follows the computation of the reference FID code (pytorch-fid, TTUR) so that numbers are
comparable: float64, scipy's `sqrtm` of the product, `eps * I` added to both covariances inside the square root when it
is not finite (here also when it is far from real), and a small imaginary part dropped. `FeatureStats` accumulates the
mean and covariance of any number of feature rows in memory that depends on the feature size only, merges across
workers, and caches as an npz file that pytorch-fid can read as well (`mu`, `sigma`, plus `count`).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, overload

import numpy as np
import scipy.linalg

from vidgen.errors import InputError

__all__ = ["FeatureStats", "frechet_distance"]

# The reference code's tolerance: a diagonal imaginary part above this means the product is far from having a real
# square root (covariances that are not positive semi-definite), not rounding.
_MAX_IMAGINARY = 1e-3


def _as_float64(value: Any, name: str) -> np.ndarray:
  try:
    array = np.asarray(value).astype(np.float64)
  except (TypeError, ValueError) as e:
    raise InputError(f"{name} must be a numeric array, got {type(value).__name__}: {e}") from e
  if not np.all(np.isfinite(array)):
    raise InputError(f"{name} contains NaN or infinite values")
  return array


def _usable(covmean: np.ndarray) -> bool:
  """Whether a computed sqrtm is finite and real up to rounding; otherwise the product is retried regularized."""
  if not np.all(np.isfinite(covmean)):
    return False
  return not np.iscomplexobj(covmean) or np.max(np.abs(np.diagonal(covmean).imag)) <= _MAX_IMAGINARY


def _gaussian(mu: Any, sigma: Any, which: str) -> tuple[np.ndarray, np.ndarray]:
  mu = _as_float64(mu, f"mu{which}")
  sigma = _as_float64(sigma, f"sigma{which}")
  if mu.ndim != 1:
    raise InputError(f"mu{which} must be a vector [d], got shape {mu.shape}")
  if sigma.shape != (mu.shape[0], mu.shape[0]):
    raise InputError(f"sigma{which} must be a [d, d] covariance with d = len(mu{which}) = {mu.shape[0]}, "
                     f"got shape {sigma.shape}")
  return mu, sigma


@overload
def frechet_distance(mu1: FeatureStats, sigma1: FeatureStats, *, eps: float = 1e-6) -> float:
  ...


@overload
def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, *, eps: float = 1e-6) -> float:
  ...


def frechet_distance(mu1, sigma1, mu2=None, sigma2=None, *, eps: float = 1e-6) -> float:
  """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

  Called as `frechet_distance(mu1, sigma1, mu2, sigma2)` with means [d] and covariances [d, d] (numpy or JAX
  arrays), or as `frechet_distance(stats_a, stats_b)` with two `FeatureStats`.

  Args:
    eps: added to both covariances' diagonals, and the square root computed again, when sqrtm(sigma1 @ sigma2) is not
      finite or has a large imaginary part (a singular or ill-conditioned product).

  Raises:
    InputError: mismatched shapes or non-finite values.
    ValueError: the square root is not finite or far from real even regularized (covariances that are not positive
      semi-definite).
  """
  if isinstance(mu1, FeatureStats) or isinstance(sigma1, FeatureStats):
    both = isinstance(mu1, FeatureStats) and isinstance(sigma1, FeatureStats)
    if not both or mu2 is not None or sigma2 is not None:
      raise InputError("frechet_distance takes either two FeatureStats or (mu1, sigma1, mu2, sigma2) arrays, got "
                       f"({type(mu1).__name__}, {type(sigma1).__name__}, {type(mu2).__name__}, "
                       f"{type(sigma2).__name__})")
    return frechet_distance(mu1.mean, mu1.cov, sigma1.mean, sigma1.cov, eps=eps)
  if mu2 is None or sigma2 is None:
    raise InputError("frechet_distance needs mu1, sigma1, mu2 and sigma2 (or two FeatureStats)")
  mu1, sigma1 = _gaussian(mu1, sigma1, "1")
  mu2, sigma2 = _gaussian(mu2, sigma2, "2")
  if mu1.shape != mu2.shape:
    raise InputError(f"the two Gaussians have different dimensions: mu1 {mu1.shape}, mu2 {mu2.shape}")

  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not _usable(covmean):
    offset = np.eye(mu1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if not np.all(np.isfinite(covmean)):
    raise ValueError(f"frechet_distance: sqrtm(sigma1 @ sigma2) is not finite even with eps={eps} added to the "
                     "covariances' diagonals")
  if np.iscomplexobj(covmean):
    imaginary = np.max(np.abs(np.diagonal(covmean).imag))
    if imaginary > _MAX_IMAGINARY:
      raise ValueError(f"frechet_distance: sqrtm(sigma1 @ sigma2) has an imaginary diagonal part of {imaginary:.3g} "
                       f"(> {_MAX_IMAGINARY}); the covariances are not positive semi-definite, or the features are "
                       f"degenerate")
    covmean = covmean.real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


class FeatureStats:
  """Running count, mean and covariance of feature rows [n, d], in float64, with memory O(d^2) whatever n is.

  The sums are kept relative to a shift (the mean of the first non-empty batch): the covariance is
  (S - s s^T / n) / (n - 1) with s, S the sums of (x - shift) and of its outer products, and without the shift that
  difference cancels catastrophically when the mean is large against the spread (a relative error of about
  1e-16 * (|mean| / std)^2). Features that are all positive, such as Inception's post-ReLU pool3, are such a case.
  """

  def __init__(self, dim: int | None = None):
    if dim is not None and dim < 1:
      raise InputError(f"FeatureStats dim must be >= 1, got {dim}")
    self.dim = dim
    self.count = 0
    self._shift: np.ndarray | None = None
    self._sum: np.ndarray | None = None
    self._sum_outer: np.ndarray | None = None

  def __repr__(self) -> str:
    return f"FeatureStats(dim={self.dim}, count={self.count})"

  def _check_dim(self, dim: int, what: str) -> None:
    if self.dim is not None and dim != self.dim:
      raise InputError(f"{what} has feature size {dim}, but these FeatureStats hold size {self.dim}")

  def update(self, features: Any) -> FeatureStats:
    """Adds feature rows [n, d] (numpy or JAX, any float dtype); n = 0 is allowed. Returns self."""
    x = _as_float64(features, "features")
    if x.ndim != 2:
      raise InputError(f"features must be [n, d] rows, got shape {x.shape}")
    self._check_dim(x.shape[1], "features")
    self.dim = x.shape[1]
    if x.shape[0] == 0:
      return self
    if self._shift is None:
      self._shift = x.mean(axis=0)
      self._sum = np.zeros(self.dim)
      self._sum_outer = np.zeros((self.dim, self.dim))
    centred = x - self._shift
    self._sum += centred.sum(axis=0)
    self._sum_outer += centred.T @ centred
    self.count += x.shape[0]
    return self

  def merge(self, other: FeatureStats) -> FeatureStats:
    """Adds the rows accumulated in `other` (e.g. by another worker) to these statistics. Returns self."""
    if not isinstance(other, FeatureStats):
      raise InputError(f"FeatureStats.merge takes FeatureStats, got {type(other).__name__}")
    if other.dim is not None:
      self._check_dim(other.dim, "the FeatureStats to merge")
      self.dim = other.dim
    if other.count == 0:
      return self
    if self.count == 0:
      self._shift, self._sum, self._sum_outer = other._shift.copy(), other._sum.copy(), other._sum_outer.copy()
      self.count = other.count
      return self
    # Re-express other's sums around our shift: x - ours = (x - theirs) + delta.
    delta = other._shift - self._shift
    cross = np.outer(other._sum, delta)
    self._sum += other._sum + other.count * delta
    self._sum_outer += other._sum_outer + cross + cross.T + other.count * np.outer(delta, delta)
    self.count += other.count
    return self

  @property
  def mean(self) -> np.ndarray:
    """[d] float64."""
    if self.count < 1:
      raise InputError("FeatureStats.mean needs at least 1 row; none were added")
    return self._shift + self._sum / self.count

  @property
  def cov(self) -> np.ndarray:
    """[d, d] float64, unbiased (divides by n - 1, like np.cov)."""
    if self.count < 2:
      raise InputError(f"FeatureStats.cov needs at least 2 rows, got {self.count}")
    cov = (self._sum_outer - np.outer(self._sum, self._sum) / self.count) / (self.count - 1)
    return 0.5 * (cov + cov.T)

  def save(self, path: str | os.PathLike) -> None:
    """Writes `mu`, `sigma` (the keys pytorch-fid reads) and `count` to an npz file at exactly `path`."""
    if self.count < 2:
      raise InputError(f"FeatureStats.save needs at least 2 rows (a covariance), got {self.count}")
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:  # A file object: np.savez would otherwise append ".npz" to the name.
      np.savez(f, mu=self.mean, sigma=self.cov, count=np.int64(self.count))
    os.replace(tmp, path)  # Readers of a shared cache never see a half-written file.

  @classmethod
  def load(cls, path: str | os.PathLike) -> FeatureStats:
    """Reads statistics written by `save`; they can be updated and merged like the original."""
    path = pathlib.Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"feature statistics file {path} does not exist")
    with np.load(path) as data:
      keys = set(data.files)
      if not {"mu", "sigma"} <= keys:
        raise InputError(f"{path} is not a feature statistics file: it needs arrays 'mu', 'sigma' and 'count', has "
                         f"{sorted(keys)}")
      if "count" not in keys:
        raise InputError(f"{path} has 'mu' and 'sigma' but no 'count' (a pytorch-fid statistics file?), so it cannot "
                         f"be updated or merged; pass its mu and sigma to frechet_distance directly")
      mu, sigma = _gaussian(data["mu"], data["sigma"], f" in {path}")
      count = int(data["count"])
    if count < 2:
      raise InputError(f"{path}: count must be >= 2, got {count}")
    stats = cls(mu.shape[0])
    # Shifted by the mean, the sums are 0 and (n - 1) * cov: the same statistics, ready for more rows.
    stats.count = count
    stats._shift = mu
    stats._sum = np.zeros_like(mu)
    stats._sum_outer = (count - 1) * sigma
    return stats
