"""Adam on one tensor, with a cosine-decayed learning rate."""

from __future__ import annotations

import math

import torch


class Adam:
    """Adam (Kingma & Ba 2015) on one tensor, learning rate cosine-decayed to 0 over ``steps``.

    Our own few lines: torch.optim's first step imports the compiler stack, seconds of
    start-up per cell that a benchmark's timings should not carry.
    """

    def __init__(self, like: torch.Tensor, lr: float, steps: int, b1=0.9, b2=0.999, eps=1e-8):
        self.m, self.v = torch.zeros_like(like), torch.zeros_like(like)
        self.lr, self.steps, self.b1, self.b2, self.eps, self.t = lr, steps, b1, b2, eps, 0

    def ascend(self, x: torch.Tensor, g: torch.Tensor) -> None:
        """One in-place ascent step of ``x`` along the gradient estimate ``g``."""
        self.t += 1
        self.m.mul_(self.b1).add_(g, alpha=1 - self.b1)
        self.v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
        lr = 0.5 * self.lr * (1 + math.cos(math.pi * (self.t - 1) / max(self.steps, 1)))
        mh, vh = self.m / (1 - self.b1**self.t), self.v / (1 - self.b2**self.t)
        x.add_(lr * mh / (vh.sqrt() + self.eps))
