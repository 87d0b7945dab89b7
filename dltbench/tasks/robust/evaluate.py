"""Robust accuracy under an attack ensemble, budget verification and gradient-masking checks.

A test point counts as robust only if it is classified correctly and every attack of the
ensemble fails on it (the per-sample worst case, as AutoAttack reports). Every ``x_adv``
an attack returns is verified first; an attack that breaks the threat model raises
:class:`~dltbench.api.InvalidArtifact` with the reason and is never scored.

Example::

    from dltbench.tasks.robust import robust_accuracy
    res = robust_accuracy(model, x, y, eps=0.1, norm="linf")
    res.robust_accuracy, res.attack_accuracy["square"]
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import nn

from ...api import InvalidArtifact
from .apgd import apgd, apgd_targeted
from .attacks import pgd
from .physical import digital_norm
from .sparse import sparse_rs
from .square import square
from .threat import COUNT_NORMS, budget_bound, check_norm, label_rank, lp_norm

#: Absolute slack (pixel scale) on ||x_adv - x||_p <= eps, for float32 rounding only.
#: The l0 budget is a pixel count and is checked exactly (no slack).
BUDGET_TOL = 1e-5

Attack = Callable[..., torch.Tensor]  # (model, x, y, eps, norm, generator) -> x_adv
GRADIENT_FREE = frozenset({"square", "sparse-rs", "eot-square"})
#: Random-window restarts of each PGD-patch attack of the patch ensemble.
PATCH_RESTARTS = 10


def required_classes(attack: Attack) -> tuple[int, str]:
    """The fewest classes ``attack`` is defined for, and why (2 and "" for most attacks).

    The DLR loss divides by z_pi1 - z_pi3 (needs K >= 3 classes) and its targeted form by
    z_pi1 - (z_pi3 + z_pi4) / 2 (K >= 4), as AutoAttack's ``checks.check_n_classes`` states.
    """
    func, keywords = attack, {}
    while isinstance(func, partial):
        keywords = {**func.keywords, **keywords}
        func = func.func
    if func is apgd_targeted:
        return 4, "the targeted DLR loss reads the 3rd and 4th largest logits (K >= 4)"
    if func is apgd and keywords.get("loss") == "dlr":
        return 3, "the DLR loss reads the 3rd largest logit (K >= 3)"
    return 2, ""


def default_ensemble(
    apgd_steps: int = 100,
    n_targets: int = 9,
    square_queries: int = 5000,
    square_rescale: bool = False,
    norm: str = "linf",
) -> dict[str, Attack]:
    """The harness's standard ensemble: APGD-CE, APGD-T (targeted DLR) and Square (AutoAttack's minus FAB-T).

    The defaults are AutoAttack's ``standard`` version; ``square_rescale`` reads Square's
    p schedule as fractions of ``square_queries`` (for budgets far below 5000). For
    ``norm`` "l0" the ensemble is PGD-l0 on cross-entropy (``apgd_steps`` steps) and on
    the margin, and Sparse-RS with ``square_queries`` queries (the white-box and black-box
    halves of sparse-AutoAttack's idea, Croce et al. 2022, without sparse APGD).
    """
    if check_norm(norm) == "patch":
        # Where the window sits is the hard, non-convex part of a patch attack: many short
        # runs from random windows beat few long ones at the same cost (measured on the
        # quick digits: 10 x 5 steps leave 0.16 on a standard CNN, 3 x 25 steps 0.27).
        steps = max(1, apgd_steps // 5)  # 5 steps of the quick profile's 25
        return {
            "pgd-patch": partial(pgd, steps=steps, loss="ce", restarts=PATCH_RESTARTS),
            "pgd-patch-cw": partial(pgd, steps=steps, loss="cw", restarts=PATCH_RESTARTS),
        }
    if norm == "l0":
        return {
            "pgd-l0": partial(pgd, steps=apgd_steps, loss="ce"),
            "pgd-l0-cw": partial(pgd, steps=apgd_steps, loss="cw"),
            "sparse-rs": partial(sparse_rs, queries=square_queries),
        }
    return {
        "apgd-ce": partial(apgd, steps=apgd_steps, loss="ce"),
        "apgd-t": partial(apgd_targeted, steps=apgd_steps, n_targets=n_targets),
        "square": partial(square, queries=square_queries, rescale=square_rescale),
    }


def verify_perturbation(
    x_adv, x: torch.Tensor, eps: float, norm: str, who: str = "the attack"
) -> torch.Tensor:
    """Return ``x_adv`` if it is a valid adversarial input for (eps, norm), else raise InvalidArtifact.

    Checks: a tensor of x's shape and dtype, finite, inside [0, 1], and
    ||x_adv - x||_p <= eps + BUDGET_TOL for every point; for l0, at most int(eps) changed
    pixels, counted exactly (a pixel is all channels at one location; any difference counts).
    A physical threat model's budget is its digital ball (:func:`~.physical.digital_norm`).
    """
    norm = digital_norm(norm)
    if not isinstance(x_adv, torch.Tensor):
        raise InvalidArtifact(f"{who} returned {type(x_adv).__name__}, not a torch.Tensor")
    if x_adv.shape != x.shape:
        raise InvalidArtifact(
            f"{who} returned shape {tuple(x_adv.shape)}, expected {tuple(x.shape)}"
        )
    if x_adv.dtype != x.dtype:
        raise InvalidArtifact(f"{who} returned dtype {x_adv.dtype}, expected {x.dtype}")
    x_adv = x_adv.detach().to(x.device)
    if not torch.isfinite(x_adv).all():
        raise InvalidArtifact(f"{who} returned non-finite values (NaN or inf)")
    lo, hi = float(x_adv.min()), float(x_adv.max())
    if lo < 0.0 or hi > 1.0:
        raise InvalidArtifact(f"{who} left the [0, 1] box (values in [{lo:.4g}, {hi:.4g}])")
    dist = lp_norm(x_adv - x, norm)
    worst = float(dist.max()) if len(dist) else 0.0
    if norm in COUNT_NORMS:
        k = budget_bound(eps, norm)
        if worst > k:
            n_bad = int((dist > k).sum())
            what = "changed" if norm == "l0" else "changed a square of side"
            unit = "pixels > k" if norm == "l0" else "pixels > s"
            raise InvalidArtifact(
                f"{who} broke the {norm} budget: {what} {worst:.0f} {unit} = {k:.0f} "
                f"on {n_bad} of {len(dist)} points"
            )
        return x_adv
    if worst > eps + BUDGET_TOL:
        n_bad = int((dist > eps + BUDGET_TOL).sum())
        raise InvalidArtifact(
            f"{who} broke the {norm} budget: ||x_adv - x|| = {worst:.6g} > eps = {eps:g} "
            f"(+{BUDGET_TOL:g} tolerance) on {n_bad} of {len(dist)} points"
        )
    return x_adv


@dataclass
class RobustResult:
    """Per-sample outcome of an ensemble evaluation (boolean arrays over the N points)."""

    clean_correct: np.ndarray
    robust: np.ndarray  # correct and no attack succeeded
    per_attack: dict[str, np.ndarray]  # correct and this attack failed
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # attack -> why it was not run
    #: the label's worst 0-based rank over the clean input and every attack's x_adv
    #: (ties broken as argmax does, so rank 0 is "correct"); robust == (rank == 0)
    worst_rank: np.ndarray | None = None

    def topk_robust(self, k: int) -> np.ndarray:
        """Points whose label stayed in the top k logits at every input the ensemble tried."""
        return self.worst_rank < k

    @property
    def clean_accuracy(self) -> float:
        """Fraction of points classified correctly without attack."""
        return float(self.clean_correct.mean()) if len(self.clean_correct) else float("nan")

    @property
    def robust_accuracy(self) -> float:
        """Fraction robust to every attack (per-sample worst case over the ensemble)."""
        return float(self.robust.mean()) if len(self.robust) else float("nan")

    @property
    def attack_accuracy(self) -> dict[str, float]:
        """Robust accuracy under each attack alone."""
        return {k: float(v.mean()) for k, v in self.per_attack.items()}

    def only_broken_by(self, names: set[str] | frozenset[str]) -> np.ndarray:
        """Points broken by some attack in ``names`` while every other attack failed."""
        inside = [v for k, v in self.per_attack.items() if k in names]
        outside = [v for k, v in self.per_attack.items() if k not in names]
        if not inside or not outside:
            return np.zeros_like(self.robust)
        return ~np.logical_and.reduce(inside) & np.logical_and.reduce(outside)


def robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    attacks: Mapping[str, Attack] | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 500,
    standalone: bool = True,
) -> RobustResult:
    """Clean and robust accuracy of ``model`` on (x, y) at (eps, norm) under an attack ensemble.

    ``attacks`` maps names to ``f(model, x, y, eps, norm, generator) -> x_adv`` (default:
    :func:`default_ensemble`). With ``standalone`` every attack runs on every clean-correct
    point, so per-attack accuracies are each attack's own; otherwise each attack runs only
    on the points the previous ones failed on (AutoAttack's cheaper order), and the
    per-attack numbers are cumulative. The per-sample worst case is the same either way
    up to the attacks' randomness. The model is put in eval mode.

    Attacks not defined for the model's number of classes K (APGD-T needs K >= 4, see
    :func:`required_classes`) are skipped, as AutoAttack's practice for few classes is,
    and named with the reason in ``skipped``; the others run. If none can run, ValueError.
    """
    check_norm(norm)
    attacks = dict(attacks) if attacks is not None else default_ensemble()
    model.eval()
    device = next((p.device for p in model.parameters()), x.device)
    n = len(y)
    skipped: dict[str, str] = {}
    if n:
        with torch.no_grad():
            k = model(x[:1].to(device)).shape[1]
        for name, attack in list(attacks.items()):
            need, why = required_classes(attack)
            if k < need:
                skipped[name] = f"not run: the model has {k} classes and {why}"
                del attacks[name]
        if not attacks:
            raise ValueError(f"no attack of the ensemble is defined for {k} classes: {skipped}")
    clean = np.zeros(n, dtype=bool)
    rank = np.zeros(n, dtype=np.int64)
    per = {k: np.zeros(n, dtype=bool) for k in attacks}
    seconds = dict.fromkeys(attacks, 0.0)
    for i in range(0, n, batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        with torch.no_grad():
            r = label_rank(model(xb), yb)
        ok = r == 0
        clean[i : i + len(yb)] = ok.cpu().numpy()
        alive = ok.clone()
        for name, attack in attacks.items():
            idx = (ok if standalone else alive).nonzero().flatten()
            still = torch.zeros_like(ok)
            if len(idx):
                start = time.perf_counter()
                xa = attack(model, xb[idx], yb[idx], eps, norm, generator=generator)
                seconds[name] += time.perf_counter() - start
                xa = verify_perturbation(xa, xb[idx], eps, norm, who=f"attack {name!r}")
                with torch.no_grad():
                    ra = label_rank(model(xa), yb[idx])
                still[idx] = ra == 0
                r[idx] = torch.maximum(r[idx], ra)
            alive &= still
            per[name][i : i + len(yb)] = (still if standalone else alive).cpu().numpy()
        rank[i : i + len(yb)] = r.cpu().numpy()
    robust = clean.copy()
    for v in per.values():
        robust &= v
    return RobustResult(clean, robust, per, seconds, skipped, rank)


def masking_flags(
    gradient_free_gain: float | None,
    eps_curve: Mapping[float, float],
    large_eps_accuracy: float | None,
    eps: float,
    gradient_free_threshold: float = 0.02,
    norm: str = "linf",
) -> list[str]:
    """Signs of gradient masking (Athalye et al. 2018; Carlini et al. 2019), as short flag strings.

    - ``gradient-free-beats-gradient``: the gradient-free attacks (``GRADIENT_FREE``) take
      at least ``gradient_free_threshold`` of accuracy that every gradient attack left:
      ``gradient_free_gain`` is the fraction of points only they broke (digital rows), or
      the expected accuracy the gradient attacks together leave minus the one the
      gradient-free attack leaves (physical rows);
    - ``no-decrease-with-eps``: the robust accuracy at the largest eps of ``eps_curve``
      is not below the one at ``eps`` (while that is at least 0.05), or rises by more
      than 0.01 between two consecutive eps;
    - ``robust-at-large-eps``: a non-zero robust accuracy at an eps that allows any image.

    For ``norm`` "l0" the first check is not made: random search beats PGD-l0 on
    undefended models too (Croce et al. 2022), so it says nothing about masking there.
    A check whose input is None (no gradient-free attack ran, no large-eps run) is not made.
    """
    flags = []
    gain = gradient_free_gain
    if norm != "l0" and gain is not None and gain >= gradient_free_threshold:
        flags.append("gradient-free-beats-gradient")
    curve = sorted(eps_curve.items())
    at = dict(curve).get(eps)
    # an exact evaluator never rises with eps; allow a point of attack noise out of 100
    rises = any(b[1] > a[1] + 0.01 for a, b in zip(curve, curve[1:], strict=False))
    flat = at is not None and at >= 0.05 and curve[-1][0] > eps and curve[-1][1] >= at
    if rises or flat:
        flags.append("no-decrease-with-eps")
    if large_eps_accuracy is not None and large_eps_accuracy > 0:
        flags.append("robust-at-large-eps")
    return flags


def model_fingerprint(model: nn.Module, shape: tuple[int, ...] = (1, 8, 8)) -> str:
    """sha256 (16 hex digits) of the model's logits on 16 fixed inputs, rounded to 1e-4.

    Computed from answers only, so it works the same on a harness-owned model and on an
    oracle of a model in a plugin process, and a plugin cannot choose it: the same
    weights give the same hash (up to float rounding across processes).
    """
    gen = torch.Generator().manual_seed(20190213)
    probe = torch.rand((16, *shape), generator=gen)
    device = next(iter(model.parameters()), probe).device
    with torch.no_grad():
        out = model(probe.to(device)).double().cpu()
    return hashlib.sha256(torch.round(out, decimals=4).numpy().tobytes()).hexdigest()[:16]


class CountingModel(nn.Module):
    """Wraps a model and counts forward and backward passes, in images (for an attack's cost)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.forwards = 0
        self.backwards = 0

    def _count_backward(self, n: int) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            self.backwards += n

        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped model's logits; counts len(x) forwards (and backwards when grads flow)."""
        out = self.model(x)
        self.forwards += len(x)
        if out.requires_grad:
            out.register_hook(self._count_backward(len(x)))
        return out
