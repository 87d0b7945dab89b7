"""Adversarial-training losses, each a per-minibatch ``loss_fn(model, x, y, generator)``.

Plug them into :func:`dltbench.models.fit_classifier`. eps and norm are the threat
model the defense trains for; the inner attacks use the generator they are given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...models import LossFn
from .attacks import pgd
from .threat import ascent_direction, project, random_start


def standard_loss() -> LossFn:
    """Cross-entropy on clean inputs."""
    return lambda model, x, y, g: F.cross_entropy(model(x), y)


def pgd_at_loss(eps: float, norm: str, steps: int, step_size: float | None = None) -> LossFn:
    """Madry et al. 2018: cross-entropy at a PGD point (random start, ``steps`` steps of 2.5 eps / steps)."""

    def loss(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> torch.Tensor:
        x_adv = pgd(model, x, y, eps, norm, generator=g, steps=steps, step_size=step_size)
        return F.cross_entropy(model(x_adv), y)

    return loss


def fgsm_at_loss(eps: float, norm: str, alpha: float = 1.25) -> LossFn:
    """Wong, Rice & Kolter 2020 ("fast is better than free"): FGSM from a random start, step alpha * eps."""

    def loss(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> torch.Tensor:
        x0 = random_start(x, eps, norm, g).requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x0), y), x0)
        x_adv = project(x0.detach() + alpha * eps * ascent_direction(grad, norm), x, eps, norm)
        return F.cross_entropy(model(x_adv), y)

    return loss


def trades_loss(eps: float, norm: str, steps: int, beta: float = 6.0) -> LossFn:
    """Zhang et al. 2019: CE(f(x), y) + beta * KL(f(x) || f(x')), x' maximising the KL by PGD."""
    step = 2.5 * eps / steps

    def loss(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> torch.Tensor:
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        noise = 0.001 * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        xa = (x + noise).clamp(0.0, 1.0)
        for _ in range(steps):
            xa.requires_grad_(True)
            kl = F.kl_div(F.log_softmax(model(xa), dim=1), p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(kl, xa)
            with torch.no_grad():
                xa = project(xa + step * ascent_direction(grad, norm), x, eps, norm)
        logits = model(x)
        kl = F.kl_div(
            F.log_softmax(model(xa.detach()), dim=1),
            F.softmax(logits, dim=1),
            reduction="batchmean",
        )
        return F.cross_entropy(logits, y) + beta * kl

    return loss


__all__ = ["fgsm_at_loss", "pgd_at_loss", "standard_loss", "trades_loss"]
