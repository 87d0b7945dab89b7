"""Unit tests of the harness pieces: registry, records, leaderboard aggregation, durations."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

import dltbench
from dltbench import leaderboard, registry
from dltbench.api import Result, stable_hash
from dltbench.runner import parse_duration, plan
from dltbench.store import append_result, read_results
from dltbench.tasks.certified import CertifiedMethod, CertifiedTask


def make_record(**kw) -> Result:
    base = dict(
        id="r", task="certified", task_version="1", method="m", method_version="1",
        method_source_hash="s", method_params={}, method_origin="builtin", profile="quick",
        setting={"dataset": "digits", "sigma": 0.25}, config={}, config_hash="c", seed=0,
        status="ok", metrics={"acr": 0.5}, timestamp="2026-01-01T00:00:00",
        estimator={"sigma": 0.25, "n": 100_000, "alpha": 0.001},  # radius ceiling 1.06
    )  # fmt: skip
    base.update(kw)
    return Result(**base)


def test_leaderboard_mean_std_rank_and_direction():
    task = CertifiedTask()
    recs = [
        make_record(id="a0", method="a", seed=0, metrics={"acr": 0.4}),
        make_record(id="a1", method="a", seed=1, metrics={"acr": 0.6}),
        make_record(id="b0", method="b", seed=0, metrics={"acr": 0.7}),
        make_record(id="f", method="c", seed=0, status="failed", metrics={}),
    ]
    df = leaderboard.build(task, recs)
    assert list(df["method"]) == ["b", "a"]  # failed records never reach a leaderboard
    a = df[df["method"] == "a"].iloc[0]
    assert a["acr_mean"] == pytest.approx(0.5) and a["acr_std"] == pytest.approx(math.sqrt(0.02))
    assert a["n_seeds"] == 2 and a["records"] == "a0 a1" and list(df["rank"]) == [1, 2]
    assert math.isnan(df.iloc[0]["acr_std"])  # one seed: no std
    assert list(df.columns[:6]) == [
        "rank",
        "method",
        "method_version",
        "profile",
        "dataset",
        "noise",
    ]


def test_leaderboard_newest_record_per_seed_and_no_version_mixing():
    task = CertifiedTask()
    recs = [
        make_record(id="old", seed=0, metrics={"acr": 0.1}, timestamp="2026-01-01"),
        make_record(id="new", seed=0, metrics={"acr": 0.3}, timestamp="2026-01-02"),
        make_record(id="stale", seed=1, metrics={"acr": 0.9}, method_source_hash="old-code",
                    timestamp="2026-01-01"),
    ]  # fmt: skip
    row = leaderboard.build(task, recs).iloc[0]
    assert row["records"] == "new" and row["acr_mean"] == pytest.approx(0.3)


def test_leaderboard_ranks_only_eligible_rows():
    class Gate(CertifiedTask):
        def adjust_leaderboard(self, df, records, load):
            df["eligible"] = df["method"] != "best-but-broken"
            df["excluded_reason"] = ["" if e else "R-hat too high" for e in df["eligible"]]
            return df

    recs = [
        make_record(id="x", method="best-but-broken", metrics={"acr": 0.9}),
        make_record(id="y", method="ok", metrics={"acr": 0.2}),
    ]
    df = leaderboard.build(Gate(), recs)
    assert list(df["method"]) == ["ok", "best-but-broken"]
    assert df["rank"].iloc[0] == 1 and df["rank"].isna().iloc[1]
    assert "R-hat too high" in leaderboard.compact(Gate(), df)


def test_store_appends_and_skips_a_torn_last_line(tmp_path):
    append_result(tmp_path, make_record(id="one"))
    append_result(tmp_path, make_record(id="two"))
    with open(tmp_path / "certified.jsonl", "a") as fh:
        fh.write('{"id": "torn", "task": "cert')  # a crash mid-write
    with pytest.warns(UserWarning, match="unreadable record"):
        recs = read_results(tmp_path, "certified")
    assert [r.id for r in recs] == ["one", "two"]


def test_record_roundtrip_and_nan_as_null():
    r = make_record(metrics={"acr": float("nan")})
    d = json.loads(r.to_json())
    assert d["metrics"]["acr"] is None
    assert dataclasses.asdict(Result.from_dict({**d, "future_field": 1}))["id"] == "r"


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": (2, 3)}) == stable_hash({"b": [2, 3], "a": 1})


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("10m", 600), ("1.5h", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_registry_rejects_duplicates_and_bad_constructors():
    @dltbench.register_method(task="certified", name="test-unique")
    class One(CertifiedMethod):
        """One."""

        def train(self, data, config, ctx):
            raise NotImplementedError

    with pytest.raises(registry.RegistryError, match="registered twice"):

        @dltbench.register_method(task="certified", name="test-unique")
        class Two(CertifiedMethod):
            """Two."""

            def train(self, data, config, ctx):
                raise NotImplementedError

    with pytest.raises(registry.RegistryError, match="needs a default"):

        @dltbench.register_method(task="certified", name="test-no-default")
        class NoDefault(CertifiedMethod):
            """No default."""

            def __init__(self, lr):
                self.lr = lr

            def train(self, data, config, ctx):
                raise NotImplementedError

    with pytest.raises(registry.RegistryError, match="must subclass"):

        @dltbench.register_method(task="certified", name="test-wrong-base")
        class WrongBase(dltbench.Method):
            """Not a certified method."""

            def train(self, data, config, ctx):
                raise NotImplementedError


def test_method_params_are_the_constructor_arguments():
    cls = registry.get_method_class("certified", "consistency")
    assert cls(lbd=3.0).get_params() == {
        "m": 2,
        "lbd": 3.0,
        "eta": 0.5,
        "lr": 1e-3,
        "batch_size": 64,
    }
    assert cls.description().startswith("Jeong & Shin 2020")


def test_a_record_after_a_torn_line_is_kept(tmp_path):
    append_result(tmp_path, make_record(id="one"))
    with open(tmp_path / "certified.jsonl", "a") as fh:
        fh.write('{"id": "torn", "task": "cert')
    append_result(tmp_path, make_record(id="after"))
    with pytest.warns(UserWarning, match="unreadable record"):
        recs = read_results(tmp_path, "certified")
    assert [r.id for r in recs] == ["one", "after"]


def test_leaderboard_takes_every_seed_of_the_newest_version():
    """A reverted change rerun on one seed must not hide the other seeds of that version."""
    task = CertifiedTask()
    recs = [
        make_record(id="a0", seed=0, timestamp="2026-01-01"),
        make_record(id="a1", seed=1, timestamp="2026-01-01"),
        make_record(id="b1", seed=1, method_source_hash="other", timestamp="2026-01-02"),
        make_record(id="a1bis", seed=1, timestamp="2026-01-03"),
    ]
    row = leaderboard.build(task, recs).iloc[0]
    assert row["records"] == "a0 a1bis" and row["n_seeds"] == 2


def test_leaderboard_does_not_average_a_nan_seed_away():
    task = CertifiedTask()
    recs = [make_record(id="a", seed=0), make_record(id="b", seed=1, metrics={"acr": None})]
    assert math.isnan(leaderboard.build(task, recs).iloc[0]["acr_mean"])


def test_seeds_fix_numpy_and_python_global_streams_too():
    import random

    import numpy as np

    from dltbench.runner import seed_globals

    draws = []
    for seed in (1, 2, 1):
        seed_globals(seed)
        draws.append((np.random.rand(), random.random()))
    assert draws[0] == draws[2] and draws[0] != draws[1]


def test_limit_caps_test_points_and_labels_the_profile():
    from dltbench import registry
    from dltbench.runner import plan

    registry.discover("certified")
    cells = plan(registry.get_task("certified"), ["standard"], "quick", [0], limit=7)
    assert {c.profile for c in cells} == {"quick-limit7"}
    assert {c.config.max_test_points for c in cells} == {7}
    registry.discover("sampler")
    with pytest.raises(ValueError, match="no test points"):
        plan(registry.get_task("sampler"), ["rwm"], "quick", [0], limit=7)


ALL_QUICK = ("linf", "l2", "l0", "patch", "physical-linf")


def test_a_method_is_not_planned_on_a_threat_model_it_does_not_define():
    registry.discover("attack")
    task = registry.get_task("attack")
    cells = plan(task, ["sparse-rs", "apgd-ce", "pgd"], "quick", [0])
    pairs = {(c.method, c.config.norm) for c in cells}
    assert ("sparse-rs", "l0") in pairs and ("apgd-ce", "linf") in pairs
    assert ("sparse-rs", "linf") not in pairs and ("apgd-ce", "l0") not in pairs
    assert ("apgd-ce", "patch") not in pairs
    assert ("apgd-ce", "physical-linf") not in pairs
    assert {n for m, n in pairs if m == "pgd"} == set(ALL_QUICK)  # pgd declares them all
