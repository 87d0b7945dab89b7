"""Expectation over transformation (Athalye, Engstrom, Ilyas & Kwok, ICML 2018) for physical-world attacks.

A physical adversarial example must survive the camera: it is scored through a random
transformation t drawn from a stated family, and the attack maximises the expected loss
E_t L(f(t(x_adv)), y) by averaging input gradients over draws of t (EOT). The family
here, :class:`TransformFamily`, applied in this order to a batch (N, C, H, W) in [0, 1]:

1. rotation by an angle uniform in [-max_rotation, max_rotation] degrees and scaling by a
   factor uniform in [scale_low, scale_high], both about the image centre (bilinear,
   zero padding: the background of the digits);
2. a brightness shift uniform in [-brightness, brightness], the same for every pixel;
3. Gaussian pixel noise of standard deviation ``noise``;
4. clipping to [0, 1].

Every step is differentiable in x. Library use only so far (no leaderboard setting):

    from dltbench.tasks.robust.physical import TransformFamily, eot_pgd
    x_adv = eot_pgd(model, x, y, eps=0.1, norm="linf", samples=8)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import _summed
from .threat import _bcast, ascent_direction, check_norm, project, random_start


@dataclass(frozen=True)
class TransformFamily:
    """The random transformations a physical example must survive (angles in degrees, pixel scale [0, 1])."""

    max_rotation: float = 15.0
    scale_low: float = 0.9
    scale_high: float = 1.1
    brightness: float = 0.1
    noise: float = 0.02

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One independent draw of t per image of ``x``; differentiable in ``x``."""
        n = len(x)

        def uniform(lo: float, hi: float) -> torch.Tensor:
            u = torch.rand(n, generator=generator, device=x.device, dtype=x.dtype)
            return lo + (hi - lo) * u

        angle = uniform(-self.max_rotation, self.max_rotation) * (math.pi / 180)
        scale = uniform(self.scale_low, self.scale_high)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        zero = torch.zeros_like(cos)
        # affine_grid maps output to input coordinates: the inverse of "rotate, then scale"
        theta = torch.stack(
            [torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out = out + _bcast(uniform(-self.brightness, self.brightness), out)
        if self.noise > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            out = out + self.noise * noise
        return out.clamp(0.0, 1.0)


class TransformAveraged(nn.Module):
    """A randomized classifier: the mean of ``model``'s logits over ``samples`` fresh draws of ``family``."""

    def __init__(
        self,
        model: nn.Module,
        family: TransformFamily,
        samples: int = 8,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.model, self.family, self.samples, self.generator = model, family, samples, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean logits (N, K) over the draws (a new draw at every call)."""
        rep = x.repeat(self.samples, *([1] * (x.dim() - 1)))
        out = self.model(self.family(rep, self.generator))
        return out.view(self.samples, len(x), -1).mean(0)


def eot_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    generator: torch.Generator | None = None,
    steps: int = 20,
    samples: int = 8,
    family: TransformFamily | None = None,
    loss: str = "ce",
    step_size: float | None = None,
) -> torch.Tensor:
    """PGD on the expected loss E_t L(model(t(x_adv)), y), t ~ ``family`` (EOT, Athalye et al. 2018).

    Each step averages the input gradient over ``samples`` independent draws of t per
    point (one batched forward of samples x N images); step 2.5 eps / steps (linf, l2)
    from a random start, projection as in :func:`~dltbench.tasks.robust.attacks.pgd`.
    All ``steps`` are taken (the model may be randomized, so one draw fooling it proves
    nothing); the last iterate is returned.
    """
    check_norm(norm, ("linf", "l2"), who="EOT-PGD")
    family = family or TransformFamily()
    step = 2.5 * eps / steps if step_size is None else step_size
    loss_fn = _summed(loss)
    x = x.detach()
    xa = random_start(x, eps, norm, generator)
    for _ in range(steps):
        xa.requires_grad_(True)
        rep = xa.repeat(samples, *([1] * (x.dim() - 1)))
        logits = model(family(rep, generator))
        (grad,) = torch.autograd.grad(loss_fn(logits, y.repeat(samples)) / samples, xa)
        with torch.no_grad():
            xa = project(xa.detach() + step * ascent_direction(grad, norm), x, eps, norm)
    return xa.detach()


def expected_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    family: TransformFamily,
    draws: int = 64,
    generator: torch.Generator | None = None,
) -> float:
    """The fraction of (point, draw) pairs classified correctly through t ~ ``family``."""
    with torch.no_grad():
        rep = x.repeat(draws, *([1] * (x.dim() - 1)))
        pred = model(family(rep, generator)).argmax(1)
    return float((pred == y.repeat(draws)).float().mean())
