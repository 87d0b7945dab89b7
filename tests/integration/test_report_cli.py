"""`dltbench report` end to end: built from the committed records, then loaded in a real browser.

The browser test drives headless Chromium over the DevTools pipe (tests/integration/cdp.py):
every page loads with no console error, every image decodes and is non-empty, every table has
its leaderboard group's rows, every link resolves, the sorter sorts, the page does not scroll
sideways at phone width, the dark scheme is dark, and screenshots of every page (phone,
desktop, dark) go to the folder the test prints (DLTBENCH_REPORT_SCREENSHOTS to choose it).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pytest

from dltbench import leaderboard, registry
from dltbench.cli import main
from dltbench.report import figures
from dltbench.store import load_results
from tests.conftest import ROOT
from tests.integration.cdp import Browser, find_chromium
from tests.unit.test_report import TASKS


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict:
    """The report of the committed records (a copy, so no lock file lands in the checkout)."""
    base = tmp_path_factory.mktemp("report")
    results = base / "results"
    results.mkdir()
    for f in [*sorted((ROOT / "results").glob("*.jsonl")), ROOT / "results" / ".dltbench-key"]:
        shutil.copy2(f, results / f.name)
    out = base / "site"
    assert main(["report", "--results-dir", str(results), "--out", str(out)]) == 0
    boards = {}
    for name in TASKS:
        task = registry.get_task(name)
        boards[name] = (task, leaderboard.from_results(task, results))
    return {"out": out, "results": results, "boards": boards}


class _Tables(HTMLParser):
    """The rows (data attributes) of each leaderboard table of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[dict[str, str]]] = {}
        self._group: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "leaderboard" in (a.get("class") or ""):
            self._group = a["data-group"]
            self.tables[self._group] = []
        elif tag == "tr" and self._group is not None and "data-method" in a:
            self.tables[self._group].append(a)

    def handle_endtag(self, tag):
        if tag == "table":
            self._group = None


def expected_tables(task, board) -> dict[str, list[tuple[str, str, str]]]:
    """Per group label, the (method, rank, records) of the leaderboard's rows in order."""
    out = {}
    for profile, setting, rows in figures.groups(task, board):
        out[figures.group_label(task, profile, setting)] = [
            (r["method"], "" if pd.isna(r["rank"]) else str(int(r["rank"])), r["records"])
            for _, r in rows.iterrows()
        ]  # fmt: skip
    return out


def test_report_writes_an_index_and_a_page_per_task_with_the_leaderboard_rows(site, capsys):
    out = site["out"]
    assert sorted(p.name for p in out.glob("*.html")) == sorted(
        ["index.html", *(f"{t}.html" for t in TASKS)]
    )
    index = (out / "index.html").read_text()
    for name, (task, board) in site["boards"].items():
        assert f'href="{name}.html"' in index and task.description.split()[0] in index
        best = board[board["rank"] == 1]["method"]
        assert all(f"<strong>{m}</strong>" in index for m in best)
        parser = _Tables()
        parser.feed((out / f"{name}.html").read_text())
        got = {
            g: [(r["data-method"], r["data-rank"], r["data-records"]) for r in rows]
            for g, rows in parser.tables.items()
        }
        assert got == expected_tables(task, board), name
    # Self-contained: no URL of another origin anywhere (scripts, fonts, images).
    for page in out.glob("*.html"):
        assert not re.search(r"(src|href)=\"(https?:)?//", page.read_text()), page.name


def test_report_of_unknown_task_or_no_records_is_one_line(tmp_path, capsys):
    assert main(["report", "--task", "nope", "--results-dir", str(tmp_path)]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert main(["report", "--results-dir", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no records" in capsys.readouterr().err


def test_plot_data_in_the_page_equals_the_records_curves(site):
    """What the certified page says it draws is the mean of the records' own curves."""
    html = (site["out"] / "certified.html").read_text()
    blobs = re.findall(r'<script type="application/json" class="plot-data">(.*?)</script>', html)
    lines = [d for d in map(json.loads, blobs)
             if d["kind"] == "line" and d["title"] == "Certified accuracy vs radius"]  # fmt: skip
    assert lines
    records = {r.id: r for r in load_results(site["results"], "certified").records}
    for d in lines:
        for s in d["series"]:
            recs = [records[i] for i in s["records"]]
            assert recs and {r.method for r in recs} == {s["label"]}
            assert s["x"] == recs[0].curves["radius"]
            mean = np.mean([r.curves["certified_accuracy"] for r in recs], axis=0)
            np.testing.assert_allclose(s["y"], mean, rtol=1e-12)


# --- the browser --------------------------------------------------------------------------

CHECK_JS = """
(async () => {
  const imgs = Array.from(document.images);
  const decoded = await Promise.all(imgs.map(i => i.decode().then(() => true, () => false)));
  return {
    images: imgs.map((i, k) => ({alt: i.alt, w: i.naturalWidth, h: i.naturalHeight,
                                 decoded: decoded[k]})),
    tables: Array.from(document.querySelectorAll('table.leaderboard')).map(t => ({
      group: t.dataset.group,
      rows: Array.from(t.tBodies[0].rows).map(r => [r.dataset.method, r.dataset.rank,
                                                    r.dataset.records])})),
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
    ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    background: getComputedStyle(document.body).backgroundColor,
  };
})()
"""

SORT_JS = """
(() => {
  const t = document.querySelector('table.leaderboard');
  const th = t.querySelector('th.primary button');
  const col = Array.from(t.tHead.rows[0].cells).findIndex(c => c.contains(th));
  const read = () => Array.from(t.tBodies[0].rows).map(r => r.cells[col].dataset.sort);
  th.click(); const up = read();
  th.click(); const down = read();
  return {up, down};
})()
"""


def _not_blank(png: bytes) -> bool:
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    return img.size > 0 and img.std() > 5.0 and len(np.unique(img)) > 16


def _brightness(css: str) -> float:
    r, g, b = (int(v) for v in re.findall(r"\d+", css)[:3])
    return (r + g + b) / 3


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = find_chromium()
    if binary is None:
        pytest.skip(
            "no Chromium binary (chromium, chromium-browser, google-chrome; or set "
            "DLTBENCH_CHROMIUM): install Debian's `chromium` package to run the browser test"
        )
    b = Browser(binary, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def test_every_page_loads_in_chromium_clean_complete_and_phone_usable(site, browser,
                                                                       tmp_path_factory):  # fmt: skip
    shots = Path(os.environ.get("DLTBENCH_REPORT_SCREENSHOTS") or
                 tmp_path_factory.mktemp("report-screenshots"))  # fmt: skip
    shots.mkdir(parents=True, exist_ok=True)
    print(f"report screenshots: {shots}")
    out = site["out"]
    pages = sorted(out.glob("*.html"))
    ids: dict[Path, set[str]] = {}
    links: list[tuple[str, str]] = []
    for mode, (width, height, mobile, dark) in {
        "phone": (390, 844, True, False), "desktop": (1280, 900, False, False),
        "dark": (390, 844, True, True),
    }.items():  # fmt: skip
        browser.viewport(width, height, mobile, dark)
        for page in pages:
            where = f"{page.name} ({mode}; screenshots in {shots})"
            errors = browser.load(page.as_uri())
            assert errors == [], f"{where}: {errors}"
            got = browser.evaluate(CHECK_JS)
            bad = [i for i in got["images"] if not (i["decoded"] and i["w"] > 0 and i["h"] > 0)]
            assert not bad, f"{where}: images that do not decode or are empty: {bad}"
            if page.stem in site["boards"]:
                assert got["images"], f"{where}: no plots"
                task, board = site["boards"][page.stem]
                tables = {t["group"]: [tuple(r) for r in t["rows"]] for t in got["tables"]}
                assert tables == expected_tables(task, board), where
            assert got["scrollWidth"] <= got["innerWidth"] + 1, (
                f"{where}: the page scrolls sideways ({got['scrollWidth']} > {got['innerWidth']})"
            )
            bright = _brightness(got["background"])
            assert (bright < 60) if dark else (bright > 200), f"{where}: {got['background']}"
            ids[page] = set(got["ids"])
            links += [(page.name, href) for href in got["links"]]
            png = browser.screenshot(shots / f"{mode}-{page.stem}.png", full_page=mode == "phone")
            assert _not_blank(png), f"{where}: the screenshot is blank"
    assert browser.errors() == []
    for source, href in links:
        url = urlparse(href)
        assert url.scheme == "file", f"{source} links outside the report: {href}"
        target = Path(unquote(url.path))
        assert target in ids, f"{source} links to {href}, which is not a page of the report"
        assert not url.fragment or url.fragment in ids[target], f"{source}: {href}"


def test_the_tables_sort_in_chromium(site, browser):
    browser.viewport(1280, 900)
    assert browser.load((site["out"] / "certified.html").as_uri()) == []
    got = browser.evaluate(SORT_JS)
    up = [float(v) for v in got["up"]]
    assert up == sorted(up) and [float(v) for v in got["down"]] == sorted(up, reverse=True)


@pytest.mark.slow  # a real smoke run (sandboxed cells): ~10 s; report_hint itself is unit-tested
def test_run_says_where_the_report_goes_and_the_report_reads_fresh_records(dirs, tmp_path, capsys):
    """A fresh smoke run (one seed: no std) prints the report line; the report builds from it."""
    args = ["--results-dir", str(dirs["results"])]
    rc = main(["run", "--task", "certified", "--smoke", "--method", "standard", *args,
               "--leaderboard-dir", str(dirs["leaderboards"])])  # fmt: skip
    assert rc == 0
    err = capsys.readouterr().err
    assert (f"report: report/certified.html (make it: dltbench report --task certified "
            f"--results-dir {dirs['results']} --out report)") in err  # fmt: skip
    out = tmp_path / "site"
    assert main(["report", "--task", "certified", *args, "--out", str(out)]) == 0
    page = (out / "certified.html").read_text()
    assert page.count('data-method="standard"') == 2  # one row per sigma
    assert "quick-smoke" in page and 'class="plot"' in page
