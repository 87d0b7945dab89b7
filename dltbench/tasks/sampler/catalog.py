"""Targets by name: ``<family>-d<dim>`` for the synthetic families, or a logistic regression."""

from __future__ import annotations

import re

import torch

from .logreg import cancer_logistic, iris_logistic
from .targets import Banana, Funnel, Mixture, Target, ill_conditioned_gaussian, isotropic_gaussian

_FAMILIES = {
    "gaussian": isotropic_gaussian,
    "ill-gaussian": ill_conditioned_gaussian,
    "funnel": Funnel,
    "banana": Banana,
    "mixture": Mixture,
}
_DATASETS = {"logreg-iris": iris_logistic, "logreg-cancer": cancer_logistic}
TARGET_FAMILIES: tuple[str, ...] = (*_FAMILIES, *_DATASETS)


def make_target(name: str, device: torch.device | str = "cpu") -> Target:
    """A target by name: ``<family>-d<dim>`` (gaussian, ill-gaussian, funnel, banana, mixture) or a logreg."""
    if name in _DATASETS:
        return _DATASETS[name](device)
    m = re.fullmatch(r"([a-z-]+)-d(\d+)", name)
    if not m or m.group(1) not in _FAMILIES:
        raise ValueError(
            f"unknown target {name!r}; families: {', '.join(TARGET_FAMILIES)} (e.g. funnel-d10)"
        )
    return _FAMILIES[m.group(1)](int(m.group(2)), device=device)
