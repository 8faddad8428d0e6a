"""Tests for vidgen.scaling.fits: recovery of known laws, bootstrap coverage, and refusal of degenerate inputs.

Synthetic data use Hoffmann et al.'s fitted A, B, alpha, beta with E = 0.5 and multiplicative log-normal noise of
0.5% on the loss.
"""

from __future__ import annotations

import numpy as np
import pytest

from vidgen.scaling.fits import compute_optimal_frontier, fit_chinchilla, fit_isoflop, fit_power_law

E, A, B, ALPHA, BETA = 0.5, 406.4, 410.7, 0.34, 0.28
A_OPT, B_OPT = BETA / (ALPHA + BETA), ALPHA / (ALPHA + BETA)
G = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
SIGMA = 0.005


def chinchilla_loss(n, d):
  return E + A * n**-ALPHA + B * d**-BETA


def noisy(loss, rng, sigma=SIGMA):
  return loss * np.exp(sigma * rng.standard_normal(np.shape(loss)))


def power_law_sweep(rng, num=5, decades=2.0, e=0.0, alpha=0.3):
  """Frontier points of L = e + 2 (C / 1e17)^-alpha at `num` budgets over `decades`."""
  compute = np.geomspace(1e17, 1e17 * 10**decades, num)
  return compute, noisy(e + 2.0 * (compute / 1e17) ** -alpha, rng)


def isoflop_sweep(rng, budgets=np.geomspace(1e18, 1e20, 5), offsets=np.linspace(-2, 2, 5), k=lambda n: 6.0,
                  jitter=0.3):
  """Rows of 5 profiles with 5 sizes each, spread over ln N_opt(C) + offsets (shifted by up to +-jitter)."""
  rows = []
  for c in budgets:
    shift = rng.uniform(-jitter, jitter)
    for o in offsets:
      n = G * (c / 6) ** A_OPT * np.exp(o + shift)
      d = c / (k(n) * n)
      rows.append({"flops": c, "params": n, "tokens": d, "loss": noisy(chinchilla_loss(n, d), rng)})
  return rows


def chinchilla_grid(rng, num=6, decades=3.0):
  """A num x num grid of N in [1e7, 1e7 * 10^decades] and D in [1e9, 1e9 * 10^decades]."""
  n, d = (x.ravel() for x in np.meshgrid(np.geomspace(1e7, 1e7 * 10**decades, num),
                                         np.geomspace(1e9, 1e9 * 10**decades, num)))
  return n, d, noisy(chinchilla_loss(n, d), rng)


def covers(fit, name, truth):
  lo, hi = fit.intervals[name]
  return lo <= truth <= hi


def test_frontier_picks_lowest_loss_per_budget():
  compute = [1e18, 1e18, 1e19, 1e19, 1e19, 1e17]
  loss = [3.0, 2.5, 2.4, 2.2, 2.3, 3.5]
  budgets, best, index = compute_optimal_frontier(compute, loss)
  np.testing.assert_array_equal(budgets, [1e17, 1e18, 1e19])
  np.testing.assert_array_equal(best, [3.5, 2.5, 2.2])
  np.testing.assert_array_equal(index, [5, 1, 3])


def test_power_law_recovers_pure_power_law():
  # 5 budgets over 2 decades: alpha's spread over replicates is ~0.0015.
  compute, loss = power_law_sweep(np.random.default_rng(0))
  fit = fit_power_law(compute, loss, irreducible=False)
  assert abs(fit.alpha - 0.3) < 0.02 and fit.E == 0.0
  assert covers(fit, "alpha", 0.3) and fit.num_points == 5
  np.testing.assert_allclose(fit.predict(compute), 2.0 * (compute / 1e17) ** -0.3, rtol=0.01)


def test_power_law_recovers_exponent_with_irreducible_loss():
  # E must be told apart from the power law: 10 budgets over 3 decades give alpha a spread of ~0.004 (5 budgets
  # over 2 decades give ~0.009).
  compute, loss = power_law_sweep(np.random.default_rng(1), num=10, decades=3.0, e=0.3)
  fit = fit_power_law(compute, loss, num_bootstrap=200)
  assert abs(fit.alpha - 0.3) < 0.02, fit
  assert abs(fit.E - 0.3) < 0.05, fit
  assert covers(fit, "alpha", 0.3) and covers(fit, "E", 0.3)
  np.testing.assert_allclose(fit.predict(compute), 0.3 + 2.0 * (compute / 1e17) ** -0.3, rtol=0.01)


def test_power_law_is_deterministic_given_seed():
  compute, loss = power_law_sweep(np.random.default_rng(2))
  first, second = (fit_power_law(compute, loss, num_bootstrap=50, seed=3) for _ in range(2))
  assert first == second
  assert fit_power_law(compute, loss, num_bootstrap=50, seed=4).intervals != first.intervals


def test_isoflop_recovers_exponents():
  # Sizes span e^4 ~ 55x per profile; a's spread over replicates is ~0.007.
  fit = fit_isoflop(isoflop_sweep(np.random.default_rng(0)), num_bootstrap=200)
  assert abs(fit.a - A_OPT) < 0.02 and abs(fit.b - B_OPT) < 0.02, fit
  assert covers(fit, "a", A_OPT) and covers(fit, "b", B_OPT)
  assert len(fit.profiles) == 5 and all(p.interior for p in fit.profiles) and fit.num_points == 25
  c = 1e19
  n_opt, d_opt = fit.predict(c)
  np.testing.assert_allclose(n_opt, G * (c / 6) ** A_OPT, rtol=0.1)
  np.testing.assert_allclose(n_opt * d_opt * 6, c, rtol=0.01)


def test_isoflop_reads_tokens_off_the_profile():
  # FLOPs per param-token that grow with N: D_opt is C / (k(N_opt) N_opt), not C / (6 N_opt).
  k = lambda n: 6.0 * (n / 1e8) ** 0.1
  rows = isoflop_sweep(np.random.default_rng(0), k=k)
  for p in fit_isoflop(rows, num_bootstrap=10).profiles:
    np.testing.assert_allclose(p.tokens, p.budget / (k(p.params) * p.params), rtol=1e-9)


def test_chinchilla_recovers_exponents():
  # 6 x 6 grid over 3 decades of N and of D: spreads over replicates ~0.004 (alpha), 0.005 (beta, a, b).
  params, tokens, loss = chinchilla_grid(np.random.default_rng(0))
  fit = fit_chinchilla(params, tokens, loss, num_bootstrap=100)
  for name, truth in (("alpha", ALPHA), ("beta", BETA), ("a", A_OPT), ("b", B_OPT)):
    assert abs(getattr(fit, name) - truth) < 0.02, (name, fit)
    assert covers(fit, name, truth), (name, fit)
  np.testing.assert_allclose(fit.predict(params, tokens), chinchilla_loss(params, tokens), rtol=0.01)
  c = np.array([1e18, 1e21])
  np.testing.assert_allclose(fit.optimal_params(c) * fit.optimal_tokens(c) * 6, c, rtol=1e-9)
  np.testing.assert_allclose(fit.optimal_params(c), G * (c / 6) ** A_OPT, rtol=0.3)
  # The allocation is the minimum of the fitted loss along C = k N D, for any k.
  fit8 = fit_chinchilla(params, tokens, loss, flops_per_param_token=8.0, num_bootstrap=2)
  n = fit8.optimal_params(1e20) * np.exp(np.linspace(-0.1, 0.1, 21))
  assert np.argmin(fit8.predict(n, 1e20 / (8.0 * n))) == 10


def test_power_law_coverage():
  # Nominal 95% over 100 replicates of an 8-point frontier; 89 cover (with 5 points ~84%: the percentile bootstrap
  # of so few pairs runs narrow).
  rng = np.random.default_rng(10)
  hits = 0
  for seed in range(100):
    compute, loss = power_law_sweep(rng, num=8)
    hits += covers(fit_power_law(compute, loss, irreducible=False, num_bootstrap=200, seed=seed), "alpha", 0.3)
  assert 80 <= hits <= 100, hits


def test_isoflop_coverage():
  # Nominal 95% over 60 replicates of the 5 x 5 sweep; 54 cover.
  rng = np.random.default_rng(11)
  hits = 0
  for seed in range(60):
    fit = fit_isoflop(isoflop_sweep(rng), num_bootstrap=100, seed=seed)
    hits += covers(fit, "a", A_OPT)
  assert 48 <= hits <= 60, hits


def test_chinchilla_coverage():
  # Nominal 95% over 30 replicates (few: each costs a multi-start fit); 29 cover. At a true 90%, P(< 24 of 30) ~ 3%.
  rng = np.random.default_rng(12)
  hits = 0
  for seed in range(30):
    params, tokens, loss = chinchilla_grid(rng, num=5)
    fit = fit_chinchilla(params, tokens, loss, num_starts=4, num_bootstrap=60, seed=seed)
    hits += covers(fit, "a", A_OPT)
  assert 24 <= hits <= 30, hits


def test_power_law_refuses_degenerate_inputs():
  with pytest.raises(ValueError, match="at least 3 points, got 2"):
    fit_power_law([1e18, 1e19], [2.0, 1.5])
  with pytest.raises(ValueError, match="at least 2 distinct compute values, got 1"):
    fit_power_law([1e18] * 4, [2.0, 1.9, 2.1, 2.0], irreducible=False)
  with pytest.raises(ValueError, match="at least 3 distinct compute values to fit E, got 2"):
    fit_power_law([1e18, 1e18, 1e19], [2.0, 1.9, 1.5])
  with pytest.raises(ValueError, match="loss must be positive"):
    fit_power_law([1e17, 1e18, 1e19], [2.0, 0.0, 1.5])
  with pytest.raises(ValueError, match="compute has non-finite values"):
    fit_power_law([1e17, np.nan, 1e19], [2.0, 1.8, 1.5])
  with pytest.raises(ValueError, match="mismatched lengths"):
    fit_power_law([1e17, 1e18, 1e19], [2.0, 1.5])
  with pytest.raises(ValueError, match="confidence"):
    fit_power_law([1e17, 1e18, 1e19], [2.0, 1.8, 1.5], confidence=95)


def test_chinchilla_refuses_degenerate_inputs():
  params, tokens, loss = chinchilla_grid(np.random.default_rng(0), num=3)
  with pytest.raises(ValueError, match="at least 2 distinct model sizes, got 1"):
    fit_chinchilla(np.full(9, 1e8), tokens, loss)
  with pytest.raises(ValueError, match="at least 2 distinct token counts, got 1"):
    fit_chinchilla(params, np.full(9, 1e10), loss)
  with pytest.raises(ValueError, match="at least 5 points"):
    fit_chinchilla(params[:4], tokens[:4], loss[:4])
  with pytest.raises(ValueError, match="tokens must be positive"):
    fit_chinchilla(params, -tokens, loss)
  with pytest.raises(ValueError, match="mismatched lengths"):
    fit_chinchilla(params, tokens[:8], loss)


def test_isoflop_refuses_degenerate_inputs():
  rows = isoflop_sweep(np.random.default_rng(0))
  with pytest.raises(ValueError, match="at least 2 budgets, got 1"):
    fit_isoflop(rows[:5])
  with pytest.raises(ValueError, match="budget 1e\\+18 has 2 distinct model sizes; a parabola needs 3"):
    fit_isoflop(rows[:2] + rows[5:])
  with pytest.raises(ValueError, match=r"results\[0\] lacks \['params'\]"):
    fit_isoflop([{"flops": 1.0, "tokens": 1.0, "loss": 1.0}])
  with pytest.raises(ValueError, match="loss has non-finite values"):
    fit_isoflop([dict(r, loss=np.inf) for r in rows])
  renamed = [{"budget": r["flops"], "N": r["params"], "D": r["tokens"], "L": r["loss"]} for r in rows]
  assert fit_isoflop(renamed, budget_key="budget", params_key="N", tokens_key="D", loss_key="L",
                     num_bootstrap=5).a == fit_isoflop(rows, num_bootstrap=5).a


def test_isoflop_refuses_profile_without_minimum():
  rows = isoflop_sweep(np.random.default_rng(0))
  # Loss that falls ever faster with N at the 1e19 budget: curvature < 0.
  bent = [dict(r, loss=8.0 - 0.01 * np.log(r["params"]) ** 2) if r["flops"] == 1e19 else r for r in rows]
  with pytest.raises(ValueError, match="budget 1e\\+19: loss vs ln N has curvature .* <= 0"):
    fit_isoflop(bent)


def test_isoflop_flags_minimum_outside_profile():
  rows = isoflop_sweep(np.random.default_rng(0), offsets=np.linspace(-2, 2, 9), jitter=0.0)
  # At the two largest budgets keep only sizes below N_opt: their minima lie beyond their largest N.
  budgets = sorted({r["flops"] for r in rows})
  cut = [r for r in rows if r["flops"] in budgets[:3] or r["params"] < 0.9 * G * (r["flops"] / 6) ** A_OPT]
  fit = fit_isoflop(cut, num_bootstrap=20)
  assert [p.interior for p in fit.profiles] == [True, True, True, False, False]
  assert fit.profiles[3].params > max(r["params"] for r in cut if r["flops"] == budgets[3])
  with pytest.raises(ValueError, match="at least 2 budgets whose minimum lies inside their range of N, got 1"):
    fit_isoflop([r for r in cut if r["flops"] in budgets[2:]])
