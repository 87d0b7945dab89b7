"""A certified method that returns an untrained, seeded MLP: the boundary benchmark's model."""

import torch

import dltbench
from dltbench.models import MLP
from dltbench.tasks.certified import CertifiedMethod


@dltbench.register_method(task="certified", name="bench-fixed-mlp")
class FixedMLP(CertifiedMethod):
    """The digits reference MLP at its seed-0 initialization (no training)."""

    def train(self, data, config, ctx):
        """The same weights as ``fixed_mlp()`` in the harness."""
        return fixed_mlp()


def fixed_mlp() -> torch.nn.Module:
    """MLP(64 -> 10) initialized from seed 0, eval mode."""
    torch.manual_seed(0)
    return MLP(64, 10).eval()
