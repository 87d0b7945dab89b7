"""Square Attack (Andriushchenko et al., ECCV 2020): gradient-free random search on the margin.

A port of ``autoattack/square.py`` (fra31/auto-attack) as AutoAttack's ``standard``
version configures it: p_init 0.8 for both norms, margin loss, one restart, and the
schedule *not* rescaled to the query budget (``resc_schedule=False``). Each iteration
proposes a change inside a random s x s window (the same window for the whole batch, as
in the batched reference) and keeps it for the points whose margin
z_y - max_{j != y} z_j decreased. The window's area is a fraction p of the image, with
p halved after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 (with
``rescale`` these are read as fractions of 10000 of ``queries``, the reference class's
own default). l_inf: the window is set to x +/- eps per channel, starting from vertical
stripes. l_2: two windows; the first gets a centred "eta" pattern (transposed with
probability 1/2) that takes over the second's share of the budget, as in the paper.
One difference in counting: ``queries`` includes the initial query, where the reference
makes ``n_queries`` proposals after it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .threat import _bcast, check_norm, lp_norm, margin

_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(it: int, queries: int, p_init: float, rescale: bool = False) -> float:
    """Fraction of pixels changed at iteration ``it`` (0-based): the reference's ``p_selection``.

    With ``rescale`` the iteration is first mapped to ``int(it / queries * 10000)``.
    """
    if rescale:
        it = int(it / queries * 10000)
    halvings = sum(it > b for b in _SCHEDULE)
    return p_init / 2**halvings


def _signs(shape, x, generator):
    return torch.randint(0, 2, shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1


def _randint(high: int, x: torch.Tensor, generator) -> int:
    return int(torch.randint(0, max(1, high), (1,), generator=generator, device=x.device).item())


def eta(s: int, device, dtype, generator=None, flip: bool | None = None) -> torch.Tensor:
    """The paper's l_2 window pattern: nested squares of weight 1/(r+1)^2, opposite halves, unit norm.

    Transposed with probability 1/2 (drawn from ``generator``), as the reference does;
    ``flip`` forces the choice.
    """

    def rectangles(h: int, w: int) -> torch.Tensor:
        d = torch.zeros(h, w, device=device, dtype=dtype)
        ch, cw = h // 2, w // 2
        for r in range(max(ch, cw) + 1):
            d[max(ch - r, 0) : min(ch + r + 1, h), max(cw - r, 0) : min(cw + r + 1, w)] += (
                1.0 / (r + 1) ** 2
            )
        return d / d.norm()

    d = torch.zeros(s, s, device=device, dtype=dtype)
    d[: s // 2] = rectangles(s // 2, s) if s // 2 else 0.0
    d[s // 2 :] = -rectangles(s - s // 2, s)
    d = d / d.norm()
    if flip is None:
        on = generator.device if generator is not None else device
        flip = bool(torch.rand((), generator=generator, device=on) > 0.5)
    return d.T.contiguous() if flip else d


@torch.no_grad()
def square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    generator: torch.Generator | None = None,
    queries: int = 1000,
    p_init: float = 0.8,
    rescale: bool = False,
) -> torch.Tensor:
    """Square Attack with ``queries`` model queries per point at most; untargeted margin loss.

    ``p_init`` 0.8 and ``rescale`` False are AutoAttack's ``standard`` settings, for both norms.
    """
    check_norm(norm, ("linf", "l2"), who="Square")
    n, c, h, w = x.shape
    if norm == "linf":
        best = (x + eps * _signs((n, c, 1, w), x, generator)).clamp(0.0, 1.0)
    else:
        best = _l2_init(x, eps, generator)
    m_best = margin(model(best), y)
    for it in range(queries - 1):
        todo = (m_best > 0).nonzero().flatten()
        if len(todo) == 0:
            break
        xc, bc = x[todo], best[todo]
        p = p_schedule(it, queries, p_init, rescale)
        if norm == "linf":
            s = min(max(int(round(math.sqrt(p * h * w))), 1), h - 1)
            vh, vw = _randint(h - s, x, generator), _randint(w - s, x, generator)
            new = bc.clone()
            new[:, :, vh : vh + s, vw : vw + s] = xc[
                :, :, vh : vh + s, vw : vw + s
            ] + eps * _signs((len(todo), c, 1, 1), x, generator)
            new = new.clamp(0.0, 1.0)
        else:
            new = _l2_step(xc, bc, eps, p, generator)
        m = margin(model(new), y[todo])
        better = m < m_best[todo]
        best[todo] = torch.where(_bcast(better, new), new, bc)
        m_best[todo] = torch.where(better, m, m_best[todo])
    return best


def _l2_init(x: torch.Tensor, eps: float, generator) -> torch.Tensor:
    n, c, h, w = x.shape
    s = max(h // 5, 1)
    start = (h - s * 5) // 2 if h >= 5 else 0
    delta = torch.zeros_like(x)
    for vh in range(start, h - s + 1, s):
        for vw in range(start, w - s + 1, s):
            # one transpose coin per window, as the reference draws one per eta() call
            pattern = (
                eta(s, x.device, x.dtype, generator)
                if s > 1
                else torch.ones(1, 1, device=x.device, dtype=x.dtype)
            )
            delta[:, :, vh : vh + s, vw : vw + s] += pattern * _signs((n, c, 1, 1), x, generator)
    delta = delta / _bcast(lp_norm(delta, "l2") + 1e-12, delta)
    return (x + eps * delta).clamp(0.0, 1.0)


def _l2_step(xc: torch.Tensor, bc: torch.Tensor, eps: float, p: float, generator) -> torch.Tensor:
    n, c, h, w = xc.shape
    s = max(int(round(math.sqrt(p * h * w))), 3)
    s = min(s + (s % 2 == 0), h - 1)
    delta = bc - xc
    vh, vw = _randint(h - s, xc, generator), _randint(w - s, xc, generator)
    vh2, vw2 = _randint(h - s, xc, generator), _randint(w - s, xc, generator)
    w1 = (slice(None), slice(None), slice(vh, vh + s), slice(vw, vw + s))
    w2 = (slice(None), slice(None), slice(vh2, vh2 + s), slice(vw2, vw2 + s))
    mask = torch.zeros_like(xc)
    mask[w1], mask[w2] = 1.0, 1.0
    norm_img = lp_norm(delta, "l2")
    norm_windows = lp_norm(delta * mask, "l2")
    old = delta[w1] / (delta[w1].flatten(2).norm(dim=2)[..., None, None] + 1e-12)
    new = eta(s, xc.device, xc.dtype, generator) * _signs((n, c, 1, 1), xc, generator) + old
    # the two windows' mass, plus whatever budget is still unused, is spread over the new window
    budget = ((eps**2 - norm_img**2).clamp(min=0.0) / c + norm_windows**2).sqrt()
    new = new / (new.flatten(2).norm(dim=2)[..., None, None] + 1e-12) * _bcast(budget, new)
    delta = delta.clone()
    delta[w2] = 0.0
    delta[w1] = new
    delta = delta / _bcast(lp_norm(delta, "l2") + 1e-12, delta)
    return (xc + eps * delta).clamp(0.0, 1.0)
