"""The `dltbench` command's input checks, store faults, filters, records and heartbeat, in process.

No cell runs here: where a run is needed, the cell loop is replaced by a fake that
stores records the way the runner does (through append_result).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from dltbench import cli, leaderboard, registry
from dltbench.cli import Heartbeat, check_run_input, main, parse_size, physical_memory_mb
from dltbench.runner import Cell, identity, plan
from dltbench.store import StoreError, append_result, load_results
from dltbench.tasks.certified import CertifiedTask
from tests.conftest import ROOT, cli_args
from tests.unit.test_harness import make_record

CERT = CertifiedTask()


def run(dirs, *extra: str) -> int:
    # The Gaussian l2 settings only: a pipeline check; the other norms have their own tests.
    return main(["run", "--task", "certified", "--smoke", "--setting", "norm=l2",
                 *cli_args(dirs), *extra])  # fmt: skip


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--seeds", "-1"], "error: --seeds must be non-negative integers, got -1"),
        (["--seeds", "0", "-3"], "error: --seeds must be non-negative integers, got -3"),
        (["--timeout", "0"], "error: --timeout must be positive, got '0'"),
        (["--timeout", "0s"], "error: --timeout must be positive"),
        (["--timeout", "-5"], "error: cannot read duration '-5'"),
        (["--jobs", "0"], "error: --jobs must be at least 1, got 0"),
        (["--jobs", "-2"], "error: --jobs must be at least 1, got -2"),
        (["--memory", "0"], "error: --memory must be positive"),
        (["--memory", "lots"], "error: cannot read size 'lots'"),
    ],
)
def test_impossible_numbers_are_refused_up_front(dirs, capsys, extra, message):
    assert run(dirs, *extra) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [message] or (
        len(err.strip().splitlines()) == 1 and err.startswith(message)
    )
    assert not dirs["results"].exists() and not dirs["leaderboards"].exists()  # nothing written


def _args(**kw) -> argparse.Namespace:
    base = dict(seeds=[0], jobs=1, timeout="30m", memory=None, device="cpu")
    base.update(kw)
    return argparse.Namespace(**base)


def test_absurd_jobs_are_capped_by_cores_with_a_warning(capsys, monkeypatch):
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 2)
    jobs, timeout, memory = check_run_input(_args(jobs=1000))
    assert jobs == 8 and timeout == 1800
    assert "warning: --jobs 1000 capped to 8 (4 x 2 cores)" in capsys.readouterr().err
    phys = physical_memory_mb()
    assert memory == pytest.approx(0.8 * phys / 8)  # the default: 80% of memory over jobs


def test_default_jobs_are_one_per_core_and_per_two_gib(capsys, monkeypatch):
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(cli, "physical_memory_mb", lambda: 64 * 1024.0)
    jobs, _, memory = check_run_input(_args(jobs=None))
    assert jobs == 8 and memory == pytest.approx(0.8 * 64 * 1024 / 8)
    monkeypatch.setattr(cli, "physical_memory_mb", lambda: 6 * 1024.0)  # 4.8 GiB usable
    assert check_run_input(_args(jobs=None))[0] == 2
    monkeypatch.setattr(cli, "physical_memory_mb", lambda: 1024.0)
    assert check_run_input(_args(jobs=None))[0] == 1
    assert "warning" not in capsys.readouterr().err  # a default is not a capped request


def test_jobs_are_capped_by_memory(capsys, monkeypatch):
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(cli, "physical_memory_mb", lambda: 8192.0)
    jobs, _, memory = check_run_input(_args(jobs=6, memory="3G"))
    assert (jobs, memory) == (2, 3072)
    assert "capped to 2: 6 x --memory 3G exceeds the 8.0 GiB" in capsys.readouterr().err
    assert check_run_input(_args(jobs=4, memory="2G"))[:1] == (4,)  # fits: not capped
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "text,mib", [("512M", 512), ("4G", 4096), ("1.5g", 1536), ("2048", 2048), ("1GiB", 1024)]
)
def test_parse_size(text, mib):
    assert parse_size(text) == mib


@pytest.fixture
def fake_cells(monkeypatch):
    """Replace the cell loop: each cell gets an ok record stored like the runner stores it."""
    seen = {}

    def fake(task, cells, opts):
        seen["opts"], out = opts, []
        for i, cell in enumerate(cells):
            r = make_record(id=f"r{i}", method=cell.method, seed=cell.seed,
                            setting=task.setting_of(cell.config), profile=cell.profile,
                            metrics={"acr": 0.1 * (i + 1)})  # fmt: skip
            if seen.get("fail_after") == i:
                raise StoreError("short write to results/certified.jsonl: 10 of 900 bytes")
            append_result(opts.results_dir, r)
            out.append(r)
        return out

    monkeypatch.setattr(cli, "_run_with_progress", fake)
    return seen


def test_memory_reaches_the_run_options_and_counts_are_singular(dirs, capsys, fake_cells):
    assert run(dirs, "--method", "standard", "--memory", "512M", "--jobs", "2") == 0
    opts = fake_cells["opts"]
    assert opts.memory_mb == 512 and opts.jobs == 2
    err = capsys.readouterr().err
    assert "2 cells (1 method x 2 settings x 1 seed)" in err


def test_a_store_error_is_one_message_and_the_stored_board_is_written(dirs, capsys, fake_cells):
    fake_cells["fail_after"] = 1
    assert run(dirs, "--method", "standard") == 1
    err = capsys.readouterr().err
    assert "error: short write to results/certified.jsonl" in err and "Traceback" not in err
    assert "rerun to resume" in err
    board = pd.read_csv(dirs["leaderboards"] / "certified.csv")
    assert list(board["records"]) == ["r0"]  # what was stored, nothing else


@pytest.mark.parametrize("verb", ["run", "leaderboard"])
def test_results_path_mismatches_are_one_error_exit_2(tmp_path, capsys, verb):
    as_file = tmp_path / "results-file"
    as_file.write_text("")
    argv = [verb, "--task", "certified", "--results-dir", str(as_file)]
    assert main([*argv, "--leaderboard-dir", str(tmp_path / "lb")]) == 2
    assert "error: results dir" in capsys.readouterr().err
    (tmp_path / "res" / "certified.jsonl").mkdir(parents=True)
    argv = [verb, "--task", "certified", "--results-dir", str(tmp_path / "res")]
    assert main([*argv, "--leaderboard-dir", str(tmp_path / "lb")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a folder, not a records file" in err


def _store(dirs, *records):
    for r in records:
        append_result(dirs["results"], r)


def test_leaderboard_filters(dirs, capsys):
    _store(dirs,
           make_record(id="a", method="a", metrics={"acr": 0.3}),
           make_record(id="b", method="b", metrics={"acr": 0.4}),
           make_record(id="c", method="a", setting={"dataset": "digits", "sigma": 0.5},
                       estimator={"sigma": 0.5, "n": 100_000, "alpha": 0.001}),
           make_record(id="d", method="a", profile="quick-smoke"))  # fmt: skip
    lb = ["leaderboard", "--task", "certified", "--format", "csv", *cli_args(dirs)]

    def rows(*extra):
        capsys.readouterr()
        assert main([*lb, *extra]) == 0
        from io import StringIO

        return pd.read_csv(StringIO(capsys.readouterr().out))

    full = rows()
    assert len(full) == 4 and len(pd.read_csv(dirs["leaderboards"] / "certified.csv")) == 4
    assert list(rows("--method", "a")["records"]) == ["a", "c", "d"]
    assert list(rows("--method", "a", "--setting", "sigma=0.25")["records"]) == ["a", "d"]
    shown = rows("--setting", "sigma=0.25", "--profile", "quick")
    assert list(shown["records"]) == ["b", "a"] and list(shown["rank"]) == [1, 2]
    assert len(pd.read_csv(dirs["leaderboards"] / "certified.csv")) == 4  # files: whole board
    assert main([*lb, "--setting", "eps=1"]) == 2
    assert (
        "error: --setting 'eps=1': use KEY=VALUE with KEY one of dataset, noise, sigma, norm"
        in (capsys.readouterr().err)
    )


def test_leaderboard_says_what_it_skipped(dirs, capsys):
    _store(dirs,
           make_record(id="a", method="a", metrics={"acr": 0.3}),
           make_record(id="big", method="b", metrics={"acr": 9.0}))  # fmt: skip
    with open(dirs["results"] / "certified.jsonl", "a") as fh:
        fh.write(json.dumps({**json.loads(make_record(id="forged").to_json()), "mac": "0" * 64}))
        fh.write("\n")
    assert main(["leaderboard", "--task", "certified", "--format", "md", *cli_args(dirs)]) == 0
    out, err = capsys.readouterr()
    assert "warning: skipped 2 records: 1 acr above the estimator's radius ceiling" in err
    assert "; 1 not written by the harness (MAC missing or wrong)." in err
    md = (dirs["leaderboards"] / "certified.md").read_text()
    assert md.rstrip().splitlines()[-1].startswith("Skipped 2 records: ")
    assert md == out
    assert "| a " in md and "| big " not in md and "| forged " not in md


def test_a_read_only_results_folder_can_be_read(dirs, capsys, monkeypatch):
    _store(dirs, make_record(id="a", method="a"))
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **kw):
        if self.name == ".locks":
            raise PermissionError(13, "Permission denied")
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    import shutil

    shutil.rmtree(dirs["results"] / ".locks")
    assert main(["leaderboard", "--task", "certified", *cli_args(dirs)]) == 0
    assert " a " in capsys.readouterr().out


def test_help_texts(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    text += capsys.readouterr().out
    named = set(re.findall(r"(examples/[\w./-]+)", text))
    assert named and all((ROOT / p).exists() for p in named), named
    with pytest.raises(SystemExit):
        main(["leaderboard", "--help"])
    lb = capsys.readouterr().out
    assert re.search(r"--task TASK\s+task name", lb)
    assert re.search(r"--format \{table,csv,md\}\s+table:", lb)
    for flag in ("--method", "--profile", "--setting"):
        assert flag in lb


def test_heartbeat_names_running_cells_with_progress_and_elapsed():
    now = [100.0]
    beat = Heartbeat(CERT, interval=30, clock=lambda: now[0])
    cell = plan(CERT, ["standard"], "quick", [0], smoke=True)[0]
    beat.start(cell)
    now[0] = 110.0
    beat.progress(cell, "certify", 3, 10)
    assert beat.lines() == []  # not yet due
    now[0] = 131.0
    assert beat.lines() == [
        "running standard dataset=digits noise=gaussian sigma=0.25 norm=l2 seed=0: certify 3/10 (31s)"
    ]
    assert beat.lines() == []  # once per interval
    beat.finish(cell)
    now[0] = 200.0
    assert beat.lines() == []


def _heartbeats(monkeypatch, capsys, label: str, done: int, total: int) -> list[str]:
    """The heartbeat lines of a run (logged to a file) whose one cell reports ``label``."""
    import time

    monkeypatch.setattr(cli, "HEARTBEAT_S", 0.2)
    cell = plan(CERT, ["standard"], "quick", [0], smoke=True)[0]

    def slow_cells(task, cells, opts, on_progress, on_start, on_result, on_skip=None):
        on_start(cells[0])
        on_progress(cells[0], label, done, total)
        time.sleep(0.7)
        on_result(cells[0], make_record(method="standard"))
        return []

    monkeypatch.setattr(cli, "run_cells", slow_cells)
    assert not cli.err.is_terminal  # captured: as in a log file or CI
    cli._run_with_progress(CERT, [cell], cli.RunOptions())
    return [x for x in capsys.readouterr().err.splitlines() if x.startswith("running ")]


def test_a_run_logged_to_a_file_prints_heartbeats(monkeypatch, capsys):
    beats = _heartbeats(monkeypatch, capsys, "train", 2, 5)
    assert beats and beats[0].startswith(
        "running standard dataset=digits noise=gaussian sigma=0.25 norm=l2 seed=0: "
    )
    assert "train 2/5" in beats[-1]


def test_a_plugins_progress_label_cannot_fake_console_markup(monkeypatch, capsys):
    beats = _heartbeats(monkeypatch, capsys, "[/][green]ok[/] fake", 1, 2)
    assert beats and "[/][green]ok[/] fake 1/2" in beats[-1]  # printed as text, not styled


def test_list_shows_no_description_for_a_class_without_a_docstring(capsys):
    import dltbench
    from dltbench.tasks.certified import CertifiedMethod

    if ("certified", "test-nodoc") not in registry._METHODS:

        @dltbench.register_method(task="certified", name="test-nodoc")
        class NoDoc(CertifiedMethod):
            def train(self, data, config, ctx):
                raise NotImplementedError

    assert main(["list", "--task", "certified"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "test-nodoc" in x)
    assert "(no description)" in line


def test_validate_wording_follows_the_protocol(monkeypatch):
    import dltbench
    from dltbench import testing
    from dltbench.tasks.sampler.task import SamplerMethod

    if ("sampler", "test-nodoc-sampler") not in registry._METHODS:

        @dltbench.register_method(task="sampler", name="test-nodoc-sampler")
        class NoDocSampler(SamplerMethod):
            def sample(self, target, n_draws, init, ctx, generator=None):
                raise NotImplementedError

    ok = make_record(task="sampler", metrics={"ess_bulk_per_1k_evals": 1.0})
    monkeypatch.setattr(testing, "run_cells", lambda task, cells, opts: [ok])
    checks = {c.name: c for c in testing.check_method("sampler", "test-nodoc-sampler")}
    assert not checks["has a one-line description (class docstring)"].ok
    assert "runs `sample` and is scored on a tiny `quick` configuration" in checks
    assert not any("trains" in name for name in checks)


def _cell_record(rid: str, **kw):
    cell = plan(CERT, ["standard"], "quick", [0], smoke=True)[0]
    ident = identity(CERT, cell)
    return make_record(id=rid, method="standard", profile=cell.profile,
                       **{"seed": 0, **ident, **kw})  # fmt: skip


def test_records_lists_and_prunes_stale_records(dirs, capsys):
    registry.discover("certified")
    _store(dirs,
           _cell_record("current"),
           _cell_record("oldcode", method_source_hash="0ld"),
           _cell_record("oldtask", task_source_hash="0ld", config_hash="0ld"),
           make_record(id="gone", method="no-such-method"))  # fmt: skip
    base = ["records", "--task", "certified", "--results-dir", str(dirs["results"])]
    assert main([*base, "--stale"]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == ["oldcode", "oldtask"]
    assert "stale (method_source_hash changed)" in out
    assert "stale (config_hash, task_source_hash changed)" in out
    assert "4 records, 2 stale" in err
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "current  current" not in out and "current" in out and "unknown (method" in out
    assert main([*base, "--prune"]) == 0
    assert "pruned 2 stale records" in capsys.readouterr().err
    kept = load_results(dirs["results"], "certified")
    assert [r.id for r in kept.records] == ["current", "gone"] and not kept.skipped
    bak = dirs["results"] / "certified.jsonl.bak"
    assert len(bak.read_text().splitlines()) == 4


def test_a_record_rebuilds_its_cells_identity():
    rec = _cell_record("x")
    again = identity(CERT, Cell("certified", "standard", rec.profile, rec.config, 0))
    assert again["config_hash"] == rec.config_hash
    assert cli.record_state(CERT, rec) == "current"
    assert cli.record_state(CERT, _cell_record("y", config_hash="z")).startswith("stale")


def test_an_invalid_record_unranks_its_row_until_dropped(dirs, capsys):
    registry.discover("certified")
    _store(dirs,
           _cell_record("ok0", metrics={"acr": 0.5}),
           _cell_record("bad1", seed=1, status="invalid", metrics={},
                        error="audit: answers differ\ntraceback..."),
           _cell_record("ok1", seed=1, metrics={"acr": 0.6}),  # the rerun of the same seed
           _cell_record("old2", seed=2, status="invalid", metrics={}, method_source_hash="0ld"))  # fmt: skip
    board = leaderboard.from_results(CERT, dirs["results"])
    row = board.iloc[0]
    assert not row["eligible"] and pd.isna(row["rank"])  # an ok rerun does not clear it
    assert row["excluded_reason"] == "seed 1 invalid: audit: answers differ (record bad1)"
    base = ["records", "--task", "certified", "--results-dir", str(dirs["results"])]
    assert main([*base, "--drop", "nope"]) == 2
    assert main([*base, "--drop", "bad1"]) == 0
    assert "dropped 1 record" in capsys.readouterr().err
    board = leaderboard.from_results(CERT, dirs["results"])
    assert board.iloc[0]["rank"] == 1 and "eligible" not in board.columns  # other code's invalid
