"""``robust`` and ``attack``: adversarial robustness with defenses and attacks as plugins.

Two tasks live here. ``robust`` scores defenses (``train(data, config, ctx) -> model``)
by clean and robust accuracy under the harness's ensemble (APGD-CE, APGD-T, Square),
per-sample worst case. ``attack`` scores attacks (``perturb(model, x, y, eps, norm,
generator) -> x_adv``) by the robust accuracy they leave on reference defenses; their
findings lower the ``robust`` leaderboard's numbers for the same models.

Library use, no CLI needed::

    from dltbench.tasks.robust import robust_accuracy, pgd, apgd, square
    res = robust_accuracy(model, x, y, eps=0.1, norm="linf")
    print(res.clean_accuracy, res.robust_accuracy, res.attack_accuracy)
"""

from . import methods  # noqa: F401  (registers the built-in defenses and attacks)
from .apgd import apgd, apgd_targeted, checkpoints
from .attack_task import REFERENCE_DEFENSES, AttackConfig, AttackMethod, AttackTask
from .attacks import fgsm, pgd, universal
from .defenses import fgsm_at_loss, pgd_at_loss, standard_loss, trades_loss
from .evaluate import (
    BUDGET_TOL,
    CountingModel,
    RobustResult,
    default_ensemble,
    masking_flags,
    model_fingerprint,
    robust_accuracy,
    verify_perturbation,
)
from .square import square
from .task import ENSEMBLE, DefenseMethod, RobustConfig, RobustTask
from .threat import cw_loss, dlr_loss, dlr_targeted_loss, lp_norm, margin, project

__all__ = [
    "BUDGET_TOL", "ENSEMBLE", "REFERENCE_DEFENSES", "AttackConfig", "AttackMethod", "AttackTask",
    "CountingModel", "DefenseMethod", "RobustConfig", "RobustResult", "RobustTask", "apgd",
    "apgd_targeted", "checkpoints", "cw_loss", "default_ensemble", "dlr_loss", "dlr_targeted_loss",
    "fgsm", "fgsm_at_loss", "lp_norm", "margin", "masking_flags", "model_fingerprint", "pgd",
    "pgd_at_loss", "project", "robust_accuracy", "square", "standard_loss", "trades_loss",
    "universal", "verify_perturbation",
]  # fmt: skip
