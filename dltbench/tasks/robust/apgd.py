"""APGD (Croce & Hein, ICML 2020): PGD with momentum and an automatic step-size schedule.

The schedule of the paper: step eta_0 = 2 eps, momentum alpha = 0.75 (none on the first
step). Checkpoints w_0 = 0, w_1 = 0.22 N, and each next gap shrinks by 0.03 N down to
0.06 N. At a checkpoint a point's step is halved and it restarts from its best point
(highest loss) when either (1) at most rho = 0.75 of the steps since the last
checkpoint increased its loss, or (2) its step was not reduced at the last checkpoint
and its best loss did not improve since. The first checkpoint compares against the
loss at the starting point.
"""

from __future__ import annotations

import torch
from torch import nn

from .threat import (
    LOSSES,
    _bcast,
    ascent_direction,
    check_norm,
    dlr_targeted_loss,
    fooled_fn,
    on_unfooled,
    project,
)

RHO = 0.75
MOMENTUM = 0.75


def checkpoints(steps: int) -> list[int]:
    """The iterations (1-based counts) at which APGD checks progress, for ``steps`` iterations."""
    k, n_min, decr = (
        max(int(0.22 * steps), 1),
        max(int(0.06 * steps), 1),
        max(int(0.03 * steps), 1),
    )
    out, at = [], 0
    while at + k <= steps:
        at += k
        out.append(at)
        k = max(k - decr, n_min)
    return out


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    generator: torch.Generator | None = None,
    steps: int = 100,
    loss: str = "ce",
    restarts: int = 1,
) -> torch.Tensor:
    """Untargeted APGD on ``loss`` ("ce", "dlr", "cw" or "top3"/"top5"); restarts attack only unfooled points.

    A point keeps a fooling iterate if one was found, else its highest-loss iterate. With a
    top-k loss, "fooled" means the label left the top k logits (:func:`fooled_fn`).
    """
    loss_fn = LOSSES[loss]
    return _restarted(
        model, x, y, eps, norm, generator, steps, restarts, lambda lo, yy, _: loss_fn(lo, yy),
        fooled_fn(loss),
    )  # fmt: skip


def apgd_targeted(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    generator: torch.Generator | None = None,
    steps: int = 100,
    n_targets: int = 9,
    restarts: int = 1,
) -> torch.Tensor:
    """APGD-T: targeted DLR loss towards each of the ``n_targets`` top non-true classes in turn.

    Targets are ranked by the clean logits (2nd highest first), as in AutoAttack; each
    target attacks only the points no earlier target fooled. Needs K >= 4 classes.
    """
    with torch.no_grad():  # rank the non-true classes by clean logit
        order = model(x).scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)

    def run(j: int, todo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        target = order[todo, j]

        def tloss(lo, yy, idx, t=target):
            return dlr_targeted_loss(lo, yy, t[idx])

        xa = _restarted(model, x[todo], y[todo], eps, norm, generator, steps, restarts, tloss)
        with torch.no_grad():
            return xa, model(xa).argmax(1) != y[todo]

    return on_unfooled(x, min(n_targets, order.shape[1] - 1), run)


def _restarted(
    model, x, y, eps, norm, generator, steps, restarts, loss_fn, fooled=None
) -> torch.Tensor:
    # APGD's step-size schedule is defined for the linf and l2 balls only (sparse APGD,
    # Croce et al. 2022, is a different algorithm): l0 is PGD-l0's and Sparse-RS's.
    check_norm(norm, ("linf", "l2"), who="APGD")
    fooled = fooled or fooled_fn("ce")
    return on_unfooled(
        x,
        max(1, restarts),
        lambda _, todo: _apgd_run(
            model, x[todo], y[todo], todo, eps, norm, steps, loss_fn, generator, fooled
        ),
    )


def _grad(model, xa, y, idx, loss_fn):
    xa = xa.detach().requires_grad_(True)
    logits = model(xa)
    loss = loss_fn(logits, y, idx)
    (grad,) = torch.autograd.grad(loss.sum(), xa)
    return grad.detach(), logits.detach(), loss.detach()


def _apgd_run(model, x, y, idx, eps, norm, steps, loss_fn, generator, fooled_by=None):
    """One APGD run over a batch; returns (x_adv, fooled)."""
    x = x.detach()
    if norm == "linf":  # AutoAttack's start: a random direction scaled to the ball's surface
        t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
        t = t / _bcast(t.flatten(1).abs().amax(1) + 1e-12, t)
    else:
        t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        t = t / _bcast(t.flatten(1).norm(dim=1) + 1e-12, t)
    xa = (x + eps * t).clamp(0.0, 1.0)
    grad, logits, loss = _grad(model, xa, y, idx, loss_fn)
    fooled_by = fooled_by or fooled_fn("ce")
    fooled = fooled_by(logits, y)
    x_adv_best = xa.clone()
    x_best, grad_best, loss_best = xa.clone(), grad.clone(), loss.clone()
    step = torch.full((len(x),), 2.0 * eps, device=x.device, dtype=x.dtype)
    x_old, history = xa.clone(), [loss]
    checks = set(checkpoints(steps))
    last_best = loss_best.clone()
    reduced_last = torch.ones(len(x), dtype=torch.bool, device=x.device)
    since = 0
    for i in range(steps):
        with torch.no_grad():
            a = MOMENTUM if i > 0 else 1.0
            z = project(xa + _bcast(step, xa) * ascent_direction(grad, norm), x, eps, norm)
            x_new = project(xa + a * (z - xa) + (1 - a) * (xa - x_old), x, eps, norm)
            x_old, xa = xa, x_new
        grad, logits, loss = _grad(model, xa, y, idx, loss_fn)
        since += 1
        with torch.no_grad():
            wrong = fooled_by(logits, y)
            x_adv_best = torch.where(_bcast(wrong, xa), xa, x_adv_best)
            fooled |= wrong
            history.append(loss)
            better = loss > loss_best
            x_best = torch.where(_bcast(better, xa), xa, x_best)
            grad_best = torch.where(_bcast(better, xa), grad, grad_best)
            loss_best = torch.where(better, loss, loss_best)
            if i + 1 in checks:
                recent = torch.stack(history[-(since + 1) :])
                increases = (recent[1:] > recent[:-1]).sum(0)
                reduce = (increases <= since * RHO) | (~reduced_last & (last_best >= loss_best))
                reduced_last, last_best, since = reduce, loss_best.clone(), 0
                step = torch.where(reduce, step / 2, step)
                xa = torch.where(_bcast(reduce, xa), x_best, xa)
                grad = torch.where(_bcast(reduce, xa), grad_best, grad)
    return torch.where(_bcast(fooled, xa), x_adv_best, x_best), fooled
