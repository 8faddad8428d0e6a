"""Confidence intervals for rates measured on a finite number of trials (accuracies of an evaluation)."""

from __future__ import annotations

import math
import statistics


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
  """Wilson score interval of a binomial rate successes / trials: (low, high), inside [0, 1].

  Unlike the normal approximation p +- z sqrt(p (1 - p) / n) it keeps its coverage near 0 and 1 and at small n, where
  evaluation accuracies often are, and it is never empty: 0 of n still gives an upper bound above 0.
  """
  if trials < 1 or not 0 <= successes <= trials:
    raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")
  z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
  p, z2 = successes / trials, z * z / trials
  centre = (p + z2 / 2) / (1 + z2)
  half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials)) / (1 + z2)
  # At 0 and at all successes the bound is exactly 0 or 1; computed, it is off by rounding.
  low = 0.0 if successes == 0 else max(0.0, centre - half)
  high = 1.0 if successes == trials else min(1.0, centre + half)
  return low, high
