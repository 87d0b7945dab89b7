"""Scores of a predictive distribution: probabilities (n, classes) against labels or a reference.

All functions take float64 numpy arrays of probabilities whose rows sum to one.
"""

from __future__ import annotations

import numpy as np

#: Equal-width confidence bins of the expected calibration error (Guo et al. 2017).
ECE_BINS = 15


def log_predictive_density(p: np.ndarray, y: np.ndarray) -> float:
    """Mean log p(y_i | x_i) over points (nats per point); probabilities are floored at 1e-300."""
    return float(np.mean(np.log(np.maximum(p[np.arange(len(y)), y], 1e-300))))


def accuracy(p: np.ndarray, y: np.ndarray) -> float:
    """Fraction of points whose most probable class is the label."""
    return float(np.mean(p.argmax(1) == y))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE: sum over equal-width confidence bins of |B|/n * |accuracy(B) - confidence(B)|."""
    conf, correct = p.max(1), (p.argmax(1) == y).astype(float)
    # bin b holds confidences in (b/n_bins, (b+1)/n_bins]; confidence 0 cannot occur
    b = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    total = 0.0
    for k in range(n_bins):
        m = b == k
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def brier(p: np.ndarray, y: np.ndarray) -> float:
    """Mean over points of sum over classes of (p_c - 1[y = c])^2 (in [0, 2])."""
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(((p - onehot) ** 2).sum(1)))


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Mean over points of the total variation 0.5 * sum_c |p_c - q_c| (in [0, 1])."""
    return float(np.mean(0.5 * np.abs(p - q).sum(1)))


def agreement(p: np.ndarray, q: np.ndarray) -> float:
    """Fraction of points where p and q have the same most probable class (Izmailov et al. 2021)."""
    return float(np.mean(p.argmax(1) == q.argmax(1)))


def entropy(p: np.ndarray) -> float:
    """Mean predictive entropy -sum_c p_c log p_c over points (nats)."""
    return float(np.mean(-(p * np.log(np.maximum(p, 1e-300))).sum(1)))
