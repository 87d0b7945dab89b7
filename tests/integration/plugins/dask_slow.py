"""A plugin that trains like `standard` after a pause: long enough for a test to kill the
Dask worker running it mid-cell."""

import time

import dltbench
from dltbench.tasks.certified.methods import Standard


@dltbench.register_method(task="certified", name="test-slow")
class Slow(Standard):
    """`standard`, four seconds late."""

    def train(self, data, config, ctx):
        time.sleep(4.0)
        return super().train(data, config, ctx)
