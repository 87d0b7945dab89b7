"""Every asv benchmark in benchmarks/ runs: a broken suite fails here, not weeks later in asv.

``time_*``: setup and body once at the first (smallest) parameters. ``track_*``: these score a
whole quick task (minutes), so their ``score_in_process`` is swapped for one ``--smoke`` cell
(first method, first setting: the cell their first parameters look up); that runs the real
cell and the real metric lookups in seconds.
"""

from __future__ import annotations

import importlib
import inspect
import itertools

import pytest

from dltbench import registry
from dltbench.runner import RunOptions, execute_cell, plan
from tests.conftest import ROOT

MODULES = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")


def _benchmarks() -> list[tuple[str, str, str]]:
    """(module, class, function) of every time_/track_ benchmark in benchmarks/."""
    out = []
    for name in MODULES:
        mod = importlib.import_module(f"benchmarks.{name}")
        for cname, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ != mod.__name__:
                continue
            out += [
                (name, cname, f)
                for f in sorted(vars(cls))
                if f.startswith(("time_", "track_")) and callable(getattr(cls, f))
            ]
    return out


def _param(b: tuple[str, str, str]):
    """Suites that run cells (track_: a task's cells; TimeQuickRun: a whole grid) are slow."""
    slow = b[2].startswith("track_") or b[1] == "TimeQuickRun"
    return pytest.param(*b, id=".".join(b), marks=[pytest.mark.slow] if slow else [])


BENCHMARKS = _benchmarks()
_CACHES: dict[tuple[str, str], object] = {}  # one smoke setup_cache per track_ class


def _first_params(cls: type, func) -> tuple:
    """The first value of every parameter (asv: a list for one, a tuple of lists for several)."""
    params = getattr(func, "params", getattr(cls, "params", None))
    if params is None:
        return ()
    if not isinstance(params, tuple):
        params = (params,)
    return next(itertools.product(*params))


def _smoke_score(task_name: str, methods: list[str], profile: str = "quick", seed: int = 0, **_):
    """score_in_process for one smoke cell: the first method on the first setting."""
    registry.discover(task_name)
    task = registry.get_task(task_name)
    cell = plan(task, methods[:1], profile, [seed], smoke=True)[0]
    r = execute_cell(cell, RunOptions(device="cpu", in_process=True))
    assert r.status == "ok", f"{cell.label(task)}: {r.status}: {r.error}"
    return [(cell, {k: float("nan") if v is None else v for k, v in r.metrics.items()})]


def test_every_benchmark_module_is_found():
    assert {"bench_certified", "bench_robust", "bench_sampler", "bench_vae"} <= set(MODULES)
    assert {m for m, _, _ in BENCHMARKS} == set(MODULES), "a benchmarks/ module has no benchmark"


@pytest.mark.parametrize("module,cls_name,func", [_param(b) for b in BENCHMARKS])
def test_benchmark_runs_once(module, cls_name, func, monkeypatch):
    mod = importlib.import_module(f"benchmarks.{module}")
    cls = getattr(mod, cls_name)
    # asv's default timeout is 60 s; every suite states its own, sized for 2 cores.
    assert isinstance(getattr(cls, "timeout", None), int | float), f"{cls_name} has no timeout"
    params = _first_params(cls, getattr(cls, func))
    obj = cls()
    args: tuple = params
    if hasattr(mod, "SMOKE"):  # whole-run timings: a smoke grid shows the suite works
        monkeypatch.setattr(mod, "SMOKE", True)
    if func.startswith("track_"):
        assert hasattr(cls, "setup_cache"), "track_ suites score their task once, in setup_cache"
        assert hasattr(mod, "score_in_process"), "the smoke swap below needs this name"
        monkeypatch.setattr(mod, "score_in_process", _smoke_score)
        if (module, cls_name) not in _CACHES:
            _CACHES[module, cls_name] = obj.setup_cache()
        args = (_CACHES[module, cls_name], *params)
    if hasattr(obj, "setup"):
        obj.setup(*args)
    value = getattr(obj, func)(*args)
    if func.startswith("track_"):
        assert isinstance(value, int | float), f"{func}{params} returned {value!r}"
        assert getattr(getattr(cls, func), "unit", None), f"{func} has no unit"


def test_asv_config_keeps_out_of_results():
    text = (ROOT / "asv.conf.json").read_text()
    assert '"results_dir": ".asv/results"' in text
    assert '"benchmark_dir": "benchmarks"' in text
