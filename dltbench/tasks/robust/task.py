"""The ``robust`` task: clean and robust accuracy of a defense under the harness's attack ensemble."""

from __future__ import annotations

import dataclasses
import time
from abc import abstractmethod
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

from ... import data as datasets
from ...api import Context, Evaluation, InvalidArtifact, Method, MetricSpec, Task, profile_entry
from ...models import accuracy, check_classifier
from ...registry import register_task
from .attacks import pgd
from .evaluate import (
    BUDGET_TOL,
    default_ensemble,
    masking_flags,
    model_fingerprint,
    robust_accuracy,
    verify_perturbation,
)  # fmt: skip

#: The harness's standard ensemble, in the order it runs (see :func:`default_ensemble`).
ENSEMBLE: tuple[str, ...] = ("apgd-ce", "apgd-t", "square")
#: Robust accuracy is also measured by PGD at these multiples of eps (the eps curve).
EPS_MULTIPLES: tuple[float, ...] = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class RobustConfig:
    """Everything a defense cell's numbers depend on besides the method and the seed.

    eps is in the [0, 1] pixel scale of the given norm ("linf" or "l2").
    """

    dataset: str
    norm: str
    eps: float  # the threat model: defenses train for it, the leaderboard ranks at it
    epochs: int  # training budget, in passes over the training split
    at_steps: int  # inner PGD steps per minibatch a defense may use (a budget hint)
    n_test: int  # the first n_test test points are attacked (the split is pre-shuffled)
    apgd_steps: int
    apgd_targets: int
    square_queries: int
    # Square's p schedule read as fractions of the budget (the reference class's default)
    # rather than AutoAttack's standard absolute iterations, which are tuned to 5000 queries
    square_rescale: bool
    pgd_steps: int  # PGD steps for the eps curve and the large-eps sanity check
    large_eps: float  # an eps at which any image can be reached: robust accuracy must be 0
    batch_size: int  # points attacked at once


_GRID = {
    "quick": dict(dataset="digits", threats=(("linf", 0.1), ("l2", 0.5)), epochs=15, at_steps=3,
                  n_test=200, apgd_steps=25, apgd_targets=3, square_queries=300, square_rescale=True,
                  pgd_steps=10, batch_size=500),
    # MNIST: l_inf 0.3 and l_2 2.0 (Madry et al. 2018; Croce & Hein 2020)
    "standard": dict(dataset="mnist", threats=(("linf", 0.3), ("l2", 2.0)), epochs=20, at_steps=40,
                     n_test=1000, apgd_steps=100, apgd_targets=9, square_queries=5000,
                     square_rescale=False, pgd_steps=100, batch_size=500),
    # RobustBench's CIFAR-10 threat models on its first 10000 test points (the whole test set)
    "paper": dict(dataset="cifar10", threats=(("linf", 8 / 255), ("l2", 0.5)), epochs=100,
                  at_steps=10, n_test=10_000, apgd_steps=100, apgd_targets=9,
                  square_queries=5000, square_rescale=False, pgd_steps=100, batch_size=500),
}  # fmt: skip


def robust_configs(profile: str) -> list[RobustConfig]:
    """One config per threat model (norm, eps) of ``profile``."""
    p = dict(profile_entry(_GRID, profile))
    threats = p.pop("threats")
    side = {"digits": 8, "mnist": 28, "cifar10": 32}[p["dataset"]]
    channels = 3 if p["dataset"] == "cifar10" else 1
    # linf 1 and the l2 diameter of the box both reach every image
    large = {"linf": 1.0, "l2": float(np.sqrt(channels * side * side))}
    return [RobustConfig(norm=n, eps=e, large_eps=large[n], **p) for n, e in threats]


def smoke_config(config: RobustConfig) -> RobustConfig:
    """A seconds-long version: one epoch, few points, few attack steps."""
    return dataclasses.replace(
        config, epochs=1, at_steps=2, n_test=20, apgd_steps=5, apgd_targets=2, square_queries=20,
        pgd_steps=3,
    )  # fmt: skip


class DefenseMethod(Method):
    """Protocol of a ``robust`` method (a defense): train a classifier for a threat model."""

    @abstractmethod
    def train(self, data: datasets.ImageDataset, config: RobustConfig, ctx: Context) -> nn.Module:
        """Return an nn.Module mapping (N, C, H, W) in [0, 1] to logits (N, K).

        ``data`` holds only the training split; ``config.norm`` and ``config.eps`` are the
        threat model; ``config.epochs`` and ``config.at_steps`` the budget. The forward pass
        must be deterministic in eval mode (randomized defenses are out of scope).
        """


def check_model(artifact, data, ctx: Context, probe_points: int = 16) -> nn.Module:
    """The harness's checks of a returned model (logit shape, finite, deterministic in eval mode)."""
    x = data.test.x[:probe_points].to(ctx.device)
    model, out = check_classifier(artifact, x, data.num_classes, ctx.device)
    with torch.no_grad():
        again = model(x)
    if not torch.equal(out, again):
        raise InvalidArtifact(
            "the model's eval-mode forward is not deterministic (randomized defense)"
        )
    return model


def test_points(data, config: RobustConfig):
    """The fixed attacked subset: the first ``n_test`` points of the (pre-shuffled) test split."""
    return data.test.subset(slice(0, config.n_test))


def ensemble_for(config: RobustConfig) -> dict:
    """The standard ensemble at the config's attack budgets."""
    return default_ensemble(
        config.apgd_steps, config.apgd_targets, config.square_queries, config.square_rescale
    )


@register_task
class RobustTask(Task):
    """Defenses: clean and robust accuracy under an AutoAttack-style ensemble (per-sample worst case)."""

    name = "robust"
    version = "2"
    description = "robust accuracy of defenses under an attack ensemble at (norm, eps)"
    method_type = DefenseMethod
    protocol = "train"
    primary_metric = "robust_acc"
    setting_keys = ("dataset", "norm", "eps")
    metrics = (
        MetricSpec("robust_acc", True, "fraction",
                   "correct and every ensemble attack failed (lowest known, with attack-task evidence)"),
        MetricSpec("clean_acc", True, "fraction", "accuracy on the attacked test points"),
        *(MetricSpec(f"acc_{a}", True, "fraction", f"robust accuracy under {a} alone") for a in ENSEMBLE),
        *(MetricSpec(f"pgd_acc@{m:g}eps", True, "fraction", f"PGD robust accuracy at {m:g} x eps")
          for m in EPS_MULTIPLES),
        MetricSpec("large_eps_acc", False, "fraction",
                   "PGD robust accuracy at an eps reaching every image (must be 0)"),
        MetricSpec("masking_flags", False, "count", "gradient-masking warnings (see masking_flags column)"),
        MetricSpec("full_test_clean_acc", True, "fraction", "clean accuracy on the whole test split"),
        MetricSpec("eval_seconds", False, "s", "ensemble evaluation time on this device"),
    )  # fmt: skip

    def configs(self, profile: str) -> list[RobustConfig]:
        """One config per threat model of ``profile``."""
        return robust_configs(profile)

    def smoke(self, config: RobustConfig) -> RobustConfig:
        """A seconds-long config."""
        return smoke_config(config)

    def check_data(self, config: RobustConfig, data_dir) -> None:
        """Fail early, with what to put where, if the dataset is missing."""
        datasets.load(config.dataset, data_dir)

    def prepare(self, config: RobustConfig, ctx: Context) -> datasets.ImageDataset:
        """The dataset with its fixed split."""
        return datasets.load(config.dataset, ctx.data_dir)

    def train_view(self, data: datasets.ImageDataset, config: RobustConfig):
        """The training split only."""
        return dataclasses.replace(data, test=None)

    def fit(self, method: DefenseMethod, data, config: RobustConfig, ctx: Context) -> nn.Module:
        """Train the defense (in the plugin process, on the training view)."""
        return method.train(data, config, ctx)

    def evaluate(self, artifact, data, config: RobustConfig, ctx: Context) -> Evaluation:
        """Run the ensemble at eps, PGD along the eps curve and at a huge eps; flag gradient masking."""
        model = check_model(artifact, data, ctx)
        return evaluate_defense(model, data, config, ctx)

    def adjust_leaderboard(self, df, records, load):
        """Lower robust accuracy with attack-task evidence on the same models; show masking flags."""
        from .counter import adjust_defense_leaderboard

        return adjust_defense_leaderboard(df, records, load)


def evaluate_defense(model: nn.Module, data, config: RobustConfig, ctx: Context) -> Evaluation:
    """The defense evaluator (model already checked): metrics, per-point curves and estimator."""
    pts = test_points(data, config)
    x, y = pts.x.to(ctx.device), pts.y.to(ctx.device)
    gen = ctx.device_generator()
    ctx.progress("ensemble", 0, 1)
    start = time.perf_counter()
    res = robust_accuracy(
        model, x, y, config.eps, config.norm, ensemble_for(config), gen, config.batch_size
    )
    seconds = time.perf_counter() - start
    ctx.progress("eps curve", 0, 1)
    curve = {}
    run_pgd = partial(pgd, steps=config.pgd_steps)
    for m in EPS_MULTIPLES:
        r = robust_accuracy(
            model, x, y, m * config.eps, config.norm, {"pgd": run_pgd}, gen, config.batch_size
        )
        curve[m * config.eps] = r.robust_accuracy
    large = robust_accuracy(
        model, x, y, config.large_eps, config.norm, {"pgd": run_pgd}, gen, config.batch_size
    )
    flags = masking_flags(res, curve, large.robust_accuracy, config.eps)
    metrics = {
        "robust_acc": res.robust_accuracy,
        "clean_acc": res.clean_accuracy,
        **{f"acc_{k}": v for k, v in res.attack_accuracy.items()},
        **{f"pgd_acc@{m:g}eps": curve[m * config.eps] for m in EPS_MULTIPLES},
        "large_eps_acc": large.robust_accuracy,
        "masking_flags": float(len(flags)),
        "full_test_clean_acc": accuracy(model, data.test, ctx.device),
        "eval_seconds": seconds,
    }
    curves = {
        "masking_flags": flags,
        "model_fingerprint": model_fingerprint(model, tuple(x.shape[1:])),
        "eps_curve": {"eps": list(curve), "pgd_acc": list(curve.values())},
        "per_point": {
            "clean_correct": res.clean_correct.astype(int).tolist(),
            "robust": res.robust.astype(int).tolist(),
            **{k: v.astype(int).tolist() for k, v in res.per_attack.items()},
        },
        "attack_seconds": res.seconds,
    }
    estimator = {
        "test_points": len(y), "test_selection": f"first {config.n_test} points of the fixed test split",
        "threat_model": f"{config.norm} ball of radius {config.eps:g} (pixels in [0, 1]) within [0, 1]",
        "ensemble": {
            "apgd-ce": {"steps": config.apgd_steps, "loss": "ce", "restarts": 1},
            "apgd-t": {"steps": config.apgd_steps, "loss": "targeted dlr", "targets": config.apgd_targets},
            "square": {"queries": config.square_queries, "loss": "margin", "p_init": 0.8,
                       "schedule": "halvings after iterations 10, 50, 200, ..., 8000"
                                   + (" of 10000, rescaled to the budget" if config.square_rescale
                                      else " (AutoAttack standard, not rescaled)")},
        },
        "skipped_attacks": res.skipped,
        "robust_definition": "per-sample worst case: correct and every ensemble attack failed",
        "eps_curve": f"PGD, {config.pgd_steps} steps, step 2.5 eps / steps, random start",
        "large_eps": config.large_eps, "budget_tolerance": BUDGET_TOL,
        "masking_checks": "gradient-free-only successes >= 2% of points; PGD accuracy not falling "
                          "from eps to 2 eps or rising; PGD accuracy > 0 at large_eps",
    }  # fmt: skip
    return Evaluation(metrics, curves, estimator)


__all__ = ["DefenseMethod", "RobustConfig", "RobustTask", "check_model", "verify_perturbation"]
