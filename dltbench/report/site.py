"""Build the static report from the records alone: ``index.html`` and one ``<task>.html`` each.

Nothing is rerun: the leaderboards are :func:`dltbench.leaderboard.from_results` of the signed
records, and every plot draws the curves of the records behind the rows it shows.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import pandas as pd

from .. import __version__, leaderboard, registry
from ..api import Result, Task
from ..store import atomic_write_text, load_results, results_path
from . import figures
from .page import dl, json_script, page, slug
from .specs import task_plots

#: Leaderboard columns that are not shown as their own table column (they are in the
#: group heading, the provenance cell, or are a metric's std shown with its mean).
_HIDDEN = {"rank", "method", "method_version", "profile", "n_seeds", "seeds", "records",
           "config_hash", "eligible"}  # fmt: skip


@dataclass
class TaskPage:
    """What the report made of one task: its board, its pictures, and where the page went."""

    task: Task
    board: pd.DataFrame
    records: dict[str, Result]
    panels: list[figures.Panel] = field(default_factory=list)
    path: Path | None = None


def page_name(task_name: str) -> str:
    """The file name of a task's page."""
    return f"{slug(task_name)}.html"


def tasks_with_records(results_dir: str | Path) -> list[str]:
    """Registered tasks that have a records file in ``results_dir``, sorted."""
    return [n for n in registry.task_names() if results_path(results_dir, n).exists()]


def collect(task: Task, results_dir: str | Path) -> TaskPage:
    """The leaderboard of ``task``, its signed records by id and its plot panels."""
    board = leaderboard.from_results(task, results_dir)
    records = {r.id: r for r in load_results(results_dir, task.name).records}
    out = TaskPage(task, board, records)
    if not board.empty:
        for spec in task_plots(task):
            out.panels += figures.panels(task, spec, board, records)
    return out


def build_site(
    results_dir: str | Path, out_dir: str | Path, tasks: list[str] | None = None
) -> list[Path]:
    """Write the report of ``tasks`` (default: every task with records) to ``out_dir``.

    Returns the written pages, ``index.html`` first.
    """
    names = tasks if tasks is not None else tasks_with_records(results_dir)
    out = Path(out_dir)
    pages = []
    for name in names:
        registry.discover(name)
        pages.append(collect(registry.get_task(name), results_dir))
    nav = _nav(pages)
    for p in pages:
        p.path = out / page_name(p.task.name)
        atomic_write_text(p.path, task_page(p, nav, results_dir))
    index = out / "index.html"
    atomic_write_text(index, index_page(pages, nav, results_dir))
    return [index] + [p.path for p in pages if p.path is not None]


def _nav(pages: list[TaskPage]) -> str:
    links = ['<a href="index.html">all tasks</a>']
    links += [f'<a href="{page_name(p.task.name)}">{escape(p.task.name)}</a>' for p in pages]
    return "".join(links)


# --- the index ----------------------------------------------------------------------------


def index_page(pages: list[TaskPage], nav: str, results_dir: str | Path) -> str:
    """The index: per task what it measures and the best method of each setting."""
    items = []
    for p in pages:
        t = p.task
        spec = t.metric(t.primary_metric)
        best = []
        for profile, setting, rows in figures.groups(t, p.board):
            top = rows[rows["rank"] == 1]
            winners = (
                ", ".join(
                    f"<strong>{escape(str(r['method']))}</strong> "
                    f"({escape(_cell(r, t.primary_metric))})"
                    for _, r in top.iterrows()
                )
                or "no ranked row"
            )
            best.append(f"<li>{escape(figures.group_label(t, profile, setting))}: {winners}</li>")
        items.append(
            f'<section><h2><a href="{page_name(t.name)}">{escape(t.name)}</a></h2>'
            f"<p>{escape(t.description)}</p>"
            f'<p class="muted">ranked by <code>{escape(t.primary_metric)}</code> '
            f"({escape(spec.direction)} is better, {escape(spec.unit)}); "
            f"{len(p.board)} rows from {len(p.records)} signed records</p>"
            f'<ul class="tasks">{"".join(best) or "<li>no successful records yet</li>"}</ul>'
            "</section>"
        )
    body = (
        "<h1>dltbench report</h1>"
        f'<p class="muted">Built by <code>dltbench report</code> (dltbench {escape(__version__)}) '
        f"from the signed records in <code>{escape(str(results_dir))}</code> alone; nothing "
        "was rerun. The best method of each setting is its rank-1 row (mean ± sample std over "
        "seeds).</p>" + "".join(items)
    )
    return page("dltbench report", nav, body)


def _cell(row: pd.Series, metric: str) -> str:
    return leaderboard._pm(row.get(f"{metric}_mean"), row.get(f"{metric}_std"))


# --- a task's page ------------------------------------------------------------------------


def task_page(p: TaskPage, nav: str, results_dir: str | Path) -> str:
    """A task's page: what it measures, its plots, its samples, its tables with provenance."""
    t = p.task
    spec = t.metric(t.primary_metric)
    plots = [x for x in p.panels if x.kind != "image"]
    grids = [x for x in p.panels if x.kind == "image"]
    body = [
        f"<h1>{escape(t.name)}</h1><p>{escape(t.description)}</p>",
        f'<p class="muted">Task version {escape(str(t.version))}. Ranked by '
        f"<code>{escape(t.primary_metric)}</code> ({escape(spec.direction)} is better) within "
        "each profile and setting; mean ± sample std over seeds. Built from "
        f"<code>{escape(str(results_path(results_dir, t.name)))}</code> alone.</p>",
    ]
    if leaderboard.skipped_line(p.board):
        body.append(f'<p class="note">{escape(leaderboard.skipped_line(p.board))}</p>')
    if plots:
        body.append('<h2 id="plots">Plots</h2><div class="plots">')
        body += [_figure(x) for x in plots]
        body.append("</div>")
    if grids:
        body.append('<h2 id="samples">Samples</h2>')
        body += [_grids(x) for x in grids]
    body.append('<h2 id="leaderboard">Leaderboard</h2>')
    if p.board.empty:
        body.append("<p>No successful records yet.</p>")
    for profile, setting, rows in figures.groups(t, p.board):
        label = figures.group_label(t, profile, setting)
        body.append(f'<h3 id="g-{slug(label)}">{escape(label)}</h3>')
        body.append(_table(p, label, rows))
    body.append(_legend(t, p.board))
    return page(f"dltbench: {t.name}", nav, "\n".join(body))


def _figure(panel: figures.Panel) -> str:
    uri = figures.svg_uri(panel)
    alt = f"{panel.title} ({panel.group})" if panel.title else panel.group
    n = len({i for s in panel.series for i in s.records})
    return (
        f'<figure><img class="plot" src="{uri}" alt="{escape(alt)}">'
        f"<figcaption>{escape(alt)}: from {n} record{'s' if n != 1 else ''}; "
        "ids and numbers in the JSON next to it.</figcaption>"
        f"{json_script(panel.data(), 'plot-data')}</figure>"
    )


def _grids(panel: figures.Panel) -> str:
    title = f"{panel.title} ({panel.group})" if panel.title else panel.group
    cells = "".join(
        f'<figure><img class="samples" src="{figures.png_uri(g)}" '
        f'alt="{escape(s.label)}: {escape(title)}"><figcaption>{escape(s.label)} '
        f"(record <code>{escape(s.records[0])}</code>)</figcaption></figure>"
        for s, g in zip(panel.series, panel.images, strict=True)
    )
    return (
        f'<h3>{escape(title)}</h3><div class="grids">{cells}</div>'
        f"{json_script(panel.data(), 'plot-data')}"
    )


def _metric_columns(t: Task, rows: pd.DataFrame) -> list[str]:
    names = [m.name for m in t.metrics if f"{m.name}_mean" in rows.columns]
    return [t.primary_metric] + [n for n in names if n != t.primary_metric]


def _table(p: TaskPage, label: str, rows: pd.DataFrame) -> str:
    t = p.task
    metrics = _metric_columns(t, rows)
    std_cols = {f"{m.name}_{s}" for m in t.metrics for s in ("mean", "std")}
    extra = [c for c in rows.columns
             if c not in _HIDDEN and c not in std_cols and c not in t.setting_keys]  # fmt: skip
    head = ['<th><button type="button">rank</button></th>',
            '<th><button type="button">method</button></th>']  # fmt: skip
    for m in metrics:
        spec = t.metric(m)
        arrow = {"higher": " \u2191", "lower": " \u2193"}.get(spec.direction, "")
        cls = ' class="primary"' if m == t.primary_metric else ""
        head.append(f'<th{cls} title="{escape(spec.description)} ({escape(spec.unit)}, '
                    f'{escape(spec.direction)} is better)"><button type="button">'
                    f"{escape(m)}{arrow}</button></th>")  # fmt: skip
    head += [f'<th><button type="button">{escape(c)}</button></th>' for c in ["n_seeds", *extra]]
    head.append("<th>provenance</th>")
    body = []
    for _, row in rows.iterrows():
        rank = row["rank"]
        ranked = not pd.isna(rank)
        cells = [
            f'<td class="num" data-sort="{int(rank) if ranked else ""}">'
            f"{int(rank) if ranked else '-'}</td>",
            f'<td class="method">{escape(str(row["method"]))}</td>',
        ]
        for m in metrics:
            mean = figures.finite(row.get(f"{m}_mean"))
            cls = "num primary" if m == t.primary_metric else "num"
            cells.append(f'<td class="{cls}" data-sort="{"" if mean is None else repr(mean)}">'
                         f"{escape(_cell(row, m))}</td>")  # fmt: skip
        cells.append(f'<td class="num">{int(row["n_seeds"])}</td>')
        cells += [f"<td>{escape(_text(row.get(c)))}</td>" for c in extra]
        cells.append(f"<td>{_provenance(row, p.records)}</td>")
        rank_cls = f' class="rank-{int(rank)}"' if ranked else ""
        body.append(
            f'<tr{rank_cls} data-method="{escape(str(row["method"]))}" '
            f'data-rank="{int(rank) if ranked else ""}" data-records="{escape(str(row["records"]))}">'
            + "".join(cells)
            + "</tr>"
        )
    return (
        f'<div class="table-scroll"><table class="leaderboard sortable" '
        f'data-task="{escape(t.name)}" data-group="{escape(label)}"><thead><tr>{"".join(head)}'
        f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _text(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v)


def _provenance(row: pd.Series, by_id: Mapping[str, Result]) -> str:
    recs = figures.row_records(row, by_id)
    if not recs:
        return ""

    def values(get) -> str:
        counts = Counter(str(get(r)) for r in recs)
        return escape(", ".join(v if n == len(recs) else f"{v} ({n})" for v, n in counts.items()))

    items = [
        ("records", "<br>".join(
            f"<code>{escape(r.id)}</code> seed {r.seed}, {escape(r.timestamp)}, "
            f"{r.wall_time_s:.1f} s" for r in recs)),
        ("profile", values(lambda r: r.profile)),
        ("method", values(lambda r: f"{r.method} v{r.method_version} ({r.method_origin})")),
        ("commit", values(lambda r: r.git_commit or "unknown")),
        ("dltbench", values(lambda r: r.dltbench_version)),
        ("task", values(lambda r: f"v{r.task_version}, source {r.task_source_hash}")),
        ("python, torch", values(lambda r: f"{r.python_version}, {r.torch_version}")),
        ("device", values(lambda r: r.device)),
        ("config", values(lambda r: r.config_hash)),
        ("sandbox", values(lambda r: r.isolation.get("sandbox", "unknown"))),
    ]  # fmt: skip
    n = len(recs)
    return f"<details><summary>{n} record{'s' if n != 1 else ''}</summary>{dl(items)}</details>"


def _legend(t: Task, board: pd.DataFrame) -> str:
    rows = "".join(
        f"<tr><td><code>{escape(m.name)}</code></td><td>{escape(m.direction)}</td>"
        f"<td>{escape(m.unit)}</td><td>{escape(m.description)}</td></tr>"
        for m in t.metrics
        if board.empty or f"{m.name}_mean" in board.columns
    )
    return (
        '<h2 id="metrics">Metrics</h2><div class="table-scroll"><table class="legend">'
        "<thead><tr><th>metric</th><th>better</th><th>unit</th><th>meaning</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div>"
    )
