"""Scaling-law fits with nonparametric bootstrap confidence intervals.

Public names:
  compute_optimal_frontier(compute, loss) -> (budgets, losses, indices): the lowest-loss point of each budget.
  fit_power_law(compute, loss) -> PowerLawFit:   L(C) = E + A C^-alpha  (E = 0 with irreducible=False).
  fit_isoflop(results) -> IsoflopFit:            Chinchilla approach 2, N_opt = k_N C^a, D_opt = k_D C^b.
  fit_chinchilla(params, tokens, loss) -> ChinchillaFit:
      Chinchilla approach 3, L(N, D) = E + A / N^alpha + B / D^beta; with C = k N D,
      N_opt(C) = G (C / k)^a, D_opt(C) = G^-1 (C / k)^b, G = (alpha A / (beta B))^(1 / (alpha + beta)),
      a = beta / (alpha + beta), b = alpha / (alpha + beta).

Intervals are percentile intervals of a nonparametric bootstrap, deterministic given `seed`: points resampled with
replacement, except that fit_isoflop by default resamples each profile's parabola residuals (see its docstring).
Resamples that cannot identify the model (too few distinct compute values, sizes or token counts; a parabola with no
minimum) are redrawn.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import optimize

Intervals = Mapping[str, tuple[float, float]]

_ALPHA_GRID = np.geomspace(1e-3, 3.0, 200)  # Exponents alpha that fit_power_law searches before refining.
_HUBER_DELTA = 1e-3                          # Hoffmann et al. 2022.


def _vector(name: str, values: Any) -> np.ndarray:
  """`values` as a 1-D float array, refused unless every entry is finite and positive."""
  x = np.asarray(values, dtype=np.float64)
  if x.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} has non-finite values")
  if np.any(x <= 0):
    raise ValueError(f"{name} must be positive, got min {x.min():g}")
  return x


def _vectors(**named: Any) -> list[np.ndarray]:
  """`_vector` on each argument, refused unless all have the same length."""
  out = [_vector(k, v) for k, v in named.items()]
  lengths = {k: len(v) for k, v in zip(named, out)}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"mismatched lengths: {lengths}")
  return out


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
  lo, hi = np.quantile(samples, [(1 - confidence) / 2, (1 + confidence) / 2])
  return float(lo), float(hi)


def _check_bootstrap(confidence: float, num_bootstrap: int) -> None:
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")
  if num_bootstrap < 1:
    raise ValueError(f"num_bootstrap must be >= 1, got {num_bootstrap}")


_MAX_REDRAWS = 1000  # Unidentifiable resamples redrawn before giving up.


def _resample(rng: np.random.Generator, n: int, ok) -> np.ndarray:
  """Indices of a bootstrap resample of n points, redrawn until `ok(indices)` holds."""
  for _ in range(_MAX_REDRAWS):
    idx = rng.integers(0, n, n)
    if ok(idx):
      return idx
  raise ValueError(f"no bootstrap resample of {n} points in {_MAX_REDRAWS} draws could identify the fit")


def compute_optimal_frontier(compute: Sequence[float], loss: Sequence[float]
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The compute-optimal frontier: the lowest loss reached at each compute budget.

  Points are grouped by exact equality of `compute`, so pass the budget each run was assigned (the `flops` of its
  profile), not the FLOPs it happened to use.

  Args:
    compute: [P] compute budget of each point.
    loss: [P] final loss of each point.
  Returns:
    (budgets [B], losses [B], indices [B]): distinct budgets in increasing order, the lowest loss of each, and the
    index in the inputs of the point that reached it.
  """
  compute, loss = _vectors(compute=compute, loss=loss)
  budgets = np.unique(compute)
  indices = np.array([np.flatnonzero(compute == c)[np.argmin(loss[compute == c])] for c in budgets], dtype=np.int64)
  return budgets, loss[indices], indices


# --------------------------------------------------------------------------------------------------- power law


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
  """L(C) = E + A C^-alpha. `intervals` maps "E", "A", "alpha" to (lo, hi) at `confidence`."""
  E: float
  A: float
  alpha: float
  intervals: Intervals
  num_points: int
  irreducible: bool
  confidence: float

  def predict(self, compute: Any) -> np.ndarray:
    """Loss at compute budget(s) `compute` (any shape)."""
    return self.E + self.A * np.asarray(compute, dtype=np.float64) ** -self.alpha


def _projected(alpha: np.ndarray, logc: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, ...]:
  """For each alpha in [K], the E >= 0, A >= 0 minimising sum ((E + A x - L) / L)^2, x = exp(-alpha logc).

  Returns (sse [K], E [K], A [K]). Weights 1 / L make the residuals relative, close to log-loss residuals.
  """
  w = 1.0 / loss**2
  x = np.exp(-alpha[:, None] * logc[None, :])                                # [K, P]
  sw, swx, swxx = w.sum(), (w * x).sum(1), (w * x * x).sum(1)
  swl, swxl = (w * loss).sum(), (w * x * loss).sum(1)
  det = sw * swxx - swx**2
  with np.errstate(divide="ignore", invalid="ignore"):
    e_free = np.where(det > 0, (swxx * swl - swx * swxl) / det, -1.0)
    a_free = np.where(det > 0, (sw * swxl - swx * swl) / det, -1.0)
  # When the free solution leaves the orthant, the constrained optimum lies on one of its faces.
  cands = [(e_free, a_free), (np.zeros_like(swx), np.maximum(swxl / swxx, 0.0)),
           (np.full_like(swx, swl / sw), np.zeros_like(swx))]
  best = None
  for e, a in cands:
    feasible = (e >= 0) & (a >= 0)
    sse = np.where(feasible, (w * (e[:, None] + a[:, None] * x - loss) ** 2).sum(1), np.inf)
    best = (sse, e, a) if best is None else tuple(np.where(sse < best[0], n, o) for n, o in zip((sse, e, a), best))
  return best


def _power_law(logc: np.ndarray, loss: np.ndarray, irreducible: bool) -> tuple[float, float, float]:
  """(E, A, alpha) in units where compute is exp(logc)."""
  if not irreducible:
    slope, intercept = np.polyfit(logc, np.log(loss), 1)
    return 0.0, float(np.exp(intercept)), float(-slope)
  # Variable projection: E and A are a linear solve for each alpha, so only alpha is searched.
  sse = _projected(_ALPHA_GRID, logc, loss)[0]
  k = int(np.argmin(sse))
  lo, hi = _ALPHA_GRID[max(k - 1, 0)], _ALPHA_GRID[min(k + 1, len(_ALPHA_GRID) - 1)]
  res = optimize.minimize_scalar(lambda a: _projected(np.array([a]), logc, loss)[0][0], bounds=(lo, hi),
                                 method="bounded", options={"xatol": 1e-7})
  alpha = float(res.x) if res.fun <= sse[k] else float(_ALPHA_GRID[k])
  _, e, a = _projected(np.array([alpha]), logc, loss)
  return float(e[0]), float(a[0]), alpha


def fit_power_law(compute: Sequence[float], loss: Sequence[float], *, irreducible: bool = True,
                  confidence: float = 0.95, num_bootstrap: int = 400, seed: int = 0) -> PowerLawFit:
  """Fits L(C) = E + A C^-alpha to the points given (normally `compute_optimal_frontier`'s).

  With irreducible=True, E >= 0 and A >= 0 are solved linearly for each alpha and alpha (in [1e-3, 3]) is found by a
  grid and Brent's method, minimising relative squared residuals. With irreducible=False, E = 0 and log L = log A -
  alpha log C is fitted by least squares: use it when the sweep is too short to identify E.

  Args:
    compute: [P] compute budgets (FLOPs), P >= 3 with >= 2 distinct values (>= 3 when irreducible).
    loss: [P] losses at those budgets.
    irreducible: whether to fit the irreducible loss E.
    confidence: coverage of the bootstrap intervals.
    num_bootstrap: bootstrap resamples.
    seed: seed of the resampling.
  Returns:
    PowerLawFit with E, A, alpha and their intervals.
  """
  compute, loss = _vectors(compute=compute, loss=loss)
  _check_bootstrap(confidence, num_bootstrap)
  need = 3 if irreducible else 2
  if len(loss) < 3:
    raise ValueError(f"fit_power_law needs at least 3 points, got {len(loss)}")
  if len(np.unique(compute)) < need:
    raise ValueError(f"fit_power_law needs at least {need} distinct compute values"
                     f"{' to fit E' if irreducible else ''}, got {len(np.unique(compute))}")
  # Compute relative to its geometric mean keeps C^-alpha near 1; A is converted back to FLOPs below.
  logc0 = float(np.mean(np.log(compute)))
  logc = np.log(compute) - logc0

  def fit(idx):
    e, a, alpha = _power_law(logc[idx], loss[idx], irreducible)
    return e, a * np.exp(alpha * logc0), alpha

  full = fit(np.arange(len(loss)))
  rng = np.random.default_rng(seed)
  boot = np.array([fit(_resample(rng, len(loss), lambda i: len(np.unique(compute[i])) >= need))
                   for _ in range(num_bootstrap)])
  intervals = {name: _interval(boot[:, j], confidence) for j, name in enumerate(("E", "A", "alpha"))}
  return PowerLawFit(E=full[0], A=full[1], alpha=full[2], intervals=intervals, num_points=len(loss),
                     irreducible=irreducible, confidence=confidence)


# ------------------------------------------------------------------------------------------ isoflop (approach 2)


@dataclasses.dataclass(frozen=True)
class IsoflopProfile:
  """The parabola fitted to one budget: loss = c0 + c1 log N + curvature (log N)^2 near its minimum."""
  budget: float
  params: float       # N at the parabola's minimum.
  tokens: float       # D at that N, from the profile's own log D vs log N line.
  loss: float         # Loss at the minimum.
  curvature: float    # Coefficient of (ln N)^2.
  interior: bool      # Whether the minimum lies within the profile's range of N.
  num_points: int


@dataclasses.dataclass(frozen=True)
class IsoflopFit:
  """N_opt = k_N C^a, D_opt = k_D C^b. `intervals` maps "a", "b", "k_N", "k_D" to (lo, hi)."""
  a: float
  b: float
  k_N: float
  k_D: float
  intervals: Intervals
  profiles: tuple[IsoflopProfile, ...]   # One per budget, increasing; only interior ones enter a, b, k_N, k_D.
  num_points: int
  confidence: float

  def optimal_params(self, compute: Any) -> np.ndarray:
    return self.k_N * np.asarray(compute, dtype=np.float64) ** self.a

  def optimal_tokens(self, compute: Any) -> np.ndarray:
    return self.k_D * np.asarray(compute, dtype=np.float64) ** self.b

  def predict(self, compute: Any) -> tuple[np.ndarray, np.ndarray]:
    """(N_opt, D_opt) at compute budget(s) `compute`."""
    return self.optimal_params(compute), self.optimal_tokens(compute)


def _parabola(logn: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(fitted loss [P], residuals scaled by 1 / sqrt(1 - leverage) [P]) of the parabola of loss against ln N."""
  x = logn - logn.mean()
  design = np.stack([np.ones_like(x), x, x * x], axis=1)
  coef, *_ = np.linalg.lstsq(design, loss, rcond=None)
  fitted = design @ coef
  leverage = np.einsum("ij,ji->i", design, np.linalg.pinv(design))
  # Raw residuals of a 3-parameter fit to ~5 points understate the noise; leverage-scaled ones do not.
  resid = (loss - fitted) / np.sqrt(np.maximum(1.0 - leverage, 1e-12))
  return fitted, resid - resid.mean()


def _vertex(logn: np.ndarray, logd: np.ndarray, loss: np.ndarray) -> tuple[float, float, float, float]:
  """(log N_opt, log D_opt, loss at the minimum, curvature) of one profile; curvature may be <= 0."""
  mid = logn.mean()  # Centred so the quadratic's columns are not nearly collinear.
  c2, c1, c0 = np.polyfit(logn - mid, loss, 2)
  if c2 <= 0:
    return np.nan, np.nan, np.nan, float(c2)
  x = -c1 / (2 * c2)
  # C is fixed within a profile, so log D is linear in log N (exactly, if FLOPs per param-token were constant).
  slope, intercept = np.polyfit(logn - mid, logd, 1)
  return float(x + mid), float(intercept + slope * x), float(c0 - c1 * c1 / (4 * c2)), float(c2)


def _loglog(logc: np.ndarray, logy: np.ndarray) -> tuple[float, float]:
  """(exponent, log coefficient) of y = k C^exponent by least squares in log-log."""
  slope, intercept = np.polyfit(logc, logy, 1)
  return float(slope), float(intercept)


def fit_isoflop(results: Sequence[Mapping[str, Any]], *, budget_key: str = "flops", params_key: str = "params",
                tokens_key: str = "tokens", loss_key: str = "loss", bootstrap: str = "residuals",
                confidence: float = 0.95, num_bootstrap: int = 400, seed: int = 0) -> IsoflopFit:
  """Chinchilla approach 2: per-budget parabolas of loss against ln N, then power laws through their minima.

  Rows are grouped by exact equality of `results[i][budget_key]` (the budget the run was assigned). Each budget's
  profile (>= 3 distinct N) gets a parabola in ln N; its minimum is N_opt(C), and D_opt(C) is read off the profile's
  own linear ln D vs ln N relation at ln N_opt (not C / (6 N_opt): our FLOPs per param-token are not 6 and vary with
  size). A minimum outside the profile's N range is extrapolated and flagged `interior=False`; such budgets are
  reported but left out of a, b, k_N, k_D, which need >= 2 interior budgets.

  The bootstrap works within each profile and refits everything on the budgets that were interior on the full data.
  By default it resamples the parabola's leverage-scaled residuals onto its fitted values at the profile's own N
  (the sizes are a design, not a sample). Resampling (N, D, loss) points ("pairs") is offered too, but with ~5 points
  per profile its resamples often hold 3 distinct sizes, whose exact-fit parabolas put the minimum anywhere: on
  synthetic sweeps its intervals on a came out ~9x wider than the spread of the estimates, the residual ones ~1x.

  Args:
    results: [P] rows with the budget, N, D and loss under the keys named.
    budget_key, params_key, tokens_key, loss_key: names of those fields.
    bootstrap: "residuals" or "pairs", as above.
    confidence, num_bootstrap, seed: see `fit_power_law`.
  Returns:
    IsoflopFit with a, b, k_N, k_D, their intervals, and the per-budget profiles.
  Raises:
    ValueError: a missing key, bad values, < 2 budgets, a profile with < 3 distinct N or curvature <= 0 (naming the
      budget), or < 2 interior minima.
  """
  _check_bootstrap(confidence, num_bootstrap)
  if bootstrap not in ("residuals", "pairs"):
    raise ValueError(f"bootstrap must be 'residuals' or 'pairs', got {bootstrap!r}")
  keys = (budget_key, params_key, tokens_key, loss_key)
  for i, row in enumerate(results):
    missing = [k for k in keys if k not in row]
    if missing:
      raise ValueError(f"results[{i}] lacks {missing}")
  budget, params, tokens, loss = _vectors(**{k: [row[k] for row in results] for k in keys})
  budgets = np.unique(budget)
  if len(budgets) < 2:
    raise ValueError(f"fit_isoflop needs at least 2 budgets, got {len(budgets)}")
  groups = [np.flatnonzero(budget == c) for c in budgets]
  logn, logd = np.log(params), np.log(tokens)
  profiles = []
  for c, g in zip(budgets, groups):
    if len(np.unique(params[g])) < 3:
      raise ValueError(f"budget {c:g} has {len(np.unique(params[g]))} distinct model sizes; a parabola needs 3")
    x, y, l, c2 = _vertex(logn[g], logd[g], loss[g])
    if not c2 > 0:
      raise ValueError(f"budget {c:g}: loss vs ln N has curvature {c2:.3g} <= 0, so no minimum")
    interior = bool(logn[g].min() <= x <= logn[g].max())
    profiles.append(IsoflopProfile(float(c), float(np.exp(x)), float(np.exp(y)), l, c2, interior, len(g)))
  used = [j for j, p in enumerate(profiles) if p.interior]
  if len(used) < 2:
    outside = [f"{p.budget:g}" for p in profiles if not p.interior]
    raise ValueError(f"fit_isoflop needs at least 2 budgets whose minimum lies inside their range of N, got "
                     f"{len(used)} (minimum outside at budgets {', '.join(outside)})")
  logc = np.log(budgets[used])

  def exponents(optima):
    a, ln_kn = _loglog(logc, optima[:, 0])
    b, ln_kd = _loglog(logc, optima[:, 1])
    with np.errstate(over="ignore"):  # k is N_opt at C = 1 FLOP: far outside the data, so wild in some resamples.
      return a, b, np.exp(ln_kn), np.exp(ln_kd)

  full = exponents(np.log([[profiles[j].params, profiles[j].tokens] for j in used]))
  rng = np.random.default_rng(seed)
  fits = {j: _parabola(logn[groups[j]], loss[groups[j]]) for j in used}
  boot = []
  for _ in range(num_bootstrap):
    optima = []
    for j in used:
      g = groups[j]
      for _ in range(_MAX_REDRAWS):  # A resample whose parabola has no minimum says nothing of N_opt: redraw it.
        if bootstrap == "residuals":
          idx, y = g, fits[j][0] + fits[j][1][rng.integers(0, len(g), len(g))]
        else:
          idx = g[_resample(rng, len(g), lambda i, g=g: len(np.unique(params[g[i]])) >= 3)]
          y = loss[idx]
        x, d, _, c2 = _vertex(logn[idx], logd[idx], y)
        if c2 > 0:
          break
      else:
        raise ValueError(f"budget {budgets[j]:g}: no bootstrap resample in {_MAX_REDRAWS} draws had a minimum")
      optima.append((x, d))
    boot.append(exponents(np.array(optima)))
  boot = np.array(boot)
  intervals = {name: _interval(boot[:, j], confidence) for j, name in enumerate(("a", "b", "k_N", "k_D"))}
  return IsoflopFit(a=full[0], b=full[1], k_N=float(full[2]), k_D=float(full[3]), intervals=intervals,
                    profiles=tuple(profiles), num_points=len(loss), confidence=confidence)


# --------------------------------------------------------------------------------------- Chinchilla (approach 3)


@dataclasses.dataclass(frozen=True)
class ChinchillaFit:
  """L(N, D) = E + A / N^alpha + B / D^beta and the allocation it implies at C = flops_per_param_token N D.

  `intervals` maps "E", "A", "B", "alpha", "beta", "a", "b" to (lo, hi) at `confidence`.
  """
  E: float
  A: float
  B: float
  alpha: float
  beta: float
  a: float                     # beta / (alpha + beta): N_opt grows as C^a.
  b: float                     # alpha / (alpha + beta): D_opt grows as C^b.
  G: float                     # (alpha A / (beta B))^(1 / (alpha + beta)).
  flops_per_param_token: float
  intervals: Intervals
  num_points: int
  confidence: float

  def predict(self, params: Any, tokens: Any) -> np.ndarray:
    """Loss of N = `params` trained on D = `tokens` (broadcast)."""
    n, d = np.asarray(params, dtype=np.float64), np.asarray(tokens, dtype=np.float64)
    return self.E + self.A * n**-self.alpha + self.B * d**-self.beta

  def optimal_params(self, compute: Any) -> np.ndarray:
    return self.G * (np.asarray(compute, dtype=np.float64) / self.flops_per_param_token) ** self.a

  def optimal_tokens(self, compute: Any) -> np.ndarray:
    return (np.asarray(compute, dtype=np.float64) / self.flops_per_param_token) ** self.b / self.G


def _lse(terms: np.ndarray) -> np.ndarray:
  """log sum exp over axis 0 (scipy's logsumexp costs more than the whole objective on ~30 points)."""
  top = terms.max(axis=0)
  return top + np.log(np.exp(terms - top).sum(axis=0))


def _huber(r: np.ndarray) -> np.ndarray:
  return np.where(np.abs(r) <= _HUBER_DELTA, 0.5 * r * r, _HUBER_DELTA * (np.abs(r) - 0.5 * _HUBER_DELTA))


def _huber_objective(theta: np.ndarray, n: np.ndarray, d: np.ndarray, logl: np.ndarray) -> np.ndarray:
  """Summed Huber loss of log residuals for theta [K, 5] = (a, b, e, alpha, beta) on [P] points; returns [K]."""
  a, b, e, alpha, beta = (c[:, None] for c in theta.T)
  terms = np.stack([a - alpha * n, b - beta * d, np.broadcast_to(e, (len(theta), len(n)))])
  return _huber(_lse(terms) - logl).sum(-1)


def _huber_and_grad(theta: np.ndarray, n: np.ndarray, d: np.ndarray, logl: np.ndarray) -> tuple[float, np.ndarray]:
  """`_huber_objective` of one theta [5] and its gradient, both divided by the Huber delta."""
  a, b, e, alpha, beta = theta
  terms = np.stack([a - alpha * n, b - beta * d, np.full_like(n, e)])
  lse = _lse(terms)
  w = np.exp(terms - lse)                                                      # Softmax: d lse / d term.
  r = lse - logl
  h = np.clip(r, -_HUBER_DELTA, _HUBER_DELTA)
  grad = np.array([h @ w[0], h @ w[1], h @ w[2], -(h * n) @ w[0], -(h * d) @ w[1]])
  # Scaled by 1 / delta so the optimisers' absolute tolerances are not met by the tiny raw Huber values.
  return float(_huber(r).sum()) / _HUBER_DELTA, grad / _HUBER_DELTA


# Initialisations (in units where N and D are relative to their geometric means), after Hoffmann et al. 2022.
_CHINCHILLA_GRID = np.array(list(itertools.product(
    np.linspace(-3, 1, 5), np.linspace(-3, 1, 5), np.linspace(-2, 1, 4), np.linspace(0.1, 1.5, 5),
    np.linspace(0.1, 1.5, 5))))
_CHINCHILLA_BOUNDS = [(None, None)] * 3 + [(0.0, 5.0)] * 2


def _minimise(x0: np.ndarray, n: np.ndarray, d: np.ndarray, logl: np.ndarray) -> optimize.OptimizeResult:
  """Minimum of `_huber_and_grad` from x0: BFGS, or L-BFGS-B (bounds alpha, beta in [0, 5]) where BFGS leaves them.

  Both find the same optimum to ~1e-9, but scipy's L-BFGS-B calls threaded BLAS on these 5-parameter problems, which
  on a busy 2-core machine costs ~10x its arithmetic and makes a bootstrap of a few hundred fits take tens of seconds.
  """
  res = optimize.minimize(_huber_and_grad, x0, args=(n, d, logl), jac=True, method="BFGS", options={"gtol": 1e-6})
  if np.all(np.isfinite(res.x)) and np.all((res.x[3:] >= 0) & (res.x[3:] <= _CHINCHILLA_BOUNDS[3][1])):
    return res
  return optimize.minimize(_huber_and_grad, x0, args=(n, d, logl), jac=True, method="L-BFGS-B",
                           bounds=_CHINCHILLA_BOUNDS, options={"maxiter": 2000, "ftol": 1e-13, "gtol": 1e-9})


def _chinchilla(n: np.ndarray, d: np.ndarray, logl: np.ndarray, starts: np.ndarray) -> np.ndarray:
  """Best (a, b, e, alpha, beta) over the minimisations from each row of `starts`."""
  return min((_minimise(x0, n, d, logl) for x0 in starts), key=lambda res: res.fun).x


def fit_chinchilla(params: Sequence[float], tokens: Sequence[float], loss: Sequence[float], *,
                   flops_per_param_token: float = 6.0, num_starts: int = 8, bootstrap_starts: int = 0,
                   confidence: float = 0.95, num_bootstrap: int = 200, seed: int = 0) -> ChinchillaFit:
  """Chinchilla approach 3: L(N, D) = E + A / N^alpha + B / D^beta by a Huber loss on log residuals.

  As in Hoffmann et al. 2022, the model is log L = LSE(a - alpha ln N, b - beta ln D, e) with A = e^a, B = e^b,
  E = e^e, the loss is Huber (delta 1e-3) on log L_hat - log L, and a quasi-Newton method runs from a grid of
  initialisations, keeping the best (BFGS, with L-BFGS-B where BFGS leaves alpha, beta in [0, 5]: see `_minimise`).
  The grid (2500 points) is evaluated at once and minimisations start from its `num_starts` best points. Each
  bootstrap resample (of points, with replacement) starts from the full-data optimum and its own `bootstrap_starts`
  best grid points.

  Args:
    params: [P] model sizes N.
    tokens: [P] training tokens D.
    loss: [P] final losses; P >= 5 with >= 2 distinct N and >= 2 distinct D.
    flops_per_param_token: k in C = k N D (6 for a plain transformer; pass the model's own).
    num_starts: minimisations on the full data (from the best grid points).
    bootstrap_starts: grid starts per bootstrap resample, besides the full-data optimum (0: that one only).
    confidence, num_bootstrap, seed: see `fit_power_law`.
  Returns:
    ChinchillaFit with E, A, B, alpha, beta, a, b, G and intervals.
  """
  params, tokens, loss = _vectors(params=params, tokens=tokens, loss=loss)
  _check_bootstrap(confidence, num_bootstrap)
  if not (np.isfinite(flops_per_param_token) and flops_per_param_token > 0):
    raise ValueError(f"flops_per_param_token must be positive, got {flops_per_param_token}")
  if len(loss) < 5:
    raise ValueError(f"fit_chinchilla needs at least 5 points (5 parameters), got {len(loss)}")
  for name, x in (("model sizes", params), ("token counts", tokens)):
    if len(np.unique(x)) < 2:
      raise ValueError(f"fit_chinchilla needs at least 2 distinct {name}, got {len(np.unique(x))}")
  # N and D relative to their geometric means keep a and b near 0; converted back to raw units below.
  ln0, ld0 = np.mean(np.log(params)), np.mean(np.log(tokens))
  n, d, logl = np.log(params) - ln0, np.log(tokens) - ld0, np.log(loss)

  def fit(idx, starts, warm=None):
    x0 = np.zeros((0, 5)) if warm is None else warm[None]
    if starts:  # The grid costs one vectorised evaluation; only its best points are worth a minimisation.
      order = np.argsort(_huber_objective(_CHINCHILLA_GRID, n[idx], d[idx], logl[idx]))[:starts]
      x0 = np.vstack([x0, _CHINCHILLA_GRID[order]])
    return _chinchilla(n[idx], d[idx], logl[idx], x0)

  def values(theta):
    a, b, e, alpha, beta = theta
    big_a, big_b = np.exp(a + alpha * ln0), np.exp(b + beta * ld0)
    with np.errstate(divide="ignore", invalid="ignore"):
      return (np.exp(e), big_a, big_b, alpha, beta, beta / (alpha + beta), alpha / (alpha + beta),
              (alpha * big_a / (beta * big_b)) ** (1 / (alpha + beta)))

  theta = fit(np.arange(len(loss)), num_starts)
  rng = np.random.default_rng(seed)
  ok = lambda i: len(np.unique(params[i])) >= 2 and len(np.unique(tokens[i])) >= 2
  boot = np.array([values(fit(_resample(rng, len(loss), ok), bootstrap_starts, theta))[:7]
                   for _ in range(num_bootstrap)])
  names = ("E", "A", "B", "alpha", "beta", "a", "b")
  intervals = {name: _interval(boot[:, j], confidence) for j, name in enumerate(names)}
  E, A, B, alpha, beta, a, b, G = (float(v) for v in values(theta))
  return ChinchillaFit(E=E, A=A, B=B, alpha=alpha, beta=beta, a=a, b=b, G=G,
                       flops_per_param_token=float(flops_per_param_token), intervals=intervals,
                       num_points=len(loss), confidence=confidence)
