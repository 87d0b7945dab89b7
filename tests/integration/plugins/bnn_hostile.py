"""bnn methods that try to get at what the harness keeps, or return what it must refuse."""

from __future__ import annotations

import gc

import torch

import dltbench
from dltbench.tasks.bnn import BNNMethod


@dltbench.register_method(task="bnn", name="test-peek")
class Peek(BNNMethod):
    """Looks for test labels in its process, then asks the oracle for the harness-only log_lik."""

    def posterior(self, target, problem, init, generator):
        """Everything it can reach; the oracle refuses the un-listed method."""
        held = [o for o in gc.get_objects() if type(o).__name__ in ("BNNData", "BNNHarnessData")]
        if held:  # the view never holds them: reaching here would be a leak
            raise AssertionError("found a test split in the plugin process")
        target.log_lik(init[:1])  # not allow-listed: the harness refuses the call
        return init[:1]


@dltbench.register_method(task="bnn", name="test-nan")
class NaNSamples(BNNMethod):
    """One counted gradient, then NaN weights."""

    def posterior(self, target, problem, init, generator):
        """NaN samples of the right shape."""
        target.grad_log_prob(init[:1])
        return torch.full((2, target.dim), float("nan"), dtype=init.dtype)


@dltbench.register_method(task="bnn", name="test-greedy")
class Greedy(BNNMethod):
    """More samples than the cap."""

    def posterior(self, target, problem, init, generator):
        """n_samples + 1 copies of the init."""
        return init[:1].repeat(problem["n_samples"] + 1, 1)
