"""Leaderboards, built only from Result records.

One row per (method, profile, setting) where a setting is the task's ``setting_keys``
(e.g. dataset and sigma). A row never mixes versions: the newest ``ok`` record fixes
the config hash, method and task source hashes and device type, and for each seed the
newest record with those counts.

Columns, in this order:

``rank``            1 = best by the task's primary metric, within (profile, setting)
``method``          registered method name; ``method_version``
``profile``         quick | standard | paper; then the setting columns
``<metric>_mean``   mean over seeds, for every metric the task declares
``<metric>_std``    sample std over seeds (ddof=1; empty with one seed)
``n_seeds``, ``seeds``, ``records`` (ids of the records behind the row), ``config_hash``

Records with impossible values (:meth:`Task.check_record`) are not counted; with
:func:`from_results`, neither are records the harness did not sign. What was skipped,
per reason, is in ``df.attrs["skipped"]`` (see :func:`skipped`) and in a footnote line
of the Markdown page.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from . import registry
from .api import Result, Task
from .runner import resume_key
from .store import atomic_write_text, load_results, read_results


def build(
    task: Task, records: list[Result], load: Callable[[str], list[Result]] | None = None
) -> pd.DataFrame:
    """The leaderboard of ``task`` from its records (a DataFrame in the documented column order).

    ``load(task_name)`` gives other tasks' records to :meth:`Task.adjust_leaderboard`;
    records of either with impossible values are left out, and counted per reason in
    ``df.attrs["skipped"]``.
    """
    skips: Counter = Counter()
    valid = []
    for r in records:
        if r.task == task.name and r.status == "ok":
            reason = task.check_record(r)
            if reason is not None:
                skips[reason] += 1
                continue
        valid.append(r)
    records = valid
    groups: dict[tuple, list[Result]] = {}
    for r in records:
        if r.task == task.name and r.status == "ok":
            key = (r.method, r.profile, json.dumps(r.setting, sort_keys=True))
            groups.setdefault(key, []).append(r)
    rows = []
    for (method, profile, _), group in groups.items():
        # The newest record fixes the code/config/device version; per seed, the newest
        # record of that version counts (file order is time order).
        newest = max(group, key=lambda r: r.timestamp)
        by_seed = {r.seed: r for r in group if _version_key(r) == _version_key(newest)}
        same = [by_seed[s] for s in sorted(by_seed)]
        row = {"method": method, "method_version": newest.method_version, "profile": profile}
        row.update({k: newest.setting.get(k) for k in task.setting_keys})
        for spec in task.metrics:
            vals = [r.metrics.get(spec.name) for r in same]
            vals = [float("nan") if v is None else float(v) for v in vals]
            s = pd.Series(vals, dtype=float)
            row[f"{spec.name}_mean"] = s.mean(skipna=False)  # a NaN seed is not averaged away
            row[f"{spec.name}_std"] = s.std(ddof=1) if len(s) > 1 else float("nan")
        row["n_seeds"] = len(same)
        row["seeds"] = " ".join(str(r.seed) for r in same)
        row["records"] = " ".join(r.id for r in same)
        row["config_hash"] = newest.config_hash
        rows.append(row)
    columns = _columns(task)
    df = pd.DataFrame(rows, columns=[c for c in columns if c != "rank"])
    df = task.adjust_leaderboard(df, records, _checked(load or (lambda name: [])))
    df = _exclude_invalid(task, df, records)
    # A task may drop columns no row of these profiles can have (e.g. other profiles' radii).
    columns = [c for c in columns if c == "rank" or c in df.columns]
    columns += [c for c in df.columns if c not in columns]
    df = task_rank(task, df)[columns] if len(df) else pd.DataFrame(columns=columns)
    df.attrs["skipped"] = dict(skips)
    return df


def _exclude_invalid(task: Task, df: pd.DataFrame, records: list[Result]) -> pd.DataFrame:
    """Unrank every row with an ``invalid`` record of its own version (any seed), saying why.

    An invalid cell broke the protocol (a budget, a shape, an audit); a rerun of that seed
    draws fresh evaluation randomness, so letting an ``ok`` rerun replace it would make any
    spot check a lottery the plugin retries until it wins. The record stays the evidence
    until it is pruned (``dltbench records --prune``) or the method's code changes.
    """
    invalid = [r for r in records if r.task == task.name and r.status == "invalid"]
    if not invalid or df.empty:
        return df
    by_id = {r.id: r for r in records}
    why: dict[int, list[str]] = {}
    for i, row in df.iterrows():
        recs = [by_id[j] for j in str(row.get("records", "")).split() if j in by_id]
        if not recs:
            continue
        key = (recs[0].method, recs[0].profile, json.dumps(recs[0].setting, sort_keys=True))
        version = _version_key(recs[0])
        phrases = [
            f"seed {r.seed} invalid: {first_line(r.error)} (record {r.id})"
            for r in sorted(invalid, key=lambda r: r.seed)
            if (r.method, r.profile, json.dumps(r.setting, sort_keys=True)) == key
            and _version_key(r) == version
        ]  # fmt: skip
        if phrases:
            why[i] = phrases
    if not why:
        return df
    df = df.copy()
    if "eligible" not in df.columns:
        df["eligible"] = pd.Series(True, index=df.index, dtype=bool)
    if "excluded_reason" not in df.columns:
        df["excluded_reason"] = ""
    for i, phrases in why.items():
        have = [p for p in str(df.at[i, "excluded_reason"] or "").split(" | ") if p]
        # a task may have said it already, in its own words (the sampler names invalid seeds)
        new = [p for p in phrases if not any(h.startswith(p.split(":")[0] + ":") for h in have)]
        df.at[i, "excluded_reason"] = " | ".join([*have, *new])
        df.at[i, "eligible"] = False
    df["eligible"] = df["eligible"].astype(bool)
    return df


def first_line(text: str | None) -> str:
    """The first line of an error text ("" for none): what a board or a console shows of it."""
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def _checked(load: Callable[[str], list[Result]]) -> Callable[[str], list[Result]]:
    """``load`` without the ok records its task finds impossible (evidence must be possible too)."""

    def checked(name: str) -> list[Result]:
        try:
            other = registry.get_task(name)
        except registry.RegistryError:
            return load(name)
        return [r for r in load(name) if r.status != "ok" or other.check_record(r) is None]

    return checked


def from_results(task: Task, results_dir: str | Path) -> pd.DataFrame:
    """The leaderboard of ``task`` from the signed records in ``results_dir``.

    Records whose MAC is missing or wrong (not written by the harness) are skipped and
    counted in ``df.attrs["skipped"]``, with the impossible ones :func:`build` skips.
    """
    loaded = load_results(results_dir, task.name)
    df = build(task, loaded.records, lambda name: read_results(results_dir, name))
    df.attrs["skipped"] = dict(Counter(loaded.skipped) + Counter(df.attrs["skipped"]))
    return df


def skipped(df: pd.DataFrame) -> dict[str, int]:
    """Records left out of the board ``df``, per reason (empty if none)."""
    return dict(df.attrs.get("skipped", {}))


def skipped_line(df: pd.DataFrame) -> str:
    """One line saying what was skipped and why, or "" if nothing was."""
    skips = skipped(df)
    if not skips:
        return ""
    n = sum(skips.values())
    parts = "; ".join(f"{count} {reason}" for reason, count in sorted(skips.items()))
    return f"Skipped {n} record{'s' if n != 1 else ''}: {parts}."


def _version_key(r: Result) -> tuple:
    return resume_key(r)[:3] + resume_key(r)[4:]  # everything but the seed


def _columns(task: Task) -> list[str]:
    metric_cols = [c for s in task.metrics for c in (f"{s.name}_mean", f"{s.name}_std")]
    return [
        "rank", "method", "method_version", "profile", *task.setting_keys, *metric_cols,
        "n_seeds", "seeds", "records", "config_hash",
    ]  # fmt: skip


def task_rank(task: Task, df: pd.DataFrame) -> pd.DataFrame:
    """Rank rows within each (profile, setting) by the primary metric's mean; NaN ranks last.

    Rows whose ``eligible`` column is False get no rank and sort after the ranked ones.
    """
    by = ["profile", *task.setting_keys]
    df = df.copy()
    key = df[f"{task.primary_metric}_mean"].astype(float)
    if "eligible" in df.columns:
        key = key.where(df["eligible"].astype(bool))
    df["_key"] = key
    df["rank"] = (
        df.groupby(by, dropna=False)["_key"]
        .rank(ascending=not task.higher_is_better, method="min", na_option="keep")
        .astype("Int64")
    )
    df["_unranked"] = df["rank"].isna()
    df = df.sort_values([*by, "_unranked", "rank", "method"], kind="stable")
    return df.drop(columns=["_key", "_unranked"]).reset_index(drop=True)


def to_csv(df: pd.DataFrame) -> str:
    """CSV text with full float precision."""
    return df.to_csv(index=False, float_format="%.10g")


def to_markdown(task: Task, df: pd.DataFrame) -> str:
    """A Markdown page: title, the primary metric, a table of mean ± std, the metric legend."""
    lines = [
        f"# Leaderboard: `{task.name}` (task version {task.version})",
        "",
        f"Ranked by **{task.primary_metric}** "
        f"({task.metric(task.primary_metric).direction} is better) within each profile "
        "and setting. Mean ± sample std over seeds; built from the records in "
        f"`results/{task.name}.jsonl` by `dltbench leaderboard --task {task.name}`.",
        "",
        compact(task, df, tablefmt="github"),
        "",
        "| metric | better | unit | meaning |",
        "|---|---|---|---|",
    ]
    for s in task.metrics:
        if df.empty or f"{s.name}_mean" in df.columns:
            lines.append(f"| `{s.name}` | {s.direction} | {s.unit} | {s.description} |")
    if "unreachable_radii" in df.columns and df["unreachable_radii"].astype(bool).any():
        lines += [
            "",
            "`-` at a radius listed in `unreachable_radii`: above that row's radius "
            "ceiling (the estimator cannot certify it with its n), not a measured 0.",
        ]
    if skipped_line(df):
        lines += ["", skipped_line(df)]
    return "\n".join(lines) + "\n"


def compact(task: Task, df: pd.DataFrame, tablefmt: str = "simple") -> str:
    """A readable table: one ``mean ± std`` cell per metric."""
    if df.empty:
        return "(no successful records yet)"
    out = df[["rank", "method", "profile", *task.setting_keys]].copy()
    out["rank"] = ["" if pd.isna(r) else str(r) for r in df["rank"]]
    for s in task.metrics:
        if f"{s.name}_mean" not in df.columns:
            continue
        out[s.name] = [
            _pm(m, sd) for m, sd in zip(df[f"{s.name}_mean"], df[f"{s.name}_std"], strict=True)
        ]
    out["n_seeds"] = df["n_seeds"]
    if "unreachable_radii" in df.columns:
        out["unreachable_radii"] = df["unreachable_radii"].fillna("")
    if "excluded_reason" in df.columns:
        out["excluded_reason"] = df["excluded_reason"].fillna("")
    return tabulate(out, headers="keys", tablefmt=tablefmt, showindex=False, disable_numparse=True)


def _pm(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.4g}"
    return f"{mean:.4g} ± {std:.2g}"


def write(task: Task, df: pd.DataFrame, leaderboard_dir: str | Path) -> tuple[Path, Path]:
    """Write ``<task>.csv`` and ``<task>.md`` atomically; returns both paths."""
    d = Path(leaderboard_dir)
    csv_path, md_path = d / f"{task.name}.csv", d / f"{task.name}.md"
    atomic_write_text(csv_path, to_csv(df))
    atomic_write_text(md_path, to_markdown(task, df))
    return csv_path, md_path
