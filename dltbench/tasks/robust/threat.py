"""Threat models: l_p norms, projections onto the eps-ball intersected with the [0, 1] box, losses.

Norms are named ``"linf"`` and ``"l2"``; eps is in the [0, 1] pixel scale. Every
attack here keeps its iterates inside ``{x' in [0, 1]^d : ||x' - x||_p <= eps}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NORMS: tuple[str, ...] = ("linf", "l2")


def check_norm(norm: str) -> str:
    """``norm`` if it is a supported threat model, else a ValueError naming the valid ones."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
    return norm


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm (N,) of ``delta`` (N, ...): max |.| for linf, Euclidean for l2."""
    flat = delta.reshape(delta.shape[0], -1)
    return flat.abs().amax(1) if check_norm(norm) == "linf" else flat.norm(p=2, dim=1)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project ``x_adv`` onto the eps-ball around ``x``, then clip to [0, 1].

    Clipping moves every coordinate towards ``x`` (x is in the box), so the result
    stays inside the ball.
    """
    return (x + project_ball(x_adv - x, eps, norm)).clamp(0.0, 1.0)


def project_ball(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project each perturbation in ``delta`` onto the eps-ball of ``norm`` (no box)."""
    if check_norm(norm) == "linf":
        return delta.clamp(-eps, eps)
    n = lp_norm(delta, "l2")
    return delta * _bcast(torch.clamp(eps / (n + 1e-12), max=1.0), delta)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent unit step for ``norm``: sign(g) for linf, g / ||g||_2 for l2."""
    if check_norm(norm) == "linf":
        return grad.sign()
    return grad / _bcast(lp_norm(grad, "l2") + 1e-12, grad)


def random_start(
    x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None
) -> torch.Tensor:
    """A random point of the ball (uniform in the linf cube; on the l2 sphere), clipped to [0, 1]."""
    if check_norm(norm) == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + eps * (2 * u - 1)).clamp(0.0, 1.0)
    t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + eps * t / _bcast(lp_norm(t, "l2") + 1e-12, t)).clamp(0.0, 1.0)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{j != y} z_j per sample: negative iff the point is misclassified."""
    z_y = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], float("-inf"))
    return z_y - others.amax(1)


def cw_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin loss max_{j != y} z_j - z_y per sample (to maximise)."""
    return -margin(logits, y)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein 2020) per sample; needs K >= 3 classes."""
    if logits.shape[1] < 3:
        raise ValueError("the DLR loss needs at least 3 classes")
    z_sorted = logits.sort(dim=1).values
    return -margin(logits, y) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) per sample; needs K >= 4."""
    if logits.shape[1] < 4:
        raise ValueError("the targeted DLR loss needs at least 4 classes")
    z_sorted = logits.sort(dim=1).values
    z_y = logits.gather(1, y[:, None])[:, 0]
    z_t = logits.gather(1, target[:, None])[:, 0]
    return -(z_y - z_t) / (z_sorted[:, -1] - 0.5 * (z_sorted[:, -3] + z_sorted[:, -4]) + 1e-12)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample (nats)."""
    return F.cross_entropy(logits, y, reduction="none")


LOSSES = {"ce": ce_loss, "cw": cw_loss, "dlr": dlr_loss}
