"""The real `dltbench` command end to end on the ntk task (smoke configs), and hostile
methods in the sandboxed plugin process."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dltbench.cli import main
from tests.conftest import cli_args

PLUGIN = str(Path(__file__).parent / "plugins" / "ntk_hostile.py")


def records(dirs) -> list[dict]:
    path = dirs["results"] / "ntk.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_smoke_run_writes_records_and_a_leaderboard(dirs):
    assert main(["run", "--task", "ntk", "--smoke", *cli_args(dirs), "--method", "erf-ntk"]) == 0
    recs = {(r["method"], r["setting"]["dataset"]): r for r in records(dirs)}
    ok = recs[("erf-ntk", "digits-sphere")]
    assert ok["status"] == "ok", ok["error"]
    assert "sandbox" in ok["isolation"]
    assert {"drift", "gap_lin", "gap_ntk0", "gap_analytic"} <= set(ok["curves"])
    assert ok["estimator"]["loss"].startswith("1/2 * mean")
    board = pd.read_csv(dirs["leaderboards"] / "ntk.csv")
    assert set(board["method"]) == {"erf-ntk"}
    assert "drift_exponent_ci95" in board.columns


@pytest.mark.slow
def test_hostile_methods_in_the_plugin_process_are_invalid(dirs):
    args = ["run", "--task", "ntk", "--smoke", "--plugin", PLUGIN, *cli_args(dirs),
            "--method", "hostile-fake-kernel", "hostile-lr"]  # fmt: skip
    assert main(args) == 1  # the exit status says some cells did not succeed
    recs = {(r["method"], r["setting"]["dataset"]): r for r in records(dirs)}
    for m in ("hostile-fake-kernel", "hostile-lr"):
        for ds in ("digits-sphere", "synthetic-sphere"):
            r = recs[(m, ds)]
            assert r["status"] == "invalid", (m, r["status"], r["error"])
    assert "NTK gives" in recs[("hostile-fake-kernel", "digits-sphere")]["error"]
    assert "lr_factor" in recs[("hostile-lr", "digits-sphere")]["error"]
