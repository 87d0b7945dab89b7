"""A plugin whose training raises: the cell must be recorded `failed` and the run go on."""

import dltbench
from dltbench.tasks.certified import CertifiedMethod


@dltbench.register_method(task="certified", name="test-raises")
class Raises(CertifiedMethod):
    """Always raises during training."""

    def train(self, data, config, ctx):
        raise RuntimeError("planted failure")
