"""The real CLI on the robust and attack tasks (smoke configs): records, leaderboards, counter-evaluation."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dltbench.cli import main


@pytest.mark.slow  # a whole smoke grid: minutes on 2 cores (pytest -m slow)
def test_robust_and_attack_cli_end_to_end(tmp_path):
    res, lb = tmp_path / "results", tmp_path / "leaderboards"
    io = ["--results-dir", str(res), "--leaderboard-dir", str(lb), "--smoke", "--seeds", "0"]
    assert main(["run", "--task", "robust", "--method", "standard", *io]) == 0
    assert main(["run", "--task", "attack", "--method", "fgsm", *io]) == 0

    robust = [json.loads(line) for line in (res / "robust.jsonl").read_text().splitlines()]
    assert {r["setting"]["norm"] for r in robust} == {"linf", "l2", "l0"}
    for r in robust:
        assert r["status"] == "ok" and r["profile"] == "quick-smoke"
        assert 0 <= r["metrics"]["robust_acc"] <= r["metrics"]["clean_acc"] <= 1
        assert len(r["curves"]["per_point"]["robust"]) == r["estimator"]["test_points"]
        m = r["metrics"]
        assert (
            m["robust_top1_acc"] == m["robust_acc"] <= m["robust_top3_acc"] <= m["robust_top5_acc"]
        )
        assert 0 <= m["uap_fooling_rate"] <= 1
    attack = [json.loads(line) for line in (res / "attack.jsonl").read_text().splitlines()]
    assert len(attack) == 3 and all(r["status"] == "ok" for r in attack)
    fgsm = [r for r in attack if r["method"] == "fgsm"]
    assert all(
        r["metrics"]["forwards_per_point"] == 1 == r["metrics"]["backwards_per_point"]
        for r in fgsm
    )

    # the attack cells attacked the very weights the robust cells scored
    fp = {r["setting"]["norm"]: r["curves"]["model_fingerprint"] for r in robust}
    for r in attack:
        assert r["curves"]["per_defense"]["standard"]["fingerprint"] == fp[r["setting"]["norm"]]

    assert (
        main(
            [
                "leaderboard",
                "--task",
                "robust",
                "--results-dir",
                str(res),
                "--leaderboard-dir",
                str(lb),
            ]
        )
        == 0
    )
    df = pd.read_csv(lb / "robust.csv")
    assert {"robust_acc_harness_mean", "broken_by", "masking_flag_names"} <= set(df.columns)
    assert (df["robust_acc_mean"] <= df["robust_acc_harness_mean"] + 1e-12).all()
    atk = pd.read_csv(lb / "attack.csv")
    assert set(atk["method"]) == {"fgsm"} and atk["rank"].notna().all()
    assert "robust_acc" in (lb / "attack.md").read_text()


_L0_CHEAT = '''
import torch
import dltbench
from dltbench.tasks.robust import AttackMethod


@dltbench.register_method(task="attack", name="l0-cheat")
class OnePixelTooMany(AttackMethod):
    """Declares l0, then changes k + 1 pixels of every point."""

    version = "1"
    norms = ("l0",)

    def perturb(self, model, x, y, eps, norm, generator):
        xa = x.clone()
        flat = xa.view(len(x), -1)
        flat[:, : int(eps) + 1] = 1.0 - flat[:, : int(eps) + 1]
        return xa
'''


@pytest.mark.slow  # a sandboxed smoke cell of each kind: about a minute on 2 cores
def test_sandboxed_l0_attack_over_budget_is_invalid_and_linf_only_attack_is_refused(tmp_path):
    from dltbench import registry
    from dltbench.runner import RunOptions, plan, run_cells

    plugin = tmp_path / "l0_cheat.py"
    plugin.write_text(_L0_CHEAT)
    registry.discover("attack", [str(plugin)])
    task = registry.get_task("attack")
    cells = [c for c in plan(task, ["l0-cheat", "apgd-ce"], "quick", [0], smoke=True)
             if c.config.norm == "l0"]  # fmt: skip
    opts = RunOptions(device="cpu", results_dir=tmp_path / "results", timeout_s=600,
                      plugin_files=(str(plugin),), jobs=1)  # fmt: skip
    out = {r.method: r for r in run_cells(task, cells, opts)}
    assert out["l0-cheat"].status == "invalid"
    assert "broke the l0 budget: changed 3 pixels > k = 2" in out["l0-cheat"].error
    assert out["apgd-ce"].status == "invalid"
    assert "does not attack the l0 threat model" in out["apgd-ce"].error
