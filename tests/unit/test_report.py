"""The report's parts: plot declarations, plot data from records, image grids, escaping, and
the source hash that leaves plots.py out."""

from __future__ import annotations

import importlib
import sys
from functools import cache

import numpy as np
import pytest

from dltbench import leaderboard, registry
from dltbench.cli import report_hint
from dltbench.report import Bars, ImageGrid, Line, ReportError, Scatter, figures, site, specs
from dltbench.tasks.certified import CertifiedTask
from tests.conftest import ROOT
from tests.unit.test_harness import make_record

TASKS = (
    "attack",
    "bnn",
    "certified",
    "diffusion",
    "faceid",
    "gan",
    "ntk",
    "robust",
    "sampler",
    "vae",
)

TASK_PY = """
from dltbench.api import Evaluation, MetricSpec, Task


class TinyTask(Task):
    name = "tiny-report-test"
    primary_metric = "score"
    metrics = (MetricSpec("score", True, "fraction", "a score"),)

    def configs(self, profile):
        return []

    def prepare(self, config, ctx):
        return None

    def fit(self, method, data, config, ctx):
        return None

    def evaluate(self, artifact, data, config, ctx):
        return Evaluation({})
"""


@pytest.fixture
def tiny_package(tmp_path, monkeypatch):
    """A task package on sys.path (not registered): ``(package dir, import function)``."""
    pkg = tmp_path / "tiny_report_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "task.py").write_text(TASK_PY)
    monkeypatch.syspath_prepend(str(tmp_path))

    def load():
        for name in [m for m in sys.modules if m.startswith("tiny_report_pkg")]:
            del sys.modules[name]
        importlib.invalidate_caches()
        return importlib.import_module("tiny_report_pkg.task").TinyTask

    yield pkg, load
    for name in [m for m in sys.modules if m.startswith("tiny_report_pkg")]:
        del sys.modules[name]


def test_task_source_hash_leaves_out_plots_py_and_nothing_else(tiny_package):
    pkg, load = tiny_package
    before = registry.task_source_hash(load())
    (pkg / "plots.py").write_text("PLOTS = []\n")
    assert registry.task_source_hash(load()) == before  # presentation: records stay current
    (pkg / "scores.py").write_text("X = 1\n")
    assert registry.task_source_hash(load()) != before  # any other file is evaluation code


def test_task_source_hash_covers_the_data_files_the_package_ships(tiny_package):
    pkg, load = tiny_package
    (pkg / "reference.json").write_text('{"mean": 0.0}')
    before = registry.task_source_hash(load())
    (pkg / "reference.json").write_text('{"mean": 0.1}')  # new reference: new numbers
    changed = registry.task_source_hash(load())
    assert changed != before
    (pkg / "notes.md").write_text("not shipped as package data")
    assert registry.task_source_hash(load()) == changed


def test_a_task_without_plots_py_gets_its_primary_metric_per_method(tiny_package):
    _, load = tiny_package
    task = load()()
    assert specs.task_plots(task) == specs.default_plots(task)
    assert specs.default_plots(task)[0].metrics == ("score",)


@pytest.mark.parametrize(
    "text, message",
    [
        ("PLOTS = 3", "must be a list"),
        ("PLOTS = [object()]", "is not one of Line"),
        ("from dltbench.report import Bars\nPLOTS = [Bars(metrics=('nope',))]", "no metric 'nope'"),
        ("from dltbench.report import Bars\nPLOTS = [Bars(metrics=())]", "at least one metric"),
        ("from dltbench.report import Bars\nPLOTS = [Bars(metrics=('score',), labels=('a', 'b'))]",
         "2 labels for 1 metrics"),
        ("from dltbench.report import Line\nPLOTS = [Line(y='c', where={'sigma': 1})]",
         "not a setting key"),
    ],
)  # fmt: skip
def test_bad_plot_declarations_are_one_clear_error(tiny_package, text, message):
    pkg, load = tiny_package
    (pkg / "plots.py").write_text(text + "\n")
    with pytest.raises(ReportError, match=message):
        specs.task_plots(load()())


def test_a_plots_py_that_fails_to_import_is_an_error_not_the_default(tiny_package):
    pkg, load = tiny_package
    (pkg / "plots.py").write_text("import no_such_module_xyz\n")
    with pytest.raises(ModuleNotFoundError):
        specs.task_plots(load()())


def test_plots_for_several_tasks_of_one_package_are_a_dict_by_task_name(tiny_package):
    pkg, load = tiny_package
    (pkg / "plots.py").write_text(
        "from dltbench.report import Bars\n"
        "PLOTS = {'tiny-report-test': [Bars(metrics=('score',), title='mine')], 'other': []}\n"
    )
    assert [s.title for s in specs.task_plots(load()())] == ["mine"]


@cache
def committed(name: str) -> site.TaskPage:
    """The report's data (board, records, panels) of a task's committed records."""
    registry.discover(name)
    return site.collect(registry.get_task(name), ROOT / "results")


@pytest.mark.parametrize("name", TASKS)
def test_every_declared_plot_draws_from_the_committed_records(name):
    """Each task's plots.py names curve keys and metrics its records really hold."""
    page = committed(name)
    declared = specs.task_plots(page.task)
    assert declared != specs.default_plots(page.task), f"{name} has no plots.py"
    for spec in declared:
        drawn = figures.panels(page.task, spec, page.board, page.records)
        assert drawn and all(p.series for p in drawn), f"{name}: {spec} draws nothing"


def test_a_line_is_the_mean_of_its_rows_records_curves_and_is_what_matplotlib_draws():
    page = committed("certified")
    lines = [p for p in page.panels if p.kind == "line"]
    # certified accuracy vs radius: one per setting; the l-inf ACR vs dimension: one
    assert len(lines) == len(page.task.configs("quick")) + 1
    for panel in [p for p in lines if p.title == "Certified accuracy vs radius"]:
        setting = dict(part.split("=") for part in panel.group.split(" · ")[1:])
        for s in panel.series:
            keep = page.board["method"] == s.method
            for key, value in setting.items():
                keep &= page.board[key].astype(str) == value
            row = page.board[keep]
            assert len(row) == 1
            assert s.records == str(row["records"].iloc[0]).split()
            recs = [page.records[i] for i in s.records]
            assert s.x == recs[0].curves["radius"]
            curves = np.array([r.curves["certified_accuracy"] for r in recs])
            np.testing.assert_allclose(s.y, curves.mean(axis=0), rtol=1e-12)
            np.testing.assert_allclose(s.std, curves.std(axis=0, ddof=1), rtol=1e-12)
        fig = figures.draw(panel)
        try:
            drawn = {ln.get_label(): ln.get_xydata() for ln in fig.axes[0].get_lines()}
        finally:
            figures._pyplot().close(fig)
        for s in panel.series:
            np.testing.assert_allclose(drawn[s.label], np.column_stack([s.x, s.y]))


def test_bars_are_the_leaderboard_means_and_stds():
    page = committed("vae")
    bars = [p for p in page.panels if p.kind == "bars"]
    assert bars
    board = page.board
    for s in bars[0].series:
        metric = {"NLL (IWAE bound)": "nll_bpd", "negative ELBO": "elbo_bpd"}[s.label]
        assert s.x == list(board["method"])
        np.testing.assert_allclose(np.array(s.y, float), board[f"{metric}_mean"], rtol=1e-12)
        np.testing.assert_allclose(np.array(s.std, float), board[f"{metric}_std"], rtol=1e-12)


def test_digit_samples_become_a_grid_of_the_records_images():
    page = committed("diffusion")
    grids = [p for p in page.panels if p.kind == "image"]
    assert len(grids) == 3  # DDIM, DDPM and classifier-free guided samples, digits only
    panel = grids[0]
    rec = page.records[panel.series[0].records[0]]
    first = np.asarray(rec.curves["samples"]["ddim"][0], float).reshape(8, 8) / 16
    assert panel.images[0].shape == (8 * 9 - 1, 8 * 9 - 1)  # 64 images of 8x8, 1-pixel gaps
    np.testing.assert_allclose(panel.images[0][:8, :8], first)


def test_image_grid_layout_ranges_and_shapes():
    imgs = np.arange(12, dtype=float).reshape(3, 4)  # three 2x2 images
    grid = figures.image_grid(imgs, None, (0, 11))
    assert grid.shape == (5, 5)
    np.testing.assert_allclose(grid[:2, :2], [[0, 1 / 11], [2 / 11, 3 / 11]])
    np.testing.assert_allclose(grid[3:, :2], [[8 / 11, 9 / 11], [10 / 11, 1]])
    assert (grid[3:, 3:] == 1).all() and (grid[2, :] == 1).all()  # empty cell and gaps
    assert figures.image_grid(np.zeros((2, 3)), None, None) is None  # not square
    colour = figures.image_grid(np.random.default_rng(0).random((2, 3 * 2 * 2)), (3, 2, 2), None)
    assert colour.shape == (2, 5, 3) and colour.min() >= 0 and colour.max() <= 1


def test_points_need_an_n_by_2_curve():
    page = committed("diffusion")
    points = [p for p in page.panels if p.kind == "points"]
    assert {p.group.split("=")[-1] for p in points} == {"gmm8", "rings"}
    s = points[0].series[0]
    rec = page.records[s.records[0]]
    assert s.x == [p[0] for p in rec.curves["samples"]["ddim"]]


def test_text_from_records_is_escaped_on_the_page():
    """A plugin names its own method: its name must not become markup or end the JSON block."""
    evil = "<img src=x onerror=alert(1)></script><script>alert(2)</script>"
    task = CertifiedTask()
    recs = [make_record(id=f"e{s}", method=evil, seed=s, metrics={"acr": 0.5 + s / 10},
                        curves={"radius": [0, 1], "certified_accuracy": [0.9, 0.1]})
            for s in range(2)]  # fmt: skip
    board = leaderboard.build(task, recs)
    page = site.TaskPage(task, board, {r.id: r for r in recs})
    for spec in [Line(x="radius", y="certified_accuracy"), Bars(metrics=("acr",))]:
        page.panels += figures.panels(task, spec, board, page.records)
    html = site.task_page(page, "", "results")
    assert "<img src=x" not in html and "<script>alert" not in html
    assert html.count("</script>") == html.count("<script")  # only the page's own
    index = site.index_page([page], "", "results")
    assert "<img src=x" not in index


def test_scatter_of_two_metrics_and_where_filters():
    page = committed("attack")
    spec = Scatter(x="forwards_per_point", y="robust_acc", where={"norm": "l2"})
    drawn = figures.panels(page.task, spec, page.board, page.records)
    assert len(drawn) == 1 and "norm=l2" in drawn[0].group
    assert len(drawn[0].series) == len(page.board[page.board["norm"] == "l2"])
    assert not figures.panels(page.task, ImageGrid(key="nope"), page.board, page.records)


def test_run_says_where_the_report_would_be_and_how_to_make_it():
    from pathlib import Path

    assert report_hint("certified", Path("results")) == (
        "report: report/certified.html (make it: dltbench report --task certified --out report)"
    )
    assert "--results-dir /tmp/r " in report_hint("certified", Path("/tmp/r"))


def test_records_not_signed_by_the_harness_are_not_in_the_report(tmp_path):
    """The report reads what the leaderboard reads: an edited record is neither a row nor a
    line of a plot, and the page says it was skipped."""
    import json
    import shutil

    results = tmp_path / "results"
    results.mkdir()
    shutil.copy2(ROOT / "results" / ".dltbench-key", results)
    lines = (ROOT / "results" / "certified.jsonl").read_text().splitlines()
    forged = json.loads(lines[0])
    forged["metrics"]["acr"] = 0.99
    (results / "certified.jsonl").write_text("\n".join([json.dumps(forged), *lines[1:]]) + "\n")
    page = site.collect(registry.get_task("certified"), results)
    assert forged["id"] not in page.records
    assert forged["id"] not in " ".join(page.board["records"])
    assert all(forged["id"] not in s.records for p in page.panels for s in p.series)
    assert "1 not written by the harness" in site.task_page(page, "", results)
