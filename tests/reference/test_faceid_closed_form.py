"""faceid evaluators against closed forms and scikit-learn: the 10-fold protocol, ROC, margins, NC."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import KFold

from dltbench.tasks.faceid import losses
from dltbench.tasks.faceid.neural_collapse import neural_collapse
from dltbench.tasks.faceid.verification import (
    auc,
    contiguous_folds,
    eer,
    roc,
    tar_at_far,
    ten_fold_accuracy,
)

GRID = np.linspace(-5, 5, 2001)


def gaussian_scores(mu: float, n_per_class: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """LFW-ordered folds: per fold n matched N(mu, 1) then n mismatched N(-mu, 1) scores."""
    scores, same = [], []
    for _ in range(10):
        scores += [rng.normal(mu, 1, n_per_class), rng.normal(-mu, 1, n_per_class)]
        same += [np.ones(n_per_class, bool), np.zeros(n_per_class, bool)]
    return np.concatenate(scores), np.concatenate(same)


@pytest.mark.parametrize("mu", [0.5, 1.0, 2.0])
def test_gaussian_score_model_ten_fold_accuracy_is_phi_mu(mu):
    # Bayes accuracy of the symmetric threshold 0 is Phi(mu); 10-fold picks it within noise
    rng = np.random.default_rng(0)
    accs = [ten_fold_accuracy(*gaussian_scores(mu, 300, rng), thresholds=GRID).mean
            for _ in range(20)]  # fmt: skip
    assert abs(np.mean(accs) - norm.cdf(mu)) < 0.01


@pytest.mark.parametrize("far", [1e-3, 1e-2])
def test_gaussian_score_model_tar_at_far(far):
    # threshold t = -mu + Phi^-1(1 - f) gives TAR = Phi(2 mu - Phi^-1(1 - f))
    rng = np.random.default_rng(1)
    mu = 1.0
    scores, same = gaussian_scores(mu, 20_000, rng)
    tar, why = tar_at_far(roc(scores, same), far)
    assert why is None
    assert abs(tar - norm.cdf(2 * mu - norm.ppf(1 - far))) < 0.02


def test_perfect_separation_gives_exactly_one_in_every_fold():
    rng = np.random.default_rng(2)
    same = np.tile(np.r_[np.ones(30, bool), np.zeros(30, bool)], 10)
    scores = np.where(same, rng.uniform(0.6, 1.0, len(same)), rng.uniform(-1, 0.4, len(same)))
    res = ten_fold_accuracy(scores, same)
    assert np.array_equal(res.accuracy, np.ones(10)) and res.mean == 1.0 and res.stderr == 0.0
    curve = roc(scores, same)
    assert auc(curve) == 1.0 and eer(curve) == 0.0


def test_permuting_pairs_within_a_fold_changes_nothing():
    rng = np.random.default_rng(3)
    scores, same = gaussian_scores(0.8, 50, rng)
    folds = contiguous_folds(len(scores))
    base = ten_fold_accuracy(scores, same, folds, thresholds=GRID)
    perm = np.concatenate([rng.permutation(np.flatnonzero(folds == f)) for f in range(10)])
    again = ten_fold_accuracy(scores[perm], same[perm], folds[perm], thresholds=GRID)
    assert np.array_equal(base.accuracy, again.accuracy)
    assert np.array_equal(base.threshold, again.threshold)


def test_contiguous_folds_are_insightfaces_kfold():
    for n in (6000, 2000, 123):
        expected = np.empty(n, int)
        for f, (_, test) in enumerate(KFold(n_splits=10, shuffle=False).split(np.arange(n))):
            expected[test] = f
        assert np.array_equal(contiguous_folds(n), expected)


def insightface_accuracy(dist: np.ndarray, same: np.ndarray) -> np.ndarray:
    """insightface's calculate_roc accuracy loop, written out on squared distances."""
    thresholds = np.arange(0, 4, 0.01)
    acc = np.zeros(10)
    for f, (tr, te) in enumerate(KFold(n_splits=10, shuffle=False).split(np.arange(len(dist)))):
        train = [np.mean((dist[tr] < t) == same[tr]) for t in thresholds]
        acc[f] = np.mean((dist[te] < thresholds[int(np.argmax(train))]) == same[te])
    return acc


def test_cosine_rule_matches_insightfaces_distance_rule():
    rng = np.random.default_rng(4)
    same = np.tile(np.r_[np.ones(40, bool), np.zeros(40, bool)], 10)
    e1 = rng.normal(size=(len(same), 8))
    e2 = np.where(
        same[:, None], e1 + rng.normal(scale=0.9, size=e1.shape), rng.normal(size=e1.shape)
    )
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 /= np.linalg.norm(e2, axis=1, keepdims=True)
    dist = ((e1 - e2) ** 2).sum(1)
    # 2 - 2 cos equals the squared distance up to rounding: compare on the same rounding
    cos = 1.0 - dist / 2.0
    ours = ten_fold_accuracy(cos, same).accuracy
    assert np.allclose(ours, insightface_accuracy(dist, same))


def test_auc_eer_tar_agree_with_sklearn():
    rng = np.random.default_rng(5)
    same = rng.random(3000) < 0.5
    scores = np.round(rng.normal(np.where(same, 0.7, 0.0), 0.5), 2)  # with ties
    curve = roc(scores, same)
    fpr, tpr, _ = roc_curve(same, scores, drop_intermediate=False)
    assert np.allclose(curve.fpr, fpr) and np.allclose(curve.tpr, tpr)
    assert auc(curve) == pytest.approx(roc_auc_score(same, scores), abs=1e-12)
    for far in (1e-3, 1e-2, 0.1):
        assert tar_at_far(curve, far)[0] == pytest.approx(tpr[fpr <= far].max())
    fnr = 1 - tpr
    i = np.flatnonzero(fnr - fpr <= 0)[0]
    t = (fnr[i - 1] - fpr[i - 1]) / ((fnr[i - 1] - fpr[i - 1]) - (fnr[i] - fpr[i]))
    assert eer(curve) == pytest.approx(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))
    assert abs(eer(curve) - fnr[np.argmin(np.abs(fnr - fpr))]) < 0.02


def test_tar_at_far_not_estimable_with_too_few_negatives():
    same = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    tar, why = tar_at_far(roc(np.linspace(0, 1, 1000), same), 1e-4)
    assert tar is None and "not estimable" in why and "10000" in why


# ------------------------------------------------------------------ margin logits


def test_cosface_and_arcface_target_logits_closed_form():
    cos = torch.tensor([[0.9, 0.1], [-0.3, 0.2]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    cf = losses.cosface_logits(cos, y, s=30.0, m=0.35)
    assert torch.allclose(
        cf, 30 * torch.tensor([[0.9 - 0.35, 0.1], [-0.3 - 0.35, 0.2]], dtype=cos.dtype)
    )
    af = losses.arcface_logits(cos, y, s=64.0, m=0.5)
    theta = math.acos(0.9)
    assert af[0, 0].item() == pytest.approx(64 * math.cos(theta + 0.5))
    assert af[0, 1].item() == pytest.approx(64 * 0.1)
    # theta + m > pi: insightface's fallback cos - m sin(pi - m)
    low = torch.tensor([-0.95], dtype=torch.float64)
    assert losses.arcface_target(low, 0.5).item() == pytest.approx(
        -0.95 - 0.5 * math.sin(math.pi - 0.5)
    )


def test_arcface_target_is_non_increasing_in_theta():
    theta = torch.linspace(0, math.pi, 20001, dtype=torch.float64)
    t = losses.arcface_target(torch.cos(theta), 0.5)
    assert (t[1:] <= t[:-1] + 1e-12).all()
    # the easy margin is not monotone: it jumps up from -sin(m) to 0 at theta = pi/2
    easy = losses.arcface_target(torch.cos(theta), 0.5, easy_margin=True)
    assert (easy[1:] > easy[:-1] + 0.4).sum() == 1


def test_sphereface_psi_closed_form_and_annealed_target():
    theta = torch.tensor([0.1, 1.0, 2.0, 3.0], dtype=torch.float64)
    psi = losses.sphereface_psi(torch.cos(theta), m=4)
    k = torch.floor(4 * theta / math.pi)
    expected = (-1) ** k * torch.cos(4 * theta) - 2 * k
    assert torch.allclose(psi, expected)
    assert (psi[1:] < psi[:-1]).all()  # psi is monotone decreasing on [0, pi]
    h = torch.tensor([[3.0, 4.0]], dtype=torch.float64)  # ||h|| = 5
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    logits = losses.sphereface_logits(h, w, torch.tensor([0]), m=4, lam=5.0)
    c = 0.6
    want = 5 * (5 * c + losses.sphereface_psi(torch.tensor(c, dtype=torch.float64), 4)) / 6
    assert logits[0, 0].item() == pytest.approx(want.item())
    assert logits[0, 1].item() == pytest.approx(5 * 0.8)
    assert losses.sphereface_lambda(0) == 1000.0 and losses.sphereface_lambda(10**6) == 5.0


# ------------------------------------------------------------------ neural collapse


def simplex_etf(c: int, d: int, rng) -> np.ndarray:
    """C unit vectors in R^d with pairwise cosine -1/(C-1), randomly rotated."""
    m = np.sqrt(c / (c - 1)) * (np.eye(c) - 1.0 / c)
    q, _ = np.linalg.qr(rng.normal(size=(d, c)))
    return m @ q.T  # (C, d), rows unit


def test_neural_collapse_on_a_simplex_etf_is_zero_without_noise():
    rng = np.random.default_rng(6)
    c, d = 5, 8
    mu = simplex_etf(c, d, rng)
    y = np.repeat(np.arange(c), 10)
    nc = neural_collapse(mu[y], y, c, weight=2.0 * mu)
    for k, v in nc.items():
        if k == "ncc_train_acc":
            assert v == 1.0
        else:
            assert v == pytest.approx(0.0, abs=1e-10), k


@pytest.mark.parametrize("sigma", [0.1, 0.3])
def test_nc1_of_a_noisy_simplex_etf_is_sigma2_c_minus_1_squared_over_c(sigma):
    # Sigma_W = sigma^2 I, Sigma_B = P/(C-1) (P the projector on the means' span):
    # NC1 = sigma^2 (C-1) tr(P) / C = sigma^2 (C-1)^2 / C
    rng = np.random.default_rng(7)
    c, d, n = 4, 6, 20_000
    mu = simplex_etf(c, d, rng)
    y = np.repeat(np.arange(c), n)
    h = mu[y] + sigma * rng.normal(size=(len(y), d))
    nc = neural_collapse(h, y, c)
    assert nc["nc1"] == pytest.approx(sigma**2 * (c - 1) ** 2 / c, rel=0.03)
    assert nc["nc3_self_duality"] is None and nc["nc4_ncc_mismatch"] is None
