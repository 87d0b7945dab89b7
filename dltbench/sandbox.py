"""The confined process that runs plugin code, and the harness's handle on it.

:class:`PluginProcess` starts ``python -m dltbench.worker`` for one cell and talks to it
through :class:`dltbench.oracle.Endpoint`. Where bubblewrap (``bwrap``, a small setuid-free
sandbox built on Linux namespaces, used by Flatpak) works, the worker runs in it:

* a filesystem of read-only binds of only what Python needs (system libraries, the
  Python installation and its site-packages, the dltbench package, the plugin's own
  file, and the files the user attached with ``run --attach``, e.g. a checkpoint) and a
  private writable scratch folder; the results, leaderboard and data
  folders, the git history and the datasets that ship inside packages are not there;
* no network (a new, empty network namespace), its own PID and IPC namespaces, so it
  sees no harness process; it dies with the cell (``--die-with-parent``);
* no file locks or file-change notifications (:mod:`dltbench.seccomp`), so two plugin
  processes cannot signal each other through the files both can read.

Everywhere, the worker has its own session, a parent-death signal, an address-space
limit on CPU (``--memory``), no core dumps, and a fixed number of CPU threads. Where
bwrap is missing or does not work (no user namespaces), the record says
``sandbox: none``, and a leaderboard can filter on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from . import seccomp
from .oracle import Endpoint, PluginDied

_PR_SET_PDEATHSIG = 1
#: Python on CPU maps far more address space than it touches; the limit leaves this headroom.
_AS_HEADROOM_MB = 3072


@lru_cache(maxsize=1)
def bwrap_version() -> str | None:
    """``bwrap``'s version if it is installed and can create namespaces here, else None."""
    exe = shutil.which("bwrap")
    if exe is None:
        return None
    try:
        probe = subprocess.run(
            [exe, "--ro-bind", "/", "/", "--unshare-net", "--unshare-pid", "--dev", "/dev",
             "--proc", "/proc", "true"],
            capture_output=True, timeout=20,
        )  # fmt: skip
        if probe.returncode != 0:
            return None
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "bwrap"
    except (OSError, subprocess.SubprocessError):
        return None


def _package_dir() -> Path:
    return Path(__file__).resolve().parent


def _module_roots(modules: tuple[str, ...]) -> list[tuple[Path, Path]]:
    """(top-level package dir, sys.path root) of modules the worker must import."""
    import importlib.util

    out = []
    for mod in modules:
        top = mod.split(".")[0]
        spec = importlib.util.find_spec(top)
        if spec is None or not spec.origin:
            continue
        origin = Path(spec.origin).resolve()
        pkg = origin.parent if origin.name == "__init__.py" else origin
        out.append((pkg, pkg.parent))
    return out


def _readable_roots() -> list[str]:
    """System and Python folders the worker needs, read-only."""
    # Not /opt, /srv, /home or /root: package archives and datasets live there (a wheel
    # of scikit-learn carries the digits); only Python's own folders are added below.
    roots = {"/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc"}
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix):
        roots.add(str(Path(p).resolve()))
    roots.add(str(Path(sys.executable).resolve().parent))
    for p in sys.path:
        if p and ("site-packages" in p or "dist-packages" in p) and Path(p).is_dir():
            roots.add(str(Path(p).resolve()))
    return sorted(r for r in roots if Path(r).exists())


def _hidden_data_paths() -> list[Path]:
    """Datasets that ship inside installed packages (scikit-learn's digits, our stored
    reference moments): a plugin must not read test data from them."""
    import importlib.util

    out: list[Path] = []
    spec = importlib.util.find_spec("sklearn")
    if spec and spec.origin:
        base = Path(spec.origin).resolve().parent / "datasets"
        out += [base / "data", base / "images", base / "descr"]
    pkg = _package_dir()
    out += sorted(pkg.rglob("*.json")) + sorted(pkg.rglob("*.npz"))
    return [p for p in out if p.exists()]


def bwrap_command(
    scratch: Path,
    plugin_files: tuple[str, ...],
    modules: tuple[str, ...],
    attachments: tuple[str, ...] = (),
    read_only_root: bool = False,
    seccomp_fd: int | None = None,
) -> tuple[list[str], list[str]]:
    """The bwrap prefix for the worker and the PYTHONPATH entries it needs inside.

    ``read_only_root``: the root, ``/dev`` and ``/tmp`` read-only too (for the zygote:
    each worker it forks covers the writable places left with private mounts of its own).
    ``seccomp_fd``: a descriptor holding :func:`dltbench.seccomp.program` (no file locks
    or notifications), which must be passed to bwrap.
    """
    args = ["bwrap", "--die-with-parent", "--new-session", "--unshare-net", "--unshare-pid",
            "--unshare-ipc", "--unshare-uts", "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", "/tmp"]  # fmt: skip
    for root in _readable_roots():
        args += ["--ro-bind", root, root]
    pkg = _package_dir()
    args += ["--ro-bind", str(pkg), str(pkg)]
    pythonpath = [str(pkg.parent)]
    for pkg_dir, root in _module_roots(modules):
        args += ["--ro-bind", str(pkg_dir), str(pkg_dir)]
        pythonpath.append(str(root))
    for f in (*plugin_files, *attachments):
        p = str(Path(f).resolve())
        args += ["--ro-bind", p, p]
    for hidden in _hidden_data_paths():
        if hidden.is_dir():
            args += ["--tmpfs", str(hidden)]
        else:
            args += ["--ro-bind", "/dev/null", str(hidden)]
    for dev in sorted(Path("/dev").glob("nvidia*")):  # CUDA devices, when present
        args += ["--dev-bind", str(dev), str(dev)]
    args += ["--bind", str(scratch), str(scratch), "--chdir", str(scratch)]
    if read_only_root:  # after the binds: /tmp holds the plugin's files, bound read-only
        args += ["--remount-ro", "/", "--remount-ro", "/dev", "--remount-ro", "/tmp"]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    return args, pythonpath


@contextlib.contextmanager
def _confined(
    scratch: Path,
    plugin_files: tuple[str, ...],
    modules: tuple[str, ...],
    attachments: tuple[str, ...],
    read_only_root: bool = False,
) -> Iterator[tuple[list[str], list[str], list[int]]]:
    """:func:`bwrap_command` with the seccomp filter: (prefix, PYTHONPATH entries, descriptors
    to pass to the process), valid until the process is started inside the block."""
    with seccomp.program_fd() as sfd:
        prefix, pythonpath = bwrap_command(
            scratch, plugin_files, modules, attachments, read_only_root, seccomp_fd=sfd
        )
        yield prefix, pythonpath, [] if sfd is None else [sfd]


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _limits(memory_mb: float | None, cpu_only: bool):
    """preexec_fn: die with the cell, no core dumps, an address-space cap on CPU."""

    def apply() -> None:
        die_with_parent()
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if memory_mb and cpu_only:  # CUDA reserves huge address ranges: no AS cap there
            cap = int((memory_mb + _AS_HEADROOM_MB) * 2**20)
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    return apply


def _worker_env(scratch: Path, threads: int) -> dict[str, str]:
    """The environment of a sandboxed interpreter: none of the user's but locale and devices."""
    env = {
        k: v for k, v in os.environ.items()
        if k.startswith(("LANG", "LC_", "CUDA", "NVIDIA", "OPENBLAS", "PATH"))
    }  # fmt: skip
    env.update(
        HOME=str(scratch), TMPDIR=str(scratch), PYTHONHASHSEED="0",
        OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONDONTWRITEBYTECODE="1",
    )  # fmt: skip
    return env


def _isolation(use_bwrap: bool, memory_mb: float | None, threads: int, forked: bool) -> dict:
    """What the record says of where the plugin ran."""
    process = "separate plugin process; oracle interface"
    if forked:
        process = (
            "separate plugin process, forked from a sandboxed zygote into its own user, "
            "mount, PID, network and IPC namespaces; oracle interface"
        )
    return {
        "sandbox": bwrap_version() if use_bwrap else "none",
        "network": "none" if use_bwrap else "host",
        "filesystem": "read-only binds of Python and dltbench, private scratch"
        if use_bwrap else "the user's (no sandbox found: install bubblewrap)",
        "process": process,
        "memory_mb": memory_mb,
        "threads": threads,
    }  # fmt: skip


@dataclass
class Spawned:
    """A worker a :class:`Zygote` forked: the harness's end of its oracle socket, and its files.

    Picklable (the connection travels to the cell's process as a duplicated descriptor).
    """

    conn: Connection
    wid: int
    log_path: Path
    exit_path: Path
    isolation: dict[str, Any]


class PluginProcess:
    """A confined worker for one cell's method; :attr:`endpoint` talks to it."""

    def __init__(
        self,
        *,
        plugin_files: tuple[str, ...] = (),
        import_modules: tuple[str, ...] = (),
        attachments: tuple[str, ...] = (),
        threads: int = 1,
        memory_mb: float | None = None,
        device: torch.device | str = "cpu",
        sandbox: str = "auto",
        on_progress=None,
    ):
        self.scratch = Path(tempfile.mkdtemp(prefix="dltbench-plugin-"))
        device = torch.device(device)
        use_bwrap = sandbox in ("auto", "bwrap") and bwrap_version() is not None
        if sandbox == "bwrap" and not use_bwrap:
            raise RuntimeError("--sandbox bwrap was asked for, but bwrap does not work here")
        ours, theirs = socket.socketpair()
        env = _worker_env(self.scratch, threads)
        cmd = [sys.executable, "-m", "dltbench.worker", str(theirs.fileno()), str(threads)]
        self.log_path = self.scratch / "worker.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        unconfined = [str(_package_dir().parent)] + [
            str(root) for _, root in _module_roots(import_modules)
        ]
        launch = (
            _confined(self.scratch, plugin_files, import_modules, attachments)
            if use_bwrap
            else contextlib.nullcontext(([], unconfined, []))
        )
        with launch as (prefix, pythonpath, fds):
            env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(pythonpath))
            self.proc = subprocess.Popen(
                prefix + cmd, pass_fds=[theirs.fileno(), *fds], stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, env=env, cwd=str(self.scratch), start_new_session=True,
                preexec_fn=_limits(memory_mb, device.type == "cpu"),
            )  # fmt: skip
        log.close()
        theirs.close()
        self.endpoint = Endpoint(Connection(ours.detach()), trusted_peer=False)
        self.endpoint.on_progress = on_progress
        self.isolation: dict[str, Any] = _isolation(use_bwrap, memory_mb, threads, forked=False)
        self.exit_path: Path | None = None

    @classmethod
    def adopt(cls, spawned: Spawned, on_progress=None) -> PluginProcess:
        """A handle on a worker that the run's :class:`Zygote` forked (milliseconds, not seconds).

        Its lifetime is the zygote owner's to end; :meth:`close` only hangs up, which ends
        an honest worker at once.
        """
        self = cls.__new__(cls)
        self.scratch, self.proc = None, None
        self.log_path, self.exit_path = spawned.log_path, spawned.exit_path
        self.endpoint = Endpoint(spawned.conn, trusted_peer=False)
        self.endpoint.on_progress = on_progress
        self.isolation = dict(spawned.isolation)
        return self

    def request(self, op: str, *args: Any) -> Any:
        """Send a request; a dead worker becomes PluginDied with the end of its log."""
        try:
            return self.endpoint.request(op, *args)
        except PluginDied as exc:
            raise PluginDied(self._death_reason()) from exc

    def _exit_code(self) -> int | None:
        if self.proc is not None:
            try:
                return self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                return None
        for _ in range(50):  # the zygote writes it when it reaps the worker
            with contextlib.suppress(OSError, ValueError):
                return int(self.exit_path.read_text())
            time.sleep(0.1)
        return None

    def _death_reason(self) -> str:
        code = self._exit_code()
        why = f"the plugin process ended (exit code {code})"
        if code is not None and code < 0:
            why = f"the plugin process was killed by signal {-code}"
            if -code == signal.SIGKILL:
                why += " (SIGKILL: often the memory limit)"
        tail = self.log_tail()
        return why + (f"; its last output:\n{tail}" if tail else "")

    def log_tail(self, chars: int = 2000) -> str:
        """The end of what the worker printed (stdout and stderr)."""
        try:
            return self.log_path.read_bytes()[-chars:].decode(errors="replace").strip()
        except OSError:
            return ""

    def close(self) -> None:
        """End the worker and its whole session now, and remove the scratch folder.

        No grace period: the worker holds nothing the harness wants (its artifact's answers
        are in; its scratch is deleted), and waiting for a torch interpreter to exit costs
        seconds per cell.
        """
        with contextlib.suppress(Exception):
            self.endpoint.conn.close()
        if self.proc is None:  # forked by a zygote: its owner ends it
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> PluginProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Zygote:
    """A sandboxed interpreter with torch imported that forks this run's plugin workers.

    One per run and set of plugin sources (its binds are theirs). Each worker it forks
    gets namespaces of its own (see :mod:`dltbench.zygote`), so it is as separate from the
    other cells' workers as a fresh sandbox; starting one costs milliseconds instead of
    the seconds of a new interpreter. Needs bubblewrap and nested user namespaces: the
    constructor raises where either is missing, and the caller starts fresh sandboxes.
    """

    def __init__(
        self,
        *,
        plugin_files: tuple[str, ...] = (),
        import_modules: tuple[str, ...] = (),
        attachments: tuple[str, ...] = (),
        packages: tuple[str, ...] = (),
        device: torch.device | str = "cpu",
    ):
        if bwrap_version() is None:
            raise RuntimeError("the zygote needs bubblewrap")
        self.scratch = Path(tempfile.mkdtemp(prefix="dltbench-zygote-"))
        self.cpu_only = torch.device(device).type == "cpu"
        self._ids = itertools.count(1)
        ours, theirs = socket.socketpair()
        env = _worker_env(self.scratch, 1)
        cmd = [sys.executable, "-m", "dltbench.zygote", str(theirs.fileno()), str(self.scratch)]
        log = open(self.scratch / "zygote.log", "wb")  # noqa: SIM115 - the child holds it
        # the zygote's forked workers inherit its seccomp filter
        with _confined(
            self.scratch, plugin_files, import_modules, attachments, read_only_root=True
        ) as (prefix, pythonpath, fds):
            env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(pythonpath))
            self.proc = subprocess.Popen(
                prefix + cmd + list(packages), pass_fds=[theirs.fileno(), *fds],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=str(self.scratch),
                start_new_session=True, preexec_fn=_limits(None, self.cpu_only),
            )  # fmt: skip
        log.close()
        theirs.close()
        self.ctl = ours
        try:
            self._probe()
        except BaseException:
            self.close()
            raise

    def _probe(self) -> None:
        """Fork one worker and hang up on it: proves the namespaces can be made here."""
        probe = self.spawn(1, None)
        try:
            Endpoint(probe.conn, trusted_peer=False).request("close")
        except PluginDied as exc:
            tail = (
                probe.log_path.read_text(errors="replace")[-600:]
                if probe.log_path.exists()
                else ""
            )
            raise RuntimeError(
                f"a forked worker could not isolate itself: {tail.strip()}"
            ) from exc
        finally:
            probe.conn.close()
            self.kill(probe.wid)

    def spawn(self, threads: int, memory_mb: float | None) -> Spawned:
        """Fork a fresh, isolated worker with ``threads`` CPU threads and a memory cap in MiB."""
        wid = next(self._ids)
        cap = memory_mb + _AS_HEADROOM_MB if memory_mb else None
        req = {"op": "spawn", "id": wid, "threads": threads, "memory_mb": cap,
               "cpu_only": self.cpu_only}  # fmt: skip
        self.ctl.settimeout(120)  # the first answer waits for the zygote's import of torch
        try:
            self.ctl.sendall(json.dumps(req).encode() + b"\n")
            msg, fds, _, _ = socket.recv_fds(self.ctl, 16, 1)
        except OSError as exc:
            raise RuntimeError(f"the zygote did not answer: {self.log_tail()}") from exc
        if msg != b"ok\n" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise RuntimeError(f"the zygote failed to fork a worker: {self.log_tail()}")
        return Spawned(
            Connection(fds[0]), wid, self.scratch / f"worker-{wid}.log",
            self.scratch / f"worker-{wid}.exit",
            _isolation(True, memory_mb, threads, forked=True),
        )  # fmt: skip

    def kill(self, wid: int) -> None:
        """End worker ``wid`` and everything it started (it is PID 1 of its namespace)."""
        with contextlib.suppress(OSError):
            self.ctl.sendall(json.dumps({"op": "kill", "id": wid}).encode() + b"\n")

    def log_tail(self, chars: int = 1500) -> str:
        """The end of what the zygote printed."""
        try:
            return (self.scratch / "zygote.log").read_bytes()[-chars:].decode(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """End the zygote and every worker it forked; remove its folder."""
        with contextlib.suppress(OSError):
            self.ctl.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)
