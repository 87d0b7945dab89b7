"""Fault injection: a kill -9 of the run leaves no cell, plugin process or plugin grandchild."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dltbench.sandbox import bwrap_version

PLUGIN = Path(__file__).parent / "plugins" / "hangs_tree.py"
MARKER = "dltbench-test-orphan-7f3a"


def _pids_with(text: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and "pytest" not in cmd:
            out.append(int(entry.name))
    return out


def _wait(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals and /proc are Linux's")
@pytest.mark.skipif(
    bwrap_version() is None,
    reason="without bubblewrap a setsid grandchild of a plugin may outlive a kill -9 "
    "(documented in docs/threat-model.md); `apt-get install bubblewrap` to run this test",
)
def test_kill_9_of_the_run_ends_every_process_it_started(tmp_path):
    for pid in _pids_with(MARKER) + _pids_with(str(PLUGIN)):  # leftovers of an earlier run
        os.kill(pid, signal.SIGKILL)
    run = subprocess.Popen(
        [sys.executable, "-m", "dltbench", "run", "--task", "certified", "--smoke",
         "--plugin", str(PLUGIN), "--method", "test-hangs-tree", "--timeout", "10m",
         "--results-dir", str(tmp_path / "r"), "--leaderboard-dir", str(tmp_path / "l")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        assert _wait(lambda: bool(_pids_with(MARKER)), 240), "the plugin never started"
        assert _pids_with(str(PLUGIN))  # the sandbox of the plugin process is up
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        gone = _wait(lambda: not _pids_with(MARKER) and not _pids_with(str(PLUGIN)), 30)
        assert gone, f"left behind: {_pids_with(MARKER) + _pids_with(str(PLUGIN))}"
    finally:
        for pid in _pids_with(MARKER) + _pids_with(str(PLUGIN)):
            os.kill(pid, signal.SIGKILL)
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
