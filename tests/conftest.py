"""Shared fixtures: a private results/leaderboard dir per test, and a small torch setup."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _small_torch():
    # Two cores on CI: one intra-op thread keeps tests from oversubscribing forked cells.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    # Cached reference defenses (attack task) go to a session folder, not the user's ~/.cache.
    mp = pytest.MonkeyPatch()
    mp.setenv("DLTBENCH_CACHE_DIR", str(tmp_path_factory.mktemp("dltbench-cache")))
    yield
    mp.undo()


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    """CLI arguments that keep a test's records and leaderboards under its tmp_path."""
    return {"results": tmp_path / "results", "leaderboards": tmp_path / "leaderboards"}


def cli_args(dirs: dict[str, Path]) -> list[str]:
    """``--results-dir``/``--leaderboard-dir`` for ``dirs``."""
    return ["--results-dir", str(dirs["results"]), "--leaderboard-dir", str(dirs["leaderboards"])]
