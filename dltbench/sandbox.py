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
  sees no harness process; it dies with the cell (``--die-with-parent``).

Everywhere, the worker has its own session, a parent-death signal, an address-space
limit on CPU (``--memory``), no core dumps, and a fixed number of CPU threads. Where
bwrap is missing or does not work (no user namespaces), the record says
``sandbox: none``, and a leaderboard can filter on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from functools import lru_cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

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
) -> tuple[list[str], list[str]]:
    """The bwrap prefix for the worker and the PYTHONPATH entries it needs inside."""
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
    return args, pythonpath


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
        env = {
            k: v for k, v in os.environ.items()
            if k.startswith(("LANG", "LC_", "CUDA", "NVIDIA", "OPENBLAS", "PATH"))
        }  # fmt: skip
        env.update(
            HOME=str(self.scratch), TMPDIR=str(self.scratch), PYTHONHASHSEED="0",
            OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
            PYTHONDONTWRITEBYTECODE="1",
        )  # fmt: skip
        cmd = [sys.executable, "-m", "dltbench.worker", str(theirs.fileno()), str(threads)]
        if use_bwrap:
            prefix, pythonpath = bwrap_command(
                self.scratch, plugin_files, import_modules, attachments
            )
            cmd = prefix + cmd
        else:
            pythonpath = [str(_package_dir().parent)] + [
                str(root) for _, root in _module_roots(import_modules)
            ]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(pythonpath))
        self.log_path = self.scratch / "worker.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            env=env, cwd=str(self.scratch), start_new_session=True,
            preexec_fn=_limits(memory_mb, device.type == "cpu"),
        )  # fmt: skip
        log.close()
        theirs.close()
        self.endpoint = Endpoint(Connection(ours.detach()), trusted_peer=False)
        self.endpoint.on_progress = on_progress
        self.isolation: dict[str, Any] = {
            "sandbox": bwrap_version() if use_bwrap else "none",
            "network": "none" if use_bwrap else "host",
            "filesystem": "read-only binds of Python and dltbench, private scratch"
            if use_bwrap else "the user's (no sandbox found: install bubblewrap)",
            "process": "separate plugin process; oracle interface",
            "memory_mb": memory_mb,
            "threads": threads,
        }  # fmt: skip

    def request(self, op: str, *args: Any) -> Any:
        """Send a request; a dead worker becomes PluginDied with the end of its log."""
        try:
            return self.endpoint.request(op, *args)
        except PluginDied as exc:
            raise PluginDied(self._death_reason()) from exc

    def _death_reason(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
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
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> PluginProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
