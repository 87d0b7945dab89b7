"""The real `dltbench` command on the vae task (smoke configs): records and leaderboard files."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from dltbench.cli import main


def test_run_smoke_writes_records_and_a_leaderboard_that_excludes_the_autoencoder(tmp_path):
    res, lb = tmp_path / "results", tmp_path / "leaderboards"
    argv = ["run", "--task", "vae", "--smoke", "--seeds", "0", "--device", "cpu",
            "--method", "vae", "beta-vae", "iwae", "cvae", "ae",
            "--results-dir", str(res), "--leaderboard-dir", str(lb)]  # fmt: skip
    assert main(argv) == 0
    records = [json.loads(line) for line in (res / "vae.jsonl").read_text().splitlines()]
    by_method = {r["method"]: r for r in records}
    assert set(by_method) == {"vae", "beta-vae", "iwae", "cvae", "ae"}
    assert all(r["status"] == "ok" and r["profile"] == "quick-smoke" for r in records)
    for name in ("vae", "beta-vae", "iwae", "cvae"):
        r = by_method[name]
        assert (
            r["metrics"]["elbo"] < 0 and r["metrics"]["iwae"] < 0
        )  # log-likelihoods of binary data
        assert r["estimator"]["iwae_k"] == 20 and r["estimator"]["has_likelihood"]
        bpd = -r["metrics"]["iwae"] / (64 * math.log(2))
        assert abs(r["metrics"]["nll_bpd"] - bpd) < 1e-9
        assert r["curves"]["iwae_by_k"]["k"] == [1, 20]
    assert by_method["cvae"]["metrics"]["cond_iwae"] is not None
    assert by_method["vae"]["metrics"]["cond_iwae"] is None  # NaN is stored as null
    ae = by_method["ae"]
    assert ae["metrics"]["iwae"] is None and ae["metrics"]["recon_nll"] > 0
    df = pd.read_csv(lb / "vae.csv")
    assert len(df) == 5
    ae_row = df[df["method"] == "ae"].iloc[0]
    assert pd.isna(ae_row["rank"]) and "no likelihood" in ae_row["excluded_reason"]
    ranked = df.dropna(subset=["rank"])
    assert sorted(ranked["rank"]) == [1, 2, 3, 4]
    assert ranked["iwae_mean"].is_monotonic_decreasing  # higher log-likelihood ranks first
    assert "no likelihood" in (lb / "vae.md").read_text()
    # A rerun resumes: nothing left to do, exit status 0 again.
    assert main(argv) == 0
    assert len((res / "vae.jsonl").read_text().splitlines()) == 5


def test_the_documented_plugin_example_validates(tmp_path, capsys):
    doc = (Path(__file__).resolve().parents[2] / "docs" / "tasks" / "vae.md").read_text()
    section = doc.split("## Writing a method", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    plugin = tmp_path / "wide_vae.py"
    plugin.write_text(code)
    assert main(["validate", "--task", "vae", "--plugin", str(plugin)]) == 0
    out = capsys.readouterr().out
    assert "wide-vae" in out and "FAIL" not in out


def test_committed_leaderboard_is_rebuilt_from_the_committed_records(tmp_path):
    root = Path(__file__).resolve().parents[2]
    argv = ["leaderboard", "--task", "vae", "--results-dir", str(root / "results"),
            "--leaderboard-dir", str(tmp_path), "--format", "csv"]  # fmt: skip
    assert main(argv) == 0
    rebuilt = pd.read_csv(tmp_path / "vae.csv")
    committed = pd.read_csv(root / "leaderboards" / "vae.csv")
    pd.testing.assert_frame_equal(rebuilt, committed)
    best = committed.dropna(subset=["rank"]).iloc[0]
    assert best["rank"] == 1 and best["iwae_mean"] == committed["iwae_mean"].max()
