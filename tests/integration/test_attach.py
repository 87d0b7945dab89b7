"""`run --attach`: score an existing checkpoint without retraining (examples/score-a-checkpoint)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dltbench.cli import main
from dltbench.models import default_classifier
from dltbench.runner import file_sha256
from dltbench.sandbox import bwrap_version
from tests.conftest import ROOT, cli_args

EXAMPLE = ROOT / "examples" / "score-a-checkpoint" / "checkpoint_defense.py"


def save_model(path: Path, seed: int) -> str:
    torch.manual_seed(seed)
    torch.save(default_classifier((1, 8, 8), 10).state_dict(), path)
    return file_sha256(path)


def records(dirs) -> list[dict]:
    path = dirs["results"] / "robust.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run(dirs, plugin: Path, *extra: str) -> int:
    # One threat model is enough to show the file reached the method (each cell is attacked).
    args = ["run", "--task", "robust", "--smoke", "--method", "checkpoint", "--setting", "norm=l2"]
    args += ["--plugin", str(plugin)]
    return main([*args, *cli_args(dirs), *extra])


def test_an_attached_checkpoint_is_scored_keyed_by_its_digest_and_resumed(dirs, tmp_path):
    plugin = tmp_path / "checkpoint_defense.py"
    shutil.copy(EXAMPLE, plugin)
    weights = tmp_path / "model.pt"
    digest = save_model(weights, 0)
    assert run(dirs, plugin, "--attach", str(weights)) == 0
    first = records(dirs)
    assert first and {r["status"] for r in first} == {"ok"}
    assert {json.dumps(r["method_params"]) for r in first} == {
        json.dumps({"attachments": {"model.pt": digest}})
    }
    assert run(dirs, plugin, "--attach", str(weights)) == 0  # same file: resumed, nothing new
    assert len(records(dirs)) == len(first)
    assert main(["records", "--task", "robust", "--stale", "--plugin", str(plugin),
                 "--results-dir", str(dirs["results"])]) == 0  # fmt: skip
    save_model(weights, 1)  # another checkpoint is another computation
    assert run(dirs, plugin, "--attach", str(weights)) == 0
    again = records(dirs)
    assert len(again) == 2 * len(first)
    assert {r["config_hash"] for r in again[len(first) :]}.isdisjoint(
        {r["config_hash"] for r in first}
    )


@pytest.mark.slow
@pytest.mark.skipif(bwrap_version() is None, reason="needs bubblewrap (the sandbox)")
def test_without_attach_the_sandboxed_method_cannot_read_the_checkpoint(dirs, tmp_path):
    plugin = tmp_path / "checkpoint_defense.py"
    shutil.copy(EXAMPLE, plugin)
    save_model(tmp_path / "model.pt", 0)
    assert run(dirs, plugin) == 1
    recs = records(dirs)
    assert recs and {r["status"] for r in recs} == {"failed"}
    assert "--attach" in recs[0]["error"]


def test_attach_of_a_missing_file_is_a_usage_error(dirs, tmp_path, capsys):
    assert run(dirs, EXAMPLE, "--attach", str(tmp_path / "nope.pt")) == 2
    assert "--attach" in capsys.readouterr().err
