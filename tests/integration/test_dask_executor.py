"""The Dask executor: same records as a local run, the client the only writer, resume,
a crashing plugin costs one cell, a lost worker is retried and then recorded."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

distributed = pytest.importorskip(
    "distributed", reason="the Dask executor is optional: pip install 'dltbench[dask]'"
)

import dask  # noqa: E402

from dltbench import dask_executor, registry  # noqa: E402
from dltbench.api import DataMissing  # noqa: E402
from dltbench.cli import main  # noqa: E402
from dltbench.dask_executor import (  # noqa: E402
    DaskExecutor,
    ExecutorError,
    PluginBlob,
    check_worker,
    materialize_plugins,
    ship_plugins,
)
from dltbench.runner import RunOptions, plan, run_cells  # noqa: E402
from dltbench.store import read_results  # noqa: E402
from tests.conftest import cli_args  # noqa: E402

PLUGINS = Path(__file__).parent / "plugins"
ENTROPY = "5eed" * 8  # the same evaluation randomness in both runs: metrics comparable
#: Fields that differ by construction between two runs of one cell.
VOLATILE = {"id", "timestamp", "wall_time_s", "peak_memory_mb", "mac", "hostname", "git_commit"}


def _cluster(n_workers: int = 1, allowed_failures: int = 2):
    cfg = {"distributed.worker.daemon": False,
           "distributed.scheduler.allowed-failures": allowed_failures}  # fmt: skip
    with dask.config.set(cfg):
        return distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
            silence_logs=logging.ERROR,
        )  # fmt: skip


@pytest.fixture(scope="module")
def cluster():
    """One worker process, shared by this module's fast tests; stopped at the end."""
    c = _cluster()
    yield c
    c.close()


def _lines(results: Path) -> list[dict]:
    path = results / "certified.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _opts(results: Path) -> RunOptions:
    return RunOptions(device="cpu", results_dir=results, eval_entropy=ENTROPY, memory_mb=4096.0)


def _comparable(rec) -> dict:
    d = {k: v for k, v in vars(rec).items() if k not in VOLATILE}
    d["metrics"] = {k: v for k, v in d["metrics"].items() if k != "throughput"}  # a timing
    d["estimator"] = {k: v for k, v in d["estimator"].items() if "time" not in k}
    if isinstance(d["estimator"].get("training"), dict):  # which run trained, which reused
        d["estimator"]["training"] = {
            k: v for k, v in d["estimator"]["training"].items() if k != "cache_hit"
        }
    # A Dask worker starts its plugin processes fresh; a local run forks them from a zygote.
    d["isolation"] = {k: v for k, v in d["isolation"].items() if k != "process"}
    return d


@pytest.fixture(scope="module")
def dask_run(cluster, tmp_path_factory):
    """A crashing plugin's cell and a built-in's cell (sigma=0.25) run on one Dask worker,
    and the built-in's cell run locally with the same evaluation randomness."""
    registry.discover("certified", [str(PLUGINS / "dask_crash.py")])
    task = registry.get_task("certified")
    cells = plan(task, ["test-crash", "standard"], "quick", [0], smoke=True)
    cells = [c for c in cells if c.config.sigma == 0.25 and c.config.norm == "l2"]
    base = tmp_path_factory.mktemp("dask-run")
    writers = []
    real_append = dask_executor.append_result

    def counted(results_dir, result):
        writers.append(os.getpid())
        real_append(results_dir, result)

    mp = pytest.MonkeyPatch()
    mp.setattr(dask_executor, "append_result", counted)
    try:
        with DaskExecutor(scheduler=cluster.scheduler_address) as ex:
            remote = ex.run_cells(task, cells, _opts(base / "dask"))
    finally:
        mp.undo()
    local = run_cells(task, cells[1:], _opts(base / "local"))
    return {"remote": remote, "local": local, "writers": writers, "dir": base / "dask"}


def test_records_equal_a_local_run(dask_run):
    remote = {r.method: r for r in dask_run["remote"]}["standard"]
    (local,) = dask_run["local"]
    assert remote.status == "ok" and local.status == "ok"
    a, b = _comparable(remote), _comparable(local)
    differ = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    if "estimator" in differ:
        ea, eb = differ["estimator"]
        differ["estimator"] = {
            k: (ea.get(k), eb.get(k)) for k in ea | eb if ea.get(k) != eb.get(k)
        }
    assert not differ, differ


def test_a_crashing_plugin_costs_one_cell_and_the_client_alone_writes(dask_run):
    by_method = {r.method: r for r in dask_run["remote"]}
    crash = by_method["test-crash"]
    assert crash.status == "failed" and "the plugin process ended" in crash.error
    # The same (only) worker ran the next cell: a crash costs one cell, not the worker.
    assert by_method["standard"].status == "ok"
    assert crash.method_origin == f"file {PLUGINS / 'dask_crash.py'}"  # as a local run names it
    # One append per record, all in this process, all signed with the folder's key.
    assert dask_run["writers"] == [os.getpid()] * 2 and len(_lines(dask_run["dir"])) == 2
    assert len(read_results(dask_run["dir"], "certified")) == 2
    assert not list((dask_run["dir"] / ".claims").glob("*.lock"))


def test_cli_on_a_running_scheduler_resumes(cluster, dask_run, dirs, capsys):
    # The fixture's records (key included): sigma=0.25 of `standard` is done, 0.5 is not.
    shutil.copytree(dask_run["dir"], dirs["results"])
    args = ["run", "--task", "certified", "--smoke", "--method", "standard", "--setting",
            "norm=l2", "--scheduler", cluster.scheduler_address, *cli_args(dirs)]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "1 already recorded" in err and "Dask cluster at tcp://" in err
    recs = _lines(dirs["results"])
    assert len(recs) == 3 and [r["status"] for r in recs] == ["failed", "ok", "ok"]
    assert main(args) == 0  # resume: nothing is submitted again
    assert "2 already recorded" in capsys.readouterr().err
    assert len(_lines(dirs["results"])) == 3


def test_bad_scheduler_address_is_one_line_and_exit_2(dirs, capsys, monkeypatch):
    monkeypatch.setattr(dask_executor, "CONNECT_TIMEOUT_S", 1.0)
    code = main(["run", "--task", "certified", "--smoke", "--method", "standard",
                 "--scheduler", "tcp://127.0.0.1:9", *cli_args(dirs)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err
    assert not _lines(dirs["results"])


def test_scheduler_options_conflict(dirs, tmp_path, capsys):
    code = main(["run", "--task", "certified", "--smoke", "--executor", "local",
                 "--scheduler", "tcp://127.0.0.1:9", *cli_args(dirs)])  # fmt: skip
    assert code == 2 and "use --executor dask" in capsys.readouterr().err
    code = main(["run", "--task", "certified", "--smoke", "--scheduler-file",
                 str(tmp_path / "none.json"), *cli_args(dirs)])  # fmt: skip
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_missing_distributed_says_how_to_install(dirs, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_dask(name, *a, **kw):
        if name == "distributed" or name.startswith("distributed."):
            raise ImportError("No module named 'distributed'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_dask)
    code = main(["run", "--task", "certified", "--smoke", "--executor", "dask", *cli_args(dirs)])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'dltbench[dask]'" in err


def test_plugins_arrive_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(dask_executor, "_plugin_cache", lambda: tmp_path / "cache")
    (blob,) = ship_plugins((str(PLUGINS / "dask_crash.py"),))
    copy = Path(materialize_plugins((blob,))[blob.path])
    assert copy.read_bytes() == (PLUGINS / "dask_crash.py").read_bytes()
    assert copy.name == "dask_crash.py" and copy.parent.parent == tmp_path / "cache"
    with pytest.raises(ExecutorError, match="arrived damaged"):
        materialize_plugins((PluginBlob(blob.path, blob.data + b"#", blob.sha256),))
    copy.write_text("tampered = True\n")  # a stale or altered copy is replaced, not used
    assert Path(materialize_plugins((blob,))[blob.path]).read_bytes() == blob.data


def _kill_worker_when_running(
    client, times: int, killed: list[float], after_s: float = 2.0
) -> threading.Thread:
    """SIGKILL the worker process that runs the (only) task, ``times`` times; ``killed``
    gets the time of each kill."""

    def kill() -> None:
        for _ in range(times):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                busy = [w for w, keys in client.processing().items() if keys]
                if busy:
                    break
                time.sleep(0.1)
            else:
                return
            time.sleep(after_s)  # the cell's process and its plugin are running by now
            pid = client.run(os.getpid, workers=busy)[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.append(time.time())
            time.sleep(1.0)

    t = threading.Thread(target=kill, daemon=True)
    t.start()
    return t


@pytest.mark.slow
@pytest.mark.parametrize("allowed_failures, status", [(1, "ok"), (0, "failed")])
def test_a_worker_killed_mid_cell_is_retried_then_recorded_once(
    tmp_path, allowed_failures, status
):
    registry.discover("certified", [str(PLUGINS / "dask_slow.py")])
    task = registry.get_task("certified")
    cells = [c for c in plan(task, ["test-slow"], "quick", [0], smoke=True)
             if c.config.sigma == 0.25 and c.config.norm == "l2"]  # fmt: skip
    cluster = _cluster(allowed_failures=allowed_failures)
    try:
        with DaskExecutor(scheduler=cluster.scheduler_address) as ex:
            killed: list[float] = []
            killer = _kill_worker_when_running(ex.open(), times=1, killed=killed)
            (rec,) = ex.run_cells(task, cells, _opts(tmp_path))
            killer.join(timeout=30)
    finally:
        cluster.close()
    assert len(killed) == 1 and rec.status == status, rec.error
    if status == "failed":
        assert rec.error.startswith("lost: the Dask worker running this cell died")
    else:  # the record is the second attempt's: it started after the kill
        end = datetime.fromisoformat(rec.timestamp).timestamp()
        assert end - rec.wall_time_s > killed[0]
    assert len(_lines(tmp_path)) == 1  # never twice, never lost


def test_worker_check_names_what_a_worker_lacks(tmp_path, monkeypatch):
    monkeypatch.setattr(dask_executor, "_plugin_cache", lambda: tmp_path / "cache")
    task = registry.get_task("certified")

    def no_data(self, config, data_dir):
        raise DataMissing(f"put MNIST under {data_dir}/MNIST/raw")

    # The worker asks the task itself (the real check imports torchvision: seconds).
    monkeypatch.setattr(type(task), "check_data", no_data)
    report = check_worker(
        "certified", "0.0.0-other", "0" * 16, task.configs("quick"), tmp_path / "no-data",
        ship_plugins((str(PLUGINS / "dask_crash.py"),)), ("no_such_module_for_dltbench",),
    )  # fmt: skip
    text = "; ".join(report["problems"])
    assert "the client has 0.0.0-other" in text and "source hash" in text
    assert f"--data-dir: put MNIST under {tmp_path / 'no-data'}" in text
    assert "no_such_module_for_dltbench" in text
    assert (tmp_path / "cache").is_dir()  # the plugin could be stored: not a problem


@pytest.mark.slow
def test_real_dask_scheduler_and_two_workers_with_a_scheduler_file(dirs, tmp_path):
    """`dask scheduler` and two `dask worker` processes (daemonic, as by default), found
    through a scheduler file; every process is stopped by the test."""
    import subprocess
    import sys

    sched = tmp_path / "scheduler.json"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([bin_dir / "dask", "scheduler", "--scheduler-file", sched,
                               "--port", "0", "--no-dashboard"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not sched.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        for _ in range(2):
            procs.append(subprocess.Popen(
                [bin_dir / "dask", "worker", "--scheduler-file", sched, "--nthreads", "1",
                 "--no-dashboard"], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
        with distributed.Client(scheduler_file=str(sched), timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        code = main(["run", "--task", "certified", "--smoke", "--method", "standard",
                     "--scheduler-file", str(sched), *cli_args(dirs)])  # fmt: skip
        recs = _lines(dirs["results"])
        assert code == 0 and len(recs) == 2 and {r["status"] for r in recs} == {"ok"}
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
