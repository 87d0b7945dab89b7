"""Face verification metrics: the LFW 10-fold accuracy protocol, ROC, AUC, EER and TAR@FAR.

Scores are similarities (higher = more likely the same identity); for L2-normalised
embeddings the harness uses the cosine. The 10-fold accuracy follows insightface's
``recognition/arcface_torch/eval/verification.py`` (``calculate_roc``): the squared
distance of unit embeddings ``d = ||e1 - e2||^2 = 2 - 2 cos`` is thresholded on the grid
``np.arange(0, 4, 0.01)`` ("same" iff d < t); for each fold the threshold with the best
accuracy on the other nine folds (the first one on ties, ``np.argmax``) is applied to the
held-out fold. Here that is the same rule on cosines: "same" iff cos > 1 - t / 2, the
grid in the same order. Folds are contiguous blocks in pairs.txt order (insightface's
``KFold(n_splits=10, shuffle=False)``); :func:`ten_fold_accuracy` takes them explicitly.

ROC, AUC, EER and TAR@FAR pool all pairs (one ROC over every score, as
``sklearn.metrics.roc_curve``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: insightface's threshold grid on the squared distance of unit embeddings.
DISTANCE_GRID = np.arange(0, 4, 0.01)
#: The same grid as cosine thresholds ("same" iff cos > threshold), in the same order.
COSINE_GRID = 1.0 - DISTANCE_GRID / 2.0


@dataclass(frozen=True)
class FoldResult:
    """Per-fold outcome of the k-fold protocol."""

    accuracy: np.ndarray  # (k,) accuracy on each held-out fold
    threshold: np.ndarray  # (k,) score threshold chosen on the other folds
    folds: np.ndarray  # the fold labels, one per pair

    @property
    def mean(self) -> float:
        """Mean accuracy over folds."""
        return float(self.accuracy.mean())

    @property
    def std(self) -> float:
        """Population std over folds (what insightface prints next to the mean)."""
        return float(self.accuracy.std())

    @property
    def stderr(self) -> float:
        """Standard error of the mean over folds: sample std (ddof=1) / sqrt(k)."""
        k = len(self.accuracy)
        return float(self.accuracy.std(ddof=1) / np.sqrt(k)) if k > 1 else float("nan")

    def pair_threshold(self) -> np.ndarray:
        """Each pair's threshold: the one chosen (on the other folds) for the pair's fold."""
        return self.threshold[self.folds]


def contiguous_folds(n: int, k: int = 10) -> np.ndarray:
    """Fold labels of ``n`` pairs in ``k`` contiguous blocks (sklearn KFold without shuffle)."""
    sizes = np.full(k, n // k)
    sizes[: n % k] += 1
    return np.repeat(np.arange(k), sizes)


def ten_fold_accuracy(
    scores: np.ndarray,
    same: np.ndarray,
    folds: np.ndarray | None = None,
    thresholds: np.ndarray = COSINE_GRID,
) -> FoldResult:
    """k-fold verification accuracy: per fold, the threshold best on the other folds.

    ``scores`` (n,) similarities, ``same`` (n,) bool, ``folds`` (n,) fold labels 0..k-1
    (default: 10 contiguous blocks); a pair is accepted iff its score > threshold.
    """
    scores = np.asarray(scores, dtype=float)
    same = np.asarray(same, dtype=bool)
    folds = contiguous_folds(len(scores)) if folds is None else np.asarray(folds)
    k = int(folds.max()) + 1
    correct = (scores[:, None] > thresholds[None, :]) == same[:, None]  # (n, T)
    per_fold = np.stack([correct[folds == f].sum(0) for f in range(k)])  # (k, T) counts
    sizes = np.bincount(folds, minlength=k)
    acc = np.empty(k)
    chosen = np.empty(k)
    for f in range(k):
        train = (per_fold.sum(0) - per_fold[f]) / (sizes.sum() - sizes[f])
        best = int(np.argmax(train))
        chosen[f] = thresholds[best]
        acc[f] = per_fold[f, best] / sizes[f]
    return FoldResult(acc, chosen, folds)


@dataclass(frozen=True)
class Roc:
    """The pooled ROC: false and true acceptance rates at every distinct score threshold."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray  # accept iff score >= threshold; first point is +inf (accept none)
    n_pos: int
    n_neg: int


def roc(scores: np.ndarray, same: np.ndarray) -> Roc:
    """The empirical ROC of ``scores`` for labels ``same`` (sklearn's roc_curve points, all kept)."""
    scores = np.asarray(scores, dtype=float)
    same = np.asarray(same, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    s, lab = scores[order], same[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last index of each tie group
    tp, fp = np.cumsum(lab)[last], np.cumsum(~lab)[last]
    n_pos, n_neg = int(same.sum()), int((~same).sum())
    tpr = np.r_[0.0, tp / max(n_pos, 1)]
    fpr = np.r_[0.0, fp / max(n_neg, 1)]
    return Roc(fpr, tpr, np.r_[np.inf, s[last]], n_pos, n_neg)


def auc(curve: Roc) -> float:
    """Area under the ROC (trapezoids; equals the Mann-Whitney probability with ties as 1/2)."""
    return float(np.trapezoid(curve.tpr, curve.fpr))


def eer(curve: Roc) -> float:
    """Equal error rate: where FAR = FRR (1 - TAR), linearly interpolated between ROC points."""
    fnr = 1.0 - curve.tpr
    diff = fnr - curve.fpr  # decreasing along the curve, from 1 to -1
    i = int(np.flatnonzero(diff <= 0)[0])
    if i == 0 or diff[i] == 0:
        return float(curve.fpr[i])
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    return float(curve.fpr[i - 1] + t * (curve.fpr[i] - curve.fpr[i - 1]))


def tar_at_far(curve: Roc, far: float) -> tuple[float | None, str | None]:
    """TAR at FAR <= ``far``: the largest true-accept rate of a threshold whose false-accept
    rate is at most ``far``; (None, reason) when fewer than 1/far negative pairs exist
    (then not one false accept can be afforded, and the rate is not estimable)."""
    if curve.n_neg * far < 1:
        return None, (
            f"not estimable: {curve.n_neg} mismatched pairs, FAR={far:g} needs at least "
            f"{int(np.ceil(1 / far))}"
        )
    ok = curve.fpr <= far + 1e-15
    return float(curve.tpr[ok].max()), None


def roc_summary(curve: Roc, grid: np.ndarray | None = None) -> dict[str, list[float]]:
    """The ROC at a fixed FAR grid (log-spaced 1e-4..1 plus linear), for the record."""
    if grid is None:
        grid = np.unique(np.r_[np.logspace(-4, 0, 41), np.linspace(0, 1, 51)])
    tar = [float(curve.tpr[curve.fpr <= f + 1e-15].max()) for f in grid]
    return {"far": [float(f) for f in grid], "tar": tar}
