"""The real `dltbench` command on the sampler task (smoke configs): records and leaderboard files."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dltbench.cli import main

METHODS = ["rwm", "mala", "gibbs", "sgld"]


@pytest.mark.slow  # a whole smoke grid: minutes on 2 cores (pytest -m slow)
def test_run_smoke_writes_records_and_a_leaderboard_with_eligibility(tmp_path):
    res, lb = tmp_path / "results", tmp_path / "leaderboards"
    argv = ["run", "--task", "sampler", "--smoke", "--seeds", "0", "--device", "cpu",
            "--method", *METHODS, "--results-dir", str(res), "--leaderboard-dir", str(lb)]  # fmt: skip
    assert main(argv) == 0
    records = [json.loads(line) for line in (res / "sampler.jsonl").read_text().splitlines()]
    assert len(records) == 4 * 6 and all(r["status"] == "ok" for r in records)
    assert all(r["profile"] == "quick-smoke" and r["config"]["n_draws"] == 200 for r in records)
    ran = [r for r in records if not r["estimator"].get("not_applicable")]
    na = {
        (r["method"], r["setting"]["target"])
        for r in records
        if r["estimator"].get("not_applicable")
    }
    # gibbs runs only on the Gaussians, sgld only on the logistic regression
    assert na == {
        ("gibbs", t) for t in ("funnel-d10", "banana-d2", "mixture-d2", "logreg-iris")
    } | {
        ("sgld", t)
        for t in ("gaussian-d10", "ill-gaussian-d10", "funnel-d10", "banana-d2", "mixture-d2")
    }
    for r in ran:
        m, e = r["metrics"], r["estimator"]
        assert e["tail_prob"] == [0.05, 0.95] and e["chains"] == 4
        assert (
            len(r["curves"]["ess_bulk"]) == e["dim"]
            and min(r["curves"]["ess_bulk"]) == m["ess_bulk_min"]
        )
        assert abs(m["ess_bulk_per_1k_evals"] - 1000 * m["ess_bulk_min"] / m["evals"]) < 1e-9
        # one evaluation per kept draw and chain at least; SGLD pays 20 of 100 data points a step
        assert m["evals"] >= (4 * 200 * 0.2 if r["method"] == "sgld" else 4 * 200)
    df = pd.read_csv(lb / "sampler.csv")
    assert len(df) == 4 * 6 and {"eligible", "excluded_reason", "target"} <= set(df.columns)
    assert df.loc[df["rank"].notna(), "eligible"].all()
    assert df.loc[~df["eligible"], "excluded_reason"].str.len().gt(0).all()
    md = (lb / "sampler.md").read_text()
    assert "ess_bulk_per_1k_evals" in md and "not applicable" in md
    assert main(argv) == 0  # a rerun resumes: nothing left to do
    assert len((res / "sampler.jsonl").read_text().splitlines()) == 24
