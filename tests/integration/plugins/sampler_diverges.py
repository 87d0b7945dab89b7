"""A sampler whose chains blow up: its cell must be `invalid`, listed with the reason."""

import torch

import dltbench
from dltbench.tasks.sampler import SamplerMethod


@dltbench.register_method(task="sampler", name="test-diverges")
class Diverges(SamplerMethod):
    """Evaluates the target once, then returns draws that are inf."""

    def sample(self, target, n_draws, n_chains, init, generator):
        """Infinite draws after one counted evaluation."""
        target.log_prob(init)
        return torch.full((n_chains, n_draws, target.dim), float("inf"), dtype=init.dtype)
