"""The ``dltbench`` command: list, run, leaderboard, validate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import __version__, leaderboard, registry
from .api import PROFILES, DataMissing, Result, Task
from .runner import (
    Cell,
    RunOptions,
    parse_duration,
    pending_cells,
    plan,
    resolve_device,
    run_cells,
)
from .store import read_results

EPILOG = """\
examples:
  dltbench list
  dltbench run --task certified                       # quick profile, all built-in methods
  dltbench run --task certified --method gaussian-aug --seeds 0 1 2
  dltbench run --task certified --plugin examples/certified_plugin.py --method label-smoothing
  dltbench run --task certified --profile standard --data-dir ~/data   # MNIST from ~/data/MNIST/raw
  dltbench leaderboard --task certified --format md
  dltbench validate --task certified --plugin examples/certified_plugin.py

Records are appended to RESULTS_DIR/<task>.jsonl (one JSON line per cell); leaderboards
are rebuilt from them into LEADERBOARD_DIR/<task>.csv and .md. A rerun skips cells
already recorded `ok` with the same config, method source and seed; --force reruns them.
Exit status: 0 all cells ok, 1 some cell failed/timed out/was invalid, 2 bad input.
"""

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
    except (UsageError, registry.RegistryError, DataMissing, ValueError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        return 2
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
    run.add_argument("--task", required=True, help="task name (see `dltbench list`)")
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
    run.add_argument(
        "--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1 ..."
    )
    run.add_argument("--jobs", type=int, default=1, help="cells run in parallel (default 1)")
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
    run.set_defaults(func=cmd_run)

    lb = sub.add_parser(
        "leaderboard", help="rebuild and print a task's leaderboard from its records"
    )
    lb.add_argument("--task", required=True)
    lb.add_argument("--format", choices=("table", "csv", "md"), default="table")
    lb.add_argument(
        "--no-write", action="store_true", help="print only; do not rewrite the CSV/MD files"
    )
    _common_io(lb)
    lb.set_defaults(func=cmd_leaderboard)

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
            out.print(f"  {m:<18} {cls.description()}{tag}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Plan cells, skip recorded ones, run the rest, rebuild and print the leaderboard."""
    registry.discover(args.task, args.plugin)
    task = registry.get_task(args.task)
    methods = list(dict.fromkeys(args.method or registry.method_names(task.name)))
    seeds = list(dict.fromkeys(args.seeds))
    for m in methods:
        registry.get_method_class(task.name, m)  # unknown name -> error with valid names
    if not methods:
        raise UsageError(f"task {task.name!r} has no methods registered")
    if args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    device = str(
        resolve_device(args.device)
    )  # a bad --device is one line here, not N failed cells
    opts = RunOptions(
        device=device, jobs=args.jobs, timeout_s=parse_duration(args.timeout), force=args.force,
        results_dir=args.results_dir, data_dir=args.data_dir, plugin_files=tuple(args.plugin),
    )  # fmt: skip
    cells = plan(task, methods, args.profile, seeds, smoke=args.smoke)
    for cfg in dict.fromkeys(c.config for c in cells):
        task.check_data(cfg, args.data_dir)
    todo, kept = pending_cells(task, cells, opts)
    err.print(
        f"{task.name}: {len(cells)} cells ({len(methods)} methods x "
        f"{len(cells) // (len(methods) * len(seeds))} settings x {len(seeds)} seeds) on {device}, "
        f"{len(kept)} already recorded" + (" (resume; --force reruns them)" if kept else "")
    )
    results = _run_with_progress(task, todo, opts)
    bad = [r for r in results if r.status != "ok"]
    df = _build(task, args.results_dir)
    csv_path, md_path = leaderboard.write(task, df, args.leaderboard_dir)
    out.print(leaderboard.compact(task, df))
    err.print(
        f"records: {args.results_dir / (task.name + '.jsonl')}  leaderboard: {csv_path}, {md_path}"
    )
    if bad:
        err.print(f"[bold red]{len(bad)} of {len(results)} cells did not succeed:[/]")
        for r in bad:
            err.print(
                f"  {r.method} {r.setting} seed={r.seed}: {r.status}: {_first_line(r.error)}"
            )
        return 1
    return 0


def _run_with_progress(task: Task, cells: list[Cell], opts: RunOptions) -> list[Result]:
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True, disable=not err.is_terminal,
    )  # fmt: skip
    overall = progress.add_task("cells", total=len(cells))
    bars: dict[Cell, int] = {}

    def on_start(cell: Cell) -> None:
        bars[cell] = progress.add_task(f"  {cell.label(task)}", total=None)

    def on_progress(cell: Cell, desc: str, done: int, total: int) -> None:
        if cell in bars:
            progress.update(
                bars[cell],
                description=f"  {cell.label(task)}: {desc}",
                completed=done,
                total=total,
            )

    def on_result(cell: Cell, r: Result) -> None:
        if cell in bars:
            progress.remove_task(bars.pop(cell))
        progress.advance(overall)
        value = r.metrics.get(task.primary_metric)
        if r.status == "ok":
            summary = f"{task.primary_metric}={value:.4g}" if value is not None else ""
            err.print(f"[green]ok[/]      {cell.label(task)}  {summary}  ({r.wall_time_s:.1f}s)")
        else:
            err.print(f"[red]{r.status:<7}[/] {cell.label(task)}  {_first_line(r.error)}")

    with progress:
        return run_cells(task, cells, opts, on_progress, on_start, on_result)


def _build(task: Task, results_dir: Path):
    return leaderboard.build(
        task, read_results(results_dir, task.name), lambda name: read_results(results_dir, name)
    )


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """Rebuild a leaderboard from the records and print it."""
    registry.discover(args.task)
    task = registry.get_task(args.task)
    records = read_results(args.results_dir, task.name)
    if not records:
        raise UsageError(
            f"no records in {args.results_dir / (task.name + '.jsonl')}: run `dltbench run --task {task.name}` first"
        )
    df = _build(task, args.results_dir)
    if not args.no_write:
        leaderboard.write(task, df, args.leaderboard_dir)
    text = {
        "table": lambda: leaderboard.compact(task, df),
        "csv": lambda: leaderboard.to_csv(df),
        "md": lambda: leaderboard.to_markdown(task, df),
    }[args.format]()
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


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
