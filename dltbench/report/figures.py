"""Plot data from leaderboard rows and their records, and its drawing with matplotlib (Agg).

The data (:class:`Panel`, :class:`Series`) is computed first and drawn second, so a test can
check that what is drawn is what the records hold, and the page can carry the data and the
ids of the records behind every series.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..api import Result, Task
from .specs import Bars, ImageGrid, Line, Points, Scatter, Spec, curve, matches

#: Colours readable on white and, inverted by the page's dark style, on black.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f", "#bcbd22")  # fmt: skip


@dataclass
class Series:
    """One line, bar group, point cloud or image grid: what is drawn and which records it came from."""

    label: str
    x: list[Any]
    y: list[Any]
    std: list[float] | None = None
    records: list[str] = field(default_factory=list)
    #: The method drawn ("" for a bar group, which is a metric).
    method: str = ""
    #: The method's colour (the same on every plot of a task), or the metric's in grouped bars.
    colour: str = PALETTE[0]


@dataclass
class Panel:
    """One picture: a spec drawn for one (profile, setting) group."""

    kind: str
    title: str
    group: str
    series: list[Series]
    xlabel: str = ""
    ylabel: str = ""
    xlog: bool = False
    ylog: bool = False
    #: ImageGrid only: the grid itself, (H, W) or (H, W, 3), in [0, 1].
    images: list[np.ndarray] = field(default_factory=list)
    #: method -> colour, the same on every plot of a task.
    colours: dict[str, str] = field(default_factory=dict)

    def method_colours(self, methods: list[str]) -> list[str]:
        """The colours of ``methods`` in this task's plots."""
        return [self.colours.get(m, PALETTE[0]) for m in methods]

    def data(self) -> dict[str, Any]:
        """The panel's numbers as JSON-ready data (what the page embeds next to the picture)."""
        return {
            "kind": self.kind, "title": self.title, "group": self.group,
            "series": [
                {"label": s.label, "x": s.x if self.kind != "image" else None,
                 "y": s.y if self.kind != "image" else None, "std": s.std, "records": s.records}
                for s in self.series
            ],
        }  # fmt: skip


def group_label(task: Task, profile: str, setting: Mapping[str, Any]) -> str:
    """``quick · sigma=0.25`` for a (profile, setting) group."""
    return " · ".join([profile, *(f"{k}={setting[k]}" for k in task.setting_keys)])


def groups(task: Task, df: pd.DataFrame) -> list[tuple[str, dict[str, Any], pd.DataFrame]]:
    """The (profile, setting, rows) groups of a leaderboard, in its order."""
    out: dict[str, tuple[str, dict[str, Any], list[int]]] = {}
    for i, row in df.iterrows():
        setting = {k: _plain(row[k]) for k in task.setting_keys}
        key = json.dumps([row["profile"], setting], sort_keys=True, default=str)
        out.setdefault(key, (row["profile"], setting, []))[2].append(i)
    return [(p, s, df.loc[idx]) for p, s, idx in out.values()]


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return None if isinstance(v, float) and math.isnan(v) else v


def row_records(row: pd.Series, by_id: Mapping[str, Result]) -> list[Result]:
    """The records behind a leaderboard row, in its seed order."""
    return [by_id[i] for i in str(row["records"]).split() if i in by_id]


def panels(task: Task, spec: Spec, df: pd.DataFrame, by_id: Mapping[str, Result]) -> list[Panel]:
    """The panels of one spec: one per (profile, setting) group it matches and has data for."""
    out, colours = [], method_colours(df)
    for profile, setting, rows in groups(task, df):
        if not matches(spec, setting):
            continue
        label = group_label(task, profile, setting)
        panel = _PANELS[type(spec)](task, spec, rows, by_id, label)
        if panel is not None and panel.series:
            panel.colours = colours
            for k, s in enumerate(panel.series):
                s.colour = PALETTE[k % len(PALETTE)] if panel.kind == "bars" else colours[s.method]
            out.append(panel)
    return out


def method_colours(df: pd.DataFrame) -> dict[str, str]:
    """One colour per method of a board (by name order), so a method looks the same everywhere."""
    return {m: PALETTE[k % len(PALETTE)] for k, m in enumerate(sorted(set(df["method"])))}


def _line(task, spec: Line, rows, by_id, label) -> Panel:
    series = []
    for _, row in rows.iterrows():
        ys, xs, ids = [], None, []
        for r in row_records(row, by_id):
            y = _vector(curve(r.curves, spec.y))
            if y is None:
                continue
            x = np.arange(len(y)) if spec.x is None else _vector(curve(r.curves, spec.x))
            if x is None or len(x) != len(y):
                continue
            if xs is None:
                xs = x
            elif len(x) != len(xs) or not np.allclose(x, xs, equal_nan=True):
                continue  # seeds on another grid are not averaged into this line
            ys.append(y)
            ids.append(r.id)
        if not ys:
            continue
        stack = np.vstack(ys)
        std = stack.std(axis=0, ddof=1).tolist() if len(ys) > 1 else None
        series.append(Series(row["method"], xs.tolist(), stack.mean(axis=0).tolist(), std, ids,
                             row["method"]))  # fmt: skip
    return Panel("line", spec.title, label, series, spec.xlabel, spec.ylabel, spec.xlog, spec.ylog)


def _bars(task, spec: Bars, rows, by_id, label) -> Panel:
    labels = spec.labels or spec.metrics
    methods = rows["method"].tolist()
    ids = [i for r in rows["records"] for i in str(r).split()]
    series = []
    for metric, name in zip(spec.metrics, labels, strict=True):
        if f"{metric}_mean" not in rows.columns:
            continue
        means = [finite(v) for v in rows[f"{metric}_mean"]]
        stds = [finite(v) for v in rows[f"{metric}_std"]]
        if all(m is None for m in means):
            continue
        series.append(Series(name, methods, means, stds, ids))
    unit = task.metric(spec.metrics[0]).unit
    ylabel = spec.ylabel or (f"{spec.metrics[0]} ({unit})" if len(spec.metrics) == 1 else unit)
    return Panel("bars", spec.title, label, series, "", ylabel, False, spec.ylog)


def _scatter(task, spec: Scatter, rows, by_id, label) -> Panel:
    series = []
    for _, row in rows.iterrows():
        x, y = finite(row.get(f"{spec.x}_mean")), finite(row.get(f"{spec.y}_mean"))
        if x is None or y is None:
            continue
        series.append(Series(row["method"], [x], [y], None, str(row["records"]).split(),
                             row["method"]))  # fmt: skip
    xlabel = spec.xlabel or f"{spec.x} ({task.metric(spec.x).unit})"
    ylabel = spec.ylabel or f"{spec.y} ({task.metric(spec.y).unit})"
    return Panel("scatter", spec.title, label, series, xlabel, ylabel, spec.xlog, spec.ylog)


def _first(row, by_id, key: str) -> tuple[Result, np.ndarray] | None:
    for r in sorted(row_records(row, by_id), key=lambda r: r.seed):
        value = curve(r.curves, key)
        if value is not None:
            try:
                return r, np.asarray(value, dtype=float)
            except (TypeError, ValueError):
                return None
    return None


def _points(task, spec: Points, rows, by_id, label) -> Panel:
    series = []
    for _, row in rows.iterrows():
        found = _first(row, by_id, spec.key)
        if found is None or found[1].ndim != 2 or found[1].shape[1] != 2:
            continue
        r, pts = found
        pts = pts[: spec.max_points]
        series.append(Series(f"{row['method']} (seed {r.seed})", pts[:, 0].tolist(),
                             pts[:, 1].tolist(), None, [r.id], row["method"]))  # fmt: skip
    return Panel("points", spec.title, label, series)


def _images(task, spec: ImageGrid, rows, by_id, label) -> Panel:
    series, grids = [], []
    for _, row in rows.iterrows():
        found = _first(row, by_id, spec.key)
        if found is None:
            continue
        r, arr = found
        grid = image_grid(arr[: spec.max_images], spec.shape, spec.value_range)
        if grid is None:
            continue
        series.append(
            Series(f"{row['method']} (seed {r.seed})", [], [], None, [r.id], row["method"])
        )
        grids.append(grid)
    return Panel("image", spec.title, label, series, images=grids)


_PANELS = {Line: _line, Bars: _bars, Scatter: _scatter, Points: _points, ImageGrid: _images}


def _vector(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.ndim == 1 and arr.size else None


def finite(v: Any) -> float | None:
    """``v`` as a float if it is a finite number, else None (NaN, None, text)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def image_grid(
    arr: np.ndarray, shape: tuple[int, ...] | None, value_range: tuple[float, float] | None
) -> np.ndarray | None:
    """Images as one tiled grid in [0, 1] ((H, W) grey or (H, W, 3) colour), 1-pixel gaps;
    None if ``arr`` cannot be read as images of ``shape``."""
    n = len(arr)
    if n == 0:
        return None
    flat = arr.reshape(n, -1)
    if shape is None:
        side = math.isqrt(flat.shape[1])
        if side * side != flat.shape[1]:
            return None
        shape = (side, side)
    if math.prod(shape) != flat.shape[1]:
        return None
    imgs = flat.reshape(n, *shape)
    if len(shape) == 3:
        imgs = np.moveaxis(imgs, 1, -1)  # channels first (torch) -> last (images)
        if imgs.shape[-1] == 1:
            imgs = imgs[..., 0]
    lo, hi = value_range if value_range is not None else (np.nanmin(imgs), np.nanmax(imgs))
    imgs = np.clip((imgs - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = imgs.shape[1:3]
    grid = np.ones((rows * (h + 1) - 1, cols * (w + 1) - 1, *imgs.shape[3:]))
    for k, img in enumerate(imgs):
        i, j = divmod(k, cols)
        grid[i * (h + 1) : i * (h + 1) + h, j * (w + 1) : j * (w + 1) + w] = img
    return grid


# --- drawing ------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def draw(panel: Panel):
    """A matplotlib Figure of a line, bars, scatter or points panel (light style, transparent)."""
    plt = _pyplot()
    with plt.rc_context(_STYLE):
        n = len(panel.series) if panel.kind == "points" else 1
        fig, axes = plt.subplots(1, n, figsize=(5.2, 3.4 if n == 1 else 5.2 / n + 0.6),
                                 sharex=True, sharey=True, squeeze=False)  # fmt: skip
        axes = axes[0]
        _DRAW[panel.kind](axes, panel)
        ax = axes[0]
        fig.text(0.01, 0.985, panel.title, fontsize=9, ha="left", va="top")
        fig.text(0.01, 0.925, panel.group, fontsize=7, ha="left", va="top", color="#555555")
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        if panel.xlog:
            ax.set_xscale("symlog" if _has_nonpositive(panel, "x") else "log")
        if panel.ylog:
            ax.set_yscale("symlog" if _has_nonpositive(panel, "y") else "log")
        if panel.kind in ("line", "scatter") or (panel.kind == "bars" and len(panel.series) > 1):
            ax.legend(fontsize=7, frameon=False)
        # Fixed margins, not a layout engine: constrained layout draws every figure twice.
        rotated = panel.kind == "bars" and len(panel.series[0].x) > 4
        fig.subplots_adjust(left=0.14 if n == 1 else 0.08, right=0.98, top=0.84,
                            bottom=0.22 if rotated else 0.14, wspace=0.08)  # fmt: skip
    return fig


def _has_nonpositive(panel: Panel, axis: str) -> bool:
    vals = [
        v for s in panel.series for v in (s.x if axis == "x" else s.y) if finite(v) is not None
    ]
    return any(v <= 0 for v in vals)


def _draw_line(axes, panel: Panel) -> None:
    ax = axes[0]
    for s in panel.series:
        colour = s.colour
        x, y = np.asarray(s.x, float), np.asarray(s.y, float)
        ax.plot(x, y, color=colour, lw=1.6, label=s.label, marker="o" if len(x) < 12 else None,
                ms=3)  # fmt: skip
        if s.std is not None:
            sd = np.asarray(s.std, float)
            ax.fill_between(x, y - sd, y + sd, color=colour, alpha=0.18, lw=0)


def _draw_bars(axes, panel: Panel) -> None:
    ax = axes[0]
    ax.set_axisbelow(True)
    ax.grid(axis="x", visible=False)
    methods = panel.series[0].x
    width = 0.8 / len(panel.series)
    pos = np.arange(len(methods))
    for k, s in enumerate(panel.series):
        y = np.array([np.nan if v is None else v for v in s.y], float)
        err = np.array([0.0 if v is None else v for v in (s.std or [])], float)
        ax.bar(pos + (k - (len(panel.series) - 1) / 2) * width, y, width * 0.92,
               yerr=err if len(err) else None, label=s.label,
               color=s.colour if len(panel.series) > 1 else panel.method_colours(methods),
               error_kw={"elinewidth": 1, "capsize": 2, "ecolor": "#333333"})  # fmt: skip
    ax.set_xticks(
        pos,
        methods,
        rotation=30 if len(methods) > 4 else 0,
        ha="right" if len(methods) > 4 else "center",
    )


def _draw_scatter(axes, panel: Panel) -> None:
    for s in panel.series:
        axes[0].scatter(s.x, s.y, color=s.colour, label=s.label, s=28, zorder=3)


def _draw_points(axes, panel: Panel) -> None:
    for ax, s in zip(axes, panel.series, strict=True):
        ax.scatter(s.x, s.y, color=s.colour, s=3, alpha=0.7, lw=0)
        ax.set_title(s.label, fontsize=7)
        ax.set_aspect("equal", adjustable="box")


_DRAW = {"line": _draw_line, "bars": _draw_bars, "scatter": _draw_scatter, "points": _draw_points}

_STYLE = {
    "svg.fonttype": "path",  # glyphs as paths: no font needed where the page is opened
    "svg.hashsalt": "dltbench",  # stable ids: the same records give the same file
    "figure.facecolor": "none",
    "axes.facecolor": "none",
    "savefig.transparent": True,
    "axes.grid": True,
    "grid.color": "#bbbbbb",
    "grid.linewidth": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 8,
}


def svg_uri(panel: Panel) -> str:
    """A panel drawn as a self-contained SVG data URI (glyphs as paths, stable ids)."""
    plt = _pyplot()
    buf = io.BytesIO()
    with plt.rc_context(_STYLE):  # the svg.* settings are read when saving
        fig = draw(panel)
        try:
            fig.savefig(buf, format="svg", metadata={"Date": None})
        finally:
            plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode()


def png_uri(grid: np.ndarray) -> str:
    """An image grid in [0, 1] as a PNG data URI (one pixel per pixel; the page scales it)."""
    import matplotlib.image

    buf = io.BytesIO()
    matplotlib.image.imsave(buf, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png",
                            metadata={"Software": None})  # fmt: skip
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
