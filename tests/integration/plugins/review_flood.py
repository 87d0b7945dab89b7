"""Review repro: a method that floods the harness with progress messages and never ends."""

from __future__ import annotations

import dltbench
from dltbench.tasks.certified.methods import Standard


@dltbench.register_method(task="certified", name="review-progress-flood")
class ProgressFlood(Standard):
    """Sends progress as fast as it can, forever: the run's --timeout must still end it."""

    def train(self, data, config, ctx):
        """Never returns."""
        i = 0
        while True:
            i += 1
            ctx.progress("x" * 80, i, i + 1)
