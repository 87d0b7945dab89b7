"""A plugin that hangs: the cell must be killed at --timeout and recorded `timeout`."""

import time

import dltbench
from dltbench.tasks.certified import CertifiedMethod


@dltbench.register_method(task="certified", name="test-hangs")
class Hangs(CertifiedMethod):
    """Sleeps far longer than any test timeout."""

    def train(self, data, config, ctx):
        time.sleep(600)
