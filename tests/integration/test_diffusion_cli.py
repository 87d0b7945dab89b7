"""The real CLI on the diffusion task (smoke configs): records, conventions and leaderboard files."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dltbench.cli import main


@pytest.mark.slow  # a whole smoke grid: minutes on 2 cores (pytest -m slow)
def test_diffusion_cli_smoke(tmp_path):
    results, boards = tmp_path / "results", tmp_path / "boards"
    rc = main(["run", "--task", "diffusion", "--method", "v-pred", "ddpm", "--seeds", "0", "--smoke", "--jobs", "2",
               "--device", "cpu", "--results-dir", str(results), "--leaderboard-dir", str(boards)])  # fmt: skip
    assert rc == 0
    records = [json.loads(line) for line in (results / "diffusion.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(r["status"] == "ok" for r in records), [
        r["error"] for r in records
    ]
    for r in records:
        est = r["estimator"]
        assert "t_min" in est["ode"]["of"] and est["ode"]["rtol"] == 1e-2
        assert est["vlb"]["of"].startswith("x_0")
        m = r["metrics"]
        assert m["ode_nfe"] > 0 and m["vlb_bpd"] is not None
        flagged = r["curves"]["per_point"]["ode_prior_outliers"]
        assert m["ode_prior_outliers"] == len(flagged)
        assert "posterior_variance[1]" in est["vlb"]["decoder_variance"]
        samples = r["curves"]["samples"]
        assert len(samples["ddim"]) == len(samples["ddpm"]) == r["config"]["stored_samples"]
        if r["setting"]["dataset"] == "digits":
            assert "centered" in est["ode"]["dequantization"] and est["levels"] == 17
            assert m.get("true_nll_bpd") is None
            assert all(0 <= v <= 16 for row in samples["ddim"] for v in row)
            assert m["ddim_fid"] >= 0 and m["cfg_class_acc"] is not None
            assert est["sample_quality"]["feature_net"] == "digits-cnn64"
            assert r["curves"]["guidance"]["w"] == [0.0, 2.0]
        else:
            assert est["ode"]["dequantization"].startswith("none")
            assert m["ode_gap_bpd"] == m["ode_nll_bpd"] - m["true_nll_bpd"]
    board = pd.read_csv(boards / "diffusion.csv")
    assert set(board["dataset"]) == {"gmm8", "rings", "digits"}
    assert set(board["profile"]) == {"quick-smoke"}
    for _, rows in board.groupby("dataset"):
        best = rows.loc[rows["ode_nll_bpd_trim10_mean"].idxmin()]  # ranked by the trimmed mean
        assert best["rank"] == 1
    md = (boards / "diffusion.md").read_text()
    assert "Ranked by **ode_nll_bpd_trim10**" in md and "ode_prior_outliers" in md
