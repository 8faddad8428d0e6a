"""Wilson score interval: published values, containment, coverage by simulation, bad input."""

import numpy as np
import pytest

from vidgen.metrics.intervals import wilson_interval


@pytest.mark.parametrize("successes,trials", [(81, 100), (0, 10), (10, 10), (5, 10), (1, 3)])
def test_bounds_are_where_the_score_test_stops_rejecting(successes, trials):
  """The Wilson bounds are the rates p with (phat - p)^2 = z^2 p (1 - p) / n: the roots of that quadratic in p."""
  z, phat = 1.959963984540054, successes / trials
  a, b, c = 1 + z * z / trials, -(2 * phat + z * z / trials), phat * phat
  expected = sorted(np.roots([a, b, c]).real)
  assert wilson_interval(successes, trials) == pytest.approx(expected, abs=1e-9)
  if successes == 81:
    assert wilson_interval(successes, trials) == pytest.approx((0.7222, 0.8749), abs=1e-4)


def test_interval_contains_the_estimate_and_narrows_with_more_trials():
  for trials in (1, 7, 50, 333):
    for successes in range(trials + 1):
      low, high = wilson_interval(successes, trials)
      assert 0.0 <= low <= successes / trials <= high <= 1.0
      assert low < high
  assert np.diff(wilson_interval(45, 50)) > np.diff(wilson_interval(450, 500))
  assert np.diff(wilson_interval(45, 50, 0.99)) > np.diff(wilson_interval(45, 50, 0.95))


@pytest.mark.parametrize("p", [0.3, 0.7, 0.9])
def test_coverage_is_about_the_confidence(p):
  rng = np.random.default_rng(int(p * 100))
  trials = 200
  draws = rng.binomial(trials, p, size=4000)
  covered = np.mean([low <= p <= high for low, high in (wilson_interval(int(k), trials) for k in draws)])
  assert 0.93 <= covered <= 0.97, covered


def test_bad_input_names_the_problem():
  with pytest.raises(ValueError, match="11 of 10"):
    wilson_interval(11, 10)
  with pytest.raises(ValueError, match="0 of 0"):
    wilson_interval(0, 0)
  with pytest.raises(ValueError, match="confidence"):
    wilson_interval(1, 2, confidence=1.0)
