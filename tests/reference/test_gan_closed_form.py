"""The gan metrics against closed forms and against the peer libraries on the same arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dltbench.tasks.gan import metrics as M


def _rot(d: int, rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return q


def _spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# --------------------------------------------------------------------------- Frechet distance


def test_diagonal_and_commuting_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert M.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(
        expected, rel=1e-12
    )
    q = _rot(5, rng)  # commuting: same eigenvectors
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_two_by_two_non_commuting_trace_formula():
    rng = np.random.default_rng(1)
    for _ in range(20):
        s1, s2 = _spd(2, rng), _spd(2, rng)
        assert not np.allclose(s1 @ s2, s2 @ s1)
        expected = math.sqrt(
            np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2))
        )
        assert M.trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-10)


def test_singular_covariances_take_the_other_factor_or_the_eigh_path():
    rng = np.random.default_rng(11)
    a = np.diag([2.0, 0.0])  # PSD, singular: no Cholesky factor
    for _ in range(5):
        s2 = _spd(2, rng)  # closed form with det S1 = 0: tr sqrt(S1 S2) = sqrt(tr S1 S2)
        expected = math.sqrt(np.trace(a @ s2))
        assert M.trace_sqrt_product(a, s2) == pytest.approx(expected, rel=1e-10)
        assert M.trace_sqrt_product(s2, a) == pytest.approx(expected, rel=1e-10)
    # Fewer samples than dimensions on both sides: neither covariance is definite.
    x, y = rng.normal(size=(20, 32)), rng.normal(size=(25, 32)) + 0.3
    (_, s1), (_, s2) = M.feature_statistics(x), M.feature_statistics(y)
    r = M._psd_sqrt(s1)
    w = np.linalg.eigvalsh(r @ s2 @ r)
    expected = np.sqrt(np.clip(w, 0, None)).sum()
    assert M.trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-8)


def test_cholesky_form_equals_the_symmetric_square_root_form():
    rng = np.random.default_rng(12)
    for d in (3, 40, 200):
        s1, s2 = _spd(d, rng), _spd(d, rng)
        r = M._psd_sqrt(s1)
        expected = np.sqrt(np.linalg.eigvalsh(r @ s2 @ r).clip(0)).sum()
        assert M.trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-11)


def test_equal_covariances_leave_the_mean_difference():
    rng = np.random.default_rng(2)
    s = _spd(6, rng)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    assert M.frechet_distance(mu1, s, mu2, s) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-8)
    assert M.frechet_distance(mu1, s, mu1, s) == pytest.approx(0.0, abs=1e-10)


def test_invariances_symmetry_rotation_translation_scaling():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8))
    y = rng.normal(size=(250, 8)) * 1.5 + 0.3
    fd = M.fid_from_features(x, y)
    assert fd > 0
    assert M.fid_from_features(y, x) == pytest.approx(fd, rel=1e-10)
    q, t = _rot(8, rng), rng.normal(size=8)
    assert M.fid_from_features(x @ q + t, y @ q + t) == pytest.approx(fd, rel=1e-9)
    assert M.fid_from_features(3.0 * x, 3.0 * y) == pytest.approx(9.0 * fd, rel=1e-9)


def test_finite_sample_bias_of_a_sample_against_its_population():
    # E FD(sample of N, population) ~ tr S/N + (sum_ij l_i l_j/(l_i+l_j) + tr S/2) / (2(N-1)).
    rng = np.random.default_rng(4)
    lam = np.array([3.0, 1.5, 1.0, 0.5, 0.2])
    q = _rot(5, rng)
    s = q @ np.diag(lam) @ q.T
    n, reps = 100, 4000
    chol = np.linalg.cholesky(s)
    fds = [
        M.frechet_distance(*M.feature_statistics(rng.normal(size=(n, 5)) @ chol.T), np.zeros(5), s)
        for _ in range(reps)
    ]
    pair = np.sum(np.outer(lam, lam) / (lam[:, None] + lam[None, :]))
    expected = lam.sum() / n + (pair + lam.sum() / 2) / (2 * (n - 1))
    assert np.mean(fds) == pytest.approx(expected, rel=0.05)
    assert np.std(fds) / math.sqrt(reps) < 0.02 * expected  # the check has the power it claims


def test_fid_infinity_removes_the_one_over_n_bias():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4000, 4))
    fd_n = M.frechet_distance(*M.feature_statistics(x[:800]), np.zeros(4), np.eye(4))
    inf, per_n = M.fid_infinity(x, np.zeros(4), np.eye(4), [500, 1000, 2000, 3000, 4000], rng)
    assert per_n[0] > per_n[-1] > 0  # FID_n falls with n
    assert abs(inf) < 0.25 * fd_n


# --------------------------------------------------------------------------- KID


def _moments(mu: np.ndarray, s: np.ndarray) -> list[np.ndarray]:
    m2 = s + np.outer(mu, mu)
    m3 = (np.einsum("i,j,k->ijk", mu, mu, mu) + np.einsum("i,jk->ijk", mu, s)
          + np.einsum("j,ik->ijk", mu, s) + np.einsum("k,ij->ijk", mu, s))  # fmt: skip
    return [mu, m2, m3]


def test_kid_gaussian_closed_form():
    # (x.y/d + 1)^3 = sum_k C(3,k) d^-k (x.y)^k, so MMD^2 = sum_k C(3,k) d^-k ||M_k(P) - M_k(Q)||^2.
    rng = np.random.default_rng(6)
    d = 3
    mu1, mu2 = np.zeros(d), np.array([0.5, -0.3, 0.2])
    s1, s2 = np.eye(d), np.diag([1.5, 0.8, 1.0])
    expected = sum(
        math.comb(3, k) * d**-k * np.sum((a - b) ** 2)
        for k, (a, b) in enumerate(zip(_moments(mu1, s1), _moments(mu2, s2), strict=True), 1)
    )
    l1, l2 = np.linalg.cholesky(s1), np.linalg.cholesky(s2)
    vals = [
        M.polynomial_mmd2(
            rng.normal(size=(1000, d)) @ l1.T + mu1, rng.normal(size=(1000, d)) @ l2.T + mu2
        )
        for _ in range(20)
    ]
    se = np.std(vals, ddof=1) / math.sqrt(len(vals))
    assert abs(np.mean(vals) - expected) < 4 * se
    assert se < 0.05 * expected  # the check has the power it claims


def test_kid_of_identical_distributions_is_unbiased_around_zero():
    rng = np.random.default_rng(7)
    vals = [
        M.polynomial_mmd2(rng.normal(size=(200, 4)), rng.normal(size=(200, 4))) for _ in range(200)
    ]
    assert min(vals) < 0 < max(vals)  # unbiased: negative values occur
    assert abs(np.mean(vals)) < 4 * np.std(vals, ddof=1) / math.sqrt(len(vals))


def test_kid_subset_size_is_clipped_to_the_smaller_set():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(50, 3)), rng.normal(size=(80, 3))
    mean, std = M.kid(x, y, np.random.default_rng(0), subsets=3, subset_size=1000)
    assert math.isfinite(mean) and std >= 0


def test_kid_from_precomputed_kernels_equals_the_per_subset_estimator(monkeypatch):
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(90, 5)), rng.normal(size=(70, 5)) + 0.3
    fast = M.kid(x, y, np.random.default_rng(4), subsets=9, subset_size=40)
    monkeypatch.setattr(M, "KID_KERNEL_CACHE", 0)  # forces one kernel computation per subset
    slow = M.kid(x, y, np.random.default_rng(4), subsets=9, subset_size=40)
    assert fast[0] == pytest.approx(slow[0], rel=1e-12, abs=1e-15)
    assert fast[1] == pytest.approx(slow[1], rel=1e-10)
    # and each subset by hand, drawn in the documented order (x's subset first)
    r = np.random.default_rng(4)
    vals = []
    for _ in range(9):
        ix, iy = r.choice(90, 40, replace=False), r.choice(70, 40, replace=False)
        vals.append(M.polynomial_mmd2(x[ix], y[iy]))
    assert fast[0] == pytest.approx(np.mean(vals), rel=1e-12)


def test_kid_of_whole_equal_size_sets_is_one_evaluation_equal_to_the_subset_mean():
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(60, 4)), rng.normal(size=(60, 4)) + 0.2
    mean, std = M.kid(x, y, np.random.default_rng(0), subsets=7, subset_size=1000)
    # The long way: every "subset" is a permutation of the whole set.
    perm = np.random.default_rng(1)
    vals = [M.polynomial_mmd2(x[perm.permutation(60)], y[perm.permutation(60)]) for _ in range(7)]
    assert mean == pytest.approx(np.mean(vals), rel=1e-12) and std == 0.0


# --------------------------------------------------------------------------- precision / recall


def test_precision_recall_cases():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(300, 5))
    assert M.precision_recall(x, x) == (1.0, 1.0)
    far = rng.normal(size=(300, 5)) + 100.0
    assert M.precision_recall(x, far) == (0.0, 0.0)
    sub = x[:100]  # a strict subset of the real set: every sample is inside a real ball
    precision, recall = M.precision_recall(x, sub)
    assert precision == 1.0 and recall < 1.0
    density, coverage = M.density_coverage(x, x)
    assert coverage == 1.0 and density >= 1.0
    assert M.density_coverage(x, far) == (0.0, 0.0)


def test_chunking_does_not_change_any_number():
    rng = np.random.default_rng(10)
    r, f = rng.normal(size=(257, 6)), rng.normal(size=(190, 6)) * 1.2
    assert M.precision_recall(r, f, chunk=7) == M.precision_recall(r, f, chunk=4096)
    assert M.density_coverage(r, f, chunk=13) == M.density_coverage(r, f, chunk=4096)
    # cdist's algorithm depends on the block size: equal up to rounding
    np.testing.assert_allclose(M.knn_radii(r, 3, chunk=5), M.knn_radii(r, 3), rtol=1e-12)


def test_memorisation_rate_flags_copies_and_not_fresh_draws():
    rng = np.random.default_rng(11)
    train, test = rng.normal(size=(500, 4)), rng.normal(size=(500, 4))
    copies = train[rng.integers(500, size=400)]
    assert M.memorisation_rate(copies, train, test)[0] == 1.0
    fresh = M.memorisation_rate(rng.normal(size=(2000, 4)), train, test)[0]
    assert 0.02 < fresh < 0.1  # ~ the 5% quantile rule


def test_w2_matches_the_sorted_coupling_in_one_dimension():
    rng = np.random.default_rng(12)
    a, b = rng.normal(size=200), rng.normal(size=200) * 2 + 1
    pts = lambda v: np.stack([v, np.zeros_like(v)], 1)  # noqa: E731
    expected = math.sqrt(np.mean((np.sort(a) - np.sort(b)) ** 2))
    assert M.wasserstein2(pts(a), pts(b)) == pytest.approx(expected, rel=1e-9)


def test_w2_assignment_equals_pots_network_simplex():
    import ot

    rng = np.random.default_rng(14)
    a, b = rng.normal(size=(150, 2)), rng.normal(size=(150, 2)) + [1.0, 0.0]
    cost = ot.dist(a, b, metric="sqeuclidean")
    w = math.sqrt(ot.emd2(np.full(150, 1 / 150), np.full(150, 1 / 150), cost))
    assert M.wasserstein2(a, b) == pytest.approx(w, rel=1e-9)
    assert M.wasserstein2(a, b[:100]) > 0  # unequal sizes: POT's emd2


def test_mode_helpers():
    counts = M.mode_histogram(np.array([0, 0, 1, -1, 2, 2, 2]), 4)
    assert counts.tolist() == [2, 1, 3, 0]
    assert M.modes_covered(np.array([10, 10, 1, 0]), 21) == 2
    assert M.kl_to_uniform(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    assert M.kl_to_uniform(np.array([9, 0, 0])) == pytest.approx(math.log(3))


# --------------------------------------------------------------------------- peers


@pytest.fixture(scope="module")
def feats():
    rng = np.random.default_rng(13)
    x = rng.normal(size=(600, 64)) @ rng.normal(size=(64, 64)) / 8
    y = rng.normal(size=(500, 64)) @ rng.normal(size=(64, 64)) / 8 + 0.1
    return x, y


@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")
def test_fid_agrees_with_pytorch_fid_torch_fidelity_and_clean_fid(feats):
    from cleanfid.fid import frechet_distance as clean_fd
    from pytorch_fid.fid_score import calculate_frechet_distance
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    (mu1, s1), (mu2, s2) = M.feature_statistics(feats[0]), M.feature_statistics(feats[1])
    ours = M.frechet_distance(mu1, s1, mu2, s2)
    assert calculate_frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ours, rel=1e-6)
    assert clean_fd(mu1, s1, mu2, s2) == pytest.approx(ours, rel=1e-6)
    tf = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)
    assert tf["frechet_inception_distance"] == pytest.approx(ours, rel=1e-6)


def test_kid_agrees_with_torch_fidelity_and_clean_fid(feats):
    from cleanfid.fid import kernel_distance
    from torch_fidelity.metric_kid import kid_features_to_metric

    x, y = feats
    # torch-fidelity's subsets: the same RandomState draws x's subset first, then y's.
    ours = M.kid(x, y, np.random.RandomState(3), subsets=10, subset_size=300)
    theirs = kid_features_to_metric(
        torch.from_numpy(x), torch.from_numpy(y), kid_subsets=10, kid_subset_size=300,
        rng_seed=3, verbose=False,
    )  # fmt: skip
    assert ours[0] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-6)
    assert ours[1] == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-6)
    # clean-fid with subsets as large as the smaller set (its clipping rule): no randomness
    # left once both sets are that size.
    xs = x[:500]
    ours_full = M.kid(xs, y, np.random.default_rng(0), subsets=2, subset_size=1000)[0]
    assert kernel_distance(xs, y, num_subsets=2, max_subset_size=1000) == pytest.approx(
        ours_full, rel=1e-6
    )


def test_precision_recall_agree_with_torch_fidelity(feats):
    from torch_fidelity.metric_prc import calculate_precision_recall_part

    real, fake = feats[1], feats[0]
    p, r = calculate_precision_recall_part(torch.from_numpy(fake), torch.from_numpy(real), 3)
    assert M.precision_recall(real, fake, k=3) == (pytest.approx(p), pytest.approx(r))
