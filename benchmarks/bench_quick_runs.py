"""asv: the wall time of each task's whole quick run, as a user's `dltbench run --task T` does it.

Issue 19's budget: about 2 minutes per task and under 10 minutes for all tasks on 2 cores.
Every cell runs as in a real run: its own process, the method in its sandboxed plugin
process, seed 0, all built-in methods, as many cells at a time as `--jobs`' default, an empty results folder and an empty
reference-defense cache (a first run), so a slowdown anywhere on that path shows here.
"""

import os
import tempfile
from pathlib import Path

from dltbench import registry
from dltbench.cli import default_jobs, physical_memory_mb
from dltbench.runner import RunOptions, plan, run_cells

TASKS = [
    "certified",
    "robust",
    "attack",
    "sampler",
    "vae",
    "diffusion",
    "faceid",
    "bnn",
    "ntk",
    "gan",
]
#: tests/integration/test_asv_suites.py sets this: one method's smoke cells, to check the
#: suite works in seconds, not the minutes of a real quick run.
SMOKE = False


class TimeQuickRun:
    """Seconds for every built-in method of a task on the quick profile, seed 0, default --jobs."""

    params = TASKS
    param_names = ["task"]
    timeout = 3600
    number = 1
    repeat = 1
    warmup_time = 0

    def setup(self, task):
        self._tmp = tempfile.TemporaryDirectory()
        self._env = os.environ.get("DLTBENCH_CACHE_DIR")
        os.environ["DLTBENCH_CACHE_DIR"] = str(Path(self._tmp.name) / "cache")

    def teardown(self, task):
        if self._env is None:
            os.environ.pop("DLTBENCH_CACHE_DIR", None)
        else:
            os.environ["DLTBENCH_CACHE_DIR"] = self._env
        self._tmp.cleanup()

    def time_quick_run(self, task):
        registry.discover(task)
        t = registry.get_task(task)
        methods = registry.method_names(task)
        cells = plan(t, methods[:1] if SMOKE else methods, "quick", [0], smoke=SMOKE)
        jobs = default_jobs("cpu", os.cpu_count() or 1, physical_memory_mb())
        opts = RunOptions(device="cpu", jobs=jobs, results_dir=Path(self._tmp.name) / "results")
        bad = [r for r in run_cells(t, cells, opts) if r.status != "ok"]
        if bad:
            raise RuntimeError(f"{task}: {len(bad)} cells not ok: {bad[0].error}")
