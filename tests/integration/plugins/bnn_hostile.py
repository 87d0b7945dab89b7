"""bnn methods that try to get at what the harness keeps, or return what it must refuse."""

from __future__ import annotations

import gc

import torch

import dltbench
from dltbench.tasks.bnn import BNNMethod


@dltbench.register_method(task="bnn", name="test-peek")
class Peek(BNNMethod):
    """Looks for test data in its process and calls the harness-only log_lik; if refused, NaNs.

    Were either attempt to succeed it would return the init as a valid sample: the cell
    ending ``invalid`` for non-finite weights is the proof that both were refused.
    """

    def posterior(self, target, problem, init, generator):
        """Everything it can reach; the oracle refuses the un-listed method."""
        held = [o for o in gc.get_objects() if type(o).__name__ in ("BNNData", "BNNHarnessData")]
        if held:  # the view never holds them: reaching here would be a leak
            return init[:1]
        try:
            target.log_lik(init[:1])  # not allow-listed
        except AttributeError:  # refused: the plugin-side proxy has no such method
            target.grad_log_prob(init[:1])
            return torch.full((2, target.dim), float("nan"), dtype=init.dtype)
        return init[:1]


@dltbench.register_method(task="bnn", name="test-greedy")
class Greedy(BNNMethod):
    """More samples than the cap."""

    def posterior(self, target, problem, init, generator):
        """n_samples + 1 copies of the init."""
        return init[:1].repeat(problem["n_samples"] + 1, 1)
