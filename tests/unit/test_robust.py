"""Unit tests of the robust/attack tasks: threat model, budget checks, APGD schedule, flags, counter-evaluation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from dltbench.api import Context, InvalidArtifact, Result
from dltbench.data import digits
from dltbench.models import SmallCNN
from dltbench.tasks.robust import (
    BUDGET_TOL,
    AttackTask,
    CountingModel,
    RobustTask,
    apgd,
    checkpoints,
    dlr_loss,
    lp_norm,
    project,
    robust_accuracy,
    verify_perturbation,
)  # fmt: skip
from dltbench.tasks.robust.counter import adjust_defense_leaderboard, lowest_known
from dltbench.tasks.robust.task import check_model, evaluate_defense

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_project_stays_in_ball_and_box(norm):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(50, 1, 8, 8, generator=g)
    far = x + 3 * torch.randn(x.shape, generator=g)
    p = project(far, x, 0.3, norm)
    assert p.min() >= 0 and p.max() <= 1
    assert (lp_norm(p - x, norm) <= 0.3 + 1e-6).all()


def test_apgd_checkpoints_follow_the_paper():
    # w_1 = 0.22 N, gaps shrink by 0.03 N down to 0.06 N (Croce & Hein 2020, N = 100)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    gaps = np.diff([0, *checkpoints(100)])
    assert gaps[0] == 22 and gaps.min() == 6 and (np.diff(gaps) <= 0).all()


def test_dlr_needs_three_classes():
    with pytest.raises(ValueError, match="at least 3 classes"):
        dlr_loss(torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="at least 3 classes"):
        apgd(
            model,
            torch.rand(3, 1, 2, 2),
            torch.zeros(3, dtype=torch.long),
            0.1,
            "linf",
            loss="dlr",
            steps=3,
        )


@pytest.mark.parametrize(
    "cheat, reason",
    [
        (lambda x: x + 0.2, "budget"),  # eps too big (and maybe outside the box)
        (lambda x: (x + 0.05).clamp(0, 1) * 0 + 1.5, "box"),
        (lambda x: x * float("nan"), "non-finite"),
        (lambda x: x[:-1], "shape"),
        (lambda x: x.double(), "dtype"),
        (lambda x: x.numpy(), "not a torch.Tensor"),
    ],
)
def test_verify_rejects_cheating(cheat, reason):
    x = torch.full((6, 1, 8, 8), 0.5)
    with pytest.raises(InvalidArtifact, match=reason):
        verify_perturbation(cheat(x), x, 0.1, "linf")


def test_verify_accepts_the_boundary_and_rejects_just_beyond():
    x = torch.full((2, 1, 4, 4), 0.5)
    verify_perturbation(x + 0.1, x, 0.1, "linf")
    with pytest.raises(InvalidArtifact, match="budget"):
        verify_perturbation(x + 0.1 + 10 * BUDGET_TOL, x, 0.1, "linf")
    d = torch.zeros_like(x)
    d[:, 0, 0, 0] = 0.3
    verify_perturbation(x + d, x, 0.3, "l2")
    with pytest.raises(InvalidArtifact, match="l2 budget"):
        verify_perturbation(x + 1.01 * d, x, 0.3, "l2")


class _Cheat:
    """An attack that moves 2 eps: the harness must mark the cell invalid."""

    def perturb(self, model, x, y, eps, norm, generator):
        return (x + 2 * eps).clamp(0, 1)


def test_attack_task_rejects_over_budget_attack(data):
    task = AttackTask()
    cfg = task.smoke(task.configs("quick")[0])
    cfg = dataclasses.replace(cfg, reference_defenses=("standard",))
    with pytest.raises(InvalidArtifact, match="broke the linf budget"):
        task.evaluate(_Cheat(), data, cfg, Context(1, CPU))


def test_counting_model_counts_passes():
    m = CountingModel(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)))
    x = torch.rand(5, 1, 2, 2, requires_grad=True)
    torch.autograd.grad(m(x).sum(), x)
    with torch.no_grad():
        m(x[:2])
    assert (m.forwards, m.backwards) == (7, 5)


class _Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        return self.lin(x + 0.1 * torch.randn_like(x))


def test_randomized_defense_is_rejected(data):
    with pytest.raises(InvalidArtifact, match="not deterministic"):
        check_model(_Noisy(), data, Context(0, CPU))
    with pytest.raises(InvalidArtifact, match="logits of shape"):
        check_model(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), data, Context(0, CPU))


class _Quantized(nn.Module):
    """A planted gradient-masking defense: rounding the input has zero gradient almost everywhere."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 2) / 2)


def _quick_model(data, epochs=3):
    from dltbench.models import fit_classifier
    from dltbench.tasks.robust import standard_loss

    torch.manual_seed(0)
    return fit_classifier(
        SmallCNN(1, 10, 8, 16), data.train, standard_loss(), Context(0, CPU), epochs
    )


def test_gradient_masking_is_flagged_and_honest_model_is_not(data):
    cfg = RobustTask().smoke(RobustTask().configs("quick")[0])
    cfg = dataclasses.replace(cfg, n_test=60, square_queries=200, pgd_steps=10, apgd_steps=10)
    model = _quick_model(data)
    honest = evaluate_defense(model, data, cfg, Context(3, CPU))
    masked = evaluate_defense(_Quantized(model).eval(), data, cfg, Context(3, CPU))
    assert honest.curves["masking_flags"] == []
    assert honest.metrics["large_eps_acc"] == 0.0
    assert "robust-at-large-eps" in masked.curves["masking_flags"]
    assert "gradient-free-beats-gradient" in masked.curves["masking_flags"]
    assert masked.metrics["masking_flags"] == len(masked.curves["masking_flags"])


def test_robust_accuracy_is_the_per_sample_worst_case(data):
    model = _quick_model(data, epochs=2)
    x, y = data.test.x[:40], data.test.y[:40]
    from dltbench.tasks.robust import fgsm, pgd

    res = robust_accuracy(
        model, x, y, 0.1, "linf", {"fgsm": fgsm, "pgd": pgd}, torch.Generator().manual_seed(0)
    )
    expect = res.clean_correct & res.per_attack["fgsm"] & res.per_attack["pgd"]
    assert (res.robust == expect).all()
    assert res.robust_accuracy <= min(res.attack_accuracy.values()) <= res.clean_accuracy


def _record(task, method, seed, robust, fp, curves_extra=None, **kw):
    base = dict(
        id=f"{task}-{method}-{seed}-{fp}", task=task, task_version="1", method=method,
        method_version="1", method_source_hash="h", method_params={}, method_origin="builtin",
        profile="quick", setting={"dataset": "digits", "norm": "linf", "eps": 0.1},
        config={"dataset": "digits", "norm": "linf", "eps": 0.1, "n_test": 4}, config_hash="c",
        seed=seed, status="ok", timestamp="t",
    )  # fmt: skip
    base.update(kw)
    if task == "robust":
        curves = {"per_point": {"robust": robust}, "model_fingerprint": fp, "masking_flags": []}
        return Result(metrics={"robust_acc": float(np.mean(robust))}, curves=curves, **base)
    entry = {"version": "1", "source_hash": "h", "seed": 0, "fingerprint": fp,
             "robust": robust, "robust_acc": float(np.mean(robust))}  # fmt: skip
    return Result(metrics={}, curves={"per_defense": {"pgd-at": entry}}, **base)


def test_counter_evaluation_combines_per_point_on_the_same_weights():
    d0 = _record("robust", "pgd-at", 0, [1, 1, 1, 0], "w0")
    d1 = _record("robust", "pgd-at", 1, [1, 1, 0, 0], "w1")
    strong = _record("attack", "new-attack", 0, [0, 1, 1, 1], "w0")
    low, who = lowest_known(d0, [strong])
    assert low == 0.5 and who == {"new-attack"}  # points 0 and 3 broken: 2 of 4 robust
    assert lowest_known(d1, [strong]) == (0.5, set())  # evidence is for seed 0 only
    other_code = _record("attack", "x", 0, [0, 0, 0, 0], "w0")
    other_code.curves["per_defense"]["pgd-at"]["source_hash"] = "changed"
    assert lowest_known(d0, [other_code]) == (0.75, set())
    retrained = _record("attack", "y", 0, [0, 0, 1, 0], "other-weights")
    assert lowest_known(d0, [retrained]) == (0.25, {"y (retrained weights)"})

    import pandas as pd

    df = pd.DataFrame([{"method": "pgd-at", "records": f"{d0.id} {d1.id}",
                        "robust_acc_mean": 0.625, "robust_acc_std": 0.18}])  # fmt: skip
    out = adjust_defense_leaderboard(
        df, [d0, d1], lambda name: [strong] if name == "attack" else []
    )
    assert out.loc[0, "robust_acc_mean"] == pytest.approx(0.5)
    assert out.loc[0, "robust_acc_harness_mean"] == 0.625
    assert out.loc[0, "broken_by"] == "new-attack (seed 0)"


def _reference_p_selection(it: int, n_queries: int, p_init: float, rescale: bool) -> float:
    """fra31/auto-attack's SquareAttack.p_selection, transcribed branch by branch."""
    if rescale:
        it = int(it / n_queries * 10000)
    if 10 < it <= 50:
        return p_init / 2
    if 50 < it <= 200:
        return p_init / 4
    if 200 < it <= 500:
        return p_init / 8
    if 500 < it <= 1000:
        return p_init / 16
    if 1000 < it <= 2000:
        return p_init / 32
    if 2000 < it <= 4000:
        return p_init / 64
    if 4000 < it <= 6000:
        return p_init / 128
    if 6000 < it <= 8000:
        return p_init / 256
    if it > 8000:
        return p_init / 512
    return p_init


def test_square_schedule_is_autoattacks():
    from dltbench.tasks.robust.square import p_schedule

    edges = [0, 10, 11, 50, 51, 200, 201, 500, 501, 1000, 1001, 2000, 2001, 4000, 4001, 6001, 8001]
    for it in [*edges, 299, 4999]:
        # AutoAttack's standard version: p_init 0.8, not rescaled, for both norms
        assert p_schedule(it, 5000, 0.8) == _reference_p_selection(it, 5000, 0.8, False), it
        assert p_schedule(it, 300, 0.8, rescale=True) == _reference_p_selection(it, 300, 0.8, True)
    assert p_schedule(11, 300, 0.8) == 0.4  # not rescaled: a 300-query run halves at 10, 50, 200
    assert p_schedule(299, 300, 0.8) == 0.1
    assert p_schedule(299, 300, 0.8, rescale=True) == 0.8 / 512


def test_square_defaults_are_autoattacks():
    import inspect

    from dltbench.tasks.robust import square

    params = inspect.signature(square).parameters
    assert params["p_init"].default == 0.8 and params["rescale"].default is False


def test_attacks_undefined_for_few_classes_are_skipped_and_named():
    from dltbench.tasks.robust import default_ensemble
    from dltbench.tasks.robust.evaluate import required_classes

    ens = default_ensemble(apgd_steps=5, n_targets=3, square_queries=10)
    assert [required_classes(a)[0] for a in ens.values()] == [2, 4, 2]
    from functools import partial

    assert required_classes(partial(apgd, loss="dlr"))[0] == 3
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(20, 1, 4, 4)
    y = model(x).argmax(1)
    res = robust_accuracy(model, x, y, 0.05, "linf", ens, torch.Generator().manual_seed(0))
    assert set(res.per_attack) == {"apgd-ce", "square"}
    assert "3 classes" in res.skipped["apgd-t"] and "K >= 4" in res.skipped["apgd-t"]
    with pytest.raises(ValueError, match="no attack"):
        robust_accuracy(model, x, y, 0.05, "linf", {"apgd-t": ens["apgd-t"]})


def test_masking_flagged_defense_is_not_ranked_above_unflagged():
    from dltbench import leaderboard

    flagged = _record("robust", "masked", 0, [1, 1, 1, 1], "w0")
    flagged.curves["masking_flags"] = ["gradient-free-beats-gradient"]
    honest = _record("robust", "pgd-at", 0, [1, 1, 0, 0], "w1")
    task = RobustTask()
    df = leaderboard.build(task, [flagged, honest], lambda name: [])
    assert list(df["method"]) == ["pgd-at", "masked"]  # 1.0 > 0.5, yet listed after
    assert df.loc[0, "rank"] == 1 and pd.isna(df.loc[1, "rank"])
    assert "gradient-free-beats-gradient" in df.loc[1, "excluded_reason"]
    assert df.loc[0, "excluded_reason"] == ""


def test_reference_defense_is_trained_once_and_cached_per_code_version(
    data, tmp_path, monkeypatch
):
    from dltbench import cache
    from dltbench.tasks.robust import attack_task as at

    monkeypatch.setenv("DLTBENCH_CACHE_DIR", str(tmp_path))
    cfg = AttackTask().smoke(AttackTask().configs("quick")[0]).defense_config()
    ctx = Context(1, CPU)
    fresh, hit = at.reference_model("standard", data, cfg, ctx, use_cache=False)
    assert not hit and not list(tmp_path.rglob("*.pt"))
    rng = torch.get_rng_state()
    first, hit1 = at.reference_model("standard", data, cfg, ctx)
    assert torch.equal(torch.get_rng_state(), rng)  # training does not move the global stream
    second, hit2 = at.reference_model("standard", data, cfg, ctx)
    assert (hit1, hit2) == (False, True)
    fps = {at.model_fingerprint(m) for m in (fresh, first, second)}
    assert len(fps) == 1  # the cached weights are the very weights a fresh training gives
    # another config, seed-independent method or code version is another key
    other = dataclasses.replace(cfg, epochs=cfg.epochs + 1)
    assert at.reference_key("standard", data, other, CPU) != at.reference_key(
        "standard", data, cfg, CPU
    )
    (entry,) = tmp_path.rglob("*.pt")
    assert entry.name.startswith(at.code_version())
    monkeypatch.setattr(at, "code_version", lambda: "0" * 16)
    monkeypatch.setattr(cache, "code_version", lambda: "0" * 16)  # write_atomic's clean-up
    _, hit3 = at.reference_model("standard", data, cfg, ctx)
    assert not hit3  # never across code versions
    assert [p.name[:16] for p in tmp_path.rglob("*.pt")] == ["0" * 16]  # the stale entry is gone
    # a corrupt entry is retrained, not trusted
    (path,) = tmp_path.rglob("*.pt")
    path.write_bytes(b"not a checkpoint")
    model, hit4 = at.reference_model("standard", data, cfg, ctx)
    assert not hit4 and at.model_fingerprint(model) in fps
