"""The committed leaderboards are what their committed records rebuild (RobustBench's rule), and
the committed records were produced by the current code.

"Committed" is read from git (the index: what is committed plus what is staged), never from
the working tree: a user's own `dltbench run` rewrites leaderboards/ and appends to results/
in the working directory, and must not break this suite. Outside a git checkout (an unpacked
sdist) the working tree is all there is; a mismatch there is a skip, not a failure, because
a local run may have rewritten it.
"""

from __future__ import annotations

import json
import subprocess
from functools import cache

import pytest

from dltbench import leaderboard, registry
from dltbench.api import Result
from tests.conftest import ROOT


@cache
def _in_git() -> bool:
    """Whether ROOT is a git checkout whose files git can read (git may be absent)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--show-toplevel"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    except OSError:
        return False
    return out.returncode == 0 and out.stdout.strip() == str(ROOT)


def _committed_text(path: str) -> str | None:
    """The committed (staged) text of ``path`` relative to ROOT, or the working tree's outside git."""
    if not _in_git():
        f = ROOT / path
        return f.read_text() if f.exists() else None
    out = subprocess.run(
        ["git", "-C", str(ROOT), "show", f":{path}"], capture_output=True, text=True, check=False
    )
    return out.stdout if out.returncode == 0 else None


def _committed_boards() -> list[str]:
    """Task names with a committed leaderboards/<task>.csv."""
    if _in_git():
        out = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "leaderboards"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        names = [p.split("/", 1)[1] for p in out.stdout.split()]
    else:
        names = [p.name for p in (ROOT / "leaderboards").glob("*.csv")]
    return sorted(n.removesuffix(".csv") for n in names if n.endswith(".csv"))


@cache
def _committed_records(task: str) -> tuple[Result, ...]:
    """The records of ``task`` in the committed results/<task>.jsonl (empty if there is none)."""
    text = _committed_text(f"results/{task}.jsonl") or ""
    return tuple(Result.from_dict(json.loads(line)) for line in text.splitlines() if line.strip())


BOARDS = _committed_boards()
WHERE = (
    "git (committed and staged files)" if _in_git() else "the working tree (not a git checkout)"
)


def _regenerate(task: str) -> str:
    return (
        f"rm -f results/{task}.jsonl && dltbench run --task {task} --seeds 0 1 2 --jobs 2 && "
        f"git add -f results/{task}.jsonl leaderboards/{task}.csv leaderboards/{task}.md"
    )


@pytest.mark.parametrize("name", BOARDS)
def test_committed_leaderboard_is_rebuilt_from_committed_records(name):
    task = registry.get_task(name)
    records = list(_committed_records(name))
    assert records, f"results/{name}.jsonl is not committed: commit the records behind {name}.csv"
    df = leaderboard.build(task, records, lambda other: list(_committed_records(other)))
    csv, md = leaderboard.to_csv(df), leaderboard.to_markdown(task, df)
    same = (csv, md) == (
        _committed_text(f"leaderboards/{name}.csv"),
        _committed_text(f"leaderboards/{name}.md"),
    )
    if not same and not _in_git():
        pytest.skip(
            f"leaderboards/{name}.* differ from results/{name}.jsonl in the working tree; "
            "outside git a local run may have rewritten them, so this checks only in a checkout"
        )
    assert csv == _committed_text(f"leaderboards/{name}.csv"), f"{name}.csv, read from {WHERE}"
    assert md == _committed_text(f"leaderboards/{name}.md"), f"{name}.md, read from {WHERE}"


def test_there_are_committed_leaderboards():
    assert "certified" in BOARDS


@pytest.mark.parametrize("name", BOARDS)
def test_committed_records_match_the_current_code(name):
    """A record whose method or evaluator source changed since it was written is stale: a fresh
    clone's `dltbench run` would retrain it instead of resuming, and its numbers may be old."""
    registry.discover(name)
    task = registry.get_task(name)
    task_hash = registry.task_source_hash(type(task))
    stale: dict[str, list[str]] = {}
    for r in _committed_records(name):
        try:
            method_hash = registry.source_hash(registry.get_method_class(name, r.method))
        except Exception as exc:  # a method that no longer exists makes its records stale too
            method_hash = f"<{type(exc).__name__}>"
        why = [
            f"{field} {old or '<none>'} != {new}"
            for field, old, new in [
                ("method_source_hash", r.method_source_hash, method_hash),
                ("task_source_hash", r.task_source_hash, task_hash),
            ]
            if old != new
        ]
        if why:
            stale.setdefault("; ".join(why), []).append(f"{r.method} seed {r.seed} ({r.id})")
    assert not stale, (
        f"{sum(map(len, stale.values()))} committed {name} records are stale:\n"
        + "\n".join(
            f"  {k}: {', '.join(v[:6])}{' ...' if len(v) > 6 else ''}" for k, v in stale.items()
        )
        + f"\nregenerate them at the current code: {_regenerate(name)}"
    )
