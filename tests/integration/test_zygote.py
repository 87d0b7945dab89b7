"""Workers forked by the zygote are as separate as fresh sandboxes: what one cell's plugin
writes or holds, the next cell's plugin cannot see, signal or read."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from dltbench.oracle import PluginError
from dltbench.sandbox import PluginProcess, Zygote, bwrap_version

PROBE = str(Path(__file__).parent / "plugins" / "zygote_probe.py")


def _probe(zygote: Zygote) -> dict:
    spawned = zygote.spawn(1, None)
    worker = PluginProcess.adopt(spawned)
    # Importing the plugin file runs the probe; it registers no method, which describe refuses.
    with pytest.raises(PluginError, match="registered no method"):
        worker.request("describe", {"task": "vae", "plugin_files": [PROBE]})
    worker.close()
    for _ in range(100):
        lines = [ln for ln in spawned.log_path.read_text().splitlines() if ln.startswith("{")]
        if lines:
            return json.loads(lines[-1])
        time.sleep(0.05)
    raise AssertionError(f"the probe printed nothing: {spawned.log_path.read_text()[-800:]}")


@pytest.fixture(scope="module")
def zygote():
    if bwrap_version() is None:
        pytest.skip("bubblewrap (bwrap) is not installed or cannot work here")
    try:
        z = Zygote(plugin_files=(PROBE,))
    except RuntimeError as exc:
        pytest.skip(f"no nested user namespaces here: {exc}")
    yield z
    z.close()


def test_zygote_workers_share_nothing(zygote):
    first, second = _probe(zygote), _probe(zygote)
    assert first["written"], "the probe could write nowhere, so the test proves nothing"
    # What the first worker wrote (in the places it could write) is gone for the second.
    assert second["found"] == [], second
    assert second["logs"] == [], "a worker can list other workers' logs"
    # Other processes (the zygote, earlier workers) cannot be signalled or read.
    assert first["signalled"] == [] and second["signalled"] == [], (first, second)
    assert first["traced"] == [] and second["traced"] == [], (first, second)
    # Nothing writable is shared: the root and /dev of the zygote are read-only.
    assert "/" not in first["written"] and "/dev" not in first["written"], first


def test_zygote_worker_killed_ends_and_reports(zygote):
    spawned = zygote.spawn(1, None)
    worker = PluginProcess.adopt(spawned)
    zygote.kill(spawned.wid)
    # SIGKILL, or SIGTERM when the kill arrives before the worker's parent set its handler
    with pytest.raises(Exception, match="killed by signal"):
        worker.request("describe", {"task": "vae"})


def test_a_dead_zygote_means_fresh_workers_not_a_failed_run():
    from dltbench import registry
    from dltbench.runner import RunOptions, _Zygotes, plan

    class Dead:
        closed = False

        def spawn(self, threads, memory_mb):
            raise RuntimeError("the zygote did not answer")

        def close(self):
            self.closed = True

    registry.discover("vae")
    task = registry.get_task("vae")
    cell = plan(task, ["vae"], "quick", [0])[0]
    pool = _Zygotes(task, RunOptions(device="cpu"))
    dead = Dead()
    pool._zygote = lambda c: dead  # what _zygote found: a zygote that has died since
    pool.zygotes = {"key": dead}
    assert pool.spawn(cell, 1) == ((None, None), ())  # the cell starts fresh processes
    assert dead.closed and pool.zygotes == {"key": None}
