"""Counter-evaluation: attack-task findings lower a defense's reported robust accuracy.

An ``attack`` record counts for a ``robust`` record when it attacked the same defense
(same method name, version and source hash), under the same profile, setting and
config, trained with the same seed. When the attacked weights are the very ones the
``robust`` cell scored (same fingerprint), the two per-point outcomes are combined
(a point is robust only if the ensemble and the attack both failed on it); otherwise
the attack's own robust accuracy is a bound for that seed. On physical rows the per-point
numbers are expected accuracies estimated on each cell's own draws of the world: their
pointwise minimum would be biased low (the minimum of noisy estimates), so there the
attack's robust accuracy is a bound even on the same weights, and counts only when it is
lower by more than twice the two estimates' draw noise (:func:`physical.draw_error`): an
attack as strong as the ensemble would otherwise lower the row half the time. A row's ``robust_acc`` is
then the mean over its seeds of the lowest known number; ``robust_acc_harness_mean``
keeps the ensemble's own, and ``broken_by`` names the attacks that lowered it.

A row with a gradient-masking flag on any of its seeds is not ranked (``eligible``
False, the flags in ``excluded_reason``): its robust accuracy is an upper bound the
harness has reason to doubt, so it must not sit above a defense with none.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from ...api import Result
from .physical import WORLDS, draw_error


def _matches(attack: Result, defense: Result) -> dict | None:
    entry = (attack.curves or {}).get("per_defense", {}).get(defense.method)
    if entry is None or attack.profile != defense.profile or attack.setting != defense.setting:
        return None
    same_code = (entry.get("version"), entry.get("source_hash")) == (
        defense.method_version, defense.method_source_hash,
    )  # fmt: skip
    same_config = all(attack.config.get(k) == v for k, v in defense.config.items())
    return entry if same_code and same_config and entry.get("seed") == defense.seed else None


def lowest_known(defense: Result, attacks: list[Result]) -> tuple[float, set[str]]:
    """The lowest robust accuracy known for one ``robust`` record, and the attacks that found it."""
    per_point = (defense.config or {}).get("norm") not in WORLDS
    base = np.asarray(
        defense.curves.get("per_point", {}).get("robust", []) if per_point else [], dtype=bool
    )
    current = base.copy()
    bound = (
        float(defense.metrics.get("robust_acc") or 0.0) if not len(base) else float(base.mean())
    )
    found: set[str] = set()
    own = defense.curves.get("per_point", {}).get("robust", [])
    for a in attacks:
        entry = _matches(a, defense)
        if entry is None:
            continue
        mask = np.asarray(entry.get("robust", []), dtype=bool)
        same_weights = entry.get("fingerprint") == defense.curves.get("model_fingerprint")
        if per_point and same_weights and len(mask) == len(current):
            if (current & mask).sum() < current.sum():
                found.add(a.method)
            current &= mask
        elif entry.get("robust_acc") is not None and entry["robust_acc"] < bound - (
            0.0 if per_point else _draw_noise(entry.get("robust", []), own)
        ):
            bound = float(entry["robust_acc"])
            found.add(a.method if same_weights else f"{a.method} (retrained weights)")
    known = min(float(current.mean()) if len(current) else bound, bound)
    return known, found


def _draw_noise(theirs: list, mine: list) -> float:
    """Twice the draw noise of the difference of two physical cells' means (a side without
    per-point scores counts 0)."""
    return float(2 * np.hypot(*np.nan_to_num([draw_error(theirs), draw_error(mine)])))


def adjust_defense_leaderboard(
    df: pd.DataFrame, records: list[Result], load: Callable[[str], list[Result]]
) -> pd.DataFrame:
    """Add ``robust_acc_harness_mean``, ``broken_by``, ``masking_flag_names`` and ``eligible``; lower ``robust_acc``.

    Rows with masking flags get ``eligible`` False (unranked, listed after the ranked rows).
    """
    df = df.copy()
    df["robust_acc_harness_mean"] = df.get("robust_acc_mean")
    df["broken_by"] = ""
    df["masking_flag_names"] = ""
    df["eligible"] = pd.Series(True, index=df.index, dtype=bool)
    df["excluded_reason"] = ""
    if df.empty:
        return df
    by_id = {r.id: r for r in records}
    attacks = [r for r in load("attack") if r.status == "ok" and r.task == "attack"]
    for i, row in df.iterrows():
        recs = [by_id[j] for j in str(row["records"]).split() if j in by_id]
        flags = sorted({f for r in recs for f in (r.curves or {}).get("masking_flags", [])})
        df.at[i, "masking_flag_names"] = " ".join(flags)
        if not attacks or not recs:
            continue
        lows, who = [], set()
        for r in recs:
            low, found = lowest_known(r, attacks)
            lows.append(low)
            who |= {f"{name} (seed {r.seed})" for name in found}
        s = pd.Series(lows, dtype=float)
        df.at[i, "robust_acc_mean"] = s.mean()
        df.at[i, "robust_acc_std"] = s.std(ddof=1) if len(s) > 1 else float("nan")
        df.at[i, "broken_by"] = ", ".join(sorted(who))
    flagged = df["masking_flag_names"] != ""
    df["eligible"] = ~flagged
    df.loc[flagged, "excluded_reason"] = (
        "gradient-masking flags: " + df.loc[flagged, "masking_flag_names"]
    )
    return df
