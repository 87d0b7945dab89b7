"""Threat models: l_p norms, projections onto the eps-ball intersected with the [0, 1] box, losses.

Norms are named ``"linf"``, ``"l2"`` and ``"l0"``. For linf and l2, eps is in the [0, 1]
pixel scale. For l0, eps is a count k of changed *pixels*: a pixel is all channels at one
spatial location of an (N, C, H, W) batch (a flat (N, d) batch has d one-channel pixels),
and it counts as changed when any of its channels differs from the clean image at all
(no tolerance). For ``"patch"`` (Brown et al. 2017), eps is an area a in pixels: x'
may differ from x only inside one s x s square, s = isqrt(a), anywhere in the image
(checked exactly: the changed pixels' bounding box has both sides <= s). Every attack
here keeps its iterates inside ``{x' in [0, 1]^d : ||x' - x||_p <= eps}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

NORMS: tuple[str, ...] = ("linf", "l2", "l0", "patch")
#: Threat models whose eps is a pixel count: budgets are checked exactly, with no tolerance.
COUNT_NORMS: frozenset[str] = frozenset({"l0", "patch"})
#: PGD-l0's step: the l1-normalised gradient times L0_STEP * (coordinates per image), as
#: Croce & Hein (2019) step 120000/255 on 3072-coordinate CIFAR-10 images (about 0.15 d).
L0_STEP = 0.15


def check_norm(norm: str, allowed: tuple[str, ...] = NORMS, who: str = "") -> str:
    """``norm`` if it is in ``allowed``, else a ValueError naming the valid ones (and ``who``)."""
    if norm not in allowed:
        what = f"{who} supports" if who else "use one of"
        raise ValueError(f"unknown or unsupported norm {norm!r}; {what} {', '.join(allowed)}")
    return norm


def pixel_view(t: torch.Tensor) -> torch.Tensor:
    """``t`` (N, C, H, W) as (N, C, H*W); a flat (N, d) batch as (N, 1, d) (one channel per pixel)."""
    if t.dim() <= 2:
        return t.reshape(t.shape[0], 1, -1)
    return t.reshape(t.shape[0], t.shape[1], -1)


def changed_pixels(delta: torch.Tensor) -> torch.Tensor:
    """(N, P) bool: pixel p of image n has some channel with a non-zero change (exact, no tolerance)."""
    return pixel_view(delta).ne(0).any(1)


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample size (N,) of ``delta`` (N, ...): max |.| (linf), Euclidean (l2), changed pixels (l0),
    side of the smallest square covering the changed pixels (patch)."""
    dtype = delta.dtype if delta.is_floating_point() else torch.float32
    if check_norm(norm) == "l0":
        return changed_pixels(delta).sum(1).to(dtype)
    if norm == "patch":
        return patch_side(delta).to(dtype)
    flat = delta.reshape(delta.shape[0], -1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(p=2, dim=1)


def patch_side(delta: torch.Tensor) -> torch.Tensor:
    """(N,) side of the smallest square covering the changed pixels of ``delta`` (N, C, H, W); 0 if none."""
    changed = delta.ne(0).any(1)  # (N, H, W)

    def span(hit: torch.Tensor) -> torch.Tensor:  # (N, L) -> last - first + 1, or 0
        idx = torch.arange(hit.shape[1], device=hit.device)
        first = torch.where(hit, idx, hit.shape[1]).amin(1)
        last = torch.where(hit, idx, -1).amax(1)
        return (last - first + 1).clamp(min=0)

    return torch.maximum(span(changed.any(2)), span(changed.any(1)))


def budget_bound(eps: float, norm: str) -> float:
    """The largest allowed value of :func:`lp_norm`: eps, k = int(eps) for l0, isqrt(area) for patch."""
    if norm == "l0":
        return float(int(eps))
    if norm == "patch":
        return float(math.isqrt(int(eps)))
    return eps


def _best_window(gain: torch.Tensor, side: int) -> torch.Tensor:
    """(N, 1, H, W) bool mask of the side x side window with the largest total ``gain`` (N, 1, H, W)."""
    n, _, h, w = gain.shape
    side = max(1, min(side, h, w))
    sums = F.avg_pool2d(gain, side, stride=1)  # (N, 1, H - s + 1, W - s + 1), mean = sum / s^2
    flat = sums.flatten(1).argmax(1)
    r, c = flat // sums.shape[3], flat % sums.shape[3]
    rows = torch.arange(h, device=gain.device)[None, :]
    cols = torch.arange(w, device=gain.device)[None, :]
    in_r = (rows >= r[:, None]) & (rows < r[:, None] + side)
    in_c = (cols >= c[:, None]) & (cols < c[:, None] + side)
    return (in_r[:, :, None] & in_c[:, None, :])[:, None]


def project_patch(x_adv: torch.Tensor, x: torch.Tensor, area: float) -> torch.Tensor:
    """Exact Euclidean projection of ``x_adv`` onto {x' in [0, 1]^d : x' = x outside one s x s square}.

    As for l0: keeping pixel p saves ||delta_p||^2 - ||delta_p - clip(delta_p)||^2, and the
    projection keeps the window (s = isqrt(area)) whose pixels save most in total.
    """
    clipped = x_adv.clamp(0.0, 1.0)
    gain = ((x_adv - x).square() - (x_adv - clipped).square()).sum(1, keepdim=True)
    keep = _best_window(gain, math.isqrt(int(area))).expand_as(x)
    return torch.where(keep, clipped, x)


def on_unfooled(
    x: torch.Tensor,
    runs: int,
    run: Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """Restarts: ``run(r, todo) -> (x_adv, fooled)`` for r < ``runs`` on the points no earlier run fooled.

    ``todo`` indexes the rows of ``x`` still to attack; a point keeps the answer of the run
    that fooled it, else that of the last run (x itself if none ran). One loop for PGD's
    restarts, APGD's restarts and APGD-T's targets.
    """
    out = x.detach().clone()
    todo = torch.arange(len(x), device=x.device)
    for r in range(runs):
        if len(todo) == 0:
            break
        xa, fooled = run(r, todo)
        out[todo] = xa
        todo = todo[~fooled]
    return out


def pixel_count(x: torch.Tensor) -> int:
    """Pixels per image of batch ``x`` (H*W for (N, C, H, W)): the largest meaningful l0 budget."""
    return pixel_view(x[:1]).shape[2]


def _keep_top_pixels(score: torch.Tensor, k: int) -> torch.Tensor:
    """(N, P) bool mask of the ``k`` largest scores per row (exactly min(k, P) pixels)."""
    k = max(0, min(int(k), score.shape[1]))
    mask = torch.zeros_like(score, dtype=torch.bool)
    if k:
        mask.scatter_(1, score.topk(k, dim=1).indices, True)
    return mask


def project_l0(x_adv: torch.Tensor, x: torch.Tensor, k: float) -> torch.Tensor:
    """Exact Euclidean projection of ``x_adv`` onto {x' in [0, 1]^d : at most k pixels differ from x}.

    Keeping pixel p (clipped to the box) instead of resetting it to x saves
    ||delta_p||^2 - ||delta_p - clip(delta_p)||^2 of squared distance; the projection keeps
    the k pixels that save most (Croce & Hein 2019, ``project_L0_box``).
    """
    clipped = x_adv.clamp(0.0, 1.0)
    d, excess = pixel_view(x_adv - x), pixel_view(x_adv - clipped)
    keep = _keep_top_pixels((d.square() - excess.square()).sum(1), k)
    keep = keep[:, None, :].expand_as(d).reshape(x.shape)
    return torch.where(keep, clipped, x)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project ``x_adv`` onto the eps-ball around ``x``, then clip to [0, 1].

    Clipping moves every coordinate towards ``x`` (x is in the box), so the result
    stays inside the ball.
    """
    if norm == "l0":  # the box decides which pixels are worth keeping: one joint projection
        return project_l0(x_adv, x, eps)
    if norm == "patch":
        return project_patch(x_adv, x, eps)
    return (x + project_ball(x_adv - x, eps, norm)).clamp(0.0, 1.0)


def project_ball(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project each perturbation in ``delta`` onto the eps-ball of ``norm`` (no box; l0: k largest pixels)."""
    if check_norm(norm) == "linf":
        return delta.clamp(-eps, eps)
    if norm == "patch":
        keep = _best_window(delta.square().sum(1, keepdim=True), math.isqrt(int(eps)))
        return torch.where(keep.expand_as(delta), delta, torch.zeros_like(delta))
    if norm == "l0":
        d = pixel_view(delta)
        keep = _keep_top_pixels(d.square().sum(1), eps)[:, None, :].expand_as(d)
        return torch.where(keep.reshape(delta.shape), delta, torch.zeros_like(delta))
    n = lp_norm(delta, "l2")
    return delta * _bcast(torch.clamp(eps / (n + 1e-12), max=1.0), delta)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The unit ascent step for ``norm``: sign(g) for linf, g / ||g||_2 for l2, g / ||g||_1 for l0.

    The l0 step is PGD-l0's (Croce & Hein 2019): scale it by :func:`step_scale`.
    """
    if check_norm(norm) == "linf":
        return grad.sign()
    if norm in COUNT_NORMS:
        return grad / _bcast(grad.reshape(len(grad), -1).abs().sum(1) + 1e-12, grad)
    return grad / _bcast(lp_norm(grad, "l2") + 1e-12, grad)


def step_scale(eps: float, norm: str, x: torch.Tensor) -> float:
    """The size of a "full" step: eps for linf and l2; L0_STEP * coordinates per image for l0 and patch."""
    if check_norm(norm) in COUNT_NORMS:
        return L0_STEP * x[0].numel()
    return eps


def random_start(
    x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None
) -> torch.Tensor:
    """A random point of the ball (uniform in the linf cube; on the l2 sphere; l0: uniform in the
    box, projected onto k pixels, as PGD-l0 starts), clipped to [0, 1]."""
    if check_norm(norm) in COUNT_NORMS:
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return project(u, x, eps, norm)
    if norm == "linf":
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


def topk_margin(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """z_y - (k-th largest z_j, j != y) per sample: negative iff y is outside the top k logits.

    k = 1 is :func:`margin`. Ties count against the label (rank = #{j : z_j >= z_y, j != y}).
    """
    others = logits.scatter(1, y[:, None], float("-inf"))
    kth = others.topk(min(k, logits.shape[1] - 1), dim=1).values[:, -1]
    return logits.gather(1, y[:, None])[:, 0] - kth


def topk_loss(k: int):
    """The loss (to maximise) that pushes the label out of the top k: -topk_margin(., ., k)."""

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -topk_margin(logits, y, k)

    return loss


def label_rank(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """0-based rank of the label per sample in the logits sorted descending, ties broken by class index.

    That is the order ``argmax`` uses, so rank 0 exactly when ``logits.argmax(1) == y``:
    top-1 robustness is ordinary robustness, with no tie-breaking difference.
    """
    z_y = logits.gather(1, y[:, None])
    before = torch.arange(logits.shape[1], device=logits.device)[None, :] < y[:, None]
    return (logits > z_y).sum(1) + ((logits == z_y) & before).sum(1)


def fooled_fn(loss: str):
    """What success means for an attack on ``loss``: the label out of the top k for "topk", else misclassified."""
    if loss.startswith("top"):
        k = int(loss[3:])
        return lambda logits, y: label_rank(logits, y) >= k
    return lambda logits, y: logits.argmax(1) != y


LOSSES = {"ce": ce_loss, "cw": cw_loss, "dlr": dlr_loss,
          **{f"top{k}": topk_loss(k) for k in (1, 3, 5)}}  # fmt: skip
