"""The ``attack`` task: an attack's robust accuracy against reference defenses (lower is stronger).

The harness trains each reference defense of the ``robust`` task inside the cell, with
the contexts the ``robust`` cell of seed ``reference_seed`` uses, so that (on the same
device and library versions) the attacked weights are those that the ``robust``
leaderboard scored; the attack's findings then count as counter-evidence there.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ... import data as datasets
from ... import registry
from ...api import Context, Evaluation, Method, MetricSpec, Task
from ...oracle import Exposed, MethodGenerator
from ...registry import register_task
from .evaluate import BUDGET_TOL, CountingModel, model_fingerprint, verify_perturbation
from .task import RobustConfig, RobustTask, check_model, robust_configs, smoke_config, test_points

#: Defenses of the ``robust`` task every attack is scored against.
REFERENCE_DEFENSES: tuple[str, ...] = ("standard", "pgd-at")
REFERENCE_SEED = 0


@dataclass(frozen=True)
class AttackConfig(RobustConfig):
    """A ``robust`` config (the reference defenses are trained with it) plus the references."""

    reference_defenses: tuple[str, ...] = REFERENCE_DEFENSES
    reference_seed: int = REFERENCE_SEED

    def defense_config(self) -> RobustConfig:
        """The ``robust`` task's config the reference defenses see."""
        return RobustConfig(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(RobustConfig)}
        )


class AttackMethod(Method):
    """Protocol of an ``attack`` method: perturb inputs within an l_p ball."""

    @abstractmethod
    def perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        norm: str,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Return x_adv (same shape and dtype as x) in [0, 1] with ||x_adv - x||_p <= eps per point.

        ``model`` (eval mode) maps (N, C, H, W) in [0, 1] to logits; ``y`` are the true
        labels; ``norm`` is "linf" or "l2"; draw randomness from ``generator`` (on x's
        device). The harness verifies every point and scores x_adv on its own copy.
        """


def reference_model(name: str, data, config: RobustConfig, ctx: Context) -> nn.Module:
    """Train reference defense ``name`` exactly as the ``robust`` cell of the reference seed does."""
    from ...runner import cell_contexts  # the runner imports the registry, which imports tasks

    cls = registry.get_method_class("robust", name)
    _, method_ctx, _ = cell_contexts(REFERENCE_SEED, ctx.device, ctx.data_dir, ctx.progress)
    torch.manual_seed(method_ctx.seed)  # as the runner does before fit()
    # A built-in defense, trained here in the harness (trusted code); the attack being
    # scored runs in its own process and only ever queries this model through an oracle.
    task = RobustTask()
    model = task.fit(cls(), task.train_view(data, config), config, method_ctx)
    return check_model(model, data, ctx)


@register_task
class AttackTask(Task):
    """Attacks: robust accuracy they leave on reference defenses at fixed (norm, eps), and their cost."""

    name = "attack"
    version = "1"
    description = "attacks scored by the robust accuracy they leave on reference defenses"
    method_type = AttackMethod
    protocol = "perturb"
    primary_metric = "robust_acc"
    setting_keys = ("dataset", "norm", "eps")
    metrics = (
        MetricSpec("robust_acc", False, "fraction",
                   "mean over reference defenses of: correct and the attack failed"),
        *(MetricSpec(f"robust_acc_{d}", False, "fraction", f"robust accuracy of reference defense {d}")
          for d in REFERENCE_DEFENSES),
        MetricSpec("forwards_per_point", False, "images", "forward passes per attacked point"),
        MetricSpec("backwards_per_point", False, "images", "backward passes per attacked point"),
        MetricSpec("ms_per_point", False, "ms", "attack wall time per attacked point on this device"),
    )  # fmt: skip

    def configs(self, profile: str) -> list[AttackConfig]:
        """The ``robust`` task's threat models of ``profile``."""
        return [AttackConfig(**dataclasses.asdict(c)) for c in robust_configs(profile)]

    def smoke(self, config: AttackConfig) -> AttackConfig:
        """A seconds-long config."""
        return AttackConfig(**dataclasses.asdict(smoke_config(config.defense_config())))

    def check_data(self, config: AttackConfig, data_dir) -> None:
        """Fail early, with what to put where, if the dataset is missing."""
        datasets.load(config.dataset, data_dir)

    def prepare(self, config: AttackConfig, ctx: Context) -> datasets.ImageDataset:
        """The dataset with its fixed split."""
        return datasets.load(config.dataset, ctx.data_dir)

    def train_view(self, data, config: AttackConfig) -> None:
        """An attack sees no data before it is run: nothing."""
        return None

    def fit(self, method: AttackMethod, data, config: AttackConfig, ctx: Context) -> AttackMethod:
        """An attack has nothing to train: the method itself is the artifact (in its process)."""
        return method

    def evaluate(
        self, artifact: AttackMethod, data, config: AttackConfig, ctx: Context
    ) -> Evaluation:
        """Attack each reference defense on the fixed test points; verify every x_adv; count passes."""
        pts = test_points(data, config)
        x, y = pts.x.to(ctx.device), pts.y.to(ctx.device)
        metrics: dict[str, float] = {}
        per_defense = {}
        forwards = backwards = attacked = 0
        seconds = 0.0
        for i, name in enumerate(config.reference_defenses):
            ctx.progress(f"train {name}", i, len(config.reference_defenses))
            model = reference_model(name, data, config.defense_config(), ctx)
            with torch.no_grad():
                clean = model(x).argmax(1) == y
            robust = clean.clone()
            # The attack runs in the plugin process and reaches this model only through
            # the oracle: logits and input gradients, counted here.
            counted = CountingModel(copy.deepcopy(model)).eval()
            model_ref = artifact.share(Exposed(counted, frozenset({"__call__"}), grad=True))
            idx = clean.nonzero().flatten()
            for s in range(0, len(idx), config.batch_size):
                b = idx[s : s + config.batch_size]
                ctx.progress(f"attack {name}", s, len(idx))
                start = time.perf_counter()
                xa = artifact.call(
                    "perturb", model_ref, x[b].clone(), y[b].clone(), config.eps, config.norm,
                    MethodGenerator(),
                )  # fmt: skip
                seconds += time.perf_counter() - start
                xa = verify_perturbation(
                    xa, x[b], config.eps, config.norm, who=f"the attack (on {name})"
                )
                with torch.no_grad():
                    robust[b] = model(xa).argmax(1) == y[b]
            forwards, backwards, attacked = (
                forwards + counted.forwards,
                backwards + counted.backwards,
                attacked + len(idx),
            )
            cls = registry.get_method_class("robust", name)
            metrics[f"robust_acc_{name}"] = float(robust.float().mean())
            per_defense[name] = {
                "version": str(cls.version), "source_hash": registry.source_hash(cls),
                "seed": REFERENCE_SEED, "fingerprint": model_fingerprint(model, tuple(x.shape[1:])),
                "clean_acc": float(clean.float().mean()), "robust_acc": metrics[f"robust_acc_{name}"],
                "robust": robust.int().cpu().tolist(),
            }  # fmt: skip
        metrics["robust_acc"] = float(
            np.mean([metrics[f"robust_acc_{d}"] for d in config.reference_defenses])
        )
        metrics["forwards_per_point"] = forwards / max(1, attacked)
        metrics["backwards_per_point"] = backwards / max(1, attacked)
        metrics["ms_per_point"] = 1000 * seconds / max(1, attacked)
        estimator = {
            "test_points": len(y), "test_selection": f"first {config.n_test} points of the fixed test split",
            "attacked_points": "only points the defense classifies correctly; cost is per attacked point",
            "reference_defenses": list(config.reference_defenses),
            "reference_training": f"robust-task method with the contexts of cell seed {REFERENCE_SEED}",
            "threat_model": f"{config.norm} ball of radius {config.eps:g} (pixels in [0, 1]) within [0, 1]",
            "budget_tolerance": BUDGET_TOL,
            "pass_counting": "images through the model forward / through a backward pass",
        }  # fmt: skip
        return Evaluation(metrics, {"per_defense": per_defense}, estimator)
