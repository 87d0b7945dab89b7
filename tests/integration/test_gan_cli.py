"""The real `dltbench` command on the gan task (smoke configs), and hostile generators
through the sandboxed runner with the auditor on."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from dltbench import registry
from dltbench.cli import main
from dltbench.runner import RunOptions, plan, run_cells
from dltbench.sandbox import bwrap_version
from tests.conftest import ROOT, cli_args

PLUGIN = str(Path(__file__).parent / "plugins" / "gan_hostile.py")


@pytest.mark.slow  # six sandboxed cells: ~40 s idle, minutes under contention
def test_smoke_run_scores_and_flags_the_copier(dirs):
    argv = ["run", "--task", "gan", "--smoke", "--seeds", "0", "--device", "cpu",
            "--plugin", PLUGIN, "--method", "cgan", "hostile-copy", *cli_args(dirs)]  # fmt: skip
    assert main(argv) == 0
    recs = [json.loads(x) for x in (dirs["results"] / "gan.jsonl").read_text().splitlines()]
    assert len(recs) == 6 and {r["status"] for r in recs} == {"ok"}, [r["error"] for r in recs]
    for r in recs:
        est = r["estimator"]
        assert est["n_samples"] == r["setting"]["n_samples"] == 200
        assert est["feature_net"]["name"] == r["setting"]["feature_net"]
        if r["setting"]["dataset"] == "digits":
            assert len(est["feature_net"]["sha256"]) == 64
            assert r["metrics"]["distance"] == r["metrics"]["fid"]
        else:
            assert r["metrics"]["distance"] == r["metrics"]["w2"]
        cond = r["method"] == "cgan"
        assert (r["metrics"]["class_accuracy"] is not None) == cond
    copier = [r for r in recs if r["method"] == "hostile-copy"]
    assert all(r["metrics"]["memorised_fraction"] > 0.9 for r in copier)
    board = pd.read_csv(dirs["leaderboards"] / "gan.csv")
    rows = board[board["method"] == "hostile-copy"]
    assert len(rows) == 3 and rows["rank"].isna().all()
    assert rows["excluded_reason"].str.contains("memorisation").all()
    assert board[board["method"] != "hostile-copy"]["rank"].notna().all()


needs_bwrap = pytest.mark.skipif(bwrap_version() is None, reason="bubblewrap is not usable here")


@pytest.mark.slow  # five sandboxed cells with the auditor's second process each
@needs_bwrap
def test_hostile_generators_end_invalid_or_flagged(tmp_path):
    registry.discover("gan", [PLUGIN])
    task = registry.get_task("gan")
    methods = ["hostile-nan", "hostile-range", "hostile-pool", "hostile-shape", "hostile-peek"]
    cells = [c for c in plan(task, methods, "quick", [0], smoke=True)
             if c.config.dataset == "digits"]  # fmt: skip
    cells = [
        dataclasses.replace(c, config=dataclasses.replace(c.config, n_samples=100)) for c in cells
    ]
    opts = RunOptions(device="cpu", results_dir=tmp_path / "results", timeout_s=600,
                      plugin_files=(PLUGIN,), jobs=1, audit=True)  # fmt: skip
    res = {r.method: r for r in run_cells(task, cells, opts)}
    assert res["hostile-nan"].status == "invalid" and "non-finite" in res["hostile-nan"].error
    assert res["hostile-range"].status == "invalid" and "[0, 1]" in res["hostile-range"].error
    assert res["hostile-pool"].status == "invalid" and "audit" in res["hostile-pool"].error
    assert res["hostile-shape"].status == "invalid" and "shape" in res["hostile-shape"].error
    peek = res["hostile-peek"]
    assert peek.status == "ok", peek.error  # the view had nothing to leak
    assert (
        peek.metrics["memorised_fraction"] > 0.9 and peek.estimator["audit"]["audited_calls"] >= 1
    )
    assert all(r.isolation.get("sandbox", "none") != "none" for r in res.values())


def test_committed_leaderboard_is_rebuilt_from_the_committed_records(tmp_path):
    if not (ROOT / "results" / "gan.jsonl").exists():
        pytest.skip("no committed gan records yet")
    argv = ["leaderboard", "--task", "gan", "--results-dir", str(ROOT / "results"),
            "--leaderboard-dir", str(tmp_path), "--format", "csv"]  # fmt: skip
    assert main(argv) == 0
    rebuilt = pd.read_csv(tmp_path / "gan.csv")
    committed = pd.read_csv(ROOT / "leaderboards" / "gan.csv")
    pd.testing.assert_frame_equal(rebuilt, committed)
