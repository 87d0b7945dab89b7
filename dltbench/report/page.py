"""HTML pieces of the report: one self-contained page skeleton (inline CSS and JS, no network).

Everything that comes from a record (method names, settings, reasons, versions) is escaped:
a plugin names its own method, so its name is untrusted text.
"""

from __future__ import annotations

import json
import re
from html import escape
from typing import Any

#: No resource may come from anywhere but the page itself: a stray URL is an error the browser
#: reports (and the browser test catches), not a silent request.
CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)

CSS = """
:root { color-scheme: light dark; --bg: #ffffff; --fg: #1b1b1b; --muted: #5f6368;
  --line: #d8dde3; --head: #f3f5f7; --accent: #0b5cad; --best: #e6f4ea; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #121416; --fg: #e8e8e8; --muted: #a7adb4; --line: #343a40; --head: #1d2125;
    --accent: #8ab8ff; --best: #1e3323; }
  /* Plots are drawn dark-on-transparent; inverting keeps hues and makes the ink light. */
  img.plot { filter: invert(1) hue-rotate(180deg); }
}
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1200px; padding: 0.75rem 1rem 3rem; background: var(--bg);
  color: var(--fg); font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; }
a { color: var(--accent); }
nav { font-size: 0.9rem; margin-bottom: 0.5rem; display: flex; flex-wrap: wrap; gap: 0.25rem 0.9rem; }
h1 { font-size: 1.5rem; margin: 0.5rem 0; } h2 { font-size: 1.2rem; margin-top: 2rem; }
h3 { font-size: 1rem; margin: 1.4rem 0 0.4rem; }
.muted, figcaption, .note { color: var(--muted); font-size: 0.85rem; }
code { font-size: 0.85em; overflow-wrap: anywhere; }
.table-scroll { overflow-x: auto; max-width: 100%; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; font-size: 0.85rem; font-variant-numeric: tabular-nums; }
th, td { padding: 0.3rem 0.55rem; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
thead th { background: var(--head); position: sticky; top: 0; white-space: nowrap; }
td.num { text-align: right; white-space: nowrap; }
td.method { white-space: nowrap; }
td.primary, th.primary { font-weight: 600; }
tr.rank-1 td { background: var(--best); }
th button { all: unset; cursor: pointer; }
th button:focus-visible { outline: 2px solid var(--accent); }
th[aria-sort="ascending"] button::after { content: " \\25B2"; }
th[aria-sort="descending"] button::after { content: " \\25BC"; }
details > summary { cursor: pointer; color: var(--accent); white-space: nowrap; }
details dl { margin: 0.3rem 0; display: grid; grid-template-columns: max-content auto;
  gap: 0 0.6rem; font-size: 0.8rem; }
details dt { color: var(--muted); } details dd { margin: 0; overflow-wrap: anywhere; }
.plots { display: grid; gap: 1rem;
  grid-template-columns: repeat(auto-fill, minmax(min(100%, 440px), 1fr)); }
figure { margin: 0; min-width: 0; }
img.plot { width: 100%; height: auto; display: block; }
.grids { display: grid; gap: 1rem;
  grid-template-columns: repeat(auto-fill, minmax(min(100%, 220px), 1fr)); }
img.samples { width: 100%; height: auto; image-rendering: pixelated; display: block;
  border: 1px solid var(--line); }
ul.tasks { padding-left: 1.1rem; }
table.legend td:first-child { white-space: nowrap; }
table.legend td:last-child { min-width: 14rem; }
"""

#: Click a column's header to sort its table by it (numbers as numbers, blanks last);
#: click again to reverse. Sorting one group's table leaves the others alone.
SORTER_JS = """
(function () {
  function key(row, i) {
    var cell = row.cells[i];
    var v = cell.hasAttribute('data-sort') ? cell.getAttribute('data-sort') : cell.textContent.trim();
    if (v === '') return null;
    var n = Number(v);
    return isNaN(n) ? v : n;
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, i) {
      var button = th.querySelector('button');
      if (!button) return;
      button.addEventListener('click', function () {
        var dir = th.getAttribute('aria-sort') === 'ascending' ? -1 : 1;
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', dir === 1 ? 'ascending' : 'descending');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a, i), y = key(b, i);
          if (x === null || y === null) return (x === null) - (y === null);
          if (typeof x === 'number' && typeof y === 'number') return (x - y) * dir;
          return String(x).localeCompare(String(y)) * dir;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""


def page(title: str, nav: str, body: str) -> str:
    """A whole HTML document: ``body`` with the report's style, sorter and navigation."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="color-scheme" content="light dark">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<nav>{nav}</nav>\n{body}\n<script>{SORTER_JS}</script>\n</body>\n</html>\n"
    )


def slug(text: str) -> str:
    """A file-name and anchor-safe form of ``text`` (letters, digits, ``.``, ``_``, ``-``)."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")
    return out or "x"


def json_script(data: Any, cls: str) -> str:
    """``data`` as an inert JSON script element (``<`` escaped so no text can close it)."""
    text = json.dumps(data, allow_nan=False, default=str).replace("<", "\\u003c")
    return f'<script type="application/json" class="{cls}">{text}</script>'


def dl(items: list[tuple[str, str]]) -> str:
    """A definition list of (term, already-escaped HTML) pairs."""
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"
