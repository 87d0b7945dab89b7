"""Every committed leaderboard is exactly what its committed records rebuild (RobustBench's rule)."""

from __future__ import annotations

import pytest

from dltbench import leaderboard, registry
from dltbench.store import read_results
from tests.conftest import ROOT

BOARDS = sorted((ROOT / "leaderboards").glob("*.csv"))


@pytest.mark.parametrize("csv", BOARDS, ids=[b.stem for b in BOARDS])
def test_committed_leaderboard_is_rebuilt_from_committed_records(csv):
    task = registry.get_task(csv.stem)
    records = read_results(ROOT / "results", task.name)
    assert records, f"results/{task.name}.jsonl is missing: commit the records behind {csv.name}"
    df = leaderboard.build(task, records, lambda name: read_results(ROOT / "results", name))
    assert leaderboard.to_csv(df) == csv.read_text()
    assert leaderboard.to_markdown(task, df) == csv.with_suffix(".md").read_text()


def test_there_are_committed_leaderboards():
    assert any(b.stem == "certified" for b in BOARDS)
