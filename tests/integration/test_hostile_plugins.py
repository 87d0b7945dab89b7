"""The threat model, tested: hostile plugins fail, are invalid, or score no better than their
honest twin under the same evaluation randomness; nothing they do reaches the results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dltbench import registry
from dltbench.runner import RunOptions, plan, run_cells
from dltbench.sandbox import bwrap_version
from dltbench.store import read_results

PLUGIN = str(Path(__file__).parent / "plugins" / "hostile.py")
ENTROPY = "5eed" * 8  # the same evaluation noise for a hostile method and its honest twin

needs_bwrap = pytest.mark.skipif(
    bwrap_version() is None,
    reason="bubblewrap (bwrap) is not installed or cannot create namespaces here; "
    "`apt-get install bubblewrap` to run the sandbox tests",
)


def _run(task_name: str, methods: list[str], tmp_path: Path, **cfg) -> dict[str, dict]:
    registry.discover(task_name, [PLUGIN])
    task = registry.get_task(task_name)
    cells = [c for c in plan(task, methods, "quick", [0], smoke=True)][: len(methods)]
    if cfg:
        import dataclasses

        cells = [
            dataclasses.replace(c, config=dataclasses.replace(c.config, **cfg)) for c in cells
        ]
    opts = RunOptions(
        device="cpu", results_dir=tmp_path / "results", timeout_s=600, eval_entropy=ENTROPY,
        plugin_files=(PLUGIN,), jobs=1, audit=True,
    )  # fmt: skip
    out = {r.method: r for r in run_cells(task, cells, opts)}
    return {m: {"status": r.status, "metrics": r.metrics, "error": r.error or "", "rec": r}
            for m, r in out.items()}  # fmt: skip


@needs_bwrap
def test_certified_hostile_plugins_gain_nothing_and_reach_nothing(tmp_path, monkeypatch):
    # The forger looks here too: a results folder it was told about.
    monkeypatch.setenv("DLTBENCH_RESULTS", str(tmp_path))
    methods = ["honest-twin", "hostile-gc", "hostile-data", "hostile-patch", "hostile-forge",
               "hostile-late-nan"]  # fmt: skip
    res = _run("certified", methods, tmp_path, max_test_points=6, n=100, n0=20, n_predict=50)
    twin = res["honest-twin"]
    assert twin["status"] == "ok", twin["error"]
    for name in ("hostile-gc", "hostile-data", "hostile-patch", "hostile-forge"):
        r = res[name]
        assert r["status"] in ("ok", "failed", "invalid"), r
        if r["status"] == "ok":
            # Same training, same evaluation noise: the cheat found nothing to use.
            assert r["metrics"]["acr"] == pytest.approx(twin["metrics"]["acr"], abs=1e-9), name
            assert r["metrics"]["base_clean_acc"] == pytest.approx(
                twin["metrics"]["base_clean_acc"], abs=1e-9
            )
    late = res["hostile-late-nan"]
    assert late["status"] == "invalid" and "non-finite" in late["error"]
    # Only the harness's own records are in the results file: no forged line.
    recs = read_results(tmp_path / "results", "certified")
    assert sorted(r.method for r in recs) == sorted(methods)
    raw = (tmp_path / "results" / "certified.jsonl").read_text()
    assert "forged" not in raw and not (tmp_path / "certified.jsonl").exists()
    assert all(r.isolation.get("sandbox", "none") != "none" for r in recs)
    assert all(r.eval_entropy == ENTROPY for r in recs)


@needs_bwrap
def test_sampler_cannot_use_the_public_target_or_the_ledger(tmp_path):
    res = _run(
        "sampler", ["hostile-iid", "hostile-ledger", "rwm"], tmp_path, target="gaussian-d10"
    )
    iid = res["hostile-iid"]
    # Exact draws of the public target are wrong under the secret reparameterization.
    assert iid["status"] == "ok" and iid["metrics"]["mean_z_max"] > 10, iid
    led = res["hostile-ledger"]
    assert led["status"] == "ok", led["error"]
    # Its target calls were counted by the harness even though it cleared its own ledger:
    # one initial call plus one per draw and chain.
    n_chains = led["rec"].config["n_chains"]
    n_draws = led["rec"].config["n_draws"]
    assert led["metrics"]["evals"] == pytest.approx(n_chains * (n_draws + 1))
    records = {r.method: r for r in read_results(tmp_path / "results", "sampler")}
    assert records["hostile-iid"].estimator.get("passes") is False


@needs_bwrap
def test_an_attack_cannot_touch_the_model_or_the_budget_check(tmp_path):
    res = _run("attack", ["hostile-attack"], tmp_path, n_test=8)
    r = res["hostile-attack"]
    # Its gc walk and its patch of the budget check happened in its own process only.
    assert r["status"] == "invalid" and "broke the linf budget" in r["error"], r


def test_evaluation_seed_is_not_derivable_from_the_cell_seed():
    from dltbench.runner import cell_contexts

    plain = cell_contexts(0, "cpu", None, lambda *a: None)
    salted = cell_contexts(0, "cpu", None, lambda *a: None, "ab" * 16)
    again = cell_contexts(0, "cpu", None, lambda *a: None, "ab" * 16)
    assert plain[0].seed == salted[0].seed and plain[1].seed == salted[1].seed
    assert plain[2].seed != salted[2].seed and salted[2].seed == again[2].seed


def test_records_carry_the_sandbox_and_the_secret(tmp_path):
    res = _run("certified", ["honest-twin"], tmp_path, max_test_points=2, n=50, n0=10,
               n_predict=10, epochs=1)  # fmt: skip
    rec = res["honest-twin"]["rec"]
    assert rec.status == "ok"
    assert rec.isolation["sandbox"] == (bwrap_version() or "none")
    assert rec.isolation["process"].startswith("separate plugin process")
    assert json.loads(rec.to_json())["eval_entropy"] == ENTROPY
