"""Unit tests of the patch rows of the robust/attack tasks, the transfer column and the restart helper."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from dltbench import registry
from dltbench.api import Context, InvalidArtifact
from dltbench.data import digits
from dltbench.tasks.robust import AttackTask, RobustTask
from dltbench.tasks.robust.task import evaluate_defense
from dltbench.tasks.robust.threat import lp_norm, on_unfooled

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return digits()


def _patch_config(task):
    return task.smoke(next(c for c in task.configs("quick") if c.norm == "patch"))


def test_quick_profile_has_patch_rows_and_plans_only_attacks_that_declare_patch():
    for task in (RobustTask(), AttackTask()):
        assert [(c.norm, c.eps) for c in task.configs("quick") if c.norm == "patch"] == [
            ("patch", 4.0)
        ]
    task = AttackTask()
    cfg = _patch_config(task)
    planned = {
        n for n in registry.method_names("attack")
        if task.applicable(registry.get_method_class("attack", n), cfg)
    }  # fmt: skip
    assert {"fgsm", "pgd", "cw", "universal"} <= planned
    assert not planned & {"apgd-ce", "apgd-t", "square", "sparse-rs"}


class _WindowPlusOne:
    """Fills a 2 x 2 window (the budget of area 4) and, if ``stray``, one pixel outside it."""

    norms = ("patch",)

    def __init__(self, stray: bool):
        self.stray = stray

    def perturb(self, model, x, y, eps, norm, generator):
        xa = x.clone()
        for i in range(len(x)):  # a different window per point: "anywhere" is per image
            r, c = i % 7, (i // 7) % 7
            xa[i, :, r : r + 2, c : c + 2] = 1 - x[i, :, r : r + 2, c : c + 2]
        if self.stray:  # point 0's window is rows 0-1, columns 0-1: (7, 7) is outside
            xa[0, :, 7, 7] = 1 - x[0, :, 7, 7]
        return xa


def _attack_config(task):
    return dataclasses.replace(_patch_config(task), reference_defenses=("standard",))


def test_attack_task_rejects_a_pixel_outside_the_s_by_s_window(data, tmp_path, monkeypatch):
    monkeypatch.setenv("DLTBENCH_CACHE_DIR", str(tmp_path))
    task = AttackTask()
    ok = task.evaluate(_WindowPlusOne(False), data, _attack_config(task), Context(1, CPU))
    assert 0 <= ok.metrics["robust_acc"] <= 1
    with pytest.raises(
        InvalidArtifact, match="broke the patch budget: changed a square of side 8"
    ):
        task.evaluate(_WindowPlusOne(True), data, _attack_config(task), Context(1, CPU))


def test_defense_patch_row_reports_its_ensemble_and_the_transfer_column(
    data, tmp_path, monkeypatch
):
    monkeypatch.setenv("DLTBENCH_CACHE_DIR", str(tmp_path))
    task = RobustTask()
    cfg = _patch_config(task)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    ev = evaluate_defense(model, data, cfg, Context(0, CPU))
    m = ev.metrics
    assert {"acc_pgd-patch", "acc_pgd-patch-cw"} <= set(m)
    assert m["robust_acc"] <= min(m["acc_pgd-patch"], m["acc_pgd-patch-cw"])
    moved = ev.curves["uap_transfer"]
    assert set(moved["per_source"]) == {"standard", "pgd-at"} and moved["self_sources"] == []
    mean = sum(moved["per_source"].values()) / 2
    assert m["uap_transfer_acc"] == pytest.approx(mean)
    delta = torch.tensor(ev.curves["universal_perturbation"]).reshape(1, 1, 8, 8)
    assert float(lp_norm(delta, "patch")) <= 2  # the row's own UAP: one 2 x 2 window


def test_on_unfooled_keeps_the_first_fooling_answer_and_reruns_only_the_rest():
    x = torch.zeros(4, 1)
    calls = []

    def run(r, todo):
        calls.append(todo.tolist())
        return torch.full((len(todo), 1), float(r + 1)), todo % 2 == r % 2

    out = on_unfooled(x, 3, run)
    assert calls == [[0, 1, 2, 3], [1, 3]]  # run 1 fools the odd ones: nothing left for run 2
    assert out.flatten().tolist() == [1.0, 2.0, 1.0, 2.0]
