"""Run cells on a Dask ``distributed`` cluster: same cells, same records, one writer.

One cell is one Dask task. On the worker the task runs the cell exactly as the local
executor does (:func:`dltbench.runner.run_cell_process`: its own process, the cell's
time limit, the plugin in its sandbox), so a crashing or hanging plugin costs one cell,
never the worker's other cells. The record comes back as the task's result and the
client appends it (signed, under the store's lock): the client is the only writer of
``results/<task>.jsonl``, so resume, ``--force`` and leaderboards are unchanged.

Plugin files travel with the tasks as bytes and their sha256; a worker writes them to
a private cache and checks the hash on arrival. Before any cell starts every worker is
checked (dltbench version, the task's source hash, ``--data-dir``, the plugin files,
modules) and the run stops with one line saying what a worker is missing.

A worker lost mid-cell (killed, node gone) makes the scheduler run the cell again
elsewhere, at most ``allowed-failures`` times (``--retries`` for a local cluster; the
scheduler's own setting for an existing one); then the cell is recorded ``failed`` with
the reason. An exception in the task itself (not the cell: the cell's failures are
records) is retried ``--retries`` times by Dask.

``distributed`` is an optional dependency: ``pip install 'dltbench[dask]'``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import logging
import multiprocessing as mp
import os
import queue
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__, registry
from .api import Result, Task
from .runner import (
    Cell,
    RunInterrupted,
    RunOptions,
    _claim,
    _record,
    _release,
    _sigterm_as_interrupt,
    _static_provenance,
    cell_options,
    identity,
    pending_cells,
    resolve_device,
    run_cell_process,
)
from .store import append_result

INSTALL_HINT = "pip install 'dltbench[dask]' (or: pip install 'distributed>=2024.1')"
#: Topic of the workers' progress events (one run is told apart by its run id).
PROGRESS_TOPIC = "dltbench-progress"
#: Seconds between two progress events of one cell (the client's display needs no more).
PROGRESS_EVERY_S = 0.5
#: Seconds to wait for the scheduler (connecting) and for a first worker to join.
CONNECT_TIMEOUT_S = 20.0


class ExecutorError(Exception):
    """The cluster cannot run the cells (not installed, unreachable, a worker lacks something):
    printed as one line, exit status 2."""


def require_distributed():
    """The ``distributed`` module, or ExecutorError saying how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise ExecutorError(
            f"--executor dask needs the Dask `distributed` package: {INSTALL_HINT}"
        ) from exc
    return distributed


@dataclass(frozen=True)
class PluginBlob:
    """A plugin file as shipped to the workers: the client's path, its bytes and sha256."""

    path: str
    data: bytes
    sha256: str


def ship_plugins(files: tuple[str, ...]) -> tuple[PluginBlob, ...]:
    """Read the plugin files once on the client, with their sha256."""
    out = []
    for f in files:
        path = Path(f).resolve()
        data = path.read_bytes()
        out.append(PluginBlob(str(path), data, hashlib.sha256(data).hexdigest()))
    return tuple(out)


def _plugin_cache() -> Path:
    return Path(tempfile.gettempdir()) / f"dltbench-plugins-{os.getuid()}"


def materialize_plugins(blobs: tuple[PluginBlob, ...]) -> dict[str, str]:
    """Worker side: write shipped plugin files into a private cache, checking each hash.

    Returns client path -> worker path. The file keeps its name (a record's origin
    names it) in a folder named by its hash, so two versions never overwrite each other.
    """
    mapping = {}
    for blob in blobs:
        if hashlib.sha256(blob.data).hexdigest() != blob.sha256:
            raise ExecutorError(f"plugin {blob.path} arrived damaged (sha256 differs)")
        folder = _plugin_cache() / blob.sha256[:24]
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = folder / Path(blob.path).name
        if not (target.is_file() and _sha256(target) == blob.sha256):
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob.data)
            os.replace(tmp, target)
        if _sha256(target) != blob.sha256:  # what the cell will import is what was sent
            raise ExecutorError(f"plugin {blob.path}: the worker's copy {target} does not match")
        mapping[blob.path] = str(target)
    return mapping


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _worker_options(opts: RunOptions, blobs: tuple[PluginBlob, ...]) -> RunOptions:
    """The client's options as this worker must use them: its plugin copies, its provenance."""
    mapping = materialize_plugins(blobs)
    infos = []
    for info in opts.method_infos:
        origin = str(info.get("origin", ""))
        if origin.startswith("file ") and origin[len("file ") :] in mapping:
            info = {**info, "origin": "file " + mapping[origin[len("file ") :]]}
        infos.append(info)
    memory = opts.memory_mb
    if memory is None:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
            memory = 0.8 * phys / max(1, _worker_slots())
    return dataclasses.replace(
        opts,
        plugin_files=tuple(mapping.get(f, f) for f in opts.plugin_files),
        method_infos=tuple(infos),
        # The record's host, versions and commit are this worker's, read here once.
        provenance=dict(_static_provenance()),
        memory_mb=memory,
    )


def _worker_slots() -> int:
    """How many cells this worker runs at once (its thread count)."""
    from distributed import get_worker

    try:
        return max(1, int(get_worker().state.nthreads))
    except (ValueError, AttributeError):
        return 1


def _allow_children() -> None:
    """A Dask worker process is daemonic by default, and multiprocessing refuses to start
    children from a daemonic process; the cell's process is ended by the runner itself
    (and dies with the worker: die_with_parent), so the flag guards nothing here."""
    proc = mp.current_process()
    if proc._config.get("daemon"):
        proc._config["daemon"] = False


def dask_cell(
    cell: Cell,
    opts: RunOptions,
    blobs: tuple[PluginBlob, ...],
    n_threads: int,
    run_id: str,
    key: str,
) -> Result:
    """The Dask task of one cell (runs on a worker): its record, never written here.

    ``n_threads`` 0: the worker's cores shared by its threads.
    """
    from distributed import get_worker

    _allow_children()
    worker = get_worker()
    registry.discover(cell.task)
    task = registry.get_task(cell.task)
    wopts = _worker_options(opts, blobs)
    for module in wopts.import_modules:
        importlib.import_module(module)
    # Plugin methods are known here by their stubs, as in the local run's parent process.
    registry.register_stubs(list(wopts.method_infos))
    threads = n_threads or max(1, (os.cpu_count() or 1) // _worker_slots())
    last = [0.0]

    def progress(_cell: Cell, desc: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S or done == total:
            last[0] = now
            worker.log_event(PROGRESS_TOPIC, (run_id, key, "progress", desc, done, total))

    worker.log_event(PROGRESS_TOPIC, (run_id, key, "start", "", 0, 0))
    return run_cell_process(task, cell, wopts, threads, progress)


def _cell_key(task: Task, cell: Cell) -> str:
    ident = identity(task, cell)
    return f"{ident['config_hash']}-{ident['method_source_hash']}-{cell.seed}"


def check_worker(
    task_name: str,
    version: str,
    task_hash: str,
    configs: list,
    data_dir: Path | None,
    blobs: tuple[PluginBlob, ...],
    modules: tuple[str, ...],
) -> dict[str, Any]:
    """Runs on every worker before any cell: what it lacks to run this task's cells."""
    problems = []
    if __version__ != version:
        problems.append(f"dltbench {__version__}, the client has {version}")
    try:
        registry.discover(task_name)
        task = registry.get_task(task_name)
    except registry.RegistryError as exc:
        problems.append(str(exc))
        task = None
    if task is not None:
        own = registry.task_source_hash(type(task))
        if own != task_hash:
            problems.append(
                f"task {task_name} source hash {own}, the client's is {task_hash} "
                "(install the same dltbench code on the workers)"
            )
        for cfg in configs:
            try:
                task.check_data(cfg, data_dir)
            except Exception as exc:  # DataMissing says what to put where
                problems.append(f"--data-dir: {exc}")
                break
    try:
        materialize_plugins(blobs)
    except (OSError, ExecutorError) as exc:
        problems.append(f"cannot store the shipped plugin files: {exc}")
    for module in modules:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            problems.append(f"module {module} (methods are registered there) is not installed")
    return {
        "host": socket.gethostname(),
        "problems": problems,
        "cuda": torch.cuda.is_available(),
    }


@dataclass
class DaskExecutor:
    """A Dask client: a new LocalCluster of ``workers`` processes, or an existing scheduler."""

    scheduler: str | None = None
    scheduler_file: str | None = None
    workers: int = 1
    retries: int = 2
    gpu: bool = False  # a local cluster's workers each offer GPU=1
    client: Any = None
    cluster: Any = None

    @property
    def local(self) -> bool:
        """Whether this executor starts its own LocalCluster."""
        return not (self.scheduler or self.scheduler_file)

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def where(self) -> str:
        """A short description for the run's first line."""
        if self.local:
            return f"a local Dask cluster of {self.workers} worker process(es)"
        return f"the Dask cluster at {self.scheduler or self.scheduler_file}"

    def open(self):
        """Start the local cluster or connect to the scheduler (once); the client."""
        if self.client is not None:
            return self.client
        distributed = require_distributed()
        import dask

        if self.local:
            cfg = {
                "distributed.worker.daemon": False,  # a cell is a child process of the worker
                "distributed.scheduler.allowed-failures": self.retries,
            }
            with dask.config.set(cfg):
                self.cluster = distributed.LocalCluster(
                    n_workers=self.workers, threads_per_worker=1, processes=True,
                    dashboard_address=":0", resources={"GPU": 1} if self.gpu else None,
                    silence_logs=logging.ERROR,
                )  # fmt: skip
                self.client = distributed.Client(self.cluster)
            return self.client
        try:
            if self.scheduler_file:
                if not Path(self.scheduler_file).is_file():
                    raise ExecutorError(f"--scheduler-file {self.scheduler_file} does not exist")
                self.client = distributed.Client(
                    scheduler_file=str(self.scheduler_file), timeout=CONNECT_TIMEOUT_S
                )
            else:
                self.client = distributed.Client(self.scheduler, timeout=CONNECT_TIMEOUT_S)
        except ExecutorError:
            raise
        except (OSError, TimeoutError, ValueError) as exc:
            where = self.scheduler or self.scheduler_file
            raise ExecutorError(
                f"cannot reach the Dask scheduler at {where}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
        return self.client

    def close(self) -> None:
        """Close the client, and the cluster if this executor started it."""
        for obj in (self.client, self.cluster):
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.close()
        self.client = self.cluster = None

    def resolve_device(self, device: str) -> str:
        """``--device`` as the workers will use it; ``auto`` on a remote cluster is CUDA if
        a worker offers the GPU resource, else CPU."""
        if self.local:
            return str(resolve_device(device))
        if device != "auto":
            try:
                return str(torch.device(device))
            except RuntimeError as exc:
                raise ValueError(f"unknown --device {device!r}") from exc
        return "cuda" if self._gpu_workers() else "cpu"

    def _gpu_workers(self) -> list[str]:
        info = self.open().scheduler_info(n_workers=-1)
        return [a for a, w in info["workers"].items() if w.get("resources", {}).get("GPU", 0)]

    def _check_workers(self, task: Task, cells: list[Cell], opts: RunOptions, blobs) -> int:
        """Every worker can run these cells, or ExecutorError naming what it lacks."""
        client = self.open()
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        except (TimeoutError, OSError) as exc:
            raise ExecutorError(f"no Dask worker joined {self.where()}") from exc
        configs = list(dict.fromkeys(c.config for c in cells))
        try:
            reports = client.run(
                check_worker, task.name, __version__, registry.task_source_hash(type(task)),
                configs, opts.data_dir, blobs, opts.import_modules,
            )  # fmt: skip
        except (ImportError, AttributeError) as exc:
            raise ExecutorError(
                f"the Dask workers cannot load dltbench ({type(exc).__name__}: {exc}); install "
                "the same dltbench (and torch) in the workers' environment"
            ) from exc
        bad = {a: r for a, r in reports.items() if r["problems"]}
        if bad:
            addr, rep = next(iter(bad.items()))
            more = f" (and {len(bad) - 1} more worker(s))" if len(bad) > 1 else ""
            raise ExecutorError(
                f"Dask worker {addr} ({rep['host']}){more} cannot run these cells: "
                + "; ".join(rep["problems"])
            )
        if torch.device(opts.device).type == "cuda" and not self._gpu_workers():
            raise ExecutorError(
                "the cells need a GPU but no Dask worker offers the GPU resource: start GPU "
                "workers with `dask worker ADDRESS --resources GPU=1 --nthreads 1`"
            )
        return len(reports)

    def run_cells(
        self,
        task: Task,
        cells: list[Cell],
        opts: RunOptions,
        on_progress: Callable[[Cell, str, int, int], None] | None = None,
        on_start: Callable[[Cell], None] | None = None,
        on_result: Callable[[Cell, Result], None] | None = None,
        on_skip: Callable[[Cell, str], None] | None = None,
    ) -> list[Result]:
        """Like :func:`dltbench.runner.run_cells`, each cell a Dask task; the client appends."""
        if not cells:
            return []
        with _sigterm_as_interrupt():
            return self._run(task, cells, opts, on_progress, on_start, on_result, on_skip)

    def _run(self, task, cells, opts, on_progress, on_start, on_result, on_skip) -> list[Result]:
        from distributed import as_completed

        opts = cell_options(task, cells, opts)
        try:
            blobs = ship_plugins(opts.plugin_files)
        except OSError as exc:
            raise ExecutorError(f"cannot read a plugin file to ship: {exc}") from exc
        self._check_workers(task, cells, opts, blobs)
        client = self.client
        run_id = uuid.uuid4().hex[:12]
        events: queue.Queue = queue.Queue()

        def on_event(event) -> None:  # the client's event loop thread: hand over only
            msg = event[1] if isinstance(event, tuple) and len(event) == 2 else event
            if isinstance(msg, (tuple, list)) and len(msg) == 6 and msg[0] == run_id:
                events.put(tuple(msg[1:]))

        client.subscribe_topic(PROGRESS_TOPIC, on_event)
        resources = {"GPU": 1} if torch.device(opts.device).type == "cuda" else None
        n_threads = max(1, (os.cpu_count() or 1) // max(1, self.workers)) if self.local else 0
        results: list[Result] = []
        pending: dict[Any, tuple[Cell, Any, float]] = {}
        by_key: dict[str, Cell] = {}
        started: dict[Cell, float] = {}
        try:
            for cell in cells:
                claim = _claim(opts, task, cell)
                if claim is None or (not opts.force and not pending_cells(task, [cell], opts)[0]):
                    if claim is not None:
                        _release(claim)
                    why = "another run is computing it" if claim is None else "done meanwhile"
                    on_skip and on_skip(cell, why)
                    continue
                key = _cell_key(task, cell)
                by_key[key] = cell
                fut = client.submit(
                    dask_cell, cell, opts, blobs, n_threads, run_id, key,
                    key=f"dltbench-{task.name}-{key}-{run_id}", pure=False,
                    retries=self.retries, resources=resources,
                )  # fmt: skip
                pending[fut] = (cell, claim, time.monotonic())
            done = as_completed(list(pending))
            while pending:
                self._events(events, by_key, started, on_start, on_progress)
                if not done.has_ready():
                    time.sleep(0.1)
                    continue
                for fut in done.next_batch(block=False):
                    cell, claim, submitted = pending.pop(fut)
                    try:
                        self._events(events, by_key, started, on_start, on_progress)
                        record = self._result_of(
                            task, cell, fut, opts, started.get(cell, submitted)
                        )
                        append_result(opts.results_dir, record)
                        results.append(record)
                        on_result and on_result(cell, record)
                    finally:
                        _release(claim)
        except KeyboardInterrupt:
            cut = [c.label(task) for f, (c, _, _) in pending.items() if c in started]
            self._abandon(pending)
            raise RunInterrupted(cut) from None
        finally:
            self._abandon(pending)
            with contextlib.suppress(Exception):
                client.unsubscribe_topic(PROGRESS_TOPIC)
        return results

    @staticmethod
    def _abandon(pending: dict) -> None:
        """Cancel the cells not recorded and give their claims back (nothing is written)."""
        for fut, (_, claim, _) in list(pending.items()):
            with contextlib.suppress(Exception):
                fut.cancel()
            _release(claim)
        pending.clear()

    @staticmethod
    def _events(events, by_key, started, on_start, on_progress) -> None:
        while True:
            try:
                key, kind, desc, done, total = events.get_nowait()
            except queue.Empty:
                return
            cell = by_key.get(key)
            if cell is None:
                continue
            if cell not in started:  # a retried cell starts again; it is one cell here
                started[cell] = time.monotonic()
                on_start and on_start(cell)
            if kind == "progress" and on_progress:
                on_progress(cell, desc, done, total)

    def _result_of(self, task: Task, cell: Cell, fut, opts: RunOptions, since: float) -> Result:
        """The cell's record from its finished future; a lost cell's record says why."""
        from distributed import KilledWorker

        ident = identity(task, cell)
        try:
            record = fut.result()
        except KilledWorker as exc:
            return _record(
                task, cell, ident, "failed",
                "lost: the Dask worker running this cell died each time it ran it "
                f"(the scheduler's allowed-failures limit was reached: {exc})",
                None, time.monotonic() - since, opts.device, in_cell=False,
            )  # fmt: skip
        except Exception as exc:  # the task itself failed (not the cell: that is a record)
            return _record(
                task, cell, ident, "failed",
                f"the Dask task failed after {self.retries} retries: {type(exc).__name__}: {exc}",
                None, time.monotonic() - since, opts.device, in_cell=False,
            )  # fmt: skip
        if not isinstance(record, Result):
            return _record(task, cell, ident, "failed",
                           f"the Dask task returned {type(record).__name__}, not a record",
                           None, time.monotonic() - since, opts.device, in_cell=False)  # fmt: skip
        if record.method_source_hash == ident["method_source_hash"]:
            # The worker ran the client's file (same hash) from its own copy: name the file
            # as a local run does.
            record.method_origin = ident["method_origin"]
        return record
