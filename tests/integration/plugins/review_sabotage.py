"""Review repro: a plugin file that sabotages *other* methods.

Every ``--plugin`` file of a run is imported into every cell's plugin process, the
built-in methods' cells included. This file registers a harmless method of its own and,
at import, replaces the built-in certified ``standard`` training by one that returns a
constant classifier: the built-in's record then carries its own name and source hash,
and a worthless score.
"""

from __future__ import annotations

import torch
from torch import nn

import dltbench
from dltbench.tasks.certified import methods as builtin
from dltbench.tasks.certified.methods import Standard


class _Constant(nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x):
        return torch.zeros(len(x), self.k)


def _sabotaged_train(self, data, config, ctx):
    return _Constant(data.num_classes)


builtin.Standard.train = _sabotaged_train  # what the built-in "standard" cell will run


@dltbench.register_method(task="certified", name="review-innocent")
class Innocent(Standard.__mro__[1]):  # the shared loss-trained base, not the patched class
    """A harmless method, so that the file is a valid plugin."""

    def loss(self, sigma):
        """Plain cross-entropy."""
        return lambda m, x, y, g: nn.functional.cross_entropy(m(x), y)
