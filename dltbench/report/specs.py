"""What a task declares about its plots: ``PLOTS`` in its package's ``plots.py``.

A task package may hold a ``plots.py`` next to its ``task.py`` whose ``PLOTS`` is a list of
the specs below (or, for a package holding several tasks, a dict from task name to such a
list). The report imports it; the harness never does, and ``registry.task_source_hash``
leaves it out (it draws numbers records already hold; it computes none).

Every spec draws from the leaderboard's rows, and through each row's ``records`` column from
exactly the records behind that row: one panel per (profile, setting), narrowed by ``where``.
Curve keys are dotted paths into a record's ``curves`` (``"eps_curve.pgd_acc"``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..api import Task


class ReportError(ValueError):
    """A task's plot declarations are not what the report can draw (the message says which)."""


@dataclass(frozen=True)
class Line:
    """Curve ``y`` against curve ``x`` (its index if None): one line per method, the mean over
    the row's seeds, with a band of one sample std where there are several."""

    y: str
    x: str | None = None
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    xlog: bool = False
    ylog: bool = False
    where: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Bars:
    """Leaderboard means of ``metrics`` per method (error bars: the sample std over seeds);
    several metrics are grouped side by side, labelled ``labels`` (default: their names)."""

    metrics: tuple[str, ...]
    title: str = ""
    ylabel: str = ""
    labels: tuple[str, ...] = ()
    ylog: bool = False
    where: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scatter:
    """Leaderboard mean of metric ``y`` against metric ``x``, one point per method (e.g. a
    cost-quality trade-off)."""

    x: str
    y: str
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    xlog: bool = False
    ylog: bool = False
    where: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Points:
    """A curve holding 2-D points (an (n, 2) array, e.g. generated samples): one scatter per
    method, from the row's lowest seed, at most ``max_points`` of them."""

    key: str
    title: str = ""
    max_points: int = 1000
    where: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageGrid:
    """A curve holding images (an (n, H*W) or (n, C*H*W) array, or (n, H, W[, C])): a grid of
    the first ``max_images`` per method, from the row's lowest seed.

    ``shape`` is (H, W) or (C, H, W), channels first as torch stores them; None means square
    grey images. ``value_range`` is what maps to black and white; None means each grid's
    own min and max.
    """

    key: str
    title: str = ""
    shape: tuple[int, ...] | None = None
    value_range: tuple[float, float] | None = None
    max_images: int = 64
    where: Mapping[str, Any] = field(default_factory=dict)


Spec = Line | Bars | Scatter | Points | ImageGrid
SPEC_TYPES: tuple[type, ...] = (Line, Bars, Scatter, Points, ImageGrid)


def plots_module_name(task: Task) -> str | None:
    """The dotted name of the ``plots`` module next to the task's class (None outside a package)."""
    module = inspect.getmodule(type(task))
    package = module.__package__ if module is not None else None
    return f"{package}.plots" if package else None


def default_plots(task: Task) -> list[Spec]:
    """What a task without a ``plots.py`` gets: its primary metric per method."""
    return [Bars(metrics=(task.primary_metric,), title=f"{task.primary_metric} per method")]


def task_plots(task: Task) -> list[Spec]:
    """The plots ``task`` declares in its package's ``plots.py``, checked; the default if none."""
    name = plots_module_name(task)
    if name is None:  # a task defined in a lone module has nowhere to keep a plots.py
        return default_plots(task)
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:  # no plots.py; a plots.py that fails to import is an error
            return default_plots(task)
        raise
    declared = getattr(module, "PLOTS", None)
    if isinstance(declared, Mapping):
        declared = declared.get(task.name, None)
        if declared is None:
            return default_plots(task)
    if not isinstance(declared, (list, tuple)):
        raise ReportError(
            f"{name}.PLOTS must be a list of dltbench.report specs (or a dict from task name "
            f"to such a list), not {type(declared).__name__}"
        )
    for spec in declared:
        check_spec(task, spec, where=name)
    return list(declared)


def check_spec(task: Task, spec: Any, where: str = "PLOTS") -> None:
    """Raise ReportError if ``spec`` is not a spec or names a metric or setting the task lacks."""
    if not isinstance(spec, SPEC_TYPES):
        names = ", ".join(t.__name__ for t in SPEC_TYPES)
        raise ReportError(f"{where}: {spec!r} is not one of {names}")
    known = {m.name for m in task.metrics}
    metrics = (
        spec.metrics if isinstance(spec, Bars) else (spec.x, spec.y) if isinstance(spec, Scatter)
        else ()
    )  # fmt: skip
    if isinstance(spec, Bars) and not spec.metrics:
        raise ReportError(f"{where}: Bars needs at least one metric")
    if isinstance(spec, Bars) and spec.labels and len(spec.labels) != len(spec.metrics):
        raise ReportError(f"{where}: Bars has {len(spec.labels)} labels for "
                          f"{len(spec.metrics)} metrics")  # fmt: skip
    for m in metrics:
        if m not in known:
            raise ReportError(f"{where}: task {task.name!r} declares no metric {m!r}")
    for key in spec.where:
        if key not in task.setting_keys:
            raise ReportError(
                f"{where}: `where` names {key!r}, not a setting key of {task.name!r} "
                f"({', '.join(task.setting_keys)})"
            )


def matches(spec: Spec, setting: Mapping[str, Any]) -> bool:
    """Whether a row's setting passes the spec's ``where`` (a value or a list of values)."""
    for key, allowed in spec.where.items():
        values = allowed if isinstance(allowed, (list, tuple, set, frozenset)) else (allowed,)
        if setting.get(key) not in values:
            return False
    return True


def curve(curves: Mapping[str, Any], path: str) -> Any:
    """The value at the dotted ``path`` in a record's curves, or None if it is not there."""
    node: Any = curves
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
