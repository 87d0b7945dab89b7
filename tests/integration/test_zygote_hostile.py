"""A hostile plugin against the zygote's forked workers: it tries to leave a message (a test
input it saw) for a concurrent worker (the auditor of its own cell, a cell of ``--jobs 2``) or
a later one, and to outlive its cell. Each test fails where the attack works."""

from __future__ import annotations

import errno
import glob
import json
import os
import time
from pathlib import Path

import pytest

from dltbench import seccomp
from dltbench.oracle import PluginError
from dltbench.sandbox import PluginProcess, Spawned, Zygote, bwrap_version

PLUGINS = Path(__file__).parent / "plugins"
LEAVE, FIND = str(PLUGINS / "zygote_leave.py"), str(PLUGINS / "zygote_find.py")
MARK = "dltleak"


@pytest.fixture(scope="module")
def zygote():
    if bwrap_version() is None:
        pytest.skip("bubblewrap (bwrap) is not installed or cannot work here")
    try:
        z = Zygote(plugin_files=(LEAVE, FIND))
    except RuntimeError as exc:
        pytest.skip(f"no nested user namespaces here: {exc}")
    yield z
    z.close()


def _run(zygote: Zygote, plugin: str) -> tuple[Spawned, PluginProcess, dict]:
    """Fork a worker, import ``plugin`` in it (it registers no method), return its findings."""
    spawned = zygote.spawn(1, None)
    worker = PluginProcess.adopt(spawned)
    with pytest.raises(PluginError, match="registered no method"):
        worker.request("describe", {"task": "vae", "plugin_files": [plugin]})
    for _ in range(100):
        lines = [ln for ln in spawned.log_path.read_text().splitlines() if ln.startswith("{")]
        if lines:
            return spawned, worker, json.loads(lines[-1])
        time.sleep(0.05)
    raise AssertionError(f"the probe printed nothing: {spawned.log_path.read_text()[-800:]}")


def _marked() -> list[str]:
    """Processes of this machine that the leaving probe named (it names itself MARK)."""
    out = []
    for path in glob.glob("/proc/[0-9]*/comm"):
        try:
            if Path(path).read_text().strip() == MARK:
                out.append(path)
        except OSError:
            pass
    return out


def _end(zygote: Zygote, spawned: Spawned, worker: PluginProcess) -> None:
    zygote.kill(spawned.wid)
    worker.close()


def _gone(timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while _marked() and time.monotonic() < deadline:
        time.sleep(0.1)
    return _marked()


def test_hostile_worker_cannot_undo_its_mounts(zygote):
    spawned, worker, left = _run(zygote, LEAVE)
    _end(zygote, spawned, worker)
    assert left["comm"] is True and left["pdeathsig_reset"], left  # the probe did its part
    for what in ("umount_shm", "umount_scratch", "remount_root_rw", "remount_tmp_rw"):
        assert left[what] != "ok", (what, left)
    assert not [m for m in left["shared_maps"] if m.split()[1][1] == "w"], left


def test_concurrent_workers_share_no_channel(zygote):
    """The plugin and the auditor of one cell (and cells of --jobs 2) run at once: the
    plugin must not be able to tell the auditor which rows it was asked."""
    a, wa, left = _run(zygote, LEAVE)
    try:
        b, wb, found = _run(zygote, FIND)
        _end(zygote, b, wb)
    finally:
        _end(zygote, a, wa)
    assert left["pty"].startswith("/dev/pts"), left
    assert found["comm"] == [], "another worker's /proc/<pid>/comm is readable"
    assert found["pty"] == [], "a pseudo-terminal of another worker can be opened"
    assert found["key"] == [], "another worker's key is listed in /proc/keys and readable"
    assert found["root"] == [], "another worker's files are reachable through /proc"
    assert len(found["visible_pids"]) <= 2, found  # itself, and its self-bind at most


def test_concurrent_workers_cannot_signal_by_file_locks(zygote):
    """Shared read-only files could carry bits between the plugin and its cell's auditor (or
    two cells side by side) through locks or change notifications: the seccomp filter
    (dltbench.seccomp) refuses them, kernel keys (a quota per user id, across namespaces) and
    sleeping on shared futexes (keyed by the file they lie in)."""
    a, wa, left = _run(zygote, LEAVE)
    try:
        b, wb, found = _run(zygote, FIND)
        _end(zygote, b, wb)
    finally:
        _end(zygote, a, wa)
    if seccomp.program() is None:
        pytest.skip("no seccomp filter for this machine's architecture")
    refused = ("flock", "lockf", "inotify", "add_key")
    assert {left[k] for k in refused} == {os.strerror(errno.EPERM)}, left
    assert not found["flock"] and found["flock_refused"], found
    if os.uname().machine == "x86_64":  # the probes use x86-64's futex number
        # the waiter neither sleeps nor is woken by the other worker's shared futex wakes
        assert found["futex_wait"][0] == "EAGAIN" and found["futex_wait"][1] < 0.5, found


def test_worker_does_not_outlive_its_cell(zygote):
    """The plugin (PID 1 of its namespace) drops its parent-death signal and ignores the
    harness's hang-up: it must still end when the harness ends its cell."""
    spawned, worker, left = _run(zygote, LEAVE)
    assert left["pdeathsig_reset"], left
    assert _marked(), "the probe did not name itself"
    _end(zygote, spawned, worker)
    assert _gone() == [], "the plugin process outlived its cell"
    later, wl, found = _run(zygote, FIND)
    _end(zygote, later, wl)
    assert found["comm"] == [] and found["pty"] == [] and found["key"] == [], found
