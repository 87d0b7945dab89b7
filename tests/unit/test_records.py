"""Records the harness can vouch for: signatures, impossible values, store faults, bad lines."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import stat
import threading
import warnings
from pathlib import Path

import pytest
from scipy.stats import norm

from dltbench import leaderboard, store
from dltbench.api import MetricSpec, Result
from dltbench.store import (
    UNAUTHENTICATED,
    ResultsPathError,
    StoreError,
    append_result,
    load_results,
    read_results,
    sign_records,
)
from dltbench.tasks.certified import CertifiedTask
from dltbench.tasks.sampler.task import SamplerTask
from tests.unit.test_harness import make_record

CERT = CertifiedTask()


def lines(d: Path, task: str = "certified") -> list[dict]:
    return [json.loads(x) for x in (d / f"{task}.jsonl").read_text().splitlines()]


# --- signatures ---------------------------------------------------------------------------


def test_append_signs_and_read_verifies(tmp_path):
    r = make_record(id="a", metrics={"acr": 0.5, "abstain_rate": float("nan")})
    append_result(tmp_path, r)
    stored = lines(tmp_path)[0]
    assert stored["mac"] == r.mac and len(r.mac) == 64
    assert stored["metrics"]["abstain_rate"] is None  # NaN stored as null, MAC over that
    key = bytes.fromhex((tmp_path / ".dltbench-key").read_text().strip())
    assert len(key) == 32 and store.record_mac(key, stored) == stored["mac"]
    assert stat.S_IMODE((tmp_path / ".dltbench-key").stat().st_mode) == 0o600
    assert [x.id for x in read_results(tmp_path, "certified")] == ["a"]


def test_forged_and_edited_records_are_not_counted(tmp_path):
    append_result(tmp_path, make_record(id="honest", method="a", metrics={"acr": 0.3}))
    append_result(tmp_path, make_record(id="edited", method="b", metrics={"acr": 0.2}))
    path = tmp_path / "certified.jsonl"
    recs = lines(tmp_path)
    recs[1]["metrics"]["acr"] = 0.9  # a plugin raises its own score after the fact
    forged = {**recs[0], "id": "forged", "method": "c", "metrics": {"acr": 1.0}, "mac": ""}
    nomac = {k: v for k, v in {**forged, "id": "nomac", "method": "d"}.items() if k != "mac"}
    path.write_text("".join(json.dumps(x) + "\n" for x in [*recs, forged, nomac]))

    loaded = load_results(tmp_path, "certified")
    assert [r.id for r in loaded.records] == ["honest"]
    assert loaded.skipped == {UNAUTHENTICATED: 3}
    assert len(load_results(tmp_path, "certified", verify=False).records) == 4

    df = leaderboard.from_results(CERT, tmp_path)
    assert list(df["method"]) == ["a"]
    assert leaderboard.skipped(df) == {UNAUTHENTICATED: 3}
    md = leaderboard.to_markdown(CERT, df)
    assert md.rstrip().splitlines()[-1] == f"Skipped 3 records: 3 {UNAUTHENTICATED}."


def test_a_folder_without_its_key_verifies_nothing(tmp_path):
    append_result(tmp_path, make_record(id="a"))
    (tmp_path / ".dltbench-key").unlink()
    assert load_results(tmp_path, "certified").skipped == {UNAUTHENTICATED: 1}


def test_concurrent_first_writers_end_with_one_key(tmp_path):
    keys, barrier = [], threading.Barrier(8)

    def first_write():
        barrier.wait()
        keys.append(store.ensure_key(tmp_path))

    threads = [threading.Thread(target=first_write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and keys[0] == store.read_key(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".dltbench-key"]  # no temp files left


def test_sign_records_vouches_for_reviewed_records_and_keeps_a_backup(tmp_path):
    append_result(tmp_path, make_record(id="a"))
    path = tmp_path / "certified.jsonl"
    rec = lines(tmp_path)[0]
    rec["metrics"]["acr"] = 0.25  # a reviewed, hand-regenerated number
    path.write_text(json.dumps(rec) + "\nnot json\n")
    assert sign_records(tmp_path, "certified") == 1
    with pytest.warns(UserWarning, match="1 unreadable record"):
        recs = read_results(tmp_path, "certified")
    assert [r.metrics["acr"] for r in recs] == [0.25]
    assert path.read_text().splitlines()[1] == "not json"  # kept, still skipped
    assert (tmp_path / "certified.jsonl.bak").read_text().startswith(json.dumps(rec))


def test_the_committed_key_verifies_every_committed_record():
    root = Path(__file__).resolve().parents[2] / "results"
    for path in sorted(root.glob("*.jsonl")):
        loaded = load_results(root, path.stem)
        assert loaded.records and not loaded.skipped, f"{path.name}: re-sign with sign_records"


# --- impossible values --------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,reason",
    [
        (None, None),
        (0.5, None),
        (1, None),
        (True, "metric base_clean_acc is not a finite number"),
        ("0.9", "metric base_clean_acc is not a finite number"),
        (float("inf"), "metric base_clean_acc is not a finite number"),
        (float("-inf"), "metric base_clean_acc is not a finite number"),
        (float("nan"), None),  # not computed: stored as null
        (1.5, "metric base_clean_acc is outside its range [0, 1]"),
        (-0.1, "metric base_clean_acc is outside its range [0, 1]"),
    ],
)
def test_generic_check_rejects_non_numbers_and_fractions_outside_0_1(value, reason):
    rec = make_record(metrics={"acr": 0.5, "base_clean_acc": value})
    assert CERT.check_record(rec) == reason


def test_declared_bounds_and_direction():
    spec = MetricSpec("x", None, "s", "time", low=0.0)
    assert spec.bounds() == (0.0, None) and spec.direction == "no direction"
    assert MetricSpec("f", True, "fraction", "").bounds() == (0.0, 1.0)
    assert MetricSpec("f", True, "fraction", "", high=0.5).bounds() == (0.0, 0.5)
    assert SamplerTask().metric("acceptance_rate").higher_is_better is None
    md = leaderboard.to_markdown(SamplerTask(), leaderboard.build(SamplerTask(), []))
    assert "| `acceptance_rate` | no direction | fraction |" in md


def test_a_primary_metric_without_direction_is_refused():
    class NoDirection(CertifiedTask):
        metrics = (MetricSpec("acr", None, "l2 radius", ""),)

    with pytest.raises(ValueError, match="no direction"):
        assert NoDirection().higher_is_better is None  # never reached


def ceiling(sigma: float, n: int, alpha: float) -> float:
    """Cohen et al.'s largest radius: all n samples on one class, Clopper-Pearson bound."""
    return sigma * norm.ppf(alpha ** (1 / n))  # = beta.ppf(alpha, n, 1) with k = n


def test_certified_ceiling_matches_clopper_pearson_at_k_equals_n():
    from dltbench.tasks.certified.smoothing import lower_confidence_bound

    assert lower_confidence_bound(2000, 2000, 0.001) == pytest.approx(0.001 ** (1 / 2000))


@pytest.mark.parametrize("n,sigma", [(2000, 0.25), (100_000, 0.5)])
def test_certified_radius_ceiling(n, sigma):
    top = ceiling(sigma, n, 0.001)
    est = {"sigma": sigma, "n": n, "alpha": 0.001}
    at = make_record(estimator=est, metrics={"acr": top})
    assert CERT.check_record(at) is None
    above = make_record(estimator=est, metrics={"acr": top * 1.01})
    assert "acr above the estimator's radius ceiling" in CERT.check_record(above)
    point = make_record(
        estimator=est, metrics={"acr": 0.1}, curves={"per_point": {"radius": [0.1, top * 1.01]}}
    )
    assert "certified radius above" in CERT.check_record(point)
    assert "lacks a valid" in CERT.check_record(make_record(estimator={}))


def test_certified_accuracy_beyond_the_ceiling_is_impossible():
    est = {"sigma": 0.25, "n": 2000, "alpha": 0.001}  # ceiling 0.675
    rec = make_record(estimator=est, metrics={"acr": 0.3, "certified_acc@0.75": 0.1})
    assert "certified_acc@0.75 > 0" in CERT.check_record(rec)


def test_leaderboard_skips_impossible_records_and_counts_them_per_reason():
    recs = [
        make_record(id="ok", method="a", metrics={"acr": 0.3}),
        make_record(id="s", method="b", metrics={"acr": "0.9"}),
        make_record(id="big", method="c", metrics={"acr": 50.0}),
        make_record(id="big2", method="c", seed=1, metrics={"acr": 60.0}),
        make_record(id="failed", method="d", status="failed", metrics={"acr": "x"}),
    ]
    df = leaderboard.build(CERT, recs)
    assert list(df["method"]) == ["a"]
    reasons = leaderboard.skipped(df)
    assert reasons == {
        "metric acr is not a finite number": 1,
        "acr above the estimator's radius ceiling (the radius at pA = alpha^(1/n))": 2,
    }
    assert leaderboard.skipped_line(df).startswith("Skipped 3 records: 2 acr above")
    assert leaderboard.skipped_line(leaderboard.build(CERT, recs[:1])) == ""


# --- reading bad lines --------------------------------------------------------------------


BAD = [
    "null",
    "[1, 2]",
    "3",
    '"text"',
    "{}",
    '{"id": "x"}',
]


def test_bad_lines_are_skipped_with_one_warning_per_file(tmp_path):
    append_result(tmp_path, make_record(id="good"))
    good = lines(tmp_path)[0]
    mistyped = [
        {**good, "seed": "x"},
        {**good, "metrics": [0.5]},
        {**good, "seed": True},
        {**good, "setting": None},
        {k: v for k, v in good.items() if k != "status"},
    ]
    path = tmp_path / "certified.jsonl"
    with open(path, "a") as fh:
        fh.writelines(line + "\n" for line in BAD + [json.dumps(m) for m in mistyped])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recs = read_results(tmp_path, "certified")
    assert [r.id for r in recs] == ["good"]
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert "skipped 11 unreadable records (lines 2, 3, 4, 5, 6, ...;" in msg


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: {**d, "seed": "x"}, "'seed' has the wrong type"),
        (lambda d: {**d, "metrics": []}, "'metrics' has the wrong type"),
        (lambda d: {k: v for k, v in d.items() if k != "config"}, "'config' is missing"),
    ],
)
def test_from_dict_names_the_bad_field(edit, message):
    d = json.loads(make_record().to_json())
    with pytest.raises(TypeError, match=message):
        Result.from_dict(edit(d))
    with pytest.raises(TypeError, match="not list"):
        Result.from_dict([])


def test_every_result_field_has_a_type_check():
    from dltbench.api import _FIELD_TYPES

    assert set(_FIELD_TYPES) == {f.name for f in dataclasses.fields(Result)}


# --- store faults -------------------------------------------------------------------------


def _failing_write(kind):
    real = os.write

    def write(fd, data):
        if kind == "short":
            return real(fd, data[: len(data) // 2])  # half of it lands on disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


@pytest.mark.parametrize("kind", ["short", "enospc"])
def test_a_failed_write_tears_nothing_and_raises(tmp_path, monkeypatch, kind):
    append_result(tmp_path, make_record(id="one"))
    path = tmp_path / "certified.jsonl"
    before = path.read_bytes()
    monkeypatch.setattr(store.os, "write", _failing_write(kind))
    r = make_record(id="two")
    with pytest.raises(StoreError, match="short write" if kind == "short" else "No space"):
        append_result(tmp_path, r)
    monkeypatch.undo()
    assert path.read_bytes() == before  # truncated back: no half record
    append_result(tmp_path, make_record(id="three"))
    assert [x.id for x in read_results(tmp_path, "certified")] == ["one", "three"]


def test_a_failed_fsync_is_a_store_error_too(tmp_path, monkeypatch):
    append_result(tmp_path, make_record(id="one"))
    before = (tmp_path / "certified.jsonl").read_bytes()

    def fsync(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(store.os, "fsync", fsync)
    with pytest.raises(StoreError, match="I/O error"):
        append_result(tmp_path, make_record(id="two"))
    assert (tmp_path / "certified.jsonl").read_bytes() == before


# --- folders ------------------------------------------------------------------------------


def test_locks_live_in_one_hidden_folder(tmp_path):
    append_result(tmp_path, make_record(id="one"))
    read_results(tmp_path, "certified")
    assert not list(tmp_path.glob("*.lock"))
    assert [p.name for p in (tmp_path / ".locks").iterdir()] == ["certified.lock"]


def test_a_read_only_folder_is_read_without_a_lock(tmp_path, monkeypatch):
    append_result(tmp_path, make_record(id="one"))
    store_dir = tmp_path / "ro"
    store_dir.mkdir()
    (tmp_path / "certified.jsonl").rename(store_dir / "certified.jsonl")
    (tmp_path / ".dltbench-key").rename(store_dir / ".dltbench-key")
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **kw):  # a read-only file system, even for root
        if self.name == ".locks":
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert [r.id for r in read_results(store_dir, "certified")] == ["one"]
    assert not (store_dir / ".locks").exists()
    with pytest.raises(StoreError, match="Read-only"):
        append_result(store_dir, make_record(id="two"))


def test_results_path_mismatches_are_clear_errors(tmp_path):
    (tmp_path / "certified.jsonl").mkdir()
    with pytest.raises(ResultsPathError, match="is a folder"):
        read_results(tmp_path, "certified")
    with pytest.raises(ResultsPathError, match="is a folder"):
        append_result(tmp_path, make_record())
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ResultsPathError, match="is a file"):
        read_results(afile, "certified")


def test_leaderboard_files_are_world_readable(tmp_path):
    csv, md = leaderboard.write(CERT, leaderboard.build(CERT, [make_record()]), tmp_path)
    assert stat.S_IMODE(csv.stat().st_mode) == 0o644 == stat.S_IMODE(md.stat().st_mode)


# --- method descriptions ------------------------------------------------------------------


def test_description_is_the_class_own_docstring_only():
    from dltbench.tasks.certified import CertifiedMethod

    class NoDoc(CertifiedMethod):
        def train(self, data, config, ctx):
            raise NotImplementedError

    class Doc(CertifiedMethod):
        """First line.

        More.
        """

        def train(self, data, config, ctx):
            raise NotImplementedError

    assert CertifiedMethod.description()  # the protocol has one
    assert NoDoc.description() == "" and Doc.description() == "First line."


def test_resume_trusts_only_signed_records(tmp_path):
    from dltbench import registry
    from dltbench.runner import RunOptions, identity, pending_cells, plan

    registry.discover("certified")
    cell = plan(CERT, ["standard"], "quick", [0], smoke=True)[0]
    rec = make_record(id="x", method="standard", profile=cell.profile, seed=0, device="cpu",
                      **identity(CERT, cell))  # fmt: skip
    append_result(tmp_path, rec)
    opts = RunOptions(device="cpu", results_dir=tmp_path)
    assert pending_cells(CERT, [cell], opts)[0] == []  # resumed
    path = tmp_path / "certified.jsonl"
    path.write_text(path.read_text().replace(f'"mac": "{rec.mac}"', '"mac": ""'))
    assert pending_cells(CERT, [cell], opts)[0] == [cell]  # an unsigned record stands for nothing
