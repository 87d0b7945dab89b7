"""Cells and their execution: one process per cell, a timeout, nothing lost on a crash.

A cell is one (task, method, profile, setting, seed). :func:`execute_cell` runs one in
the current process and always returns a Result (``ok``, ``failed`` or ``invalid``);
:func:`run_cells` runs many, each in a child process with a deadline, records a
``timeout`` or a crash of the child (out of memory, segfault) itself, appends every
record as it arrives, and skips cells already recorded ``ok`` with the same config
hash, method source hash and seed (resume) unless ``force``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import logging
import multiprocessing as mp
import os
import platform
import random
import re
import resource
import secrets
import signal
import socket
import subprocess
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout
from threadpoolctl import threadpool_limits

from . import __version__, registry
from .api import (
    Context,
    InvalidArtifact,
    Result,
    Task,
    config_dict,
    stable_hash,
)
from .oracle import Auditor, PluginDied, PluginError, RemoteModule
from .sandbox import PluginProcess, Spawned, Zygote, bwrap_version, die_with_parent
from .store import append_result, read_results

_log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
_MAX_ERROR = 8000  # characters of an error kept in a record


@dataclass(frozen=True)
class Cell:
    """One unit of work; its identity is (config_hash, method_source_hash, seed)."""

    task: str
    method: str
    profile: str
    config: Any
    seed: int
    #: Files the method may read (``run --attach``, e.g. a checkpoint to score without
    #: retraining), as (absolute path, sha256 hex); their digests enter the config hash.
    attachments: tuple[tuple[str, str], ...] = ()

    def label(self, task: Task) -> str:
        """A short human name, e.g. ``gaussian-aug sigma=0.25 seed=0``."""
        setting = " ".join(f"{k}={v}" for k, v in task.setting_of(self.config).items())
        return f"{self.method} {setting} seed={self.seed}"


@dataclass
class RunOptions:
    """How cells run: device, parallelism, timeout and where records go."""

    device: str = "auto"
    jobs: int = 1
    timeout_s: float = 1800.0
    force: bool = False
    results_dir: Path = Path("results")
    data_dir: Path | None = None
    plugin_files: tuple[str, ...] = ()
    in_process: bool = False
    provenance: dict[str, Any] | None = None  # versions and git commit, read once per run
    import_modules: tuple[str, ...] = ()  # where methods registered outside plugin files live
    memory_mb: float | None = None  # address-space cap of a plugin process on CPU (--memory)
    sandbox: str = "auto"  # auto: bwrap where it works, else none (recorded); bwrap: required
    eval_entropy: str = ""  # replay a record's evaluation randomness (hex); empty: fresh secret
    #: Spot-check a model's answers against a fresh copy (oracle.Auditor). None: audit every
    #: real cell; smoke cells (a pipeline check, recorded apart) skip it.
    audit: bool | None = None
    method_infos: tuple[dict, ...] = ()  # plugin methods' stubs, read once by a sandboxed worker
    #: Fork plugin workers from a sandboxed, pre-imported zygote (sandbox.Zygote) where it
    #: works; False: a fresh sandboxed interpreter per plugin process (seconds each).
    zygote: bool = True


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``10m``, ``1.5h``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m:
        raise ValueError(f"cannot read duration {text!r}: use e.g. 90s, 10m or 1h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def plan(
    task: Task,
    methods: list[str],
    profile: str,
    seeds: list[int],
    smoke: bool = False,
    limit: int | None = None,
) -> list[Cell]:
    """All cells of a run, settings outermost so that a setting's methods finish together.

    ``smoke`` and ``limit`` (at most that many test points) are recorded under their own
    profile name (``quick-smoke``, ``quick-limit50``), so they never mix into real rows.
    A method is left out of the settings it does not apply to (:meth:`Task.applicable`).
    """
    configs = task.configs(profile)
    if smoke:
        configs, profile = [task.smoke(c) for c in configs], f"{profile}-smoke"
    if limit is not None:
        configs, profile = [task.limit(c, limit) for c in configs], f"{profile}-limit{limit}"
    return [
        Cell(task.name, m, profile, cfg, s)
        for cfg in configs for m in methods for s in seeds
        if task.applicable(registry.get_method_class(task.name, m), cfg)
    ]  # fmt: skip


def identity(task: Task, cell: Cell) -> dict[str, Any]:
    """The record fields that say which code and config produced a cell's numbers."""
    cls = registry.get_method_class(task.name, cell.method)
    params = cls().get_params()
    if cell.attachments:  # another checkpoint is another computation: never resumed as this one
        params["attachments"] = {Path(p).name: digest for p, digest in cell.attachments}
    cfg = config_dict(cell.config)
    return {
        "method_version": str(cls.version),
        "method_source_hash": registry.source_hash(cls),
        "task_source_hash": registry.task_source_hash(type(task)),
        "method_params": params,
        "method_origin": registry.method_origin(task.name, cell.method),
        "config": cfg,
        "setting": task.setting_of(cell.config),
        "config_hash": stable_hash(
            [task.name, task.version, cell.profile, cfg, cell.method, cls.version, params]
        ),
    }


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_attachments(attachments: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """The attached files' paths, after checking each still has the digest the run planned with.

    A file replaced mid-run would otherwise be scored under the first file's config hash.
    """
    for path, digest in attachments:
        if file_sha256(path) != digest:
            raise ValueError(f"attachment {path} changed since the run started (sha256 differs)")
    return tuple(path for path, _ in attachments)


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown --device {device!r}: use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was asked for but CUDA is not available here")
    return dev


def cell_contexts(
    seed: int,
    device: torch.device,
    data_dir: Path | None,
    progress: ProgressFn,
    eval_entropy: str = "",
):
    """Independent data, method and evaluation contexts derived from one cell seed.

    The evaluation's seed also mixes in ``eval_entropy`` (a secret drawn per cell and
    recorded after it), so a plugin that knows the cell seed cannot recompute the
    smoothing noise, attack restarts or MCMC inits; the record keeps it for replay.
    """
    data_s, method_s, eval_s = (
        int(s.generate_state(1, np.uint64)[0] % 2**62)
        for s in np.random.SeedSequence(seed).spawn(3)
    )
    if eval_entropy:
        mixed = np.random.SeedSequence([eval_s, int(eval_entropy, 16)])
        eval_s = int(mixed.generate_state(1, np.uint64)[0] % 2**62)
    return tuple(Context(s, device, data_dir, progress) for s in (data_s, method_s, eval_s))


def seed_globals(seed: int) -> None:
    """Seed torch's, numpy's and Python's global generators (for code that does not use ctx)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def audited(task: Task, cell: Cell, opts: RunOptions) -> bool:
    """Whether the cell's model is spot-checked by a second plugin process (an Auditor)."""
    audit_on = opts.audit if opts.audit is not None else not cell.profile.endswith("-smoke")
    return task.artifact_kind == "remote" and audit_on


def execute_cell(
    cell: Cell,
    opts: RunOptions,
    progress: ProgressFn | None = None,
    workers: tuple[Spawned | None, Spawned | None] = (None, None),
) -> Result:
    """Run one cell: the harness here, the method in a confined plugin process.

    ``workers``: the plugin and auditor processes a :class:`~dltbench.sandbox.Zygote`
    forked for this cell; where None, a fresh sandboxed process is started. Every
    exception becomes a ``failed``/``invalid`` record; the plugin process is always ended
    with the cell.
    """
    task = registry.get_task(cell.task)
    ident = identity(task, cell)
    progress = progress or (lambda desc, done, total: None)
    start = time.perf_counter()
    status, error, evaluation, device = "ok", None, None, None
    entropy = opts.eval_entropy or secrets.token_hex(16)
    plugin: PluginProcess | None = None
    auditor: PluginProcess | None = None
    audit = None
    try:
        device = resolve_device(opts.device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        data_ctx, method_ctx, eval_ctx = cell_contexts(
            cell.seed, device, opts.data_dir, progress, entropy
        )
        # Only this cell's method's own file or module: another plugin of the same run must
        # not be imported beside it (it could patch this method's code).
        files, modules = _method_sources(task, [cell])
        attached = check_attachments(cell.attachments)
        # Started first: its interpreter starts while the harness prepares the data.
        plugin = (
            PluginProcess.adopt(workers[0], on_progress=progress) if workers[0] else
            PluginProcess(
                plugin_files=tuple(files), import_modules=modules, attachments=attached,
                threads=torch.get_num_threads(), memory_mb=opts.memory_mb, device=device,
                sandbox=opts.sandbox, on_progress=progress,
            )
        )  # fmt: skip
        plugin.method_info = {
            "requires": tuple(
                getattr(registry.get_method_class(task.name, cell.method), "requires", ())
            ),
            # which method and seed the plugin runs: a task may share its training across
            # cells (certified's shared base classifiers key their cache by these)
            "method": cell.method, "identity": ident, "method_seed": method_ctx.seed,
        }  # fmt: skip
        if audited(task, cell, opts):
            auditor = (
                PluginProcess.adopt(workers[1]) if workers[1] else
                PluginProcess(
                    plugin_files=tuple(files), import_modules=modules, attachments=attached,
                    threads=1, memory_mb=opts.memory_mb, device=device, sandbox=opts.sandbox,
                )
            )  # fmt: skip
        data = task.prepare(cell.config, data_ctx)
        spec = {"task": task.name, "method": cell.method, "seed": method_ctx.seed,
                "device": str(device), "plugin_files": [str(Path(f).resolve()) for f in files],
                "import_modules": list(modules)}  # fmt: skip
        plugin.request("init", spec)
        seed_globals(eval_ctx.seed)
        artifact = task.run_plugin(plugin, data, cell.config, eval_ctx)
        if auditor is not None:
            audit = _start_audit(plugin, auditor, artifact, spec, eval_ctx)
        seed_globals(eval_ctx.seed + 1)
        evaluation = task.evaluate(artifact, data, cell.config, eval_ctx)
        if audit is not None:
            evaluation.estimator["audit"] = audit.summary()
    except InvalidArtifact as exc:
        status, error = "invalid", str(exc)
    except PluginError as exc:
        status, error = "failed", f"the method raised: {exc}"
    except PluginDied as exc:
        status, error = "failed", str(exc)
    except Exception as exc:  # a plug-in may raise anything; the run must go on
        tb = traceback.format_exc(limit=-6)
        status, error = "failed", f"{type(exc).__name__}: {exc}\n{tb}"
    finally:
        for proc in (plugin, auditor):
            if proc is not None:
                proc.close()
    wall = time.perf_counter() - start
    record = _record(task, cell, ident, status, error, evaluation, wall, device or opts.device)
    record.eval_entropy = entropy
    if record.error and len(record.error) > _MAX_ERROR:  # a plugin chooses its error text
        record.error = record.error[:_MAX_ERROR] + "\n[... cut]"
    record.isolation = dict(plugin.isolation) if plugin is not None else {}
    return record


def _start_audit(plugin: PluginProcess, auditor: PluginProcess, artifact, spec: dict, ctx):
    """Snapshot the trained artifact before any query, restore it in a second plugin process,
    and attach an :class:`~dltbench.oracle.Auditor` to the oracle (modules only)."""
    if not (isinstance(artifact, RemoteModule) and getattr(artifact, "is_module", False)):
        return None
    try:
        blob = plugin.request("snapshot", artifact._oid)
    except PluginError as exc:
        raise InvalidArtifact(
            "the trained model must be savable with torch.save (the harness audits a fresh "
            f"copy of it): {str(exc).splitlines()[0]}"
        ) from exc
    auditor.request("init", spec)
    fresh = RemoteModule.from_reply(auditor.endpoint, auditor.request("restore", blob), ctx.device)
    gen = torch.Generator().manual_seed(int(ctx.rng.integers(2**62)))
    artifact.auditor = Auditor(fresh, gen)
    return artifact.auditor


def _record(task, cell, ident, status, error, evaluation, wall, device, in_cell=True) -> Result:
    gpu_mb = None
    if isinstance(device, torch.device) and device.type == "cuda":
        gpu_mb = torch.cuda.max_memory_allocated(device) / 2**20
    # Only the cell's own process knows its peak (and its reaped plugin process's); the
    # parent's would be a wrong number.
    rss_mb = (
        max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF,
                                                           resource.RUSAGE_CHILDREN)) / 1024
        if in_cell else None
    )  # fmt: skip
    estimator = dict(evaluation.estimator) if evaluation else {}
    if gpu_mb is not None:
        estimator["peak_gpu_memory_mb"] = gpu_mb
    return Result(
        id=uuid.uuid4().hex[:12],
        task=task.name,
        task_version=task.version,
        method=cell.method,
        profile=cell.profile,
        seed=cell.seed,
        status=status,
        error=error,
        metrics=dict(evaluation.metrics) if evaluation else {},
        curves=dict(evaluation.curves) if evaluation else {},
        estimator=estimator,
        wall_time_s=round(wall, 3),
        peak_memory_mb=None if rss_mb is None else round(rss_mb, 1),
        device=str(device),
        **ident,
        **provenance(),
    )


_PROVENANCE: dict[str, Any] | None = None  # set in a cell from the parent's reading


@lru_cache(maxsize=1)
def _static_provenance() -> dict[str, Any]:
    if _PROVENANCE is not None:
        return _PROVENANCE
    return {
        "dltbench_version": __version__,
        "git_commit": git_commit(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "hostname": socket.gethostname(),
    }


def provenance() -> dict[str, Any]:
    """Versions, git commit, host and a UTC timestamp for a record."""
    return {**_static_provenance(), "timestamp": datetime.now(timezone.utc).isoformat()}


def git_commit() -> str | None:
    """The commit of the dltbench source tree (``+dirty`` if modified), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()  # fmt: skip
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _child(
    cell: Cell, opts: RunOptions, conn, n_threads: int, workers: tuple = (None, None)
) -> None:
    """Entry point of a cell's process: run it, send progress and the record back."""
    os.setsid()  # its own process group: a timeout kills the workers it started too
    # The parent is the forkserver, which exits when the run's process dies (even by
    # kill -9): the cell follows it, and its plugin process follows the cell.
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    global _PROVENANCE
    _PROVENANCE = opts.provenance

    def send(msg: tuple) -> None:
        try:
            conn.send(msg)
        except OSError:  # the parent is gone or stopped listening: end quietly
            os._exit(0)

    try:
        torch.set_num_threads(n_threads)
        # numpy/scipy's BLAS too: with more threads than the cell's share of cores, cells
        # side by side spin against each other (a 64x64 eigh ran 100x slower under load).
        threadpool_limits(n_threads)
        for module in opts.import_modules:
            importlib.import_module(module)
        # A fresh child knows only the built-ins; plugin methods come as stubs (their code
        # is imported only in the plugin process).
        registry.register_stubs(list(opts.method_infos))
        registry.discover(cell.task)

        def progress(desc: str, done: int, total: int) -> None:
            send(("progress", desc, done, total))

        send(("result", execute_cell(cell, opts, progress, workers)))
    except BaseException as exc:  # noqa: BLE001 - whatever happens, the parent gets the reason
        send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-6)}"))
    finally:
        with contextlib.suppress(OSError):
            conn.close()


_PRELOAD = [
    "torch", "numpy", "dltbench.registry", "dltbench.runner", "dltbench.oracle",
    "dltbench._forkserver_guard",
    "sklearn.datasets",  # the embedded datasets' loader: seconds per cell otherwise
]  # fmt: skip


def _mp_context(task_module: str | None = None):
    """forkserver where it exists: children fork from a clean server process, so they never
    inherit the parent's OpenMP pool (a forked libgomp can deadlock) or a CUDA context,
    and start in milliseconds once the server has imported torch and the task's package
    (several seconds per cell otherwise); spawn elsewhere."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD + ([task_module] if task_module else []))
        return ctx
    return mp.get_context("spawn")


class RunInterrupted(KeyboardInterrupt):
    """The run was stopped (Ctrl-C, SIGTERM); ``cells`` names the cells that were cut."""

    def __init__(self, cells: list[str]):
        super().__init__(", ".join(cells))
        self.cells = cells


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM ends a run like Ctrl-C: cells are stopped and named, nothing is half-written."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _claim(opts: RunOptions, task: Task, cell: Cell) -> FileLock | None:
    """A lock that says "this run computes this cell"; None if another run holds it."""
    key = stable_hash([*resume_key({**identity(task, cell), "seed": cell.seed,
                                     "device": opts.device})], 24)  # fmt: skip
    folder = Path(opts.results_dir) / ".claims"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(folder / f"{task.name}-{key}.lock"))
        lock.acquire(timeout=0)
    except Timeout:
        return None
    except OSError:  # a read-only results folder fails later, with a clear message
        return _NoClaim()
    return lock


class _NoClaim:
    def release(self) -> None:
        """Nothing to release."""


def _release(lock) -> None:
    with contextlib.suppress(Exception):
        lock.release()
    path = getattr(lock, "lock_file", None)
    if path:  # leave no empty lock files behind
        with contextlib.suppress(OSError):
            Path(path).unlink()


@dataclass
class _Running:
    cell: Cell
    ident: dict
    proc: Any
    conn: Any
    deadline: float
    start: float
    result: Result | None = None
    error: str | None = None
    workers: tuple = ()  # (zygote, worker id) of the plugin processes forked for the cell


def resume_key(r: Result | dict) -> tuple:
    """What makes two cells the same computation: config, both sources, seed and device type."""
    get = r.get if isinstance(r, dict) else lambda k: getattr(r, k)
    device = str(get("device") or "")
    return (
        get("config_hash"), get("method_source_hash"), get("task_source_hash"),
        get("seed"), device.split(":")[0],  # cuda:0 and cuda:1 are the same kind of device
    )  # fmt: skip


def pending_cells(
    task: Task, cells: list[Cell], opts: RunOptions
) -> tuple[list[Cell], list[Result]]:
    """Split cells into those to run and the existing ``ok`` records that make the rest redundant.

    ``opts.device`` must be resolved (cpu, cuda:0): a CPU record does not stand in for a GPU run.
    """
    if opts.force:
        return list(cells), []
    done = {
        resume_key(r): r for r in read_results(opts.results_dir, task.name) if r.status == "ok"
    }
    todo, kept = [], []
    for c in cells:
        hit = done.get(resume_key({**identity(task, c), "seed": c.seed, "device": opts.device}))
        (kept.append(hit) if hit else todo.append(c))
    return todo, kept


def run_cells(
    task: Task,
    cells: list[Cell],
    opts: RunOptions,
    on_progress: Callable[[Cell, str, int, int], None] | None = None,
    on_start: Callable[[Cell], None] | None = None,
    on_result: Callable[[Cell, Result], None] | None = None,
    on_skip: Callable[[Cell, str], None] | None = None,
) -> list[Result]:
    """Run ``cells`` (already filtered for resume), ``opts.jobs`` at a time; append each record.

    A cell another run on the same results folder is computing (or has just recorded)
    is skipped (``on_skip``), never computed twice. Ctrl-C or SIGTERM stops every running
    cell and raises :class:`RunInterrupted` naming them.
    """
    with _sigterm_as_interrupt():
        return _run_cells(task, cells, opts, on_progress, on_start, on_result, on_skip)


def _run_cells(task, cells, opts, on_progress, on_start, on_result, on_skip) -> list[Result]:
    results: list[Result] = []

    def finish(cell: Cell, result: Result) -> None:
        append_result(opts.results_dir, result)
        results.append(result)
        if on_result:
            on_result(cell, result)

    if opts.in_process:
        for cell in cells:
            on_start and on_start(cell)
            cb = (lambda d, i, n, c=cell: on_progress(c, d, i, n)) if on_progress else None
            finish(cell, execute_cell(cell, opts, cb))
        return results

    opts = cell_options(task, cells, opts)
    ctx = _mp_context(type(task).__module__)
    jobs = max(1, opts.jobs)
    n_threads = max(1, (os.cpu_count() or 1) // jobs)
    queue, running = list(cells), []
    claims: dict[int, Any] = {}
    interrupted = False
    zygotes = _Zygotes.for_run(task, opts) if queue else None
    try:
        while queue or running:
            while queue and len(running) < jobs:
                cell = queue.pop(0)
                claim = _claim(opts, task, cell)
                if claim is None or _already_done(task, cell, opts):
                    if claim is not None:
                        _release(claim)
                    why = "another run is computing it" if claim is None else "done meanwhile"
                    on_skip and on_skip(cell, why)
                    continue
                running.append(_start_cell(ctx, task, cell, opts, n_threads, zygotes))
                claims[id(running[-1])] = claim
                on_start and on_start(cell)
            time.sleep(0.05)
            for run in list(running):
                record = _poll_cell(task, run, opts, on_progress)
                if record is not None:
                    running.remove(run)
                    _Zygotes.release(run)
                    try:
                        finish(run.cell, record)
                    finally:
                        _release(claims.pop(id(run)))
    except KeyboardInterrupt:
        interrupted = True
    finally:  # Ctrl-C, SIGTERM or a crash of the parent: leave no cell running behind
        for run in running:
            _kill(run.proc)
            _release(claims.pop(id(run), None))
        if zygotes is not None:
            zygotes.close()
    if interrupted:
        raise RunInterrupted([r.cell.label(task) for r in running])
    return results


def cell_options(task: Task, cells: list[Cell], opts: RunOptions) -> RunOptions:
    """``opts`` completed with what a fresh cell process needs to find the cells' methods."""
    # Read git once here and hand it to every cell: commits made mid-run don't split records.
    files, modules = _method_sources(task, cells)
    return dataclasses.replace(
        opts,
        provenance=_static_provenance(),
        plugin_files=tuple(dict.fromkeys([*opts.plugin_files, *files])),
        import_modules=modules,
        method_infos=tuple(
            registry.get_method_class(task.name, m).info
            for m in dict.fromkeys(c.method for c in cells)
            if isinstance(registry.get_method_class(task.name, m), registry.MethodStub)
        ),
    )


def _start_cell(
    ctx, task: Task, cell: Cell, opts: RunOptions, n_threads: int, zygotes: _Zygotes | None = None
) -> _Running:
    """Start ``cell`` in its own process (``opts`` from :func:`cell_options`)."""
    recv, send = ctx.Pipe(duplex=False)
    spawned, owned = zygotes.spawn(cell, n_threads) if zygotes else ((None, None), ())
    # Not a daemon: a method may start its own workers (DataLoader num_workers > 0).
    proc = ctx.Process(target=_child, args=(cell, opts, send, n_threads, spawned))
    try:
        proc.start()
    finally:
        send.close()
        for s in spawned:  # the cell's process has its own copies now
            if s is not None:
                s.conn.close()
    now = time.monotonic()
    run = _Running(cell, identity(task, cell), proc, recv, now + opts.timeout_s, now)
    run.workers = owned
    return run


class _Zygotes:
    """The run's zygotes (one per set of plugin sources), forking each cell's plugin processes.

    Where one cannot start (no bubblewrap, no nested user namespaces, ``--sandbox none``),
    cells start fresh sandboxed interpreters as before; the record's ``isolation`` says which.
    """

    def __init__(self, task: Task, opts: RunOptions):
        self.task, self.opts = task, opts
        self.device = resolve_device(opts.device)
        self.zygotes: dict[tuple, Zygote | None] = {}

    def _zygote(self, cell: Cell) -> Zygote | None:
        files, modules = _method_sources(self.task, [cell])
        key = (tuple(files), modules, cell.attachments)
        if key not in self.zygotes:
            try:
                self.zygotes[key] = Zygote(
                    plugin_files=tuple(files), import_modules=modules,
                    attachments=check_attachments(cell.attachments),
                    packages=(type(self.task).__module__.rsplit(".", 1)[0],), device=self.device,
                )  # fmt: skip
            except (RuntimeError, OSError) as exc:
                _log.warning("plugin processes start fresh (slower): %s", exc)
                self.zygotes[key] = None
        return self.zygotes[key]

    def spawn(self, cell: Cell, n_threads: int) -> tuple[tuple, tuple]:
        """(plugin, auditor) workers for ``cell`` (None: start fresh), and what to kill after."""
        zygote = self._zygote(cell)
        if zygote is None:
            return (None, None), ()
        try:
            plugin = zygote.spawn(n_threads, self.opts.memory_mb)
            auditor = (
                zygote.spawn(1, self.opts.memory_mb)
                if audited(self.task, cell, self.opts) else None
            )  # fmt: skip
        except (RuntimeError, OSError) as exc:  # the zygote died (e.g. a full disk): go on fresh
            _log.warning("plugin processes start fresh from now on (slower): %s", exc)
            zygote.close()
            self.zygotes = {k: (None if z is zygote else z) for k, z in self.zygotes.items()}
            return (None, None), ()
        return (plugin, auditor), tuple((zygote, s.wid) for s in (plugin, auditor) if s)

    @staticmethod
    def release(run: _Running) -> None:
        """End the plugin processes forked for a finished cell."""
        for zygote, wid in run.workers:
            zygote.kill(wid)

    def close(self) -> None:
        for z in self.zygotes.values():
            if z is not None:
                z.close()

    @classmethod
    def for_run(cls, task: Task, opts: RunOptions) -> _Zygotes | None:
        """The run's zygotes, or None where plugin processes must start fresh."""
        if not opts.zygote or opts.sandbox == "none" or bwrap_version() is None:
            return None
        return cls(task, opts)


def _poll_cell(task: Task, run: _Running, opts: RunOptions, on_progress) -> Result | None:
    """Pass on the cell's progress; its record once it ended, crashed or ran out of time."""
    _drain(run, on_progress)
    done = run.result is not None or run.error is not None or not run.proc.is_alive()
    if not (done or time.monotonic() > run.deadline):
        return None
    if done:
        run.proc.join(timeout=5)
        _drain(run, on_progress)
    _kill(run.proc)
    return run.result or _lost(task, run, opts, timed_out=not done)


def run_cell_process(
    task: Task,
    cell: Cell,
    opts: RunOptions,
    n_threads: int,
    on_progress: Callable[[Cell, str, int, int], None] | None = None,
) -> Result:
    """Run one cell in its own process with the ``opts.timeout_s`` limit and return its record.

    The same machinery as :func:`run_cells` without the store: for an executor whose
    caller writes the records (the Dask worker). ``opts`` from :func:`cell_options`.
    """
    run = _start_cell(_mp_context(type(task).__module__), task, cell, opts, n_threads)
    try:
        while (record := _poll_cell(task, run, opts, on_progress)) is None:
            time.sleep(0.05)
        return record
    finally:
        _kill(run.proc)


def _already_done(task: Task, cell: Cell, opts: RunOptions) -> bool:
    """Whether another run recorded this cell ``ok`` since this run planned it."""
    if opts.force:
        return False
    return not pending_cells(task, [cell], opts)[0]


def _method_sources(task: Task, cells: list[Cell]) -> tuple[list[str], tuple[str, ...]]:
    """Plugin files and modules a fresh cell process must load to find the cells' methods."""
    files, modules = [], []
    for name in dict.fromkeys(c.method for c in cells):
        origin = registry.method_origin(task.name, name)
        module = registry.get_method_class(task.name, name).__module__
        if origin.startswith("file "):
            files.append(origin[len("file ") :])
        elif origin == "builtin" and not module.startswith("dltbench."):
            modules.append(module)  # registered by an imported module (a script, a test)
    return files, tuple(dict.fromkeys(modules))


def _kill(proc) -> None:
    """Kill a cell's process group (the cell and any workers it started) and reap it."""
    if proc.is_alive():
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    proc.join()


def _drain(run: _Running, on_progress) -> None:
    try:
        while run.conn.poll():
            msg = run.conn.recv()
            if msg[0] == "progress" and on_progress:
                on_progress(run.cell, *msg[1:])
            elif msg[0] == "result":
                run.result = msg[1]
            elif msg[0] == "error":
                run.error = msg[1]
    except (EOFError, OSError):
        pass


def _lost(task: Task, run: _Running, opts: RunOptions, timed_out: bool) -> Result:
    """The record of a cell that sent no result: timed out, crashed, or failed outside the cell."""
    wall = time.monotonic() - run.start
    if timed_out:
        status, why = "timeout", f"timed out after {opts.timeout_s:g}s (--timeout)"
    elif run.error:
        status, why = "failed", run.error
    else:
        code = run.proc.exitcode
        status, why = "failed", f"the cell's process died with exit code {code}"
        if code is not None and code < 0:
            why = f"the cell's process was killed by signal {-code}"
            if -code == signal.SIGKILL:
                why += " (SIGKILL: often the out-of-memory killer)"
    return _record(task, run.cell, run.ident, status, why, None, wall, opts.device, in_cell=False)


def score_in_process(
    task_name: str, methods: list[str], profile: str = "quick", seed: int = 0, device: str = "cpu"
) -> list[tuple[Cell, dict[str, float]]]:
    """Run every (method, setting) cell of a profile here, writing no record; metrics per cell.

    For asv ``track_`` benchmarks and notebooks; a missing metric is NaN. Raises if a
    cell does not end ``ok``, so a benchmark never tracks a failure as a number.
    """
    registry.discover(task_name)
    task = registry.get_task(task_name)
    out = []
    for cell in plan(task, methods, profile, [seed]):
        r = execute_cell(cell, RunOptions(device=device, in_process=True))
        if r.status != "ok":
            raise RuntimeError(f"{cell.label(task)}: {r.status}: {r.error}")
        out.append((cell, {k: float("nan") if v is None else v for k, v in r.metrics.items()}))
    return out
