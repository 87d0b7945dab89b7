"""A plugin that kills its own process mid-training (a segfault, an OOM kill): on a Dask
worker the cell must be recorded `failed` and the worker's next cell run normally."""

import os
import signal

import dltbench
from dltbench.tasks.certified import CertifiedMethod


@dltbench.register_method(task="certified", name="test-crash")
class Crash(CertifiedMethod):
    """SIGKILLs itself during training."""

    def train(self, data, config, ctx):
        os.kill(os.getpid(), signal.SIGKILL)
