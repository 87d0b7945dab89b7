"""The real `dltbench` command end to end on the faceid task (smoke configs), hostile plugins."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dltbench import registry
from dltbench.cli import main
from dltbench.runner import RunOptions, plan, run_cells
from dltbench.sandbox import bwrap_version
from tests.conftest import cli_args

PLUGIN = str(Path(__file__).parent / "plugins" / "faceid_hostile.py")


def records(dirs) -> list[dict]:
    path = dirs["results"] / "faceid.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_smoke_run_writes_records_and_a_leaderboard(dirs):
    # one cell (seconds): every built-in's training and scoring is in tests/unit/test_faceid.py
    assert (
        main(["run", "--task", "faceid", "--smoke", "--method", "triplet", *cli_args(dirs)]) == 0
    )
    (trip,) = records(dirs)
    assert trip["status"] == "ok" and trip["isolation"]["sandbox"] != ""
    assert 0.0 <= trip["metrics"]["verification_acc"] <= 1.0
    # a pair loss has no classifier: those metrics are not applicable (null), not 0
    assert trip["metrics"]["nc3_self_duality"] is None and trip["metrics"]["nc1"] >= 0
    assert trip["estimator"]["neural_collapse"]["classifier"].startswith("not applicable")
    assert trip["metrics"]["tar@far=1e-3"] is None  # 200 mismatched pairs in the smoke set
    assert "not estimable" in trip["estimator"]["not_estimable"]["tar@far=1e-3"]
    assert trip["estimator"]["mismatched_pairs"] == 200
    assert len(trip["curves"]["roc"]["far"]) == len(trip["curves"]["roc"]["tar"])
    board = pd.read_csv(dirs["leaderboards"] / "faceid.csv")
    assert list(board["method"]) == ["triplet"]


@pytest.mark.slow  # six sandboxed processes: ~1 min on 2 idle cores (pytest -m slow)
@pytest.mark.skipif(bwrap_version() is None, reason="needs bubblewrap (the sandbox)")
def test_hostile_plugins_reach_nothing_and_bad_embeddings_are_invalid(tmp_path):
    methods = ["test-hostile-pairs", "test-nan-embedding", "test-batch-dependent"]
    registry.discover("faceid", [PLUGIN])
    task = registry.get_task("faceid")
    cells = list(plan(task, methods, "quick", [0], smoke=True))
    opts = RunOptions(device="cpu", results_dir=tmp_path / "results", timeout_s=600,
                      plugin_files=(PLUGIN,), jobs=1, audit=True)  # fmt: skip
    recs = {r.method: r for r in run_cells(task, cells, opts)}
    hostile = recs["test-hostile-pairs"]
    assert hostile.status == "ok", hostile.error  # found nothing, trained honestly
    assert hostile.isolation["sandbox"].startswith("bubblewrap")
    assert recs["test-nan-embedding"].status == "invalid"
    assert "non-finite" in recs["test-nan-embedding"].error
    assert recs["test-batch-dependent"].status == "invalid"
    assert "audit" in recs["test-batch-dependent"].error


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--profile", "standard"], "--data-dir"),
        (["--profile", "standard", "--data-dir", "/nonexistent"], "lfw_home/pairs.txt"),
        (["--profile", "paper", "--data-dir", "/nonexistent"], "lfw_home/pairs.txt"),
    ],
)
def test_missing_lfw_is_one_clear_line_and_exit_2(extra, message, dirs, capsys):
    assert main(["run", "--task", "faceid", *extra, *cli_args(dirs)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_paper_profile_names_the_casia_folder(tmp_path, dirs, capsys):
    (tmp_path / "lfw_home" / "lfw_funneled").mkdir(parents=True)
    (tmp_path / "lfw_home" / "pairs.txt").write_text("10\t300\n")
    argv = ["run", "--task", "faceid", "--profile", "paper", "--data-dir", str(tmp_path)]
    assert main([*argv, *cli_args(dirs)]) == 2
    err = capsys.readouterr().err
    assert "casia-webface" in err and "Traceback" not in err
