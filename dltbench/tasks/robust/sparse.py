"""Sparse-RS (Croce, Andriushchenko, Singh, Flammarion & Hein, AAAI 2022): random search for l0 attacks.

The l0 version of the authors' ``rs_attacks.py`` (fra31/sparse-rs), written anew: each
image keeps a set of k perturbed pixels, every one set to a random corner of the colour
cube {0, 1}^C. An iteration swaps m of them (the same m positions of the index lists for
the whole batch, as the batched reference does): the m pixels go back to their clean
values and m pixels drawn from the unperturbed ones get fresh random corners. A point
keeps the proposal when its loss strictly decreases or the proposal fools the model, and
stops once fooled. m = max(1, floor(alpha_i * k)) with alpha_i = alpha_init times
1, 1/2, 1/4, 1/5, 1/6, 1/8, 1/10, 1/12, 1/15, 1/20 after iterations 0, 50, 200, 500,
1000, 2000, 4000, 6000, 8000 of 10000 (read as fractions of the query budget, the
reference's ``resc_schedule``). Loss: the margin z_y - max_{j != y} z_j, or with
``top_k`` > 1 the top-k margin z_y - (k-th largest other logit), which is negative exactly
when the label has left the top k. ``queries`` counts the initial query, as
:func:`~dltbench.tasks.robust.square.square` does.
"""

from __future__ import annotations

import torch
from torch import nn

from .threat import fooled_fn, pixel_view, topk_margin

_BOUNDS = (0, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_DIVISORS = (1, 2, 4, 5, 6, 8, 10, 12, 15, 20)


def alpha_schedule(it: int, queries: int, alpha_init: float) -> float:
    """Fraction of the k pixels swapped at iteration ``it`` (1-based): the reference's l0 ``p_selection``."""
    it = int(it / queries * 10000)
    return alpha_init / _DIVISORS[sum(it > b for b in _BOUNDS)]


def _corners(shape, x: torch.Tensor, generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=x.device).to(x.dtype)


def sparse_rs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str = "l0",
    generator: torch.Generator | None = None,
    queries: int = 1000,
    alpha_init: float = 0.3,
    top_k: int = 1,
) -> torch.Tensor:
    """Untargeted Sparse-RS: x_adv differing from x in at most k = int(eps) pixels, in [0, 1].

    ``norm`` must be "l0" (the argument keeps the attack protocol's signature); at most
    ``queries`` forward passes per point.
    """
    if norm != "l0":
        raise ValueError(f"Sparse-RS attacks the l0 threat model only, not {norm!r}")
    k = int(eps)
    xs = pixel_view(x.detach())  # (N, C, P)
    n, c, p = xs.shape
    k = max(0, min(k, p))
    if n == 0 or k == 0:
        return x.detach().clone()
    success = fooled_fn(f"top{top_k}")

    def score(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            logits = model(xb.reshape(-1, *x.shape[1:]))
        return topk_margin(logits, yb, top_k), success(logits, yb)

    # Per image a random permutation of the pixels: the first k are perturbed.
    order = torch.rand((n, p), generator=generator, device=x.device).argsort(1)
    inside, outside = order[:, :k].clone(), order[:, k:].clone()
    best = xs.clone()
    idx = inside[:, None, :].expand(n, c, k)
    best.scatter_(2, idx, _corners((n, c, k), x, generator))
    loss, done = score(best, y)
    alive = torch.arange(n, device=x.device)[~done]
    for it in range(1, queries):
        if len(alive) == 0 or p == k:
            break
        m = max(1, int(alpha_schedule(it, queries, alpha_init) * k))
        m = min(m, p - k)
        pos_in = torch.randperm(k, generator=generator, device=x.device)[:m]
        pos_out = torch.randperm(p - k, generator=generator, device=x.device)[:m]
        a = len(alive)
        leave, enter = inside[alive][:, pos_in], outside[alive][:, pos_out]
        cand = best[alive].clone()
        cand.scatter_(
            2,
            leave[:, None, :].expand(a, c, m),
            xs[alive].gather(2, leave[:, None, :].expand(a, c, m)),
        )
        cand.scatter_(2, enter[:, None, :].expand(a, c, m), _corners((a, c, m), x, generator))
        new_loss, fooled = score(cand, y[alive])
        take = (new_loss < loss[alive]) | fooled
        if bool(take.any()):
            rows = alive[take]
            best[rows] = cand[take]
            loss[rows] = new_loss[take]
            swapped_in, swapped_out = inside[rows], outside[rows]
            swapped_in[:, pos_in], swapped_out[:, pos_out] = enter[take], leave[take]
            inside[rows], outside[rows] = swapped_in, swapped_out
        alive = alive[~(take & fooled)]
    return best.reshape(x.shape)
