"""The physical rows of robust/attack: a digital l_inf ball, then the world's random transformations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from dltbench import registry
from dltbench.api import Context, InvalidArtifact
from dltbench.data import digits
from dltbench.tasks.robust import AttackTask, RobustTask
from dltbench.tasks.robust.counter import lowest_known
from dltbench.tasks.robust.physical import WORLDS, TransformFamily, digital_norm, world_scores
from dltbench.tasks.robust.task import evaluate_defense

from .test_robust import _record

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return digits()


def _physical(task):
    return task.smoke(next(c for c in task.configs("quick") if c.norm == "physical-linf"))


def test_quick_profile_has_a_physical_row_and_plans_the_attacks_that_declare_it():
    for task in (RobustTask(), AttackTask()):
        rows = [(c.norm, c.eps) for c in task.configs("quick") if c.norm in WORLDS]
        assert rows == [("physical-linf", 0.1)]
    assert digital_norm("physical-linf") == "linf" and digital_norm("l0") == "l0"
    task = AttackTask()
    cfg = _physical(task)
    planned = {
        n for n in registry.method_names("attack")
        if task.applicable(registry.get_method_class("attack", n), cfg)
    }  # fmt: skip
    assert {"eot-pgd", "fgsm", "pgd", "cw", "universal"} <= planned
    assert not planned & {"apgd-ce", "apgd-t", "square", "sparse-rs"}


class _Bright(nn.Module):
    """Class 1 iff the image's mean pixel exceeds 0.5 (class 0's logit is 0)."""

    def forward(self, x):
        z1 = x.flatten(1).mean(1) - 0.5
        return torch.stack([torch.zeros_like(z1), z1], 1)


def test_world_scores_match_the_closed_form_of_a_brightness_world():
    # t(x) = clip(x + b), b ~ U(-0.1, 0.1); x = 0.55 everywhere is right iff b > -0.05: p = 3/4
    family = TransformFamily(max_rotation=0, scale_low=1, scale_high=1, brightness=0.1, noise=0)
    n = 2000
    x, y = torch.full((n, 1, 4, 4), 0.55), torch.ones(n, dtype=torch.long)
    res = world_scores(_Bright(), y, {"clean": x}, family, torch.Generator().manual_seed(0))
    assert res.clean.mean() == pytest.approx(0.75, abs=0.01)  # std of the mean 0.0012
    assert (res.robust == res.clean).all() and (res.worst == 0).all()
    assert set(np.unique(res.clean * 64)) <= set(range(65))  # multiples of 1 / 64
    dark = torch.full((n, 1, 4, 4), 0.45)  # right iff b > 0.05: p = 1/4
    res = world_scores(_Bright(), y, {"clean": x, "dark": dark}, family,
                       torch.Generator().manual_seed(1))  # fmt: skip
    assert res.robust.mean() == pytest.approx(0.25, abs=0.01)
    assert res.per_attack["dark"].mean() == pytest.approx(0.25, abs=0.01)
    assert (res.worst == 1).mean() > 0.99  # picked on the selection draws


class _EitherCorner(nn.Module):
    """Class 1 iff the top-left or the bottom-right pixel exceeds 0.5."""

    def forward(self, x):
        z1 = torch.maximum(x[:, 0, 0, 0], x[:, 0, -1, -1]) - 0.5
        return torch.stack([torch.zeros_like(z1), z1], 1)


def test_the_worst_candidate_is_scored_on_fresh_draws_so_the_minimum_is_not_biased_low():
    # Two candidates, each right with p = 1/2 through pixel noise, on independent pixels:
    # the minimum of their 64-draw estimates is biased low by sigma / sqrt(pi) = 0.035;
    # scoring the picked one on independent draws is not.
    family = TransformFamily(max_rotation=0, scale_low=1, scale_high=1, brightness=0, noise=0.1)
    n = 1000
    a, b = torch.zeros(n, 1, 4, 4), torch.zeros(n, 1, 4, 4)
    a[:, 0, 0, 0] = 0.5
    b[:, 0, -1, -1] = 0.5
    y = torch.ones(n, dtype=torch.long)
    res = world_scores(_EitherCorner(), y, {"a": a, "b": b}, family,
                       torch.Generator().manual_seed(0))  # fmt: skip
    assert res.clean.mean() == pytest.approx(0.5, abs=0.01)
    assert res.robust.mean() == pytest.approx(0.5, abs=0.01)  # std of the mean 0.002
    alone = [world_scores(_EitherCorner(), y, {"x": c}, family, torch.Generator().manual_seed(s))
             for s, c in enumerate((a, b), start=1)]  # fmt: skip
    naive = np.minimum(alone[0].clean, alone[1].clean)
    assert alone[1].clean.mean() == pytest.approx(0.5, abs=0.01)
    assert naive.mean() < 0.48


def test_topk_scores_grow_with_k_and_top1_is_robust_acc(data):
    task = RobustTask()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    ev = evaluate_defense(model, data, _physical(task), Context(0, CPU))
    m = ev.metrics
    assert {"acc_eot-pgd", "acc_eot-pgd-cw", "pgd_acc@2eps"} <= set(m)
    assert not {"uap_acc", "large_eps_acc", "acc_apgd-ce"} & set(m)  # digital rows only
    assert m["robust_top1_acc"] == m["robust_acc"]
    assert m["robust_acc"] <= m["robust_top3_acc"] <= m["robust_top5_acc"]
    assert m["robust_acc"] <= m["clean_acc"] + 0.05  # estimates on different draws
    pp = ev.curves["per_point"]
    assert len(pp["robust"]) == 20 and set(pp["worst_candidate"]) <= {
        "clean",
        "eot-pgd",
        "eot-pgd-cw",
    }
    assert "world_scoring" in ev.estimator


class _OverBudget:
    norms = ("physical-linf",)

    def perturb(self, model, x, y, eps, norm, generator):
        return (x + 2 * eps).clamp(0, 1)  # twice the ball: the world does not excuse it


def test_attack_task_checks_the_digital_ball_of_a_physical_row(data, tmp_path, monkeypatch):
    monkeypatch.setenv("DLTBENCH_CACHE_DIR", str(tmp_path))
    task = AttackTask()
    cfg = dataclasses.replace(_physical(task), reference_defenses=("standard",))
    with pytest.raises(InvalidArtifact, match="broke the linf budget"):
        task.evaluate(_OverBudget(), data, cfg, Context(1, CPU))
    ev = task.evaluate(registry.get_method_class("attack", "eot-pgd")(steps=3, samples=2),
                       data, cfg, Context(1, CPU))  # fmt: skip
    entry = ev.curves["per_defense"]["standard"]
    assert len(entry["robust"]) == 20  # every point attacked and scored
    assert ev.metrics["robust_acc"] == pytest.approx(np.mean(entry["robust"]))
    assert "world_scoring" in ev.estimator


def test_counter_evidence_on_a_physical_row_is_a_bound_not_a_pointwise_minimum():
    setting = {"dataset": "digits", "norm": "physical-linf", "eps": 0.1}
    kw = dict(setting=setting, config={**setting, "n_test": 4})
    d0 = _record("robust", "pgd-at", 0, [0.5, 1.0, 0.25, 0.75], "w0", **kw)  # mean 0.625
    a = _record("attack", "eot", 0, [1.0, 0.5, 0.75, 0.25], "w0", **kw)  # mean 0.625
    # a pointwise minimum would say 0.3125 from two estimates of the same 0.625
    assert lowest_known(d0, [a]) == (0.625, set())
    b = _record("attack", "eot", 0, [0.0, 0.5, 0.5, 0.5], "w0", **kw)  # mean 0.375
    assert lowest_known(d0, [b]) == (0.375, {"eot"})
