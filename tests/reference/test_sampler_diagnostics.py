"""Diagnostics against closed forms (AR(1) ESS, iid, stuck chains) and against ArviZ itself."""

import math

import arviz as az
import numpy as np
import pytest
from scipy.stats import norm

from dltbench.tasks.sampler import (
    TAIL_PROB,
    diagnose,
    ess_bulk,
    ess_tail,
    moment_threshold,
    moment_z,
    move_rate,
    rhat,
)


def ar1(rho, chains, n, dim, seed):
    """Stationary Gaussian AR(1) chains with unit marginal variance, shape (chains, n, dim)."""
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((chains, n, dim)) * math.sqrt(1 - rho**2)
    x = np.empty_like(e)
    x[:, 0] = rng.standard_normal((chains, dim))
    for t in range(1, n):
        x[:, t] = rho * x[:, t - 1] + e[:, t]
    return x


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_ar1_ess_is_n_times_1_minus_rho_over_1_plus_rho(rho):
    chains, n, dim = 4, 20_000, 4
    x = ar1(rho, chains, n, dim, seed=int(rho * 10))
    expected = chains * n * (1 - rho) / (1 + rho)
    bulk = ess_bulk(x)
    # the estimator's relative sd is about sqrt(2 tau / N) (Geyer), well under 5% here
    np.testing.assert_allclose(bulk, expected, rtol=0.08)
    assert np.all(rhat(x) < 1.01)


def test_iid_draws_have_ess_close_to_n():
    x = np.random.default_rng(0).standard_normal((4, 5000, 6))
    np.testing.assert_allclose(ess_bulk(x), 20_000, rtol=0.08)
    np.testing.assert_allclose(ess_tail(x), 20_000, rtol=0.15)
    assert np.all(np.abs(rhat(x) - 1) < 0.005)
    assert move_rate(x) == 1.0


def test_a_stuck_chain_is_caught_by_rhat():
    x = np.random.default_rng(1).standard_normal((4, 2000, 3))
    x[2] = x[2, 0]  # chain 2 never moves
    assert np.all(rhat(x) > 1.05)
    y = np.random.default_rng(2).standard_normal((4, 2000, 3))
    y[1] += 3.0  # chain 1 sits in another place
    assert np.all(rhat(y) > 1.1)
    assert not diagnose(y, np.zeros(3), np.ones(3)).passes


def test_we_compute_exactly_what_arviz_computes():
    x = ar1(0.7, 4, 1000, 5, seed=3)
    ds = az.convert_to_dataset(x)
    np.testing.assert_array_equal(ess_bulk(x), az.ess(ds, method="bulk")["x"].values)
    np.testing.assert_array_equal(
        ess_tail(x), az.ess(ds, method="tail", prob=(0.05, 0.95))["x"].values
    )
    np.testing.assert_array_equal(rhat(x), az.rhat(ds, method="rank")["x"].values)


def test_tail_ess_is_at_the_5_and_95_percent_quantiles():
    """posterior::ess_tail = min(ess_quantile(0.05), ess_quantile(0.95)) (Vehtari et al. 2021)."""
    assert TAIL_PROB == (0.05, 0.95)
    x = ar1(0.8, 4, 1000, 3, seed=4) ** 3  # skewed tails so different quantiles differ
    q05 = [az.ess(x[:, :, i], method="quantile", prob=0.05) for i in range(3)]
    q95 = [az.ess(x[:, :, i], method="quantile", prob=0.95) for i in range(3)]
    np.testing.assert_allclose(ess_tail(x), np.minimum(q05, q95))
    assert not np.allclose(ess_tail(x), ess_tail(x, prob=(0.1, 0.9)))


def test_rank_diagnostics_are_invariant_to_monotone_transforms():
    """A fact R's posterior shows in ArviZ's reference table (sigma_delta vs sigmasq_delta)."""
    x = np.abs(ar1(0.6, 4, 1000, 3, seed=5)) + 0.1
    np.testing.assert_allclose(ess_bulk(x**2), ess_bulk(x), rtol=1e-12)
    np.testing.assert_allclose(ess_tail(x**2), ess_tail(x), rtol=1e-12)
    # R-hat's folded half uses |x - median|, which a nonlinear map reorders: close, not equal
    np.testing.assert_allclose(rhat(np.log(x)), rhat(x), rtol=1e-3)


def test_moment_z_scores_of_correct_draws_are_standard_normal():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 2000, 200)) * 2.0 + 1.0
    z = moment_z(x, np.ones(200), np.full(200, 4.0))
    for key in ("z_mean", "z_var"):
        assert abs(z[key].mean()) < 0.25 and 0.8 < z[key].std() < 1.2


def test_moment_z_of_a_known_bias_is_bias_over_mcse():
    x = np.random.default_rng(7).standard_normal((4, 2500, 1))
    z = moment_z(x + 0.05, np.zeros(1), np.ones(1))
    # iid: MCSE = sd / sqrt(N) = 1 / 100, so a 0.05 shift is about 5 MCSE plus the sample's noise
    assert z["mean_mcse"][0] == pytest.approx(0.01, rel=0.1)
    assert z["z_mean"][0] == pytest.approx((x.mean() + 0.05) / z["mean_mcse"][0], rel=1e-12)
    assert 2.0 < z["z_mean"][0] < 8.0
    z_ref = moment_z(x, np.zeros(1), np.ones(1), mean_se=np.array([0.01]))
    assert z_ref["mean_mcse"][0] == pytest.approx(math.hypot(0.01, z["mean_mcse"][0]), rel=0.02)


def test_moment_threshold_is_bonferroni():
    assert moment_threshold(1) == pytest.approx(norm.ppf(1 - 0.01 / 4))
    assert moment_threshold(10) == pytest.approx(norm.ppf(1 - 0.01 / 40))


def test_move_rate_counts_repeated_states():
    x = np.zeros((1, 5, 2))
    x[0, 2:] = 1.0  # moves only between draw 1 and 2
    assert move_rate(x) == pytest.approx(0.25)
