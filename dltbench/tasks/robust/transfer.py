"""Transfer of universal perturbations across the leaderboard's models.

A universal perturbation (UAP) is one delta for every input, so it can be fit on one model
and replayed on another. Each ``robust`` row is scored under the UAPs fit on the
``attack`` task's reference defenses (``standard`` and ``pgd-at``, trained with the
seed-0 contexts of the ``robust`` cell and cached, :func:`~.attack_task.reference_model`),
on the same held-out training points the row's own UAP is fit on, with a fixed harness
seed: every row of a threat model faces the same deltas, so the transfer column compares
defenses on equal terms. A source whose weights are the scored ones (the same parameter
fingerprint: ``standard`` and ``pgd-at`` at seed 0) is not a transfer and is left out of
the mean.

Example::

    from dltbench.tasks.robust.transfer import transfer_accuracy
    transfer_accuracy(model, x, y, {"standard": delta})["standard"]
"""

from __future__ import annotations

import torch
from torch import nn

from .attacks import apply_universal, universal_perturbation
from .evaluate import model_fingerprint, verify_perturbation

#: Seed of the harness generator the transferred UAPs are fit with (the same for every row).
TRANSFER_SEED = 20170101


def transfer_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, deltas: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Accuracy (fraction of the points (x, y)) of ``model`` under each universal delta of ``deltas``."""
    out = {}
    for name, delta in deltas.items():
        xa = apply_universal(x, delta.to(x.device, x.dtype))
        with torch.no_grad():
            out[name] = (
                float((model(xa).argmax(1) == y).float().mean()) if len(y) else float("nan")
            )
    return out


def source_deltas(data, config, ctx, device: torch.device) -> tuple[dict[str, torch.Tensor], dict]:
    """The UAP of each reference defense on the held-out training points, and the sources' fingerprints.

    Fit with :func:`universal_perturbation` at the row's budget (``uap_points``,
    ``uap_steps``) from a generator seeded with :data:`TRANSFER_SEED`.
    """
    from .attack_task import REFERENCE_DEFENSES, reference_model  # attack_task imports task

    held = data.train.subset(slice(0, config.uap_points))
    xh, yh = held.x.to(device), held.y.to(device)
    deltas, prints = {}, {}
    for name in REFERENCE_DEFENSES:
        ref, _ = reference_model(name, data, config, ctx)
        gen = torch.Generator(device).manual_seed(TRANSFER_SEED)
        delta = universal_perturbation(ref, xh, yh, config.eps, config.norm, gen, config.uap_steps)
        verify_perturbation(apply_universal(xh[:1], delta), xh[:1], config.eps, config.norm,
                            f"the UAP of {name}")  # fmt: skip
        deltas[name] = delta.detach()
        prints[name] = model_fingerprint(ref, tuple(xh.shape[1:]))
    return deltas, prints


def transfer_scores(model: nn.Module, data, x, y, config, ctx) -> dict:
    """The transfer column of a ``robust`` row: accuracy under each reference defense's UAP.

    Returns ``accuracy`` (mean over the sources whose weights differ from ``model``'s,
    NaN if none), ``per_source`` (every source, self included) and ``self_sources``.
    """
    deltas, prints = source_deltas(data, config, ctx, x.device)
    acc = transfer_accuracy(model, x, y, deltas)
    own = model_fingerprint(model, tuple(x.shape[1:]))
    others = [v for k, v in acc.items() if prints[k] != own]
    return {
        "accuracy": sum(others) / len(others) if others else float("nan"),
        "per_source": acc,
        "self_sources": [k for k in acc if prints[k] == own],
    }
