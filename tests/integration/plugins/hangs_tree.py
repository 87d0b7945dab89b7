"""A plugin that starts a daemonised grandchild (setsid) and then hangs: nothing it started
may outlive the run, even when the run's own process is killed with SIGKILL."""

import subprocess
import sys
import time

import dltbench
from dltbench.tasks.certified import CertifiedMethod

MARKER = "dltbench-test-orphan-7f3a"


@dltbench.register_method(task="certified", name="test-hangs-tree")
class HangsTree(CertifiedMethod):
    """Starts a setsid grandchild that sleeps, then sleeps itself."""

    def train(self, data, config, ctx):
        """Never returns."""
        code = "import time; time.sleep(600)"
        subprocess.Popen([sys.executable, "-c", code, MARKER], start_new_session=True)
        time.sleep(600)
