"""Hostile defenses aimed at the robust task's physical-linf row (review of the physical rows).

All three train the built-in PGD-AT model for the row's digital ball (so their clean
weights are comparable); they differ only in how the returned module answers queries.

- ``rev-honest``: the PGD-AT model as it is (the comparator);
- ``rev-pool``: under no-grad, a batch whose size is a multiple of the harness's scoring
  draw count (SCORE_DRAWS = 64, laid out as draws x points by ``x.repeat``) gets each
  point's logits averaged over its 64 transformed copies: every draw then answers the
  majority class of the point, so a point right on most draws scores 1. Only the first
  ``pool_calls`` scoring calls are pooled (the main ``world_scores``: clean and the two
  attacks), so the auditor sees a pooled answer rarely;
- ``rev-decoy``: the forward value is the model's exactly (bit for bit, so audits and the
  fingerprint pass), but its input gradient is that of a fixed random linear map (a
  decoy): gradient attacks walk in a useless direction.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from dltbench import register_method
from dltbench.models import default_classifier, fit_classifier
from dltbench.tasks.robust.defenses import pgd_at_loss
from dltbench.tasks.robust.physical import SCORE_DRAWS, SELECT_DRAWS, digital_norm
from dltbench.tasks.robust.task import DefenseMethod


def _train(data, config, ctx) -> nn.Module:
    config = dataclasses.replace(config, norm=digital_norm(config.norm))
    model = default_classifier(data.shape, data.num_classes)
    loss = pgd_at_loss(config.eps, config.norm, config.at_steps)
    return fit_classifier(model, data.train, loss, ctx, config.epochs, 64, 1e-3)


class Pooled(nn.Module):
    """Averages logits over the 64 scoring draws of each point in the first few scoring calls.

    ``world_scores`` asks, per candidate, a selection call (SELECT_DRAWS x n rows) then a
    scoring call (SCORE_DRAWS x n rows), both without gradients: the even-numbered large
    no-grad calls are the scoring ones, laid out draws x points by ``x.repeat``.
    """

    def __init__(self, inner: nn.Module, pool_calls: int):
        super().__init__()
        self.inner, self.pool_calls = inner, pool_calls
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        out = self.inner(x)
        n = len(x)
        if torch.is_grad_enabled() or n < 8 * SELECT_DRAWS or n % SELECT_DRAWS:
            return out
        self.seen += 1
        k = int(self.seen)
        if k % 2 == 0 and k // 2 <= self.pool_calls and n % SCORE_DRAWS == 0:
            pooled = out.view(SCORE_DRAWS, n // SCORE_DRAWS, -1).softmax(-1).mean(0)
            out = pooled.log().repeat(SCORE_DRAWS, 1)
        return out


class Decoy(nn.Module):
    """The inner model's logits, with the input gradient of a fixed random linear map."""

    def __init__(self, inner: nn.Module, dim: int, classes: int):
        super().__init__()
        self.inner = inner
        self.register_buffer(
            "w", torch.randn(dim, classes, generator=torch.Generator().manual_seed(0))
        )

    def forward(self, x):
        out = self.inner(x)
        if not x.requires_grad:
            return out
        lin = x.flatten(1) @ self.w
        return out.detach() + (lin - lin.detach())


@register_method(task="robust", name="rev-honest")
class Honest(DefenseMethod):
    """PGD-AT, answered honestly."""

    version = "1"

    def train(self, data, config, ctx) -> nn.Module:
        """PGD-AT for the row's ball."""
        return _train(data, config, ctx)


@register_method(task="robust", name="rev-pool")
class Pool(DefenseMethod):
    """PGD-AT whose first scoring calls are pooled across each point's draws."""

    version = "1"

    def __init__(self, pool_calls: int = 3):
        self.pool_calls = pool_calls

    def train(self, data, config, ctx) -> nn.Module:
        """PGD-AT for the row's ball, wrapped."""
        return Pooled(_train(data, config, ctx), self.pool_calls).eval()


@register_method(task="robust", name="rev-decoy")
class DecoyDefense(DefenseMethod):
    """PGD-AT with a decoy input gradient."""

    version = "1"

    def train(self, data, config, ctx) -> nn.Module:
        """PGD-AT for the row's ball, wrapped."""
        c, h, w = data.shape
        return Decoy(_train(data, config, ctx), c * h * w, data.num_classes).eval()
