"""The real `dltbench` command on the bnn task (smoke configs), an honest and a hostile method."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dltbench.cli import main
from tests.conftest import cli_args

PLUGIN = Path(__file__).parent / "plugins" / "bnn_hostile.py"


def test_smoke_run_scores_an_honest_method_and_refuses_a_hostile_one(dirs, capsys):
    argv = ["run", "--task", "bnn", "--smoke", *cli_args(dirs), "--plugin", str(PLUGIN),
            "--method", "map", "test-peek"]  # fmt: skip
    assert main(argv) == 1  # some cells did not succeed
    recs = [json.loads(x) for x in (dirs["results"] / "bnn.jsonl").read_text().splitlines()]
    status = {(r["method"], r["setting"]["dataset"]): r for r in recs}
    assert len(recs) == 4
    for ds in ("moons-gap", "digits"):
        ok = status[("map", ds)]
        assert ok["status"] == "ok" and ok["isolation"].get("sandbox", "").startswith("bubblewrap")
        m = ok["metrics"]
        assert 0 <= m["tv_to_reference"] <= 1 and m["evals"] <= 10 and m["n_samples"] == 1
        assert ok["estimator"]["reference"].startswith("shipped")
        assert ok["estimator"]["counts"]["data_grad"] > 0
        # no test data in its process, log_lik refused: it fell back to NaN samples
        peek = status[("test-peek", ds)]
        assert peek["status"] == "invalid" and "non-finite" in peek["error"]
    board = pd.read_csv(dirs["leaderboards"] / "bnn.csv")
    assert set(board["method"]) == {"map"}
    assert "did not succeed" in capsys.readouterr().err
