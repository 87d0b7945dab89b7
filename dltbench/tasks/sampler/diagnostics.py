"""MCMC diagnostics on draws of shape (chains, draws, dim), computed by ArviZ.

We do not reimplement ESS or R-hat. Per coordinate, on the (chains, draws) array:

* bulk-ESS: ``arviz.ess(a, method="bulk")`` (rank-normalized split-chain ESS, Vehtari et al. 2021)
* tail-ESS: ``arviz.ess(a, method="tail", prob=(0.05, 0.95))``: the minimum of the ESS of
  the 5% and 95% quantile indicators, as in Vehtari et al. and R's ``posterior::ess_tail``.
  The quantiles are passed explicitly because newer ArviZ releases changed the default.
* R-hat: ``arviz.rhat(a, method="rank")`` (rank-normalized split R-hat, the max of the
  bulk and folded versions)
* MCSE of a mean: ``arviz.mcse(a, method="mean")`` (sd / sqrt(ESS of the mean))

Moment errors are in MCSE units: for the mean, z = (mean_hat - mean) / MCSE; for the
variance, the estimate is the Monte Carlo mean of f = (x - mean)^2 (the true or
reference mean), so z = (mean(f) - var) / MCSE(f). A stored reference moment adds its
own standard error in quadrature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import arviz as az
import numpy as np
from scipy.stats import norm

#: Tail-ESS quantiles of Vehtari et al. (2021) and posterior::ess_tail.
TAIL_PROB: tuple[float, float] = (0.05, 0.95)
#: Rank-normalized split R-hat must be below this (Vehtari et al. 2021).
RHAT_MAX: float = 1.01
#: Bulk- and tail-ESS must exceed this many draws per chain (Vehtari et al. 2021, rstan's
#: ``Rhat`` docs: about 100 per chain for R-hat and the MCSEs to be reliable).
ESS_MIN_PER_CHAIN: float = 100.0
#: Family-wise error level of the moment tests (Bonferroni over 2 * dim z-scores).
MOMENT_ALPHA: float = 0.01


def gate_failures(
    rhat_max: float | None,
    ess_min: float | None,
    ess_threshold: float,
    z_max: float | None,
    z_threshold: float,
) -> list[str]:
    """Why a run fails the ranking gate, one phrase per failed check (empty: it passes).

    The one definition of the gate: R-hat below RHAT_MAX, the smallest bulk/tail-ESS above
    ``ess_threshold`` (draws), the largest moment |z| (MCSE units) below ``z_threshold``.
    None or NaN (a record's non-finite value) fails its check.
    """
    out = []
    if rhat_max is None or not math.isfinite(rhat_max) or rhat_max >= RHAT_MAX:
        out.append(f"R-hat {'undefined' if rhat_max is None else f'{rhat_max:.3g}'} >= {RHAT_MAX}")
    low = -math.inf if ess_min is None else ess_min
    if not low > ess_threshold:
        out.append(f"ESS {low:.3g} <= {ess_threshold:.3g}")
    z = math.inf if z_max is None else z_max
    if not z < z_threshold:
        out.append(f"moment error {z:.3g} MCSE > {z_threshold:.3g}")
    return out


def _per_dim(draws: np.ndarray, fn) -> np.ndarray:
    draws = _check(draws)
    # .item(): with numba installed ArviZ returns 1-element arrays, which float() rejects on numpy 2.5
    return np.array(
        [np.asarray(fn(draws[:, :, i]), dtype=float).item() for i in range(draws.shape[2])]
    )


def _check(draws) -> np.ndarray:
    a = np.asarray(draws, dtype=float)
    if a.ndim != 3:
        raise ValueError(f"draws must have shape (chains, draws, dim), got {a.shape}")
    return a


def ess_bulk(draws: np.ndarray) -> np.ndarray:
    """Bulk-ESS of each coordinate (in draws), by ``arviz.ess(method="bulk")``."""
    return _per_dim(draws, lambda a: az.ess(a, method="bulk"))


def ess_tail(draws: np.ndarray, prob: tuple[float, float] = TAIL_PROB) -> np.ndarray:
    """Tail-ESS of each coordinate (draws) at quantiles ``prob``, by ``arviz.ess(method="tail")``."""
    return _per_dim(draws, lambda a: az.ess(a, method="tail", prob=tuple(prob)))


def rhat(draws: np.ndarray) -> np.ndarray:
    """Rank-normalized split R-hat of each coordinate, by ``arviz.rhat(method="rank")``."""
    return _per_dim(draws, lambda a: az.rhat(a, method="rank"))


def mcse_mean(values: np.ndarray) -> np.ndarray:
    """MCSE of the mean of each coordinate of ``values`` (same units), by ``arviz.mcse(method="mean")``."""
    return _per_dim(values, lambda a: az.mcse(a, method="mean"))


def moment_z(
    draws: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    mean_se: np.ndarray | None = None,
    var_se: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Estimated mean and variance per coordinate and their errors in MCSE units (z-scores)."""
    draws = _check(draws)
    mean, var = np.asarray(mean, float), np.asarray(var, float)
    mean_se = np.zeros_like(mean) if mean_se is None else np.asarray(mean_se, float)
    var_se = np.zeros_like(var) if var_se is None else np.asarray(var_se, float)
    sq = (draws - mean) ** 2
    mean_hat = draws.mean(axis=(0, 1))
    var_hat = sq.mean(axis=(0, 1))
    se_m = np.sqrt(mcse_mean(draws) ** 2 + mean_se**2)
    se_v = np.sqrt(mcse_mean(sq) ** 2 + var_se**2)
    return {
        "mean_hat": mean_hat,
        "var_hat": var_hat,
        "mean_mcse": se_m,
        "var_mcse": se_v,
        "z_mean": _safe_div(mean_hat - mean, se_m),
        "z_var": _safe_div(var_hat - var, se_v),
    }


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # A zero MCSE (constant chains) with a nonzero error is an infinitely bad estimate.
    with np.errstate(divide="ignore", invalid="ignore"):
        z = num / den
    return np.where((den == 0) & (num == 0), 0.0, np.where(den == 0, np.inf, z))


def moment_threshold(dim: int, alpha: float = MOMENT_ALPHA) -> float:
    """Bonferroni two-sided critical |z| for 2 * dim moment z-scores at family level ``alpha``."""
    return float(norm.ppf(1.0 - alpha / (2 * 2 * dim)))


def move_rate(draws: np.ndarray) -> float:
    """Fraction of transitions where the state changed: the MH acceptance rate for Metropolis samplers."""
    draws = _check(draws)
    if draws.shape[1] < 2:
        return float("nan")
    return float(np.mean(np.any(draws[:, 1:] != draws[:, :-1], axis=2)))


@dataclass
class Diagnostics:
    """Every per-coordinate diagnostic of one run and its summaries."""

    ess_bulk: np.ndarray
    ess_tail: np.ndarray
    rhat: np.ndarray
    moments: dict[str, np.ndarray]
    threshold: float
    move_rate: float
    chains: int = 1

    @property
    def moment_z_max(self) -> float:
        """The largest |z| over coordinates and both moments."""
        z = np.abs(np.concatenate([self.moments["z_mean"], self.moments["z_var"]]))
        return float("nan") if np.isnan(z).any() else float(np.max(z))

    @property
    def ess_threshold(self) -> float:
        """Bulk- and tail-ESS every coordinate needs (draws): ESS_MIN_PER_CHAIN x chains."""
        return ESS_MIN_PER_CHAIN * self.chains

    @property
    def passes(self) -> bool:
        """R-hat below RHAT_MAX, bulk/tail-ESS above ``ess_threshold`` on every coordinate,
        and every moment z-score below the threshold (:func:`gate_failures`)."""
        ess = float(min(np.min(self.ess_bulk), np.min(self.ess_tail)))
        return not gate_failures(
            float(np.max(self.rhat)), ess, self.ess_threshold, self.moment_z_max, self.threshold
        )


def diagnose(draws, mean, var, mean_se=None, var_se=None) -> Diagnostics:
    """All diagnostics of ``draws`` (chains, draws, dim) against the target moments."""
    draws = _check(draws)
    return Diagnostics(
        ess_bulk=ess_bulk(draws),
        ess_tail=ess_tail(draws),
        rhat=rhat(draws),
        moments=moment_z(draws, mean, var, mean_se, var_se),
        threshold=moment_threshold(draws.shape[2]),
        move_rate=move_rate(draws),
        chains=draws.shape[0],
    )
