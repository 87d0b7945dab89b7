"""A plugin whose model returns NaN logits: the cell must be `invalid`, with the reason."""

import torch
from torch import nn

import dltbench
from dltbench.tasks.certified import CertifiedMethod


class NaNNet(nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 10), float("nan"))


@dltbench.register_method(task="certified", name="test-nan")
class ReturnsNaN(CertifiedMethod):
    """Returns a model with NaN logits."""

    def train(self, data, config, ctx):
        return NaNNet()


class WrongShape(nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 3)


@dltbench.register_method(task="certified", name="test-wrong-shape")
class ReturnsWrongShape(CertifiedMethod):
    """Returns a model with 3 logits for a 10-class task."""

    def train(self, data, config, ctx):
        return WrongShape()
