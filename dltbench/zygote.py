"""The zygote: a sandboxed interpreter that has imported torch once and forks plugin workers.

``python -m dltbench.zygote FD DIR [PACKAGE ...]`` runs inside bubblewrap (see
:class:`dltbench.sandbox.Zygote`, the harness's handle). Starting a fresh sandboxed
interpreter costs seconds per plugin process, almost all of it ``import torch``; forking
one from here costs milliseconds. It never runs plugin code itself, and every worker it
forks first moves into namespaces of its own, so cells of one run stay as separate as
fresh sandboxes would make them:

* a new user namespace, nested twice: the mounts set up below are locked, so the plugin
  cannot unmount them to see what lies beneath;
* a new mount namespace with fresh, private ``/dev/shm`` and scratch (its ``HOME`` and
  ``TMPDIR``) folders; the zygote's root, ``/dev`` and ``/tmp`` are read-only: nothing one
  worker writes is visible to another, so a plugin cannot carry a query (a test input)
  from one cell to the next;
* new PID, network and IPC namespaces: no other worker, and not the zygote, can be
  signalled, traced, or reached by a socket; the worker is PID 1 of its own namespace, so
  when it ends, anything it started ends with it (the zygote kills it directly: a plugin
  can clear its own parent-death signal);
* its own ``/proc`` (itself and system-wide figures only: the zygote's lists every worker,
  their names and keys) and its own ``/dev/pts`` (the zygote's terminals are shared);
* not dumpable: no process of the same user can read its memory.

The control protocol with the harness is one JSON object per message on ``FD``; a
spawned worker's end of its oracle socket comes back as an ``SCM_RIGHTS`` file
descriptor. The zygote exits, and its workers with it, when the harness closes ``FD``.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import pkgutil
import resource
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNS, _CLONE_NEWUSER = 0x00020000, 0x10000000
_CLONE_NEWPID, _CLONE_NEWNET, _CLONE_NEWIPC = 0x20000000, 0x40000000, 0x08000000
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE = 1, 4
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_BIND, _MS_MOVE = 0x1000, 0x2000
#: What a worker's private /proc shows besides its own ``/proc/self``: system-wide figures.
_PROC_FILES = ("cpuinfo", "meminfo", "stat", "loadavg", "uptime", "version")
#: The exit code of a worker whose namespaces could not be set up (its cell fails, saying so).
ISOLATION_FAILED = 97
#: Size of each private tmpfs (scratch, /dev/shm) when the run sets no --memory, MiB.
_DEFAULT_TMPFS_MB = 4096


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _new_user_namespace(flags: int) -> None:
    """unshare into a new user namespace (plus ``flags``), mapping our own uid and gid."""
    uid, gid = os.geteuid(), os.getegid()
    _check(_libc.unshare(_CLONE_NEWUSER | flags), "unshare")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")


def _tmpfs(target: str, size_mb: int) -> None:
    # Sized: tmpfs pages are memory that the address-space limit does not count.
    opts = f"mode=0700,size={size_mb}m".encode()
    _check(
        _libc.mount(b"tmpfs", target.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, opts),
        f"mount tmpfs on {target}",
    )


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode(), target.encode(), fstype and fstype.encode(), flags,
            data.encode() or None,
        ),
        f"mount {fstype or source} on {target}",
    )  # fmt: skip


def _private_proc(stage: str) -> None:
    """Cover the zygote's ``/proc`` with one that shows this process alone.

    The zygote's ``/proc`` lists every worker it forked: their names (``comm``), command
    lines and ``/proc/keys`` are readable by any other, a channel between the plugin and
    the auditor of one cell, and a proper ``proc`` cannot be mounted in a nested user
    namespace (bwrap's locked covers of ``/proc/sys``). Built at ``stage`` and moved in.
    """
    me = os.readlink("/proc/self")  # our number in the zygote's PID namespace
    os.mkdir(stage)
    _mount("tmpfs", stage, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "mode=0755")
    os.mkdir(f"{stage}/{me}")
    _mount(f"/proc/{me}", f"{stage}/{me}", None, _MS_BIND)
    os.symlink(me, f"{stage}/self")  # in a child process, its parent's (never another worker's)
    for name in _PROC_FILES:
        if os.path.exists(f"/proc/{name}"):
            Path(stage, name).touch()
            _mount(f"/proc/{name}", f"{stage}/{name}", None, _MS_BIND)
    os.symlink("self/mounts", f"{stage}/mounts")
    _mount(stage, "/proc", None, _MS_MOVE)
    os.rmdir(stage)


def _die_with_parent() -> None:
    _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")


def _close_other_fds(keep: set[int]) -> None:
    """Close every inherited descriptor but stdio and ``keep``: no channel between workers."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _worker(sock: socket.socket, log_fd: int, scratch: str, req: dict) -> int:
    """In the forked child: isolate, then serve the harness as ``dltbench.worker`` would."""
    _close_other_fds({sock.fileno(), log_fd})
    os.setsid()
    _die_with_parent()
    _new_user_namespace(_CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWIPC)
    # The zygote ends a worker with SIGTERM to this process, which SIGKILLs the plugin (PID 1
    # of its namespace: everything in it ends). Killing only this process would rely on the
    # plugin's parent-death signal, which the plugin can clear (prctl) to outlive its cell.
    inner, ended = 0, False

    def _end(signum: int, frame: object) -> None:
        nonlocal ended
        ended = True
        if inner:
            os.kill(inner, signal.SIGKILL)

    signal.signal(signal.SIGTERM, _end)
    pid = os.fork()  # the child is PID 1 of the new PID namespace
    if pid:
        inner = pid
        if ended:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):  # report it as the harness saw it before: killed by N
            with contextlib.suppress(OSError, ValueError):  # SIGKILL has no handler to reset
                signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
            os.kill(os.getpid(), os.WTERMSIG(status))
        return os.waitstatus_to_exitcode(status) & 0xFF
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    try:
        # Not /tmp: it holds the plugin's file and attachments (bound read-only there), and
        # the zygote made it read-only; the scratch folder is the worker's HOME and TMPDIR.
        size_mb = int(req.get("memory_mb") or _DEFAULT_TMPFS_MB)
        for target in ("/dev/shm", scratch):
            if os.path.isdir(target):
                _tmpfs(target, size_mb)
        if os.path.isdir("/dev/pts"):  # the zygote's: one set of terminals for all workers
            _mount("devpts", "/dev/pts", "devpts", _MS_NOSUID | _MS_NOEXEC,
                   "newinstance,ptmxmode=0666,mode=620")  # fmt: skip
        _private_proc(f"{scratch}/.proc")
        _new_user_namespace(_CLONE_NEWNS)  # locks the mounts above
        _check(_libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(DUMPABLE)")
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if req.get("memory_mb") and req.get("cpu_only"):
            cap = int(req["memory_mb"] * 2**20)
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    except OSError:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(ISOLATION_FAILED)
    threads = str(max(1, int(req.get("threads", 1))))
    os.environ.update(
        HOME=scratch, TMPDIR=scratch, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads
    )
    os.chdir(scratch)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from . import worker

    code = worker.main([str(sock.fileno()), threads])
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def serve(ctl: socket.socket, scratch: str) -> None:
    """Fork a worker per ``spawn`` request; kill on ``kill``; end all at EOF."""
    children: dict[int, int] = {}  # worker id -> pid
    buf = b""
    ctl.settimeout(0.5)
    while True:
        _reap(children, scratch)
        try:
            data = ctl.recv(65536)
        except TimeoutError:
            continue
        if not data:
            break
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            req = json.loads(line)
            if req["op"] == "spawn":
                _spawn(ctl, children, scratch, req)
            elif req["op"] == "kill" and req["id"] in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(children[req["id"]], signal.SIGTERM)  # see _worker
    for pid in children.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _spawn(ctl: socket.socket, children: dict[int, int], scratch: str, req: dict) -> None:
    wid = int(req["id"])
    ours, theirs = socket.socketpair()
    log_fd = os.open(f"{scratch}/worker-{wid}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ctl.close()
            ours.close()
            code = _worker(theirs, log_fd, scratch, req)
        finally:
            os._exit(code)
    os.close(log_fd)
    theirs.close()
    children[wid] = pid
    socket.send_fds(ctl, [b"ok\n"], [ours.fileno()])
    ours.close()


def _reap(children: dict[int, int], scratch: str) -> None:
    for wid, pid in list(children.items()):
        with contextlib.suppress(ChildProcessError):
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done:
                continue
            Path(f"{scratch}/worker-{wid}.exit").write_text(str(os.waitstatus_to_exitcode(status)))
        del children[wid]


def main(argv: list[str] | None = None) -> int:
    """Import torch and dltbench's own task packages once, then serve spawn requests."""
    argv = sys.argv[1:] if argv is None else argv
    fd, scratch, packages = int(argv[0]), argv[1], argv[2:]
    _die_with_parent()
    _check(_libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(DUMPABLE)")
    import numpy  # noqa: F401 - imported once here so workers start in milliseconds
    import torch  # noqa: F401

    from . import registry, worker  # noqa: F401

    registry.IN_WORKER = True
    # Only dltbench's own code: a plugin imported here would be in every worker, and could
    # leave them a shared channel (an inherited pipe) before they are isolated.
    # Every built-in task package, not only the run's: a worker's ``init`` discovers all of
    # them (their imports, arviz and PIL among them, cost ~0.7 s per worker otherwise).
    from . import tasks

    builtin = [f"dltbench.tasks.{m.name}" for m in pkgutil.iter_modules(tasks.__path__)]
    for package in dict.fromkeys([*packages, *builtin]):
        if package.startswith("dltbench.tasks."):
            importlib.import_module(package)
    if threading.active_count() > 1:  # a thread would hold locks its forks could never free
        raise RuntimeError(f"the zygote has {threading.active_count()} threads after its imports")
    serve(socket.socket(fileno=fd), scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
