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
