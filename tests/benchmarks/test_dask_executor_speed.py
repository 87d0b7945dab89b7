"""Cells per minute of a smoke grid: the local executor vs Dask with 1 and 2 worker processes
on this machine, in one run, and the per-cell overhead Dask adds (as a ratio and seconds)."""

from __future__ import annotations

import logging
import time

import pytest

from dltbench import registry
from dltbench.runner import RunOptions, plan, run_cells

distributed = pytest.importorskip(
    "distributed", reason="the Dask executor is optional: pip install 'dltbench[dask]'"
)

from dltbench.dask_executor import DaskExecutor  # noqa: E402

pytestmark = pytest.mark.benchmark


def _grid():
    registry.discover("certified")
    task = registry.get_task("certified")
    return task, plan(task, ["standard"], "quick", [0], smoke=True)  # 2 cells


def _opts(tmp_path, name: str, jobs: int) -> RunOptions:
    return RunOptions(
        device="cpu", jobs=jobs, results_dir=tmp_path / name, memory_mb=4096.0, force=True
    )


def _local(task, cells, opts) -> float:
    run_cells(task, cells[:1], opts)  # warm: the cell server (forkserver) starts once per run
    start = time.perf_counter()
    assert {r.status for r in run_cells(task, cells, opts)} == {"ok"}
    return time.perf_counter() - start


def _dask(task, cells, opts, workers: int) -> tuple[float, float]:
    """(seconds for the cells on a warm cluster, seconds to start and warm the cluster)."""
    start = time.perf_counter()
    ex = DaskExecutor(workers=workers)
    try:
        ex.open()
        # Warm every worker as its first cell would (imports, its cell server): one cell each.
        ex.run_cells(task, (cells * workers)[:workers], opts)
        ready = time.perf_counter()
        assert {r.status for r in ex.run_cells(task, cells, opts)} == {"ok"}
        return time.perf_counter() - ready, ready - start
    finally:
        ex.close()


def test_cells_per_minute_local_vs_dask(benchmark, tmp_path):
    """2 smoke cells of `certified` on warm executors: local --jobs 1 and 2 vs Dask 1 and 2
    workers (cluster start and warm-up reported apart)."""
    logging.getLogger("distributed").setLevel(logging.ERROR)
    task, cells = _grid()
    t = {"local1": _local(task, cells, _opts(tmp_path, "l1", 1)),
         "local2": _local(task, cells, _opts(tmp_path, "l2", 2))}  # fmt: skip
    t["dask1"], start1 = _dask(task, cells, _opts(tmp_path, "d1", 1), 1)
    t["dask2"], start2 = _dask(task, cells, _opts(tmp_path, "d2", 2), 2)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    per_min = {k: 60 * len(cells) / v for k, v in t.items()}
    benchmark.extra_info.update(
        cells=len(cells), seconds=t, cells_per_minute=per_min,
        cluster_start_s={"dask1": start1, "dask2": start2},
        overhead_per_cell_s=(t["dask1"] - t["local1"]) / len(cells),
        ratio_dask1_to_local1=t["dask1"] / t["local1"],
        ratio_dask2_to_local2=t["dask2"] / t["local2"],
    )  # fmt: skip
    print(benchmark.extra_info)
