"""First-order attacks: FGSM, PGD (l_inf and l_2, random start, restarts) and a universal perturbation.

Every attack has the signature of an ``attack`` method's protocol,
``f(model, x, y, eps, norm, generator=None, ...) -> x_adv``, with ``x`` (N, C, H, W) in
[0, 1], ``eps`` in that pixel scale and ``norm`` in {"linf", "l2"}, or ``norm`` "l0" with
``eps`` a count k of changed pixels (PGD is then PGD-l0, Croce & Hein 2019). The returned points
lie in the eps-ball intersected with [0, 1] (the harness verifies this anyway).
``model`` must already be in eval mode; the attacks never change it.

Example::

    from dltbench.tasks.robust import pgd
    x_adv = pgd(model, x, y, eps=8 / 255, norm="linf", steps=10)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .threat import (
    COUNT_NORMS,
    LOSSES,
    ascent_direction,
    check_norm,
    fooled_fn,
    on_unfooled,
    project,
    project_ball,
    random_start,
    step_scale,
)


def _summed(loss: str):
    if loss == "ce":
        return lambda logits, y: F.cross_entropy(logits, y, reduction="sum")
    return lambda logits, y: LOSSES[loss](logits, y).sum()


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps on the CE loss.

    For l2 the step is eps * g / ||g||_2 (the fast gradient method); for l0 it is one
    PGD-l0 step from x (L0_STEP d g / ||g||_1, projected onto k pixels).
    """
    xa = x.detach().clone().requires_grad_(True)
    loss = LOSSES["ce"](model(xa), y).sum()
    (grad,) = torch.autograd.grad(loss, xa)
    with torch.no_grad():
        return project(x + step_scale(eps, norm, x) * ascent_direction(grad, norm), x, eps, norm)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    generator: torch.Generator | None = None,
    steps: int = 10,
    step_size: float | None = None,
    restarts: int = 1,
    random_init: bool = True,
    loss: str = "ce",
) -> torch.Tensor:
    """Projected gradient ascent (Madry et al. 2018) on ``loss`` ("ce", "cw" margin, "top3", "top5").

    ``step_size`` defaults to 2.5 * eps / steps (linf, l2). With ``norm`` "l0" this is
    PGD-l0 (Croce & Hein 2019): steps of L0_STEP * d along g / ||g||_1 (d coordinates per
    image), each followed by the exact projection onto k pixels within the box, from a
    uniform random point of the box projected the same way. Each restart attacks only
    the points that no earlier restart fooled; a point keeps the first iterate that
    fooled the model (with a top-k loss: pushed the label out of the top k) and is not
    attacked further, else the last iterate of its last restart.
    """
    check_norm(norm)
    if step_size is not None:
        step = step_size
    else:
        step = step_scale(eps, norm, x) if norm in COUNT_NORMS else 2.5 * eps / steps
    runs = max(1, restarts)
    return on_unfooled(
        x,
        runs,
        lambda r, todo: _pgd_run(
            model, x[todo], y[todo], eps, norm, steps, step, random_init or r > 0,
            _summed(loss), generator, check_last=r < runs - 1, fooled=fooled_fn(loss),
        ),
    )  # fmt: skip


def _pgd_run(model, x, y, eps, norm, steps, step, rand, loss_fn, generator, check_last, fooled):
    """One PGD run; returns (x_adv, fooled).

    A point leaves the batch at the first iterate that fools the model (that iterate is
    its answer), so later steps cost only what is still robust: the same result as
    attacking every point for all steps and keeping a fooling iterate, for less compute.
    """
    x = x.detach()
    out = random_start(x, eps, norm, generator) if rand else x.clone()
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    act = torch.arange(len(x), device=x.device)
    xa, xs, ys = out, x, y
    if norm == "linf":  # the ball and the box are one elementwise clamp for linf
        lo, hi = (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)
    for _ in range(steps):
        xa.requires_grad_(True)
        logits = model(xa)
        (grad,) = torch.autograd.grad(loss_fn(logits, ys), xa)
        with torch.no_grad():
            xa = xa.detach()
            wrong = fooled(logits, ys)
            if bool(wrong.any()):  # one host sync per step buys dropping the fooled points
                out[act[wrong]] = xa[wrong]
                found[act[wrong]] = True
                keep = ~wrong
                act, xa, xs, ys, grad = act[keep], xa[keep], xs[keep], ys[keep], grad[keep]
                if norm == "linf":
                    lo, hi = lo[keep], hi[keep]
                if len(act) == 0:
                    break
            if norm == "linf":
                xa = torch.clamp(torch.add(xa, grad.sign(), alpha=step), lo, hi)
            else:
                xa = project(xa + step * ascent_direction(grad, norm), xs, eps, norm)
    with torch.no_grad():
        if len(act):
            out[act] = xa
            if check_last:
                found[act] = fooled(model(xa), ys)
        return out, found


def universal_perturbation(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    generator: torch.Generator | None = None,
    steps: int = 40,
    step_size: float | None = None,
) -> torch.Tensor:
    """One input-agnostic perturbation delta (1, C, H, W) for the points (x, y): ||delta||_p <= eps.

    Projected gradient ascent on a single delta shared by all points (the SGD variant of
    Moosavi-Dezfooli et al. 2017, as in Shafahi et al. 2020), maximising the summed CW
    margin loss clipped at 0 so that fooled points stop pulling, on clip(x + delta); the
    iterate that fooled most points is returned (the latest of equals). For l0 the shared delta changes the same
    k pixels of every image (steps of L0_STEP * d along g / ||g||_1, then the k largest
    pixels of delta are kept).
    """
    check_norm(norm)
    if step_size is not None:
        step = step_size
    else:
        step = step_scale(eps, norm, x) if norm in COUNT_NORMS else 2.5 * eps / steps
    shape = (1, *x.shape[1:])
    mid = torch.full(shape, 0.5, device=x.device, dtype=x.dtype)  # eps < 0.5: no clipping
    delta = project_ball(random_start(mid, eps, norm, generator) - 0.5, eps, norm).detach()
    best, best_fooled = delta.clone(), -1
    for _ in range(steps):
        delta.requires_grad_(True)
        logits = model((x + delta).clamp(0.0, 1.0))
        loss = LOSSES["cw"](logits, y)
        (grad,) = torch.autograd.grad(loss.clamp(max=0.0).sum(), delta)
        with torch.no_grad():
            fooled = int((loss > 0).sum())
            if fooled >= best_fooled:  # on ties the later, more converged iterate
                best, best_fooled = delta.detach().clone(), fooled
            delta = project_ball(delta + step * ascent_direction(grad, norm), eps, norm)
    with torch.no_grad():  # the last iterate was never scored: score it too
        fooled = int((LOSSES["cw"](model((x + delta).clamp(0.0, 1.0)), y) > 0).sum())
        return delta if fooled > best_fooled else best


def apply_universal(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """clip(x + delta) to [0, 1]: clipping only moves coordinates towards x, so budgets hold."""
    return torch.where(delta == 0, x, (x + delta).clamp(0.0, 1.0))


def universal(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    generator: torch.Generator | None = None,
    steps: int = 40,
    step_size: float | None = None,
) -> torch.Tensor:
    """x_adv = clip(x + delta) with one delta for the whole batch (:func:`universal_perturbation` on (x, y))."""
    delta = universal_perturbation(model, x, y, eps, norm, generator, steps, step_size)
    return apply_universal(x, delta)
