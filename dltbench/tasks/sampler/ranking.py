"""Leaderboard eligibility: only samplers that converged and hit the moments are ranked.

A row (method, profile, target) is eligible when every seed behind it has rank-normalized
split R-hat < 1.01, bulk- and tail-ESS above 100 per chain on every coordinate (Vehtari et
al. 2021) and every moment z-score below the Bonferroni threshold stored in its record. Rows that fail are listed below the ranked ones with the
reason; a sampler that does not apply to a target (e.g. Gibbs without Gaussian
conditionals) gets a row that says so, and a (method, target) whose cells were all
``invalid`` (e.g. a diverged unadjusted chain) gets a row with the harness's reason.
"""

from __future__ import annotations

import pandas as pd

from ...api import Result
from .diagnostics import ESS_MIN_PER_CHAIN, gate_failures


def _fails(r: Result) -> list[str]:
    """Why one ok record does not pass (empty if it passes): the gate, read from the record."""
    m, est = r.metrics, r.estimator
    ess = [m.get("ess_bulk_min"), m.get("ess_tail_min")]
    zs = [m.get("mean_z_max"), m.get("var_z_max")]  # None: NaN or inf in the record
    return gate_failures(
        m.get("rhat_max"),
        None if None in ess else min(ess),
        est.get("ess_threshold", ESS_MIN_PER_CHAIN * est.get("chains", 1)),
        None if None in zs else max(zs),
        est.get("moment_threshold", float("inf")),
    )


def eligibility(df: pd.DataFrame, records: list[Result]) -> pd.DataFrame:
    """Add ``eligible`` and ``excluded_reason`` columns, and rows for not-applicable or invalid cells."""
    by_id = {r.id: r for r in records}
    df = df.copy()
    eligible, reasons = [], []
    for _, row in df.iterrows():
        recs = [by_id[i] for i in str(row["records"]).split() if i in by_id]
        na = next(
            (r.estimator["not_applicable"] for r in recs if r.estimator.get("not_applicable")),
            None,
        )
        if na:
            eligible.append(False)
            reasons.append(f"not applicable: {na}")
            continue
        why = [f"seed {r.seed}: {'; '.join(f)}" for r in recs if (f := _fails(r))]
        invalid = _invalid_for(
            records, row["method"], row["profile"], row["target"], row["config_hash"]
        )
        why += [f"seed {r.seed} invalid: {_first(r.error)}" for r in invalid if r.seed not in
                {x.seed for x in recs}]  # fmt: skip
        eligible.append(not why)
        reasons.append(" | ".join(why))
    df["eligible"] = pd.Series(eligible, index=df.index, dtype=bool)
    df["excluded_reason"] = reasons
    extra = _invalid_rows(df, records)
    if extra:
        df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)
        df["eligible"] = df["eligible"].astype(bool)
    return df


def _first(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def _invalid_for(records, method, profile, target, config_hash) -> list[Result]:
    newest: dict[int, Result] = {}
    for r in records:
        if (r.method, r.profile, r.setting.get("target"), r.config_hash) == (
            method,
            profile,
            target,
            config_hash,
        ):
            newest[r.seed] = r  # file order is time order
    return [r for r in newest.values() if r.status == "invalid"]


def _invalid_rows(df: pd.DataFrame, records: list[Result]) -> list[dict]:
    """One row per (method, profile, target) that has records but no ok one: all were invalid."""
    have = {(m, p, t) for m, p, t in zip(df["method"], df["profile"], df["target"], strict=True)}
    groups: dict[tuple, dict[int, Result]] = {}
    for r in records:
        key = (r.method, r.profile, r.setting.get("target"))
        if r.task == "sampler" and key not in have:
            groups.setdefault(key, {})[r.seed] = r
    rows = []
    for (method, profile, target), by_seed in groups.items():
        newest = max(by_seed.values(), key=lambda r: r.timestamp)
        same = [r for r in by_seed.values() if r.config_hash == newest.config_hash]
        if not all(r.status == "invalid" for r in same):
            continue  # failed/timeout cells are the runner's business, not a sampler's result
        seeds = sorted(r.seed for r in same)
        rows.append({
            "method": method, "method_version": newest.method_version, "profile": profile,
            "target": target, "n_seeds": 0, "seeds": " ".join(map(str, seeds)),
            "records": " ".join(r.id for r in sorted(same, key=lambda r: r.seed)),
            "config_hash": newest.config_hash, "eligible": False,
            "excluded_reason": f"invalid (seeds {' '.join(map(str, seeds))}): {_first(newest.error)}",
        })  # fmt: skip
    return rows
