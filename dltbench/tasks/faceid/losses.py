"""The FaceID loss family: margin logits (SphereFace, CosFace, ArcFace), center, contrastive, triplet.

Conventions: ``cos`` is cos(theta_{i,c}) between an embedding and a class's weight row
(both L2-normalised), ``y`` the target class. Every ``*_logits`` returns the (N, C)
logits that go into softmax cross-entropy; only the target column carries the margin.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def cosine_table(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """cos(theta) (N, C) between embeddings h (N, d) and class rows w (C, d)."""
    return F.normalize(h, dim=1) @ F.normalize(w, dim=1).t()


def _with_target(cos: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    onehot = F.one_hot(y, cos.shape[1]).bool()
    return torch.where(onehot, target[:, None], cos)


def sphereface_psi(cos: torch.Tensor, m: int = 4) -> torch.Tensor:
    """A-Softmax's psi(theta) = (-1)^k cos(m theta) - 2k for theta in [k pi/m, (k+1) pi/m]."""
    theta = torch.acos(cos.clamp(-1.0, 1.0))
    k = torch.floor(m * theta / math.pi).clamp(max=m - 1)
    sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * torch.cos(m * theta) - 2.0 * k


def sphereface_logits(
    h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, m: int = 4, lam: float = 0.0
) -> torch.Tensor:
    """A-Softmax logits ||h|| cos(theta_c), target ||h|| (lam cos + psi) / (1 + lam) (annealed).

    Weights are normalised, features are not (Liu et al. 2017); lam = 0 is the pure
    A-Softmax target ||h|| psi(theta_y).
    """
    norm = h.norm(dim=1)
    cos = cosine_table(h, w)
    cos_y = cos.gather(1, y[:, None])[:, 0]
    target = (lam * cos_y + sphereface_psi(cos_y, m)) / (1.0 + lam)
    return norm[:, None] * _with_target(cos, y, target)


def cosface_logits(cos: torch.Tensor, y: torch.Tensor, s: float, m: float = 0.35) -> torch.Tensor:
    """CosFace / LMCL (Wang et al. 2018): s cos(theta_c), target s (cos(theta_y) - m)."""
    cos_y = cos.gather(1, y[:, None])[:, 0]
    return s * _with_target(cos, y, cos_y - m)


def arcface_target(cos: torch.Tensor, m: float = 0.5, easy_margin: bool = False) -> torch.Tensor:
    """ArcFace's target cosine cos(theta + m), kept non-increasing in theta on [0, pi].

    Where theta + m > pi, cos(theta + m) would rise again; there the target is
    cos(theta) - m sin(pi - m) (insightface's fallback: at theta = pi - m it steps down
    from -1 to -cos(m) - m sin(m), then keeps falling), or, with ``easy_margin``,
    cos(theta) wherever cos(theta) <= 0 (which is *not* monotone: at theta = pi/2 it
    jumps up from -sin(m) to 0).
    """
    cos = cos.clamp(-1.0, 1.0)
    sin = torch.sqrt((1.0 - cos * cos).clamp_min(1e-12))
    phi = cos * math.cos(m) - sin * math.sin(m)
    if easy_margin:
        return torch.where(cos > 0, phi, cos)
    return torch.where(cos > math.cos(math.pi - m), phi, cos - math.sin(math.pi - m) * m)


def arcface_logits(
    cos: torch.Tensor, y: torch.Tensor, s: float, m: float = 0.5, easy_margin: bool = False
) -> torch.Tensor:
    """ArcFace / additive angular margin (Deng et al. 2019): s cos(theta_c), target s cos(theta_y + m)."""
    cos_y = cos.gather(1, y[:, None])[:, 0]
    return s * _with_target(cos, y, arcface_target(cos_y, m, easy_margin))


def sphereface_lambda(
    iteration: int,
    base: float = 1000.0,
    gamma: float = 0.12,
    power: float = 1.0,
    lambda_min: float = 5.0,
) -> float:
    """SphereFace's annealing: lam = max(lambda_min, base (1 + gamma it)^-power)."""  # fmt: skip
    return max(lambda_min, base * (1.0 + gamma * iteration) ** (-power))


def center_loss(h: torch.Tensor, y: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Wen et al. 2016: (1/2) mean_i ||h_i - c_{y_i}||^2 (the centres are not differentiated)."""
    return 0.5 * ((h - centers[y].detach()) ** 2).sum(1).mean()


@torch.no_grad()
def update_centers(centers: torch.Tensor, h: torch.Tensor, y: torch.Tensor, alpha: float) -> None:
    """Wen et al.'s centre step: c_j -= alpha sum_{y_i=j}(c_j - h_i) / (1 + n_j), in place."""
    delta = torch.zeros_like(centers).index_add_(0, y, centers[y] - h.detach())
    count = torch.zeros(len(centers), device=h.device).index_add_(
        0, y, torch.ones(len(y), device=h.device)
    )
    centers -= alpha * delta / (1.0 + count[:, None])


def pairwise_sq_dist(e: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (N, N) between rows of ``e``."""
    return (e[:, None, :] - e[None, :, :]).pow(2).sum(-1)


def contrastive_loss(e: torch.Tensor, y: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Hadsell et al. 2006 over all pairs of the batch, label s = 1 for the same identity:
    (1/2) [s d^2 + (1 - s) max(0, margin - d)^2], d the Euclidean distance of the embeddings."""
    d2 = pairwise_sq_dist(e)
    d = (d2 + 1e-12).sqrt()
    same = (y[:, None] == y[None, :]).float()
    off = ~torch.eye(len(y), dtype=torch.bool, device=e.device)
    per = same * d2 + (1 - same) * F.relu(margin - d).pow(2)
    return 0.5 * per[off].mean()


def triplet_semihard_loss(e: torch.Tensor, y: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """FaceNet (Schroff et al. 2015) with online semi-hard mining on squared distances.

    For every anchor-positive pair (a, p) the negative is the closest n with
    d(a, n) > d(a, p) (semi-hard); if none exists, the farthest negative (as
    TensorFlow's ``triplet_semihard_loss``). Loss: mean max(0, d(a, p) - d(a, n) + margin).
    """
    d = pairwise_sq_dist(e)
    same = y[:, None] == y[None, :]
    eye = torch.eye(len(y), dtype=torch.bool, device=e.device)
    pos = same & ~eye
    a_idx, p_idx = pos.nonzero(as_tuple=True)
    if len(a_idx) == 0:
        return e.sum() * 0.0
    d_ap = d[a_idx, p_idx]
    d_an = d[a_idx]  # (P, N)
    neg = ~same[a_idx]
    farther = neg & (d_an > d_ap[:, None])
    inf = torch.tensor(float("inf"), device=e.device)
    semi = torch.where(farther, d_an, inf).amin(1)
    hardest_far = torch.where(neg, d_an, -inf).amax(1)
    d_neg = torch.where(torch.isfinite(semi), semi, hardest_far)
    return F.relu(d_ap - d_neg + margin).mean()
