"""Sample-quality metrics on feature arrays: FID, FID-infinity, KID, precision/recall,
density/coverage, exact W2, and the memorisation rate.

Every function takes features as (N, d) arrays (numpy or torch; they are read as
float64) and is independent of the feature network: for images the features come from
:mod:`dltbench.tasks.gan.features`, for 2-D targets they are the points themselves.

Conventions (the peers' where they agree; see docs/tasks/gan.md):

* Frechet distance: covariances with ddof 1 (``np.cov``, as pytorch-fid, torch-fidelity
  and clean-fid), computed in float64; tr sqrt(S1 S2) from the eigenvalues of the
  symmetric matrix L^T S2 L with S1 = L L^T (Cholesky; same spectrum as S1 S2), or of
  sqrt(S1) S2 sqrt(S1) when neither covariance is positive definite; never ``sqrtm`` of
  the non-symmetric product.
* KID: unbiased MMD^2 with the kernel (x.y/d + 1)^3 on ``subsets`` random subsets of
  size m = min(n_x, n_y, subset_size) drawn without replacement, x's subset first (the
  order of torch-fidelity, so the same ``np.random.RandomState`` gives its subsets);
  mean and population std (ddof 0, torch-fidelity's) over subsets.
* k-NN balls (precision/recall, density/coverage, memorisation): Euclidean distances, a
  point's radius is the distance to its k-th nearest neighbour other than itself.
  Distances are computed ``chunk`` rows at a time, so memory is O(chunk * N), never N^2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg
import torch
from scipy.linalg.blas import dtrmm as trmm

ArrayLike = np.ndarray | torch.Tensor

#: Rows of the left operand per block of pairwise distances (memory ~ chunk * N * 8 bytes).
DEFAULT_CHUNK = 2048


def _np64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"features must be a 2-D array (N, d), got shape {a.shape}")
    return a


def _t64(x: ArrayLike) -> torch.Tensor:
    return torch.from_numpy(_np64(x))


def feature_statistics(feats: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and covariance (d, d) with ddof 1 of features (N, d), in float64."""
    a = _np64(feats)
    if len(a) < 2:
        raise ValueError("the covariance needs at least 2 samples")
    return a.mean(0), np.atleast_2d(np.cov(a, rowvar=False))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _sum_sqrt_eigvals(m: np.ndarray) -> float:
    w = scipy.linalg.eigvalsh((m + m.T) / 2, check_finite=False)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr sqrt(S1 S2) for symmetric PSD S1, S2, from the eigenvalues of L^T S2 L.

    With the Cholesky factor S1 = L L^T, L^T S2 L = L^-1 (S1 S2) L is similar to S1 S2
    and symmetric PSD, so its eigenvalues (no eigenvectors needed) are those of S1 S2:
    one Cholesky, two triangular products and one ``eigvalsh``, exact in exact arithmetic.
    When neither matrix is positive definite (fewer samples than dimensions) it falls back
    to the eigenvalues of sqrt(S1) S2 sqrt(S1), with sqrt(S1) from ``eigh``.
    """
    s1, s2 = np.asarray(s1, dtype=np.float64), np.asarray(s2, dtype=np.float64)
    for a, b in ((s1, s2), (s2, s1)):
        try:
            lower = scipy.linalg.cholesky(a, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            continue
        if not np.isfinite(lower).all():
            continue
        b_l = trmm(1.0, lower, b, side=1, lower=1)  # B L
        return _sum_sqrt_eigvals(trmm(1.0, lower, b_l, side=0, lower=1, trans_a=1))  # L^T B L
    r = _psd_sqrt(s1)
    return _sum_sqrt_eigvals(r @ s2 @ r)


def frechet_distance(
    mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike
) -> float:
    """Squared Frechet (W2) distance between N(mu1, S1) and N(mu2, S2), in feature units^2.

    ||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2), in float64, from the eigenvalues
    of a symmetric matrix similar to S1 S2 (:func:`trace_sqrt_product`; exact for PSD
    matrices, no complex parts to discard).
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    s1, s2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError("means and covariances must have matching shapes (d,) and (d, d)")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2)
    return float(max(value, 0.0))


def fid_from_features(feats1: ArrayLike, feats2: ArrayLike) -> float:
    """Frechet distance between the Gaussian fits of two feature sets (N1, d), (N2, d)."""
    return frechet_distance(*feature_statistics(feats1), *feature_statistics(feats2))


def fid_infinity(
    feats: ArrayLike,
    mu_ref: ArrayLike,
    sigma_ref: ArrayLike,
    sizes: Sequence[int],
    rng: np.random.Generator,
) -> tuple[float, list[float]]:
    """FID-infinity (Chong & Forsyth 2020): FID_n at each n in ``sizes`` on random subsets of
    ``feats`` (without replacement) against fixed reference statistics, a least-squares line
    in 1/n, and its intercept at 1/n = 0. Returns (intercept, [FID_n per size])."""
    a = _np64(feats)
    sizes = [int(n) for n in sizes]
    if len(set(sizes)) < 2 or min(sizes) < 2 or max(sizes) > len(a):
        raise ValueError(f"need >= 2 distinct sizes in [2, {len(a)}], got {sizes}")
    values = []
    for n in sizes:
        sub = a[rng.choice(len(a), n, replace=False)]
        values.append(frechet_distance(*feature_statistics(sub), mu_ref, sigma_ref))
    slope, intercept = np.polyfit(1.0 / np.asarray(sizes, dtype=np.float64), values, 1)
    return float(intercept), values


#: Largest number of kernel entries (x-x, y-y and x-y together) :func:`kid` precomputes
#: (float64: 200 MB); above it, each subset's kernels are computed on their own.
KID_KERNEL_CACHE = 25_000_000


def _cubic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The KID kernel matrix (a.b/d + 1)^3, (len(a), len(b))."""
    k = a @ b.T
    k /= a.shape[1]
    k += 1.0
    return k * k * k  # products, not ** 3: numpy's float power is ~10x slower


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size sets (m, d) with the kernel (x.y/d + 1)^3."""
    m, d = x.shape
    if y.shape != (m, d) or m < 2:
        raise ValueError("the unbiased estimator needs two sets of the same size m >= 2")

    kxx, kyy, kxy = _cubic(x, x), _cubic(y, y), _cubic(x, y)
    off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(off - 2.0 * kxy.sum() / (m * m))


def kid(
    x: ArrayLike,
    y: ArrayLike,
    rng: np.random.Generator | np.random.RandomState,
    subsets: int = 100,
    subset_size: int = 1000,
) -> tuple[float, float]:
    """Kernel Inception Distance: (mean, std) of the unbiased cubic-kernel MMD^2 over subsets.

    Subset size m = min(len(x), len(y), subset_size) (clean-fid's rule; torch-fidelity
    requires subset_size <= both sizes, which then gives the same m); each subset is
    drawn without replacement, x's first. std has ddof 0 (torch-fidelity's). When both
    sets have exactly m points every subset is the whole set: one evaluation, std 0, and
    ``rng`` is not drawn from.
    """
    a, b = _np64(x), _np64(y)
    m = min(len(a), len(b), int(subset_size))
    if m == len(a) == len(b):
        # Every subset is a permutation of the whole sets, and the estimator is permutation
        # invariant: all subsets give this one value (std 0), so compute it once.
        return polynomial_mmd2(a, b), 0.0
    vals = np.empty(int(subsets))
    if len(a) ** 2 + len(b) ** 2 + len(a) * len(b) > KID_KERNEL_CACHE:
        for i in range(int(subsets)):
            xs = a[rng.choice(len(a), m, replace=False)]
            ys = b[rng.choice(len(b), m, replace=False)]
            vals[i] = polynomial_mmd2(xs, ys)
        return float(vals.mean()), float(vals.std())
    # The same subsets and estimator, from the kernels of the whole sets computed once: a
    # subset's kernel sums are u^T K v with 0/1 indicator vectors (m distinct rows each),
    # O(N^2) a subset instead of O(m^2 d) (digits: 100 subsets in ~0.1 s instead of ~2 s).
    kaa, kbb, kab = _cubic(a, a), _cubic(b, b), _cubic(a, b)
    da, db = np.diagonal(kaa), np.diagonal(kbb)
    for i in range(int(subsets)):
        ix = rng.choice(len(a), m, replace=False)
        iy = rng.choice(len(b), m, replace=False)
        u, v = np.zeros(len(a)), np.zeros(len(b))
        u[ix], v[iy] = 1.0, 1.0
        kxx, kyy, kxy = u @ kaa @ u, v @ kbb @ v, u @ kab @ v
        off = (kxx - da[ix].sum() + kyy - db[iy].sum()) / (m * (m - 1))
        vals[i] = off - 2.0 * kxy / (m * m)
    return float(vals.mean()), float(vals.std())


# --------------------------------------------------------------------------- k-NN balls


def _chunked_min_sq(a: torch.Tensor, b: torch.Tensor, chunk: int) -> torch.Tensor:
    """For each row of ``a``, the squared distance to its nearest row of ``b``."""
    out = torch.empty(len(a), dtype=a.dtype)
    for i in range(0, len(a), chunk):
        out[i : i + chunk] = torch.cdist(a[i : i + chunk], b).min(1).values ** 2
    return out


def knn_radii(x: ArrayLike, k: int, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Distance (N,) of each row of ``x`` to its k-th nearest other row (Euclidean)."""
    t = _t64(x)
    if not 1 <= k < len(t):
        raise ValueError(f"k must be in [1, {len(t) - 1}], got {k}")
    out = torch.empty(len(t), dtype=t.dtype)
    for i in range(0, len(t), chunk):
        d = torch.cdist(t[i : i + chunk], t)
        # k + 1 smallest: the row itself is its own nearest neighbour (distance 0).
        out[i : i + chunk] = d.kthvalue(k + 1, dim=1).values
    return out.numpy()


def _ball_counts(
    points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int
) -> torch.Tensor:
    """For each of ``points``, how many balls B(centre_i, radius_i) contain it (closed balls)."""
    out = torch.empty(len(points), dtype=torch.long)
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i : i + chunk], centres)
        out[i : i + chunk] = (d <= radii[None, :]).sum(1)
    return out


def _ball_hits(
    points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int
) -> torch.Tensor:
    """For each ball B(centre_i, radius_i), whether any of ``points`` lies in it."""
    hit = torch.zeros(len(centres), dtype=torch.bool)
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i : i + chunk], centres)
        hit |= (d <= radii[None, :]).any(0)
    return hit


def precision_recall(
    real: ArrayLike, fake: ArrayLike, k: int = 3, chunk: int = DEFAULT_CHUNK
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019), fractions in [0, 1].

    Precision: the fraction of fake samples inside some real k-NN ball; recall: the
    fraction of real samples inside some fake k-NN ball (k=3, the paper's choice).
    """
    r, f = _t64(real), _t64(fake)
    r_rad, f_rad = (
        torch.from_numpy(knn_radii(r, k, chunk)),
        torch.from_numpy(knn_radii(f, k, chunk)),
    )
    precision = (_ball_counts(f, r, r_rad, chunk) > 0).double().mean()
    recall = (_ball_counts(r, f, f_rad, chunk) > 0).double().mean()
    return float(precision), float(recall)


def density_coverage(
    real: ArrayLike, fake: ArrayLike, k: int = 5, chunk: int = DEFAULT_CHUNK
) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020; k=5, the paper's default).

    Density = (1 / (k M)) sum_j #{real i : fake_j in B(real_i, r_k(real_i))} (can exceed 1);
    coverage = fraction of real balls that contain at least one fake sample.
    """
    r, f = _t64(real), _t64(fake)
    rad = torch.from_numpy(knn_radii(r, k, chunk))
    density = _ball_counts(f, r, rad, chunk).double().sum() / (k * len(f))
    coverage = _ball_hits(f, r, rad, chunk).double().mean()
    return float(density), float(coverage)


def nearest_distances(x: ArrayLike, ref: ArrayLike, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Distance (N,) of each row of ``x`` to its nearest row of ``ref`` (Euclidean)."""
    return _chunked_min_sq(_t64(x), _t64(ref), chunk).sqrt().numpy()


def memorisation_rate(
    fake: ArrayLike,
    train: ArrayLike,
    test: ArrayLike,
    quantile: float = 0.05,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[float, float]:
    """Fraction of samples whose nearest training point is closer than the ``quantile`` of the
    held-out test points' nearest-training distances; returns (fraction, that threshold).

    A generator whose samples are as novel as fresh data scores ~``quantile``; one that
    replays the training set scores ~1.
    """
    threshold = float(np.quantile(nearest_distances(test, train, chunk), quantile))
    d = nearest_distances(fake, train, chunk)
    return float(np.mean(d < threshold)), threshold


def wasserstein2(x: ArrayLike, y: ArrayLike) -> float:
    """Exact W2 distance between two empirical measures (uniform weights), in the points' units.

    For equal sizes the optimal plan is a permutation (Birkhoff-von Neumann), found by
    scipy's ``linear_sum_assignment``; unequal sizes go to POT's network simplex
    ``ot.emd2`` (POT's import alone costs seconds, so it is only paid when needed).
    """
    a, b = _np64(x), _np64(y)
    cost = torch.cdist(torch.from_numpy(a), torch.from_numpy(b)).numpy() ** 2
    if len(a) == len(b):
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(cost)
        return float(np.sqrt(max(cost[rows, cols].mean(), 0.0)))
    import ot

    w = ot.emd2(np.full(len(a), 1.0 / len(a)), np.full(len(b), 1.0 / len(b)), cost,
                numItermax=10_000_000)  # fmt: skip
    return float(np.sqrt(max(float(w), 0.0)))


def mode_histogram(labels: np.ndarray, num_modes: int) -> np.ndarray:
    """Counts (num_modes,) of integer mode labels; -1 (no mode) is not counted."""
    lab = np.asarray(labels)
    return np.bincount(lab[lab >= 0], minlength=num_modes)[:num_modes]


def modes_covered(counts: np.ndarray, total: int, share: float = 0.25) -> int:
    """Modes whose count is at least ``share`` of a fair share total / K (default a quarter)."""
    counts = np.asarray(counts)
    return int(np.sum(counts >= share * total / len(counts)))


def kl_to_uniform(counts: np.ndarray) -> float:
    """KL(p || uniform) in nats of the histogram ``counts`` (log K if all mass is on one mode)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return float(np.log(len(counts)))
    p = counts / total
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] * len(p))))
