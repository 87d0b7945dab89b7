"""``dltbench report``: a static HTML site of leaderboards, plots and provenance, from records alone.

A task declares its plots in ``<task package>/plots.py`` (``PLOTS``, a list of the specs
exported here); see docs/report.md.
"""

from .site import build_site
from .specs import Bars, ImageGrid, Line, Points, ReportError, Scatter, task_plots

__all__ = [
    "Bars",
    "ImageGrid",
    "Line",
    "Points",
    "ReportError",
    "Scatter",
    "build_site",
    "task_plots",
]
