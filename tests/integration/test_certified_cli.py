"""The real `dltbench` command end to end on the certified task (smoke configs)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dltbench.cli import main
from tests.conftest import ROOT, cli_args

PLUGINS = Path(__file__).parent / "plugins"
EXAMPLE = ROOT / "examples" / "certified-label-smoothing" / "dltbench_label_smoothing.py"


def records(dirs) -> list[dict]:
    path = dirs["results"] / "certified.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run(dirs, *extra: str) -> int:
    # The Gaussian l2 settings only: a pipeline check; the other norms have their own tests.
    return main(["run", "--task", "certified", "--smoke", "--setting", "norm=l2",
                 *cli_args(dirs), *extra])  # fmt: skip


def test_run_writes_records_and_leaderboards_then_resumes_and_forces(dirs, capsys):
    assert run(dirs, "--method", "standard", "gaussian-aug") == 0
    recs = records(dirs)
    assert len(recs) == 4 and {r["status"] for r in recs} == {"ok"}
    r = recs[0]
    for key in (
        "config_hash",
        "method_source_hash",
        "git_commit",
        "torch_version",
        "python_version",
        "device",
        "hostname",
        "wall_time_s",
        "peak_memory_mb",
        "timestamp",
        "seed",
    ):
        assert key in r
    assert {"n0", "n", "alpha", "sigma", "test_points"} <= set(r["estimator"])
    # standard trains one model for both sigmas (it reads neither): the second cell restores
    # the first's; gaussian-aug trains one per sigma.
    training = {(r["method"], r["config"]["sigma"]): r["estimator"]["training"] for r in recs}
    std = [training[("standard", s)] for s in (0.25, 0.5)]
    assert std[0]["key"] == std[1]["key"] and any(t["cache_hit"] for t in std)
    assert std[0]["config_fields_seen"] == ["dataset", "epochs"]
    clean = {r["metrics"]["base_clean_acc"] for r in recs if r["method"] == "standard"}
    assert len(clean) == 1  # the same weights answer in both cells
    aug = [training[("gaussian-aug", s)] for s in (0.25, 0.5)]
    assert aug[0]["key"] != aug[1]["key"]
    assert aug[0]["config_fields_seen"] == ["dataset", "epochs", "noise", "sigma"]
    assert r["metrics"]["acr"] >= 0.0 and len(r["curves"]["radius"]) == len(
        r["curves"]["certified_accuracy"]
    )
    board = pd.read_csv(dirs["leaderboards"] / "certified.csv")
    assert set(board["method"]) == {"standard", "gaussian-aug"} and set(board["sigma"]) == {
        0.25,
        0.5,
    }
    assert (
        (dirs["leaderboards"] / "certified.md")
        .read_text()
        .startswith("# Leaderboard: `certified`")
    )
    capsys.readouterr()

    assert run(dirs, "--method", "standard", "gaussian-aug") == 0  # resume: nothing reruns
    assert len(records(dirs)) == 4
    assert "4 already recorded" in capsys.readouterr().err

    assert run(dirs, "--method", "standard", "--force") == 0
    assert len(records(dirs)) == 6


def test_failures_are_recorded_and_the_run_goes_on(dirs, capsys):
    code = run(
        dirs, "--plugin", str(PLUGINS / "failing.py"), "--plugin", str(PLUGINS / "nan_model.py"),
        "--method", "test-raises", "test-nan", "standard",
    )  # fmt: skip
    assert code == 1
    by_method = {}
    for r in records(dirs):
        by_method.setdefault(r["method"], set()).add(r["status"])
    assert by_method == {"test-raises": {"failed"}, "test-nan": {"invalid"}, "standard": {"ok"}}
    failed = next(r for r in records(dirs) if r["method"] == "test-raises")
    assert "planted failure" in failed["error"]
    assert "did not succeed" in capsys.readouterr().err
    board = pd.read_csv(dirs["leaderboards"] / "certified.csv")
    assert set(board["method"]) == {"standard"}


def test_a_hanging_cell_times_out(dirs):
    code = run(
        dirs, "--plugin", str(PLUGINS / "hangs.py"), "--method", "test-hangs", "--timeout", "3s"
    )
    assert code == 1
    recs = records(dirs)
    assert {r["status"] for r in recs} == {"timeout"} and len(recs) == 2
    assert "timed out after 3s" in recs[0]["error"]


@pytest.mark.slow  # a whole smoke grid: minutes on 2 cores (pytest -m slow)
def test_parallel_jobs(dirs):
    assert run(dirs, "--method", "standard", "--seeds", "0", "1", "--jobs", "2") == 0
    assert sorted((r["seed"], r["setting"]["sigma"]) for r in records(dirs)) == [
        (0, 0.25), (0, 0.5), (1, 0.25), (1, 0.5)
    ]  # fmt: skip
    board = pd.read_csv(dirs["leaderboards"] / "certified.csv")
    assert list(board["n_seeds"]) == [2, 2]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["run", "--task", "certifed"], "Did you mean 'certified'"),
        (["run", "--task", "certified", "--method", "gausian-aug"], "Did you mean 'gaussian-aug'"),
        (
            ["run", "--task", "certified", "--plugin", str(PLUGINS / "broken_import.py")],
            "failed to import",
        ),
        (
            ["run", "--task", "certified", "--plugin", str(PLUGINS / "no_protocol.py")],
            "does not implement `train`",
        ),
        (["run", "--task", "certified", "--profile", "standard"], "--data-dir"),
        (
            ["run", "--task", "certified", "--profile", "standard", "--data-dir", "/nonexistent"],
            "MNIST/raw",
        ),
        (["run", "--task", "certified", "--timeout", "soon"], "cannot read duration"),
        (["leaderboard", "--task", "certified", "--results-dir", "/nonexistent"], "no records"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_leaderboard_is_regenerated_from_records(dirs, capsys):
    assert run(dirs, "--method", "standard") == 0
    csv = (dirs["leaderboards"] / "certified.csv").read_text()
    (dirs["leaderboards"] / "certified.csv").unlink()
    capsys.readouterr()
    assert main(["leaderboard", "--task", "certified", "--format", "csv", *cli_args(dirs)]) == 0
    assert capsys.readouterr().out == csv
    assert (dirs["leaderboards"] / "certified.csv").read_text() == csv


def test_validate_passes_the_example_and_explains_failures(capsys):
    assert main(["validate", "--task", "certified", "--plugin", str(EXAMPLE)]) == 0
    assert (
        main(["validate", "--task", "certified", "--plugin", str(PLUGINS / "nan_model.py")]) == 1
    )
    out = capsys.readouterr().out
    assert "non-finite logits" in out and "got (16, 3)" in out


def test_list_shows_tasks_methods_and_plugins(capsys):
    assert main(["list", "--task", "certified", "--plugin", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    for name in ("certified", "standard", "gaussian-aug", "consistency", "label-smoothing"):
        assert name in out


def test_help_documents_every_verb(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for verb in ("list", "run", "leaderboard", "validate"):
        assert verb in out


def test_bad_device_is_one_line(capsys):
    assert main(["run", "--task", "certified", "--device", "gpu"]) == 2
    assert "unknown --device 'gpu'" in capsys.readouterr().err


def test_the_lipschitz_method_trains_and_scores_on_an_l1_row(dirs):
    assert main(["run", "--task", "certified", "--smoke", "--setting", "noise=uniform",
                 "--method", "lipschitz-margin", *cli_args(dirs)]) == 0  # fmt: skip
    (rec,) = records(dirs)
    assert rec["status"] == "ok" and rec["setting"]["norm"] == "l1"
    assert rec["estimator"]["certificate"].startswith("Lipschitz margin")
    assert rec["estimator"]["lipschitz_bound"] > 0 and rec["metrics"]["acr"] >= 0


@pytest.mark.slow  # process start-up dominates; the closed forms are in tests/reference
def test_the_translation_row_trains_with_shifts_and_certifies_in_pixels(dirs):
    assert main(["run", "--task", "certified", "--smoke", "--setting", "noise=translation",
                 "--method", "gaussian-aug", "lipschitz-margin", *cli_args(dirs)]) == 0  # fmt: skip
    recs = {r["method"]: r for r in records(dirs)}
    assert {r["status"] for r in recs.values()} == {"ok"}
    aug, lip = recs["gaussian-aug"], recs["lipschitz-margin"]
    assert aug["setting"]["norm"] == "translation" and aug["estimator"]["noise"] == "translation"
    assert "band-limited" in aug["estimator"]["smoothing"]
    assert aug["estimator"]["training"]["config_fields_seen"] == [
        "dataset",
        "epochs",
        "noise",
        "sigma",
    ]
    assert 0 < aug["metrics"]["radius_ceiling"] < 1.3  # 0.5 * Phi^-1(alpha^(1/n)), pixels
    assert lip["estimator"]["certificate"].startswith("Lipschitz margin")
    assert "translation: r / G(x)" in lip["estimator"]["radius_formula"]
    assert lip["metrics"]["acr"] >= 0


@pytest.mark.slow
def test_other_norms_and_the_lipschitz_method_train_and_score(dirs):
    """Every threat model of issue 15 at sigma 0.25, for a smoothing and a Lipschitz method."""
    assert main(["run", "--task", "certified", "--smoke", "--setting", "sigma=0.25",
                 "--method", "gaussian-aug", "lipschitz-margin", *cli_args(dirs)]) == 0  # fmt: skip
    recs = records(dirs)
    assert {(r["setting"]["noise"], r["setting"]["norm"]) for r in recs} == {
        ("gaussian", "l2"),
        ("gaussian", "linf"),
        ("laplace", "l1"),
        ("uniform", "l1"),
    }
    assert {r["status"] for r in recs} == {"ok"}
    for r in recs:
        cert = r["estimator"]["certificate"]
        assert cert.startswith("Lipschitz" if r["method"] == "lipschitz-margin" else "randomized")
        if r["setting"]["norm"] == "linf":
            assert r["curves"]["linf_by_dimension"]["dim"] == [64, 256, 1024]
    board = pd.read_csv(dirs["leaderboards"] / "certified.csv")
    assert {"noise", "norm", "linf_dim_exponent_mean"} <= set(board.columns)
