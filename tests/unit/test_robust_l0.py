"""Unit tests of the l0, top-k and universal additions to the robust/attack tasks."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from dltbench.api import Context, InvalidArtifact
from dltbench.data import digits
from dltbench.tasks.robust import (
    AttackTask,
    RobustTask,
    apgd,
    lp_norm,
    square,
    verify_perturbation,
)
from dltbench.tasks.robust.sparse import alpha_schedule, sparse_rs
from dltbench.tasks.robust.task import evaluate_defense, universal_scores
from dltbench.tasks.robust.threat import changed_pixels, project

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return digits()


def test_l0_counts_pixels_not_channels():
    x = torch.full((2, 3, 4, 4), 0.5)
    d = torch.zeros_like(x)
    d[0, :, 1, 1] = 0.1  # three channels of one pixel: one pixel
    d[1, 0, 0, 0], d[1, 2, 3, 3] = 1e-7, -0.2  # any change counts, however small
    assert lp_norm(d, "l0").tolist() == [1.0, 2.0]
    assert changed_pixels(d).shape == (2, 16)


def test_l0_budget_accepts_k_pixels_and_rejects_k_plus_one():
    x = torch.full((3, 2, 4, 4), 0.5)
    xa = x.clone()
    xa[:, :, 0, :2] = 1.0  # 2 pixels
    verify_perturbation(xa, x, 2, "l0")
    xa[1, 1, 3, 3] = 0.5 + 2**-20  # a 3rd pixel, one channel, a tiny change
    with pytest.raises(InvalidArtifact, match=r"l0 budget: changed 3 pixels > k = 2 on 1 of 3"):
        verify_perturbation(xa, x, 2, "l0")


@pytest.mark.parametrize("k", [1, 3])
def test_l0_projection_keeps_k_pixels_in_the_box(k):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 3, 5, 5, generator=g)
    p = project(x + torch.randn(x.shape, generator=g), x, k, "l0")
    assert (lp_norm(p - x, "l0") == k).all() and p.min() >= 0 and p.max() <= 1


class _OnePixelTooMany:
    """An l0 attack that changes k + 1 pixels: the harness must mark the cell invalid."""

    norms = ("l0",)

    def perturb(self, model, x, y, eps, norm, generator):
        xa = x.clone()
        xa.view(len(x), -1)[:, : int(eps) + 1] = 1.0 - xa.view(len(x), -1)[:, : int(eps) + 1]
        return xa


def _l0_attack_config(task):
    cfg = next(c for c in task.configs("quick") if c.norm == "l0")
    return dataclasses.replace(task.smoke(cfg), reference_defenses=("standard",))


def test_attack_task_rejects_an_attack_changing_k_plus_one_pixels(data):
    task = AttackTask()
    with pytest.raises(InvalidArtifact, match="broke the l0 budget"):
        task.evaluate(_OnePixelTooMany(), data, _l0_attack_config(task), Context(1, CPU))


class _LinfOnly:
    def perturb(self, model, x, y, eps, norm, generator):  # pragma: no cover (never called)
        raise AssertionError("an l_inf attack must not be run on the l0 threat model")


def test_attack_without_l0_is_invalid_on_the_l0_setting_before_it_runs(data):
    task = AttackTask()
    with pytest.raises(InvalidArtifact, match="does not attack the l0 threat model"):
        task.evaluate(_LinfOnly(), data, _l0_attack_config(task), Context(1, CPU))


def test_attacks_refuse_threat_models_they_do_not_define():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    x, y = torch.rand(3, 1, 4, 4), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="APGD supports linf, l2"):
        apgd(model, x, y, 2, "l0", steps=2)
    with pytest.raises(ValueError, match="l0 threat model only"):
        sparse_rs(model, x, y, 0.1, "linf")
    with pytest.raises(ValueError, match="Square supports linf, l2"):
        square(model, x, y, 2, "l0", queries=3)


def test_sparse_rs_schedule_is_the_references():
    # fra31/sparse-rs p_selection for L0, rescaled: it -> int(it / n_queries * 10000)
    assert alpha_schedule(1, 10000, 0.3) == pytest.approx(0.15)  # (0, 50]: / 2
    assert alpha_schedule(300, 10000, 0.3) == pytest.approx(0.06)  # (200, 500]: / 5
    assert alpha_schedule(9000, 10000, 0.3) == pytest.approx(0.015)  # > 8000: / 20
    assert alpha_schedule(30, 1000, 0.8) == pytest.approx(0.8 / 5)  # 30 of 1000 -> 300


def test_sparse_rs_counts_queries_and_keeps_the_budget():
    calls = []

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

        def forward(self, x):
            calls.append(len(x))
            return self.lin(x)

    model = Counting().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(7, 1, 8, 8, generator=g)
    y = model(x).argmax(1)
    calls.clear()
    xa = sparse_rs(model, x, y, 3, "l0", g, queries=25)
    assert len(calls) <= 25 and (lp_norm(xa - x, "l0") <= 3).all()
    assert xa.min() >= 0 and xa.max() <= 1


def _small_model(data, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()


@pytest.mark.parametrize("norm", ["linf", "l0"])
def test_defense_rows_report_topk_and_universal_scores(data, norm):
    task = RobustTask()
    cfg = task.smoke(next(c for c in task.configs("quick") if c.norm == norm))
    ev = evaluate_defense(_small_model(data), data, cfg, Context(2, CPU))
    m = ev.metrics
    # top-1 robustness is the robust accuracy, and top-k robustness grows with k
    assert m["robust_top1_acc"] == m["robust_acc"]
    assert m["robust_top1_acc"] <= m["robust_top3_acc"] <= m["robust_top5_acc"]
    assert 0 <= m["uap_fooling_rate"] <= 1 and 0 <= m["uap_acc"] <= m["clean_acc"] + 1
    ranks = np.asarray(ev.curves["per_point"]["worst_label_rank"])
    assert np.array_equal(ranks == 0, np.asarray(ev.curves["per_point"]["robust"], dtype=bool))
    ensemble = ("pgd-l0", "pgd-l0-cw", "sparse-rs") if norm == "l0" else ("apgd-ce", "square")
    assert all(f"acc_{a}" in m for a in ensemble)
    assert task.check_record(_as_record(task, m)) is None


def _as_record(task, metrics):
    return SimpleNamespace(metrics=metrics)  # check_record reads only the metrics


def test_universal_perturbation_is_fit_on_training_points_only(data, monkeypatch):
    import dltbench.tasks.robust.task as task_mod

    seen = []
    real = task_mod.universal_perturbation

    def spy(model, x, y, *a, **k):
        seen.append(x.clone())
        return real(model, x, y, *a, **k)

    monkeypatch.setattr(task_mod, "universal_perturbation", spy)
    task = RobustTask()
    cfg = task.smoke(task.configs("quick")[0])
    x, y = data.test.x[: cfg.n_test], data.test.y[: cfg.n_test]
    universal_scores(_small_model(data), data, x, y, cfg, torch.Generator().manual_seed(0))
    (fit_on,) = seen
    assert torch.equal(fit_on, data.train.x[: cfg.uap_points])
    test_rows = {tuple(r.flatten().tolist()) for r in data.test.x}
    assert not any(tuple(r.flatten().tolist()) in test_rows for r in fit_on)


def test_patch_budget_is_one_square_of_the_given_area_anywhere():
    x = torch.full((2, 3, 8, 8), 0.5)
    xa = x.clone()
    xa[0, :, 5:8, 0:3] = 1.0  # a 3 x 3 square in a corner: area 9
    xa[1, 0, 2, 2] = xa[1, 2, 4, 4] = 0.0  # two pixels spanning a 3 x 3 box
    verify_perturbation(xa, x, 9, "patch")
    xa[1, 1, 2, 5] = 0.9  # now spanning 4 columns
    with pytest.raises(InvalidArtifact, match="patch budget: changed a square of side 4"):
        verify_perturbation(xa, x, 9, "patch")


def test_patch_projection_is_exact_and_pgd_stays_inside():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 6, 6, generator=g)
    z = x + torch.randn(x.shape, generator=g)
    p = project(z, x, 4, "patch")  # 2 x 2 windows
    assert (lp_norm(p - x, "patch") <= 2).all()
    for n in range(len(x)):  # brute force over the 25 windows
        best = min(
            float((torch.where(_window(r, c), z[n].clamp(0, 1), x[n]) - z[n]).square().sum())
            for r in range(5)
            for c in range(5)
        )
        assert float((p[n] - z[n]).square().sum()) == pytest.approx(best, rel=1e-5)
    from dltbench.tasks.robust import pgd

    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 10)).eval()
    xa = pgd(model, x, model(x).argmax(1), 4, "patch", g, steps=5)
    verify_perturbation(xa, x, 4, "patch")


def _window(r: int, c: int) -> torch.Tensor:
    m = torch.zeros(1, 6, 6, dtype=torch.bool)
    m[:, r : r + 2, c : c + 2] = True
    return m
