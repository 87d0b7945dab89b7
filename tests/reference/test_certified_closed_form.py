"""CERTIFY/PREDICT against closed forms: a smoothed linear binary classifier.

For f(x) = 1[w.x + b > 0] and noise N(0, sigma^2 I), P(f(x + eps) = f(x)) =
Phi(|w.x + b| / (sigma ||w||)) exactly, so the smoothed classifier's exact l2 radius
sigma * Phi^-1(pA) equals |w.x + b| / ||w||: the distance to the decision boundary.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binom, binomtest, ks_2samp, norm
from torch import nn

from dltbench.tasks.certified import certify, certify_batch, lower_confidence_bound, predict
from tests.reference.cohen_reference import certify_reference

D = 5


class LinearBinary(nn.Module):
    """Logits (0, w.x + b): class 1 iff w.x + b > 0."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], 1)


@pytest.fixture
def linear():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(D, generator=g)
    return LinearBinary(w, 0.3), w


def exact_radius(model: LinearBinary, x: torch.Tensor) -> np.ndarray:
    return ((x.flatten(1) @ model.w + model.b).abs() / model.w.norm()).numpy()


def points(model: LinearBinary, distances, seed=1) -> torch.Tensor:
    """Points at given signed distances from the boundary."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(len(distances), D, generator=g)
    unit = model.w / model.w.norm()
    base -= ((base @ model.w + model.b) / model.w.norm())[:, None] * unit  # project onto boundary
    return base + torch.as_tensor(distances, dtype=torch.float32)[:, None] * unit


def test_radius_is_below_exact_and_label_is_the_side(linear):
    model, _ = linear
    dist = np.linspace(-0.6, 0.6, 25)
    dist = dist[np.abs(dist) > 0.05]
    x = points(model, dist)
    sigma, alpha = 0.5, 0.001
    labels, radii, _ = certify_batch(
        model, x, sigma, 100, 20_000, alpha, 5000, torch.Generator().manual_seed(2)
    )
    exact = exact_radius(model, x)
    certified = labels != -1
    assert certified.sum() >= 0.8 * len(dist)
    np.testing.assert_array_equal(labels[certified], (dist[certified] > 0).astype(int))
    assert np.all(
        radii <= exact + 1e-9
    )  # fails with probability <= 24 * alpha for this seed's draw


def test_radius_exceeds_exact_with_at_most_alpha_probability(linear):
    """Coverage: over many independent certifications of one point, P(radius > exact) <= alpha."""
    model, _ = linear
    x = points(model, [0.25]).repeat(400, 1)
    alpha = 0.05
    _, radii, _ = certify_batch(
        model, x, 0.5, 50, 500, alpha, 20_000, torch.Generator().manual_seed(3)
    )
    violations = int(np.sum(radii > exact_radius(model, x[:1])[0]))
    # A conservative procedure violates at most Binomial(400, alpha); allow its 1e-6 tail.
    assert violations <= binom.ppf(1 - 1e-6, 400, alpha)


def test_radius_approaches_exact_as_n_grows(linear):
    model, _ = linear
    x = points(model, [0.1, 0.3, 0.5, -0.4])
    exact = exact_radius(model, x)
    gaps = []
    for n in (1_000, 10_000, 200_000):
        _, radii, _ = certify_batch(
            model, x, 0.5, 100, n, 0.001, 50_000, torch.Generator().manual_seed(4)
        )
        gaps.append(float(np.mean(exact - radii)))
    assert gaps[0] > gaps[1] > gaps[2] > 0
    assert gaps[2] < 0.03  # sigma * (Phi^-1(pA) - Phi^-1(pA_lower)) at n = 2e5


def test_pA_lower_matches_exact_probability(linear):
    model, _ = linear
    sigma = 0.5
    x = points(model, [0.2])
    exact_pa = float(torch.distributions.Normal(0, 1).cdf(torch.tensor(0.2 / sigma)))
    _, _, p_a = certify_batch(
        model, x, sigma, 100, 100_000, 0.001, 50_000, torch.Generator().manual_seed(5)
    )
    assert exact_pa - 0.01 < p_a[0] <= exact_pa + 1e-3


def test_abstains_on_the_boundary(linear):
    model, _ = linear
    x = points(model, [0.0])[0]
    assert certify(model, x, 0.5, 100, 10_000, 0.001, 5000, torch.Generator().manual_seed(6)) == (
        -1,
        0.0,
    )
    assert predict(model, x, 0.5, 10_000, 0.001, 5000, torch.Generator().manual_seed(6)) == -1


def test_predict_returns_the_side_far_from_boundary(linear):
    model, _ = linear
    for d, label in ((1.0, 1), (-1.0, 0)):
        x = points(model, [d])[0]
        assert (
            predict(model, x, 0.25, 1000, 0.001, 1000, torch.Generator().manual_seed(7)) == label
        )


def test_predict_abstain_rule_is_the_binomial_test():
    """PREDICT abstains iff the two-sided binomial p-value of nA vs nB exceeds alpha."""

    class Fixed(nn.Module):
        # Returns class 0 for the first k of every n noisy copies... independent of noise:
        # use the noise sign of coordinate 0 with a threshold giving P(class 1) = q.
        def __init__(self, q):
            super().__init__()
            self.t = float(torch.distributions.Normal(0, 1).icdf(torch.tensor(1 - q)))

        def forward(self, x):
            z = x[:, 0] - self.t
            return torch.stack([torch.zeros_like(z), z], 1)

    for q in (0.5, 0.53, 0.6):
        x = torch.zeros(1, 3)
        gen = torch.Generator().manual_seed(8)
        got = predict(Fixed(q), x[0], 1.0, 2000, 0.01, 2000, gen)
        gen = torch.Generator().manual_seed(8)
        n1 = int((torch.randn(2000, 3, generator=gen)[:, 0] > Fixed(q).t).sum())
        a, b = max(n1, 2000 - n1), min(n1, 2000 - n1)
        want = -1 if binomtest(a, a + b, 0.5).pvalue > 0.01 else int(n1 > 1000)
        assert got == want


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (512, 1000), (99_990, 100_000)])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_clopper_pearson_matches_scipy(k, n, alpha):
    ours = lower_confidence_bound(k, n, alpha)
    scipy_ci = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    assert ours == pytest.approx(scipy_ci, abs=1e-12)


def test_clopper_pearson_vectorised_matches_scalar():
    ks = np.array([0, 5, 50, 100])
    vec = lower_confidence_bound(ks, 100, 0.001)
    assert np.allclose(vec, [lower_confidence_bound(int(k), 100, 0.001) for k in ks])


def test_deterministic_under_a_fixed_generator(linear):
    model, _ = linear
    x = points(model, [0.1, -0.2, 0.4])
    a = certify_batch(model, x, 0.25, 100, 3000, 0.001, 1000, torch.Generator().manual_seed(9))
    b = certify_batch(model, x, 0.25, 100, 3000, 0.001, 1000, torch.Generator().manual_seed(9))
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)


def test_batched_is_statistically_the_point_by_point_procedure(linear):
    """Same radius distribution as the plain per-point loop (two-sample KS test)."""
    model, _ = linear
    x = points(model, [0.15])
    reps = 300
    ours = certify_batch(
        model, x.repeat(reps, 1), 0.5, 20, 300, 0.01, 30_000, torch.Generator().manual_seed(10)
    )[1]
    gen = torch.Generator().manual_seed(11)
    ref = [certify_reference(model, x[0], 0.5, 20, 300, 0.01, 100, 2, gen)[1] for _ in range(reps)]
    assert ks_2samp(ours, ref).pvalue > 1e-3


@pytest.mark.slow
def test_noise_training_beats_clean_training_on_the_quick_profile():
    """The quick profile must show the paper's point: training at sigma raises the ACR."""
    from dltbench.runner import score_in_process

    acr = {
        (c.method, c.config.sigma): m["acr"]
        for c, m in score_in_process("certified", ["standard", "gaussian-aug"])
        if c.config.norm == "l2"
    }
    for sigma in (0.25, 0.5):
        assert acr[("gaussian-aug", sigma)] > acr[("standard", sigma)] + 0.03


def test_radius_ceiling_is_the_all_samples_agree_bound():
    """sigma * Phi^-1(alpha^(1/n)): 0.6755 at n=2000 (the quick profile's before task version 4), sigma=0.25."""
    from scipy.stats import beta

    from dltbench.tasks.certified.task import radius_ceiling

    assert radius_ceiling(0.25, 2000, 0.001) == pytest.approx(0.6755, abs=1e-4)
    # It is the radius of the Clopper-Pearson lower bound when all n samples agree.
    p_lower = beta.ppf(0.001, 2000, 1)
    assert radius_ceiling(0.5, 2000, 0.001) == pytest.approx(0.5 * norm.ppf(p_lower), rel=1e-9)


def test_leaderboard_marks_radii_above_the_ceiling_unreachable():
    import pandas as pd

    from dltbench.tasks.certified.task import LEADERBOARD_RADII, CertifiedTask

    row = {"method": "m", "profile": "quick", "radius_ceiling_mean": 0.6755}
    for r in LEADERBOARD_RADII:
        row[f"certified_acc@{r:g}_mean"], row[f"certified_acc@{r:g}_std"] = 0.0, 0.0
    out = CertifiedTask().adjust_leaderboard(pd.DataFrame([row]), [], lambda name: [])
    assert out.loc[0, "unreachable_radii"] == "0.75 1"
    assert (
        pd.isna(out.loc[0, "certified_acc@0.75_mean"])
        and out.loc[0, "certified_acc@0.5_mean"] == 0
    )
    assert "certified_acc@2.5_mean" not in out.columns  # a standard-profile column
