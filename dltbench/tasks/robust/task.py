"""The ``robust`` task: clean and robust accuracy of a defense under the harness's attack ensemble."""

from __future__ import annotations

import dataclasses
import math
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
from ...oracle import audit_every_call
from ...registry import register_task
from .apgd import apgd
from .attacks import apply_universal, pgd, universal_perturbation
from .evaluate import (
    BUDGET_TOL,
    GRADIENT_FREE,
    PATCH_RESTARTS,
    default_ensemble,
    masking_flags,
    model_fingerprint,
    robust_accuracy,
    verify_perturbation,
)  # fmt: skip
from .physical import (
    EOT_SAMPLES,
    SCORE_DRAWS,
    SELECT_DRAWS,
    WORLDS,
    eot_pgd,
    physical_ensemble,
    world_scores,
)
from .threat import COUNT_NORMS, label_rank

#: The harness's standard ensemble, in the order it runs (see :func:`default_ensemble`).
ENSEMBLE: tuple[str, ...] = ("apgd-ce", "apgd-t", "square")
#: The ensemble of the l0 threat model (eps = k changed pixels).
ENSEMBLE_L0: tuple[str, ...] = ("pgd-l0", "pgd-l0-cw", "sparse-rs")
#: The ensemble of the patch threat model (eps = the area of one square, anywhere).
ENSEMBLE_PATCH: tuple[str, ...] = ("pgd-patch", "pgd-patch-cw")
#: The ensemble of a physical threat model (an l_inf ball, then the world's transformations).
ENSEMBLE_PHYSICAL: tuple[str, ...] = tuple(physical_ensemble(1, 1))
#: Robust accuracy is also measured by PGD at these multiples of eps (the eps curve).
EPS_MULTIPLES: tuple[float, ...] = (0.5, 1.0, 2.0)
#: Top-k robust accuracy is reported for these k (k = 1 is ``robust_acc`` before counter-evidence).
TOP_K: tuple[int, ...] = (1, 3, 5)


@dataclass(frozen=True)
class RobustConfig:
    """Everything a defense cell's numbers depend on besides the method and the seed.

    eps is in the [0, 1] pixel scale of the given norm ("linf" or "l2").
    """

    dataset: str
    norm: str
    # the threat model: defenses train for it, the leaderboard ranks at it; for l0 a
    # count k of changed pixels (a pixel: all channels at one location)
    eps: float
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
    uap_points: int = 200  # held-out (training-split) points the universal perturbation is fit on
    uap_steps: int = 40  # its projected gradient steps
    topk_steps: int = 100  # steps of the attack on the top-k margin (k = 3, 5)


_GRID = {
    # l0 2: 2 of the 64 pixels of an 8x8 digit (3%, as 24 of MNIST's 784)
    # patch 4: one 2 x 2 square anywhere on the 8 x 8 digit (6% of the pixels)
    # physical-linf 0.1: the linf row's ball, then the world's rotation, scale, light, noise
    "quick": dict(dataset="digits", threats=(("linf", 0.1), ("l2", 0.5), ("l0", 2), ("patch", 4),
                                             ("physical-linf", 0.1)),
                  epochs=15, at_steps=3,
                  n_test=200, apgd_steps=25, apgd_targets=3, square_queries=300, square_rescale=True,
                  pgd_steps=10, batch_size=500),
    # MNIST: l_inf 0.3 and l_2 2.0 (Madry et al. 2018; Croce & Hein 2020)
    # l0 24: 24 of 784 pixels (3%), our choice
    "standard": dict(dataset="mnist", threats=(("linf", 0.3), ("l2", 2.0), ("l0", 24), ("physical-linf", 0.3)),
                     epochs=20, at_steps=40,
                     n_test=1000, apgd_steps=100, apgd_targets=9, square_queries=5000,
                     square_rescale=False, pgd_steps=100, batch_size=500),
    # RobustBench's CIFAR-10 threat models on its first 10000 test points (the whole test set)
    # l0 24 of 1024 pixels, our choice
    "paper": dict(dataset="cifar10", threats=(("linf", 8 / 255), ("l2", 0.5), ("l0", 24),
                                              ("physical-linf", 8 / 255)), epochs=100,
                  at_steps=10, n_test=10_000, apgd_steps=100, apgd_targets=9,
                  square_queries=5000, square_rescale=False, pgd_steps=100, batch_size=500),
}  # fmt: skip


#: Universal-perturbation steps: in quick, 20 steps of 2.5 eps / 20 (each is a round trip
#: to the plugin's model, the cost that matters on digits).
_UAP_STEPS = {"quick": 20, "standard": 40, "paper": 40}


def robust_configs(profile: str) -> list[RobustConfig]:
    """One config per threat model (norm, eps) of ``profile``."""
    p = dict(profile_entry(_GRID, profile))
    threats = p.pop("threats")
    side = {"digits": 8, "mnist": 28, "cifar10": 32}[p["dataset"]]
    channels = 3 if p["dataset"] == "cifar10" else 1
    # linf 1, the l2 diameter of the box and l0 = every pixel all reach every image
    # (a physical row has no large-eps check: the world's noise can hide any image)
    large = {"linf": 1.0, "l2": float(np.sqrt(channels * side * side)), "l0": float(side * side),
             "patch": float(side * side), **dict.fromkeys(WORLDS, float("nan"))}  # fmt: skip
    return [
        RobustConfig(
            norm=n,
            eps=float(e),
            large_eps=large[n],
            uap_points=p["n_test"],
            uap_steps=_UAP_STEPS[profile],
            topk_steps=p["pgd_steps"],
            **p,
        )  # fmt: skip
        for n, e in threats
    ]


def smoke_config(config: RobustConfig) -> RobustConfig:
    """A seconds-long version: one epoch, few points, few attack steps."""
    return dataclasses.replace(
        config, epochs=1, at_steps=2, n_test=20, apgd_steps=5, apgd_targets=2, square_queries=20,
        pgd_steps=3, uap_points=20, uap_steps=3, topk_steps=3,
    )  # fmt: skip


class DefenseMethod(Method):
    """Protocol of a ``robust`` method (a defense): train a classifier for a threat model."""

    @abstractmethod
    def train(self, data: datasets.ImageDataset, config: RobustConfig, ctx: Context) -> nn.Module:
        """Return an nn.Module mapping (N, C, H, W) in [0, 1] to logits (N, K).

        ``data`` holds only the training split; ``config.norm`` and ``config.eps`` are the
        threat model (for a physical one, e.g. "physical-linf", the budget is the ball of
        ``physical.digital_norm(config.norm)`` and the world's family is
        ``physical.WORLDS[config.norm][1]``); ``config.epochs`` and ``config.at_steps`` the
        budget. The forward pass must be deterministic in eval mode (randomized defenses
        are out of scope: the world is random, the model is not).
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
    """The standard ensemble of the config's threat model at its attack budgets."""
    return default_ensemble(
        config.apgd_steps, config.apgd_targets, config.square_queries, config.square_rescale,
        config.norm,
    )  # fmt: skip


def eps_at(config: RobustConfig, multiple: float) -> float:
    """``multiple`` x eps, rounded to a whole pixel count (at least 1) for l0; for patch the
    square's *side* is scaled (rounded, at least 1) and its area returned."""
    if config.norm == "patch":
        side = max(1, round(multiple * math.isqrt(int(config.eps))))
        return float(side * side)
    e = multiple * config.eps
    return float(max(1, round(e))) if config.norm == "l0" else e


@register_task
class RobustTask(Task):
    """Defenses: clean and robust accuracy under an AutoAttack-style ensemble (per-sample worst case)."""

    name = "robust"
    # 4: top-k attacks take topk_steps (not apgd_steps) steps, as documented; patch rows;
    # the UAP transfer column. 5: physical-linf rows (EOT-PGD scored through the world)
    version = "5"
    description = "robust accuracy of defenses under an attack ensemble at (norm, eps)"
    method_type = DefenseMethod
    protocol = "train"
    primary_metric = "robust_acc"
    setting_keys = ("dataset", "norm", "eps")
    metrics = (
        MetricSpec("robust_acc", True, "fraction",
                   "correct and every attack failed (lowest known, with attack-task evidence)"),
        MetricSpec("clean_acc", True, "fraction", "accuracy on the attacked test points"),
        *(MetricSpec(f"acc_{a}", True, "fraction", f"robust accuracy under {a} alone")
          for a in ENSEMBLE + ENSEMBLE_L0 + ENSEMBLE_PATCH + ENSEMBLE_PHYSICAL),
        *(MetricSpec(f"robust_top{k}_acc", True, "fraction",
                     f"label stays in the top {k} logits under every attack tried (ensemble"
                     + (")" if k == 1 else f" and APGD/PGD on the top-{k} margin)"))
          for k in TOP_K),
        MetricSpec("uap_fooling_rate", False, "fraction",
                   "test points whose prediction a universal perturbation (fit on training points) changes"),
        MetricSpec("uap_acc", True, "fraction", "test accuracy under that universal perturbation"),
        MetricSpec("uap_transfer_acc", True, "fraction",
                   "test accuracy under the universal perturbations of the attack task's reference "
                   "defenses (mean over those with other weights)"),
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
    if config.norm in WORLDS:
        return evaluate_physical(model, data, config, ctx)
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
    ctx.progress("top-k", 0, 1)
    rank = topk_ranks(model, x, y, res.worst_rank, config, gen)
    topk = {k: float((rank < k).mean()) if len(rank) else float("nan") for k in TOP_K}
    # a top-k attack that misclassifies a point is evidence against it too: robust means
    # rank 0 at every input tried, so top-1 robust accuracy is robust accuracy exactly
    robust = rank == 0
    ctx.progress("universal", 0, 1)
    uap = universal_scores(model, data, x, y, config, gen)
    # transfer imports attack_task, which imports this module
    from .transfer import transfer_scores

    moved = transfer_scores(model, data, x, y, config, ctx)
    ctx.progress("eps curve", 0, 1)
    curve = {}
    run_pgd = partial(pgd, steps=config.pgd_steps)
    for m in EPS_MULTIPLES:
        r = robust_accuracy(
            model, x, y, eps_at(config, m), config.norm, {"pgd": run_pgd}, gen, config.batch_size
        )
        curve[eps_at(config, m)] = r.robust_accuracy
    # l0 (patch) with every pixel allowed is the whole box, the linf ball of radius 1:
    # checked there with linf PGD, whose sign steps reach the box's corners fastest
    count = config.norm in COUNT_NORMS
    big_norm, big_eps = ("linf", 1.0) if count else (config.norm, config.large_eps)
    large = robust_accuracy(
        model, x, y, big_eps, big_norm, {"pgd": run_pgd}, gen, config.batch_size
    )
    only_free = res.only_broken_by(GRADIENT_FREE)
    gain = float(only_free.mean()) if len(only_free) else None
    flags = masking_flags(gain, curve, large.robust_accuracy, config.eps, norm=config.norm)
    metrics = {
        "robust_acc": topk[1],
        "clean_acc": res.clean_accuracy,
        **{f"acc_{k}": v for k, v in res.attack_accuracy.items()},
        **{f"robust_top{k}_acc": v for k, v in topk.items()},
        "uap_fooling_rate": uap["fooling_rate"],
        "uap_acc": uap["accuracy"],
        "uap_transfer_acc": moved["accuracy"],
        **{f"pgd_acc@{m:g}eps": curve[eps_at(config, m)] for m in EPS_MULTIPLES},
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
            "robust": robust.astype(int).tolist(),
            **{k: v.astype(int).tolist() for k, v in res.per_attack.items()},
            "worst_label_rank": rank.astype(int).tolist(),
        },
        "universal_perturbation": uap["delta"],
        "uap_transfer": {"per_source": moved["per_source"], "self_sources": moved["self_sources"]},
        "attack_seconds": res.seconds,
    }
    estimator = {
        "test_points": len(y), "test_selection": f"first {config.n_test} points of the fixed test split",
        "threat_model": threat_text(config),
        "ensemble": ensemble_text(config),
        "top_k": f"k in {list(TOP_K)}: a point counts at top-k if its label's rank (ties broken as "
                 "argmax does) stays below k at the clean input, every ensemble x_adv and, for "
                 f"k > 1, an attack on the top-k margin ({topk_attack_text(config)}); top-1 is "
                 "robust_acc (before attack-task evidence)",
        "universal": f"one delta for all test points, fit on the first {config.uap_points} points "
                     f"of the training split (never the test split) by projected gradient ascent, "
                     f"{config.uap_steps} steps, on the clipped margin; fooling rate = P(f(x+delta) "
                     "!= f(x)) over the test points (Moosavi-Dezfooli et al. 2017), accuracy = "
                     "P(f(x+delta) = y)",
        "universal_transfer": "accuracy under the universal perturbation of each attack-task reference "
                              "defense (seed-0 weights), fit on the same held-out points and budget "
                              "with a fixed harness seed; uap_transfer_acc is the mean over the "
                              "sources whose weights are not the scored ones",
        "skipped_attacks": res.skipped,
        "robust_definition": "per-sample worst case: correct and every ensemble attack and every "
                             "top-k attack failed to misclassify (label rank 0 at every input tried)",
        "eps_curve": f"PGD, {config.pgd_steps} steps, "
                     + ("PGD-l0 step, k rounded to whole pixels" if config.norm == "l0"
                        else "PGD-l0 step and patch projection, the side scaled and rounded"
                        if config.norm == "patch" else "step 2.5 eps / steps") + ", random start",
        "large_eps": config.large_eps if not count else
                     f"{config.large_eps:g} pixels = the whole box, checked as linf 1",
        "budget_tolerance": BUDGET_TOL if not count else "none: pixels counted exactly",
        "masking_checks": ("" if count else
                           "gradient-free-only successes >= 2% of points; ")
                          + "PGD accuracy not falling from eps to 2 eps or rising; "
                          "PGD accuracy > 0 at large_eps",
    }  # fmt: skip
    return Evaluation(metrics, curves, estimator)


def attack_all(model, x, y, eps: float, norm: str, attack, gen, batch_size: int, who: str):
    """``attack``'s verified x_adv for every point of (x, y), in batches, and its seconds."""
    out = torch.empty_like(x)
    start = time.perf_counter()
    for i in range(0, len(y), batch_size):
        b = slice(i, i + batch_size)
        xa = attack(model, x[b], y[b], eps, norm, generator=gen)
        out[b] = verify_perturbation(xa, x[b], eps, norm, who=who)
    return out, time.perf_counter() - start


def evaluate_physical(model: nn.Module, data, config: RobustConfig, ctx: Context) -> Evaluation:
    """A physical row: the EOT ensemble in the digital ball, each point scored through the world's draws.

    Every point is attacked (the world can fix a digitally wrong point, and break a right
    one); each candidate (x and every attack's x_adv) meets the same transformations,
    drawn from a stream of the evaluation that no attack used, after all attacks
    returned, and a point's score is the expected accuracy of its worst candidate
    (:func:`physical.world_scores`). Every scoring query of a plugin's model is audited.
    """
    budget, family = WORLDS[config.norm]
    pts = test_points(data, config)
    x, y = pts.x.to(ctx.device), pts.y.to(ctx.device)
    gen = ctx.device_generator()  # the ensemble's draws
    world = ctx.device_generator()  # the draws that score: never seen by any attack

    def scores(candidates: dict, ks=(1,), subsets=None):
        with audit_every_call(model):
            return world_scores(model, y, candidates, family, world, ks,
                                batch_size=config.batch_size, subsets=subsets)  # fmt: skip

    ctx.progress("ensemble", 0, 1)
    found, seconds = {}, {}
    for name, attack in physical_ensemble(config.apgd_steps, config.square_queries).items():
        found[name], seconds[name] = attack_all(
            model, x, y, config.eps, budget, attack, gen, config.batch_size, f"attack {name!r}"
        )  # fmt: skip
    gradient = [n for n in found if n not in GRADIENT_FREE]
    res = scores({"clean": x, **found}, TOP_K, {"gradient": gradient})
    ctx.progress("eps curve", 0, 1)
    curve = {}
    for m in EPS_MULTIPLES:
        e = eps_at(config, m)
        xa, _ = attack_all(model, x, y, e, budget, partial(eot_pgd, steps=config.pgd_steps),
                           gen, config.batch_size, "EOT-PGD (eps curve)")  # fmt: skip
        at = scores({"clean": x, "eot-pgd": xa})
        curve[e] = float(at.robust.mean()) if len(y) else float("nan")

    def mean(v: np.ndarray) -> float:
        return float(v.mean()) if len(v) else float("nan")

    # the digital rule in expectation: what random search alone takes beyond every gradient
    # attack together (a decoy gradient stops only the latter)
    free = min(mean(v) for k, v in res.per_attack.items() if k in GRADIENT_FREE)
    gain = mean(res.subsets["gradient"]) - free
    flags = masking_flags(gain, curve, None, config.eps, norm=config.norm)
    metrics = {
        "robust_acc": mean(res.robust),
        "clean_acc": mean(res.clean),
        **{f"acc_{k}": mean(v) for k, v in res.per_attack.items()},
        **{f"robust_top{k}_acc": mean(v) for k, v in res.topk.items()},
        **{f"pgd_acc@{m:g}eps": curve[eps_at(config, m)] for m in EPS_MULTIPLES},
        "masking_flags": float(len(flags)),
        "full_test_clean_acc": accuracy(model, data.test, ctx.device),
        "eval_seconds": sum(seconds.values()),
    }
    names = ["clean", *found]
    curves = {
        "masking_flags": flags,
        "model_fingerprint": model_fingerprint(model, tuple(x.shape[1:])),
        "eps_curve": {"eps": list(curve), "pgd_acc": list(curve.values())},
        # scores are multiples of 1 / SCORE_DRAWS: exact in JSON
        "per_point": {
            "clean_score": res.clean.tolist(),
            "robust": res.robust.tolist(),
            "gradient_attacks": res.subsets["gradient"].tolist(),
            "worst_candidate": [names[i] for i in res.worst],
        },
        "attack_seconds": seconds,
    }
    estimator = {
        "test_points": len(y), "test_selection": f"first {config.n_test} points of the fixed test split",
        "threat_model": threat_text(config),
        "ensemble": {
            **{name: {"steps": config.apgd_steps, "samples": EOT_SAMPLES,
                      "loss": "ce" if name == "eot-pgd" else "margin",
                      "step": "2.5 eps / steps, signed gradient averaged over the samples",
                      "start": "uniform in the ball"}
               for name in gradient},
            "eot-square": {"queries": config.square_queries, "samples": EOT_SAMPLES,
                           "loss": "margin of the logits averaged over the samples",
                           "schedule": "Square's p schedule, rescaled to the budget"},
        },
        "world_scoring": f"every point is attacked; x and each x_adv meet the same transformations, "
                         f"drawn after the attacks returned from a stream no attack used; a point's "
                         f"worst candidate is the least accurate on {SELECT_DRAWS} selection draws, "
                         f"its score its accuracy on {SCORE_DRAWS} independent draws (rows asked in "
                         "a drawn order, every answer audited on 16 rows); robust_acc is the mean "
                         "score; acc_<attack> the same with that attack alone",
        "top_k": "the worst candidate's (picked at k = 1) share of scoring draws with the label in the "
                 "top k logits; no top-k attack on physical rows",
        "eps_curve": f"EOT-PGD on cross-entropy, {config.pgd_steps} steps, {EOT_SAMPLES} samples, "
                     "scored through the world as above",
        "not_measured": "universal perturbation and its transfer, the large-eps check (digital "
                        "rows only)",
        "budget_tolerance": BUDGET_TOL,
        "masking_checks": "eot-square alone leaves >= 0.02 less than the EOT-PGD attacks together; "
                          "EOT-PGD accuracy not falling from eps to 2 eps or rising",
    }  # fmt: skip
    return Evaluation(metrics, curves, estimator)


def threat_text(config: RobustConfig) -> str:
    """The threat model in words, for an estimator record."""
    if config.norm in WORLDS:
        budget, family = WORLDS[config.norm]
        return (f"{budget} ball of radius {config.eps:g} (pixels in [0, 1]) within [0, 1], then the "
                f"world's transformation t ~ {family} (rotation and scale about the centre, "
                "bilinear with zero padding, brightness shift, Gaussian noise, clip), drawn by the "
                "harness after the attack")  # fmt: skip
    if config.norm == "l0":
        return (f"at most {int(config.eps)} changed pixels (a pixel: all channels at one location; "
                "any difference counts, checked exactly), within [0, 1]")  # fmt: skip
    if config.norm == "patch":
        s = math.isqrt(int(config.eps))
        return (f"changes only inside one {s} x {s} square (area {int(config.eps)} pixels) anywhere "
                "in the image, chosen per point; checked exactly (the changed pixels' bounding box "
                f"has both sides <= {s}), within [0, 1]")  # fmt: skip
    return f"{config.norm} ball of radius {config.eps:g} (pixels in [0, 1]) within [0, 1]"


def ensemble_text(config: RobustConfig) -> dict:
    """The ensemble's attacks and budgets, for an estimator record."""
    if config.norm == "patch":
        return {
            name: {"steps": max(1, config.apgd_steps // 5), "loss": loss, "restarts": PATCH_RESTARTS,
                   "step": "0.15 d g / ||g||_1, then the exact projection (best window)",
                   "start": "uniform in the box, projected onto the best window"}
            for name, loss in zip(ENSEMBLE_PATCH, ("ce", "margin"), strict=True)
        }  # fmt: skip
    if config.norm == "l0":
        return {
            "pgd-l0": {"steps": config.apgd_steps, "loss": "ce", "step": "0.15 d g / ||g||_1",
                       "start": "uniform in the box, projected onto k pixels"},
            "pgd-l0-cw": {"steps": config.apgd_steps, "loss": "margin"},
            "sparse-rs": {"queries": config.square_queries, "loss": "margin", "alpha_init": 0.3,
                          "schedule": "l0 schedule of fra31/sparse-rs, rescaled to the budget"},
        }  # fmt: skip
    return {
        "apgd-ce": {"steps": config.apgd_steps, "loss": "ce", "restarts": 1},
        "apgd-t": {"steps": config.apgd_steps, "loss": "targeted dlr", "targets": config.apgd_targets},
        "square": {"queries": config.square_queries, "loss": "margin", "p_init": 0.8,
                   "schedule": "halvings after iterations 10, 50, 200, ..., 8000"
                               + (" of 10000, rescaled to the budget" if config.square_rescale
                                  else " (AutoAttack standard, not rescaled)")},
    }  # fmt: skip


def topk_attack_text(config: RobustConfig) -> str:
    """Which attack pushes the label out of the top k, for an estimator record."""
    if config.norm in COUNT_NORMS:
        return (f"PGD-{config.norm}, {config.topk_steps} steps, "
                "loss (k-th largest other logit) - z_y")  # fmt: skip
    return f"APGD, {config.topk_steps} steps, loss (k-th largest other logit) - z_y"


def topk_ranks(model, x, y, ranks: np.ndarray, config: RobustConfig, gen) -> np.ndarray:
    """The label's worst rank per point after attacks on the top-k margin for each k > 1 of TOP_K.

    A point is attacked for k only while its worst rank so far is below k (else it is
    already out of the top k); ranks only grow, so top-k robustness is monotone in k.
    """
    rank = torch.as_tensor(ranks, device=x.device).clone()
    for k in TOP_K:
        if k == 1:
            continue
        for s in range(0, len(y), config.batch_size):
            b = torch.arange(s, min(len(y), s + config.batch_size), device=x.device)
            b = b[rank[b] < k]
            if not len(b):
                continue
            # APGD's step schedule is defined for the l_p balls only: PGD on the pixel budgets
            attack = pgd if config.norm in COUNT_NORMS else apgd
            xa = attack(model, x[b], y[b], config.eps, config.norm, gen, steps=config.topk_steps,
                        loss=f"top{k}")  # fmt: skip
            xa = verify_perturbation(xa, x[b], config.eps, config.norm, who=f"top-{k} attack")
            with torch.no_grad():
                rank[b] = torch.maximum(rank[b], label_rank(model(xa), y[b]))
    return rank.cpu().numpy()


def universal_scores(model, data, x, y, config: RobustConfig, gen) -> dict:
    """Fit one perturbation on held-out training points, apply it to the test points (x, y).

    Returns the fooling rate P(f(x + delta) != f(x)), the accuracy P(f(x + delta) = y)
    and delta as a nested list (so that it can be replayed on other models).
    """
    held = data.train.subset(slice(0, config.uap_points))
    xh, yh = held.x.to(x.device), held.y.to(x.device)
    delta = universal_perturbation(model, xh, yh, config.eps, config.norm, gen, config.uap_steps)
    xa = verify_perturbation(apply_universal(x, delta), x, config.eps, config.norm, "the UAP")
    with torch.no_grad():
        before, after = model(x).argmax(1), model(xa).argmax(1)
    n = max(1, len(y))
    return {
        "fooling_rate": float((before != after).sum()) / n if len(y) else float("nan"),
        "accuracy": float((after == y).sum()) / n if len(y) else float("nan"),
        "delta": delta.detach().cpu().flatten().tolist(),
    }


__all__ = ["DefenseMethod", "RobustConfig", "RobustTask", "check_model", "verify_perturbation"]
