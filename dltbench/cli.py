"""The ``dltbench`` command: list, run, leaderboard, report, records, validate."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from tabulate import tabulate

from . import __version__, leaderboard, registry
from .api import PROFILES, DataMissing, Result, Task
from .dask_executor import DaskExecutor, ExecutorError, require_distributed
from .runner import (
    Cell,
    RunInterrupted,
    RunOptions,
    file_sha256,
    identity,
    parse_duration,
    pending_cells,
    plan,
    resolve_device,
    run_cells,
)
from .store import (
    StoreError,
    check_results_path,
    load_results,
    remove_records,
)

DASK_INSTALL = "pip install 'dltbench[dask]'"

EPILOG = """\
examples:
  dltbench list
  dltbench run --task certified                       # quick profile, all built-in methods
  dltbench run --task certified --method gaussian-aug --seeds 0 1 2
  dltbench run --task certified --method label-smoothing \
      --plugin examples/certified-label-smoothing/dltbench_label_smoothing.py
  dltbench run --task certified --profile standard --data-dir ~/data   # MNIST from ~/data/MNIST/raw
  dltbench leaderboard --task certified --format md --method gaussian-aug --setting sigma=0.25
  dltbench report --out report                        # HTML: report/index.html, one page per task
  dltbench records --task certified --stale
  dltbench validate --task certified \
      --plugin examples/certified-label-smoothing/dltbench_label_smoothing.py
  dltbench run --task certified --executor dask --jobs 4       # a local Dask cluster
  dltbench run --task certified --scheduler tcp://head:8786    # an existing Dask cluster

Records are appended to RESULTS_DIR/<task>.jsonl (one JSON line per cell); leaderboards
are rebuilt from them into LEADERBOARD_DIR/<task>.csv and .md. A rerun skips cells
already recorded `ok` with the same config, method source and seed; --force reruns them.
Every record is signed with RESULTS_DIR/.dltbench-key; leaderboards count only signed
records with possible values and say what they skipped.
Exit status: 0 all cells ok, 1 some cell failed/timed out/was invalid or a record could
not be stored, 2 bad input.
"""

#: Where ``dltbench report`` writes its pages by default.
REPORT_DIR = "report"

#: Seconds between heartbeat lines for running cells when stderr is not a terminal.
HEARTBEAT_S = 30.0

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dltbench`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (UsageError, registry.RegistryError, DataMissing, ValueError, ExecutorError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 2
    except StoreError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 1
    except RunInterrupted as exc:
        cut = ", ".join(exc.cells) if exc.cells else "none were running"
        err.print(f"interrupted: stopped cells (not recorded): {cut}; "
                  "the records written so far are kept; rerun to resume")  # fmt: skip
        return 130
    except KeyboardInterrupt:
        err.print("interrupted: the records written so far are kept; rerun to resume")
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb."""
    p = argparse.ArgumentParser(
        prog="dltbench",
        description="Benchmarks for the theory of deep learning: run plug-in methods through "
        "standardized evaluators and write CSV/Markdown leaderboards from the records.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"dltbench {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    ls = sub.add_parser("list", help="list tasks and their methods")
    ls.add_argument("--task", help="only this task")
    ls.add_argument(
        "--plugin", action="append", default=[], metavar="FILE", help="also load this plugin file"
    )
    ls.set_defaults(func=cmd_list)

    run = sub.add_parser(
        "run", help="run methods on a task and update its leaderboard",
        description="Run every (method, setting, seed) cell of a task, each in its own process "
        "with a timeout, append one record per cell, and rebuild the leaderboard.",
    )  # fmt: skip
    run.add_argument(
        "--task",
        required=True,
        help="task name (see `dltbench list`), or `all`: every task in turn, then each task's wall time",
    )
    run.add_argument(
        "--method", nargs="+", metavar="M", help="methods to run (default: all registered)"
    )
    run.add_argument(
        "--seeds", nargs="+", type=int, default=[0], metavar="S", help="seeds (default: 0)"
    )
    run.add_argument("--profile", choices=PROFILES, default="quick",
                     help="quick: embedded data, CPU, under a minute per method (default); "
                     "standard: laptop-scale real data from --data-dir; paper: published protocol, GPU")  # fmt: skip
    _common_io(run)
    run.add_argument("--plugin", action="append", default=[], metavar="FILE",
                     help="load methods from a Python file that is not installed (repeatable)")  # fmt: skip
    run.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                     help="run only the settings with this value, e.g. norm=l1 or sigma=0.25 "
                          "(repeatable; keys: the task's setting columns)")  # fmt: skip
    run.add_argument("--attach", action="append", default=[], metavar="FILE",
                     help="let the methods read FILE (read-only, e.g. a checkpoint to score "
                          "without retraining; repeatable); its sha256 is part of each "
                          "record's method_params and config hash")  # fmt: skip
    run.add_argument(
        "--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1 ..."
    )
    run.add_argument("--jobs", type=int, default=None,
                     help="cells run in parallel, each with cores/jobs torch threads (default: one "
                     "per core, at most one per 2 GiB of memory, 1 on a GPU; capped by cores and "
                     "--memory); with --executor dask and no --scheduler: the local cluster's "
                     "worker processes")  # fmt: skip
    run.add_argument("--memory", metavar="SIZE",
                     help="memory limit per cell, e.g. 4G or 512M (default: 80%% of physical "
                     "memory divided by --jobs)")  # fmt: skip
    run.add_argument(
        "--timeout", default="30m", help="per-cell time limit, e.g. 90s, 10m, 1h (default 30m)"
    )
    run.add_argument(
        "--force", action="store_true", help="rerun cells that already have an ok record"
    )
    run.add_argument(
        "--data-dir", type=Path, help="where real datasets live (standard/paper profiles)"
    )
    run.add_argument(
        "--smoke",
        action="store_true",
        help="tiny configs (seconds): check a pipeline, not a result",
    )
    run.add_argument(
        "--executor", choices=("local", "dask"), default=None,
        help="local: cells as processes on this machine (default); dask: each cell a task on "
        "a Dask cluster, a new local one of --jobs worker processes unless --scheduler or "
        "--scheduler-file names one (needs: " + DASK_INSTALL + ")",
    )  # fmt: skip
    run.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                     help="submit the cells to this running Dask scheduler (implies --executor "
                     "dask; records are still written here, by this command only)")  # fmt: skip
    run.add_argument("--scheduler-file", type=Path, metavar="FILE",
                     help="the same, with the scheduler file that `dask scheduler "
                     "--scheduler-file FILE` (or dask-jobqueue) wrote")  # fmt: skip
    run.add_argument("--retries", type=int, default=2, metavar="N",
                     help="dask: run a cell again at most N times when its worker is lost "
                     "(local cluster; an existing scheduler uses its own allowed-failures), "
                     "then record it failed (default 2)")  # fmt: skip
    run.add_argument(
        "--limit", type=int, metavar="N",
        help="score at most N test points per cell: a fast first look, recorded under its own "
        "profile name (e.g. quick-limit50) so it never mixes into the real rows",
    )  # fmt: skip
    run.set_defaults(func=cmd_run)

    lb = sub.add_parser(
        "leaderboard", help="rebuild and print a task's leaderboard from its records",
        description="Rebuild a task's leaderboard from its signed records, write the CSV and "
        "Markdown files (whole board; the filters only narrow what is printed) and print it. "
        "Records not written by the harness or with impossible values are skipped and counted.",
    )  # fmt: skip
    lb.add_argument("--task", required=True, help="task name (see `dltbench list`)")
    lb.add_argument("--format", choices=("table", "csv", "md"), default="table",
                    help="table: readable mean ± std (default); csv: every column at full "
                    "precision; md: the Markdown page with the metric legend")  # fmt: skip
    lb.add_argument("--method", nargs="+", metavar="M", help="print only these methods")
    lb.add_argument("--profile", help="print only this profile (e.g. quick, quick-smoke)")
    lb.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                    help="print only rows with this setting, e.g. sigma=0.25 (repeatable)")  # fmt: skip
    lb.add_argument(
        "--no-write", action="store_true", help="print only; do not rewrite the CSV/MD files"
    )
    _common_io(lb)
    lb.set_defaults(func=cmd_leaderboard)

    rep = sub.add_parser(
        "report", help="build an HTML report (tables, plots, provenance) from the records",
        description="Build a static site from the signed records alone (nothing is rerun): "
        "index.html with each task's best method per setting, and one page per task with its "
        "sortable leaderboard, the plots its plots.py declares, sample grids and the provenance "
        "of every row. Self-contained: it opens from file:// with no network.",
    )  # fmt: skip
    rep.add_argument("--task", nargs="+", metavar="T",
                     help="tasks to report (default: every task with records in --results-dir)")  # fmt: skip
    rep.add_argument("--out", type=Path, default=Path(REPORT_DIR),
                     help=f"folder to write the pages to (default ./{REPORT_DIR})")  # fmt: skip
    rep.add_argument(
        "--results-dir", type=Path, default=Path("results"), help="records (default ./results)"
    )
    rep.set_defaults(func=cmd_report)

    rec = sub.add_parser(
        "records", help="list a task's records; find and prune stale ones",
        description="List the records of a task with whether the current code would produce "
        "them again (same config hash, method and task source hashes). --prune rewrites the "
        "file without the stale ones (atomically; the old file is kept as <task>.jsonl.bak).",
        epilog="Records of plugin methods are checked only when --plugin loads them. To re-sign "
        "reviewed curated records: python -c \"from dltbench.store import sign_records; "
        "sign_records('results', 'TASK')\"",
    )  # fmt: skip
    rec.add_argument("--task", required=True, help="task name (see `dltbench list`)")
    rec.add_argument("--stale", action="store_true", help="list only stale records")
    rec.add_argument("--prune", action="store_true", help="remove the stale records")
    rec.add_argument("--drop", nargs="+", default=[], metavar="ID",
                     help="remove these records (e.g. an invalid one you reviewed and found to be "
                     "the harness's fault: it keeps its row unranked until removed)")  # fmt: skip
    rec.add_argument("--plugin", action="append", default=[], metavar="FILE",
                     help="load this plugin file, so its methods' records can be checked")  # fmt: skip
    rec.add_argument("--results-dir", type=Path, default=Path("results"),
                     help="records (default ./results)")  # fmt: skip
    rec.set_defaults(func=cmd_records)

    val = sub.add_parser(
        "validate", help="check a plugin against a task's protocol and run it on a tiny config",
    )  # fmt: skip
    val.add_argument("--task", required=True)
    val.add_argument("--plugin", required=True, metavar="FILE", help="the plugin file to check")
    val.add_argument("--method", help="only this method of the plugin")
    val.add_argument("--data-dir", type=Path)
    val.set_defaults(func=cmd_validate)
    return p


def _common_io(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--results-dir", type=Path, default=Path("results"), help="records (default ./results)"
    )
    p.add_argument("--leaderboard-dir", type=Path, default=Path("leaderboards"),
                   help="CSV/Markdown leaderboards (default ./leaderboards)")  # fmt: skip


def cmd_list(args: argparse.Namespace) -> int:
    """Print tasks, and per task its methods with one-line descriptions."""
    registry.discover(plugin_files=args.plugin)
    names = [args.task] if args.task else registry.task_names()
    for name in names:
        task = registry.get_task(name)
        out.print(
            f"[bold]{task.name}[/]  {task.description}  (primary metric: {task.primary_metric})"
        )
        for m in registry.method_names(task.name):
            cls = registry.get_method_class(task.name, m)
            origin = registry.method_origin(task.name, m)
            tag = "" if origin == "builtin" else f"  [dim]({origin})[/]"
            desc = cls.description() or "[dim](no description)[/]"
            out.print(f"  {m:<18} {desc}{tag}")
    return 0


def plural(n: int, word: str) -> str:
    """``1 method``, ``2 methods``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)


def parse_size(text: str) -> float:
    """MiB from ``512M``, ``4G``, ``1.5g``, ``2048`` (a plain number is MiB)."""
    m = _SIZE.fullmatch(str(text))
    if not m:
        raise UsageError(f"cannot read size {text!r}: use e.g. 512M or 4G")
    scale = {"": 1, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024**2}[m.group(2).lower()]
    return float(m.group(1)) * scale


def physical_memory_mb() -> float | None:
    """Physical memory of this machine in MiB (None where os.sysconf cannot say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        return None


#: Memory a default job counts on (MiB): a quick cell's harness and plugin process together
#: peak at about 1.5 GiB (records' peak_memory_mb is the harness side, at most 0.85 GiB).
JOB_MEMORY_MB = 2048


def default_jobs(device: str, cores: int, phys_mb: float | None) -> int:
    """Cells to run at once when --jobs is not given: one per core, one per 2 GiB at most.

    One torch thread per cell is faster than all cores on one cell for the small models of
    the quick profile (435 s against 725 s for the whole suite on 2 cores), and it is how the
    committed records were made. On a GPU the cells would share it: one at a time.
    """
    try:
        if str(resolve_device(device)).startswith("cuda"):
            return 1
    except ValueError:
        return 1  # the bad --device is reported where the device is resolved
    by_memory = int(0.8 * phys_mb // JOB_MEMORY_MB) if phys_mb else cores
    return max(1, min(cores, by_memory))


def check_run_input(args: argparse.Namespace) -> tuple[int, float, float | None]:
    """Refuse impossible numbers up front; cap --jobs by cores and memory (with a warning).

    Returns (jobs, timeout in s, memory per cell in MiB or None if unknown).
    """
    if any(s < 0 for s in args.seeds):
        raise UsageError(f"--seeds must be non-negative integers, got {min(args.seeds)}")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    timeout = parse_duration(args.timeout)
    if not timeout > 0:
        raise UsageError(f"--timeout must be positive, got {args.timeout!r}")
    memory = parse_size(args.memory) if args.memory is not None else None
    if memory is not None and not memory > 0:
        raise UsageError(f"--memory must be positive, got {args.memory!r}")
    cores, phys = os.cpu_count() or 1, physical_memory_mb()
    jobs = args.jobs if args.jobs is not None else default_jobs(args.device, cores, phys)
    if jobs > cores * 4:
        err.print(f"warning: --jobs {jobs} capped to {cores * 4} (4 x {plural(cores, 'core')})")
        jobs = cores * 4
    if phys is not None and memory is not None and jobs * memory > phys:
        fit = max(1, int(phys // memory))
        if fit < jobs:
            err.print(
                f"warning: --jobs {jobs} capped to {fit}: {jobs} x --memory {args.memory} "
                f"exceeds the {phys / 1024:.1f} GiB of physical memory"
            )
            jobs = fit
    if memory is None and phys is not None:
        memory = 0.8 * phys / jobs
    return jobs, timeout, memory


def cmd_run(args: argparse.Namespace) -> int:
    """Plan cells, skip recorded ones, run the rest, rebuild and print the leaderboard.

    ``--task all`` runs every registered task in turn and ends with each task's wall time.
    """
    if args.task == "all":
        return _run_all(args)
    return _run_task(args)


def _run_all(args: argparse.Namespace) -> int:
    if args.method:
        raise UsageError("--method names one task's methods; use it with one --task, not all")
    if args.setting:
        raise UsageError("--setting names one task's settings; use it with one --task, not all")
    check_run_input(args)
    registry.discover(None, args.plugin)
    times, codes = {}, {}
    for name in registry.task_names():
        err.print(f"[bold]== {name}[/]")
        start = time.perf_counter()
        codes[name] = _run_task(argparse.Namespace(**{**vars(args), "task": name}))
        times[name] = time.perf_counter() - start
    rows = [[n, f"{times[n]:.0f}", "ok" if codes[n] == 0 else f"exit {codes[n]}"] for n in times]
    rows.append(["all", f"{sum(times.values()):.0f}", ""])
    err.print(tabulate(rows, headers=["task", "wall s", "status"], tablefmt="simple"))
    return max(codes.values(), default=0)


def _run_task(args: argparse.Namespace) -> int:
    jobs, timeout, memory = check_run_input(args)
    registry.discover(args.task, args.plugin)
    task = registry.get_task(args.task)
    check_results_path(args.results_dir, task.name)
    methods = list(dict.fromkeys(args.method or registry.method_names(task.name)))
    seeds = list(dict.fromkeys(args.seeds))
    for m in methods:
        registry.get_method_class(task.name, m)  # unknown name -> error with valid names
    if not methods:
        raise UsageError(f"task {task.name!r} has no methods registered")
    executor = make_executor(args, jobs)
    with executor or contextlib.nullcontext():
        return _run_planned(args, task, methods, seeds, jobs, timeout, memory, executor)


def make_executor(args: argparse.Namespace, jobs: int):
    """The Dask executor that --executor/--scheduler/--scheduler-file ask for, else None."""
    if args.scheduler and args.scheduler_file:
        raise UsageError("give --scheduler or --scheduler-file, not both")
    remote = bool(args.scheduler or args.scheduler_file)
    if args.executor == "local" and remote:
        raise UsageError("--scheduler/--scheduler-file submit to Dask: use --executor dask")
    if args.executor != "dask" and not remote:
        return None
    if args.retries < 0:
        raise UsageError(f"--retries must be 0 or more, got {args.retries}")
    require_distributed()
    gpu = not remote and str(resolve_device(args.device)).startswith("cuda")
    return DaskExecutor(
        scheduler=args.scheduler, scheduler_file=args.scheduler_file and str(args.scheduler_file),
        workers=jobs, retries=args.retries, gpu=gpu,
    )  # fmt: skip


def _run_planned(args, task, methods, seeds, jobs, timeout, memory, executor) -> int:
    if executor is not None and not executor.local:
        executor.open()  # a wrong address is one line now, before any planning output
    # A bad --device is one line here, not N failed cells; on a cluster the workers' devices.
    device = executor.resolve_device(args.device) if executor else str(resolve_device(args.device))
    if executor is not None and not executor.local and args.memory is None:
        memory = None  # each worker takes its own share of its own memory
    opts = RunOptions(
        device=device, jobs=jobs, timeout_s=timeout, force=args.force,
        results_dir=args.results_dir, data_dir=args.data_dir, plugin_files=tuple(args.plugin),
        memory_mb=memory,
    )  # fmt: skip
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be a positive number of test points, got {args.limit}")
    cells = plan(task, methods, args.profile, seeds, smoke=args.smoke, limit=args.limit)
    wanted = _settings(task, args.setting)
    cells = [c for c in cells
             if all(_same_value(task.setting_of(c.config)[k], v) for k, v in wanted)]  # fmt: skip
    if not cells:
        raise UsageError("no setting of the profile matches every --setting")
    if args.attach:
        attached = attachments(args.attach)
        cells = [dataclasses.replace(c, attachments=attached) for c in cells]
    for cfg in dict.fromkeys(c.config for c in cells):
        task.check_data(cfg, args.data_dir)
    todo, kept = pending_cells(task, cells, opts)
    n_settings = len(dict.fromkeys(c.config for c in cells))
    shape = f"{plural(len(methods), 'method')} x {plural(n_settings, 'setting')}"
    if len(cells) != len(methods) * n_settings * len(seeds):
        shape = f"{shape} where the method applies"
    err.print(
        f"{task.name}: {plural(len(cells), 'cell')} ({shape} x "
        f"{plural(len(seeds), 'seed')}) on {device}"
        + (f" ({executor.where()})" if executor else f", {jobs} at a time")
        + f", {len(kept)} already recorded"
        + (" (resume; --force reruns them)" if kept else "")
    )
    store_error = None
    try:
        extra = (executor.run_cells,) if executor else ()
        results = _run_with_progress(task, todo, opts, *extra)
    except StoreError as exc:  # disk full: what was stored stays; say so and show it
        store_error, results = exc, []
    bad = [r for r in results if r.status != "ok"]
    df = leaderboard.from_results(task, args.results_dir)
    try:
        csv_path, md_path = leaderboard.write(task, df, args.leaderboard_dir)
    except OSError as exc:
        if store_error is None:
            raise
        csv_path = md_path = None
        err.print(f"error: cannot write the leaderboard either: {exc.strerror or exc}")
    out.print(leaderboard.compact(task, df))
    _report_skipped(df)
    where = f"  leaderboard: {csv_path}, {md_path}" if csv_path else ""
    err.print(f"records: {args.results_dir / (task.name + '.jsonl')}{where}")
    err.print(report_hint(task.name, args.results_dir), markup=False)
    if store_error is not None:
        err.print(
            f"[bold red]error:[/] {store_error}; the run stopped, the records stored so far "
            "are intact and shown above; free space and rerun to resume"
        )
        return 1
    if bad:
        err.print(f"[bold red]{len(bad)} of {plural(len(results), 'cell')} did not succeed:[/]")
        for r in bad:
            err.print(
                f"  {r.method} {r.setting} seed={r.seed}: {r.status}: {_first_line(r.error)}"
            )
        return 1
    return 0


def report_hint(task: str, results_dir: Path) -> str:
    """Where this task's HTML report page would be, and the command that makes it."""
    where = Path(REPORT_DIR) / f"{task}.html"
    results = "" if results_dir == Path("results") else f" --results-dir {results_dir}"
    return f"report: {where} (make it: dltbench report --task {task}{results} --out {REPORT_DIR})"


def cmd_report(args: argparse.Namespace) -> int:
    """Build the HTML report of some or all tasks from their records; print where it is."""
    from .report import build_site
    from .report.site import tasks_with_records

    try:
        import matplotlib  # noqa: F401 (drawn lazily; say what is missing before any work)
    except ImportError as exc:
        raise UsageError(
            "dltbench report draws its plots with matplotlib, which is not installed: "
            "pip install 'dltbench[report]' (or pip install matplotlib)"
        ) from exc

    names = list(dict.fromkeys(args.task or tasks_with_records(args.results_dir)))
    if not names:
        raise UsageError(f"no records in {args.results_dir}: run `dltbench run --task T` first")
    for name in names:
        registry.discover(name)
        task = registry.get_task(name)  # an unknown name: one line with the valid ones
        if not load_results(args.results_dir, task.name).records:
            raise UsageError(
                f"no signed records of {task.name} in {args.results_dir}: "
                f"run `dltbench run --task {task.name}` first"
            )
    pages = build_site(args.results_dir, args.out, names)
    for path in pages:
        out.print(str(path), markup=False)
    err.print(f"report: open {pages[0].resolve().as_uri()}", markup=False)
    return 0


def _report_skipped(df) -> None:
    line = leaderboard.skipped_line(df)
    if line:
        err.print(f"warning: {line[0].lower()}{line[1:]}")


class Heartbeat:
    """Lines saying what each running cell is doing, at most every ``interval`` seconds.

    For logs (stderr not a terminal), where the progress bars are off and a long cell
    would otherwise be silent for minutes.
    """

    def __init__(self, task: Task, interval: float = HEARTBEAT_S, clock=time.monotonic):
        self.task, self.interval, self.clock = task, interval, clock
        self.running: dict[Cell, tuple[float, str]] = {}  # cell -> (start, last progress)
        self.last = clock()
        self.lock = threading.Lock()

    def start(self, cell: Cell) -> None:
        """A cell started."""
        with self.lock:
            self.running[cell] = (self.clock(), "starting")

    def progress(self, cell: Cell, desc: str, done: int, total: int) -> None:
        """A cell reported progress."""
        with self.lock:
            if cell in self.running:
                self.running[cell] = (self.running[cell][0], f"{desc} {done}/{total}")

    def finish(self, cell: Cell) -> None:
        """A cell ended."""
        with self.lock:
            self.running.pop(cell, None)

    def lines(self) -> list[str]:
        """The heartbeat lines due now (empty until ``interval`` has passed since the last)."""
        now = self.clock()
        with self.lock:
            if now - self.last < self.interval:
                return []
            self.last = now
            return [
                f"running {cell.label(self.task)}: {last} ({now - start:.0f}s)"
                for cell, (start, last) in self.running.items()
            ]


def _run_with_progress(
    task: Task, cells: list[Cell], opts: RunOptions, execute=None
) -> list[Result]:
    execute = execute or run_cells  # looked up now: tests replace cli.run_cells
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True, disable=not err.is_terminal,
    )  # fmt: skip
    overall = progress.add_task("cells", total=len(cells))
    bars: dict[Cell, int] = {}
    beat = Heartbeat(task, HEARTBEAT_S)

    def on_start(cell: Cell) -> None:
        beat.start(cell)
        bars[cell] = progress.add_task(f"  {cell.label(task)}", total=None)

    def on_progress(cell: Cell, desc: str, done: int, total: int) -> None:
        desc = escape(desc)  # a plugin's label must not restyle or fake the console's lines
        beat.progress(cell, desc, done, total)
        if cell in bars:
            progress.update(
                bars[cell],
                description=f"  {cell.label(task)}: {desc}",
                completed=done,
                total=total,
            )

    def on_result(cell: Cell, r: Result) -> None:
        beat.finish(cell)
        if cell in bars:
            progress.remove_task(bars.pop(cell))
        progress.advance(overall)
        value = r.metrics.get(task.primary_metric)
        if r.status == "ok":
            summary = f"{task.primary_metric}={value:.4g}" if value is not None else ""
            err.print(f"[green]ok[/]      {cell.label(task)}  {summary}  ({r.wall_time_s:.1f}s)")
        else:
            err.print(f"[red]{r.status:<7}[/] {cell.label(task)}  {_first_line(r.error)}")

    def on_skip(cell: Cell, why: str) -> None:
        err.print(f"[yellow]skipped[/] {cell.label(task)}  ({why})")

    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(min(1.0, beat.interval)):
            for line in beat.lines():
                err.print(line)

    thread = None
    if not err.is_terminal and cells:
        thread = threading.Thread(target=heartbeat, name="dltbench-heartbeat", daemon=True)
        thread.start()
    try:
        with progress:
            return execute(task, cells, opts, on_progress, on_start, on_result, on_skip)
    finally:
        stop.set()
        if thread is not None:
            thread.join()


def _first_line(text: str | None, limit: int = 300) -> str:
    """The first line of an error, shortened and with rich markup escaped: a plugin's error
    text must not restyle or fake the console's output."""
    line = leaderboard.first_line(text)
    return escape(line[:limit] + ("..." if len(line) > limit else ""))


def _filter(task: Task, df, args: argparse.Namespace):
    """The rows of ``df`` that match --method, --profile and every --setting."""
    keep = np.ones(len(df), dtype=bool)
    if args.method:
        keep &= df["method"].isin(args.method).to_numpy()
    if args.profile:
        keep &= (df["profile"] == args.profile).to_numpy()
    for key, value in _settings(task, args.setting):
        keep &= np.array([_same_value(v, value) for v in df[key]], dtype=bool)
    out = df[keep].reset_index(drop=True)
    out.attrs = dict(df.attrs)
    return out


def _settings(task: Task, items: list[str]) -> list[tuple[str, str]]:
    """The (key, value) pairs of ``--setting KEY=VALUE`` items; a UsageError names the keys."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in task.setting_keys:
            raise UsageError(
                f"--setting {item!r}: use KEY=VALUE with KEY one of {', '.join(task.setting_keys)}"
            )
        out.append((key, value))
    return out


def _same_value(cell, text: str) -> bool:
    """A setting value equals the command line's text (numbers compared as numbers)."""
    if str(cell) == text:
        return True
    try:
        return math.isclose(float(cell), float(text), rel_tol=1e-12, abs_tol=0.0)
    except (TypeError, ValueError):
        return False


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """Rebuild a leaderboard from the records, write it, and print it (filtered if asked)."""
    registry.discover(args.task)
    task = registry.get_task(args.task)
    loaded = load_results(args.results_dir, task.name, verify=False)
    if not loaded.records:
        raise UsageError(
            f"no records in {args.results_dir / (task.name + '.jsonl')}: "
            f"run `dltbench run --task {task.name}` first"
        )
    df = leaderboard.from_results(task, args.results_dir)
    if not args.no_write:
        leaderboard.write(task, df, args.leaderboard_dir)
    shown = _filter(task, df, args)
    if shown.empty and not df.empty:
        err.print("note: no rows match --method/--profile/--setting")
    text = {
        "table": lambda: leaderboard.compact(task, shown),
        "csv": lambda: leaderboard.to_csv(shown),
        "md": lambda: leaderboard.to_markdown(task, shown),
    }[args.format]()
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    _report_skipped(df)
    return 0


def cmd_records(args: argparse.Namespace) -> int:
    """List a task's records and whether the current code would produce them; prune stale ones."""
    registry.discover(args.task, args.plugin)
    task = registry.get_task(args.task)
    loaded = load_results(args.results_dir, task.name, verify=False)
    rows, stale_ids = [], set()
    for _, _raw, rec, signed in loaded.lines:
        if rec is None:
            continue
        state = record_state(task, rec)
        if state.startswith("stale"):
            stale_ids.add(rec.id)
        if not signed:
            state += ", unsigned"
        if args.stale and not state.startswith("stale"):
            continue
        setting = " ".join(f"{k}={v}" for k, v in rec.setting.items())
        rows.append((rec.id, rec.method, rec.profile, setting, rec.seed, rec.status, state))
    for row in rows:
        out.print("  ".join(str(c) for c in row), markup=False)
    path = args.results_dir / f"{task.name}.jsonl"
    n = len(loaded.lines) - len(loaded.bad_lines)
    err.print(f"{path}: {plural(n, 'record')}, {len(stale_ids)} stale")
    if args.prune and stale_ids:
        bak = remove_records(args.results_dir, task.name, stale_ids)
        err.print(f"pruned {plural(len(stale_ids), 'stale record')} from {path} (backup: {bak})")
    if args.drop:
        known = {rec.id for _, _raw, rec, _signed in loaded.lines if rec is not None}
        unknown = [i for i in args.drop if i not in known]
        if unknown:
            raise UsageError(f"--drop: no record {', '.join(unknown)} in {path}")
        bak = remove_records(args.results_dir, task.name, set(args.drop))
        err.print(f"dropped {plural(len(args.drop), 'record')} from {path} (backup: {bak})")
    return 0


def attachments(paths: list[str]) -> tuple[tuple[str, str], ...]:
    """(absolute path, sha256) of each ``--attach`` file; a UsageError if one is not a file."""
    out = {}
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if not path.is_file():
            raise UsageError(f"--attach {raw}: no such file")
        try:
            out[str(path)] = file_sha256(path)
        except OSError as exc:
            raise UsageError(f"--attach {raw}: cannot read it ({exc.strerror})") from exc
    names = [Path(p).name for p in out]
    if len(set(names)) < len(names):
        raise UsageError("--attach: two files with the same name (records key them by name)")
    return tuple(out.items())


def record_state(task: Task, rec: Result) -> str:
    """``current``, ``stale (which hashes differ)`` or ``unknown (...)`` for a record."""
    try:
        registry.get_method_class(task.name, rec.method)
    except registry.RegistryError:
        hint = "; pass --plugin" if rec.method_origin.startswith("file") else ""
        return f"unknown (method {rec.method} is not registered{hint})"
    try:
        attached = (rec.method_params or {}).get("attachments") or {}
        ident = identity(task, Cell(task.name, rec.method, rec.profile, rec.config, rec.seed,
                                    tuple(attached.items())))  # fmt: skip
    except Exception as exc:  # a config the current task cannot read is stale too
        return f"stale (config unreadable now: {type(exc).__name__})"
    changed = [
        name
        for name in ("config_hash", "method_source_hash", "task_source_hash")
        if ident[name] != getattr(rec, name)
    ]
    return f"stale ({', '.join(changed)} changed)" if changed else "current"


def cmd_validate(args: argparse.Namespace) -> int:
    """Import a plugin, check its methods against the task's protocol, run each on a tiny config."""
    from .testing import check_method

    registry.discover(args.task)
    task = registry.get_task(args.task)
    try:
        added = registry.load_plugin_file(args.plugin)
    except registry.RegistryError as exc:
        err.print(f"[red]FAIL[/] {args.plugin}: {exc}")
        return 1
    names = [m for t, m in added if t == task.name]
    if args.method:
        names = [m for m in names if m == args.method]
    if not names:
        found = ", ".join(f"{m} ({t})" for t, m in added) or "none"
        err.print(
            f"[red]FAIL[/] {args.plugin} registers no method for task {task.name!r} (found: {found})"
        )
        return 1
    ok = True
    for name in names:
        out.print(f"[bold]{task.name}/{name}[/] from {args.plugin}")
        for check in check_method(task.name, name, args.data_dir):
            mark = "[green]PASS[/]" if check.ok else "[red]FAIL[/]"
            out.print(f"  {mark} {check.name}" + (f": {check.detail}" if check.detail else ""))
            ok &= check.ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
