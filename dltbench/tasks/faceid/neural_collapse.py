"""Neural collapse metrics (Papyan, Han & Donoho, PNAS 2020) of features and classifier rows.

Conventions (stated because papers differ): ``h`` are N features of C classes, mu_c the
class means, mu_G the mean of all features; Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(...)^T
(within-class, population normalisation), Sigma_B = (1/C) sum_c (mu_c - mu_G)(...)^T.

* NC1 = Tr(Sigma_W Sigma_B^+) / C (Moore-Penrose pseudo-inverse).
* NC2 equinorm: std / mean of ||mu_c - mu_G|| over classes (coefficient of variation);
  equiangularity: std of cos(mu_c - mu_G, mu_c' - mu_G) over c != c';
  max-angle: mean over c != c' of |cos + 1/(C-1)| (0 for a simplex ETF).
  The same three for classifier rows w_c (not centred, as in the paper).
* NC3 (self-duality) = || W / ||W||_F - M / ||M||_F ||_F^2, M the centred means (C, d).
* NC4 = fraction of samples where the classifier's argmax_c <w_c, h> differs from the
  nearest class-centre rule argmin_c ||h - mu_c||.

For a simplex ETF with isotropic noise sigma^2 I: Sigma_B = P / (C-1), P the projector on
the means' span (rank C-1), so NC1 = sigma^2 (C-1) Tr(P) / C = sigma^2 (C-1)^2 / C.
"""

from __future__ import annotations

import numpy as np


def class_means(h: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """Class means (C, d) of features h (N, d) with labels y in 0..C-1."""
    counts = np.bincount(y, minlength=num_classes).astype(float)
    sums = np.zeros((num_classes, h.shape[1]))
    np.add.at(sums, y, h)
    return sums / np.maximum(counts, 1)[:, None]


def _shape_stats(v: np.ndarray, centre: bool) -> dict[str, float]:
    """Equinorm CV, std of pairwise cosines and mean |cos + 1/(C-1)| of the rows of v."""
    rows = v - v.mean(0) if centre else v
    norms = np.linalg.norm(rows, axis=1)
    unit = rows / np.maximum(norms, 1e-12)[:, None]
    c = len(v)
    cos = (unit @ unit.T)[~np.eye(c, dtype=bool)]
    return {
        "equinorm": float(norms.std() / max(norms.mean(), 1e-12)),
        "equiangular": float(cos.std()),
        "max_angle": float(np.abs(cos + 1.0 / (c - 1)).mean()),
    }


def nc1(h: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    """Tr(Sigma_W Sigma_B^+) / C (dimensionless)."""
    mu = class_means(h, y, num_classes)
    mu_g = h.mean(0)
    dev = h - mu[y]
    sigma_w = dev.T @ dev / len(h)
    cen = mu - mu_g
    sigma_b = cen.T @ cen / num_classes
    return float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, hermitian=True)) / num_classes)


def neural_collapse(
    h: np.ndarray, y: np.ndarray, num_classes: int, weight: np.ndarray | None = None
) -> dict[str, float | None]:
    """NC1..NC4 of features ``h`` (N, d), labels ``y``; classifier metrics None without ``weight``."""
    h = np.asarray(h, dtype=float)
    y = np.asarray(y)
    mu = class_means(h, y, num_classes)
    means = _shape_stats(mu - h.mean(0), centre=False)
    out: dict[str, float | None] = {
        "nc1": nc1(h, y, num_classes),
        "nc2_equinorm": means["equinorm"],
        "nc2_equiangular": means["equiangular"],
        "nc2_max_angle": means["max_angle"],
        "nc2_w_equinorm": None,
        "nc2_w_equiangular": None,
        "nc3_self_duality": None,
        "nc4_ncc_mismatch": None,
    }
    # ||h - mu_c||^2 up to the per-sample constant ||h||^2 (no (N, C, d) tensor)
    ncc = np.argmin((mu**2).sum(1)[None, :] - 2.0 * h @ mu.T, axis=1)
    out["ncc_train_acc"] = float(np.mean(ncc == y))
    if weight is not None:
        w = np.asarray(weight, dtype=float)
        rows = _shape_stats(w, centre=False)
        cen = mu - h.mean(0)
        out["nc2_w_equinorm"] = rows["equinorm"]
        out["nc2_w_equiangular"] = rows["equiangular"]
        out["nc3_self_duality"] = float(
            np.linalg.norm(w / np.linalg.norm(w) - cen / np.linalg.norm(cen)) ** 2
        )
        out["nc4_ncc_mismatch"] = float(np.mean(np.argmax(h @ w.T, axis=1) != ncc))
    return out
