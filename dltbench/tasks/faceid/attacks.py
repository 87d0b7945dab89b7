"""Attacks on verification, run by the harness: PGD on the cosine similarity of a pair.

Dodging (a matched pair pushed apart) and impersonation (a mismatched pair pulled
together) perturb the first image of a pair while the second stays clean; the
objective is sign * cos(f(x1 + delta), f(x2)), sign = -1 for dodging and +1 for
impersonation. The l_inf and l_2 threat models and their projections are the ``robust``
task's (:mod:`dltbench.tasks.robust.threat`); the eyeglass-frame attack (after Sharif et
al., CCS 2016) changes only the pixels of a frame-shaped mask, by any amount within
[0, 1]. Every adversarial batch is checked (:func:`check_adversarial`) before it is scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...api import InvalidArtifact
from ..robust.evaluate import verify_perturbation
from ..robust.threat import ascent_direction, project, random_start


def eyeglass_mask(height: int, width: int) -> torch.Tensor:
    """A (1, 1, H, W) 0/1 mask shaped like an eyeglass frame: two rings around the eye
    line, a bridge and two temples (the region Sharif et al. 2016 perturb)."""
    v, u = torch.meshgrid(
        torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij"
    )
    eye_v, eye_u = -0.25, 0.36
    ring = torch.zeros(height, width, dtype=torch.bool)
    for side in (-1, 1):
        r = torch.sqrt(((u - side * eye_u) / 1.15) ** 2 + (v - eye_v) ** 2)
        ring |= (r >= 0.17) & (r <= 0.30)
    bridge = (u.abs() <= 0.12) & ((v - eye_v + 0.05).abs() <= 0.06)
    temples = (u.abs() >= 0.6) & (u.abs() <= 0.95) & ((v - eye_v + 0.05).abs() <= 0.06)
    return (ring | bridge | temples).float()[None, None]


def check_adversarial(
    x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``x_adv`` if it is within budget (the robust task's check) and, with ``mask``,
    unchanged outside it; else InvalidArtifact."""
    x_adv = verify_perturbation(x_adv, x, eps, norm, who="the verification attack")
    if mask is not None:
        outside = ((x_adv - x).abs() * (1 - mask.to(x.device))).amax()
        if float(outside) > 0:
            raise InvalidArtifact(
                f"the eyeglass attack changed pixels outside its mask (max |delta| {float(outside):.3g})"
            )
    return x_adv


def _unit(e: torch.Tensor) -> torch.Tensor:
    return F.normalize(e, dim=1)


def pgd_similarity(
    model: nn.Module,
    x1: torch.Tensor,
    ref: torch.Tensor,
    sign: torch.Tensor,
    eps: float,
    norm: str,
    steps: int,
    generator: torch.Generator | None = None,
    step_size: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """PGD maximising sign * cos(model(x1'), ref) over x1' in the eps-ball (and mask) in [0, 1].

    ``ref`` (N, d) are the clean second images' unit embeddings; ``sign`` (N,) is -1 to
    dodge, +1 to impersonate. Random start; step 2.5 eps / steps by default. Each pair
    keeps the iterate with the best objective seen.
    """
    step = 2.5 * eps / steps if step_size is None else step_size
    keep = (lambda d: d) if mask is None else (lambda d: d * mask.to(d.device))
    x = random_start(x1, eps, norm, generator)
    x = x1 + keep(x - x1)
    best, best_val = x1.clone(), torch.full((len(x1),), -float("inf"), device=x1.device)
    for _ in range(steps + 1):
        x = x.detach().requires_grad_(True)
        obj = sign * (_unit(model(x)) * ref).sum(1)
        better = obj.detach() > best_val
        best[better], best_val[better] = x.detach()[better], obj.detach()[better]
        if _ == steps:
            break
        (grad,) = torch.autograd.grad(obj.sum(), x)
        with torch.no_grad():
            x = project(x + step * ascent_direction(keep(grad), norm), x1, eps, norm)
            x = x1 + keep(x - x1)
    return best.detach()


@dataclass
class AttackOutcome:
    """Per-pair outcome of one attack at the method's own thresholds."""

    clean_correct: np.ndarray
    adv_correct: np.ndarray  # clean-correct and still correct after the attack
    same: np.ndarray

    def summary(self) -> dict[str, float]:
        """Accuracy after attack and success rates among the pairs that were right."""

        def rate(sel: np.ndarray) -> float:
            ok = sel & self.clean_correct
            return float((ok & ~self.adv_correct).sum() / ok.sum()) if ok.any() else float("nan")

        return {
            "adv_acc": float(self.adv_correct.mean()),
            "dodge_success": rate(self.same),
            "impersonate_success": rate(~self.same),
        }


def attack_pairs(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor,
    same: np.ndarray,
    threshold: np.ndarray,
    eps: float,
    norm: str,
    steps: int,
    generator: torch.Generator | None,
    mask: torch.Tensor | None = None,
    batch_size: int = 256,
) -> AttackOutcome:
    """Dodge the matched and impersonate the mismatched pairs; score at each pair's threshold."""
    clean, adv = [], []
    for s in range(0, len(x1), batch_size):
        a, b = x1[s : s + batch_size], x2[s : s + batch_size]
        sm = torch.as_tensor(same[s : s + batch_size], device=a.device)
        with torch.no_grad():
            ref = _unit(model(b))
            cos_clean = (_unit(model(a)) * ref).sum(1)
        sign = torch.where(sm, -1.0, 1.0).to(a.dtype)
        xa = pgd_similarity(model, a, ref, sign, eps, norm, steps, generator, mask=mask)
        xa = check_adversarial(xa, a, eps, norm, mask)
        with torch.no_grad():
            cos_adv = (_unit(model(xa)) * ref).sum(1)
        clean.append(cos_clean.cpu().numpy())
        adv.append(cos_adv.cpu().numpy())
    cos_clean, cos_adv = np.concatenate(clean), np.concatenate(adv)
    clean_correct = (cos_clean > threshold) == same
    # per-pair worst case: a pair counts as robust only if it was right before and after
    adv_correct = clean_correct & ((cos_adv > threshold) == same)
    return AttackOutcome(clean_correct, adv_correct, np.asarray(same, dtype=bool))
