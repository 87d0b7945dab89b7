"""Hostile ``gan`` plugins: a training-set copier, NaN and out-of-range generators, a
generator that ignores z and answers from its position in the batch, one that breaks
its declared latent dimension, and one that looks for the test split."""

from __future__ import annotations

import torch
from torch import nn

import dltbench
from dltbench.tasks.gan import GanMethod, Generator


class _Copier(Generator):
    """Answers each latent row with a training sample chosen by that row alone."""

    def __init__(self, train: torch.Tensor):
        super().__init__()
        self.latent_dim, self.conditional = 4, False
        self.register_buffer("samples", train.clone())

    def forward(self, z):
        # Phi(z_0) is uniform: a uniform pick of the training set, from the row's own latent.
        u = torch.special.ndtr(z[:, 0]).clamp(0, 1 - 1e-7)
        return self.samples[(u * len(self.samples)).long()]


@dltbench.register_method(task="gan", name="hostile-copy")
class CopyTrainingSet(GanMethod):
    """Replays the training set: must be flagged (memorisation) and not ranked."""

    def train(self, data, config, ctx):
        """No training: keep the training samples."""
        return _Copier(data.train.x)


class _Scaled(Generator):
    def __init__(self, shape, value: float):
        super().__init__()
        self.latent_dim, self.conditional = 4, False
        self.shape, self.value = tuple(shape), value
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, z):
        out = torch.sigmoid(z[:, :1].repeat(1, int(torch.tensor(self.shape).prod()))) * self.w
        out = out.view(len(z), *self.shape).clone()
        out[0] = self.value  # one bad value in every answer
        return out


@dltbench.register_method(task="gan", name="hostile-nan")
class NaNGenerator(GanMethod):
    """Returns a NaN in every batch: invalid."""

    def train(self, data, config, ctx):
        """A generator with one NaN sample per batch."""
        return _Scaled(data.train.x.shape[1:], float("nan"))


@dltbench.register_method(task="gan", name="hostile-range")
class OutOfRangeGenerator(GanMethod):
    """Returns a pixel of 2 (images must be in [0, 1]): invalid on images."""

    def train(self, data, config, ctx):
        """A generator with one out-of-range sample per batch."""
        return _Scaled(data.train.x.shape[1:], 2.0)


class _Pooler(Generator):
    """Ignores z: row i of a batch is training sample i (position in the batch decides)."""

    def __init__(self, train: torch.Tensor):
        super().__init__()
        self.latent_dim, self.conditional = 4, False
        self.register_buffer("samples", train.clone())

    def forward(self, z):
        return self.samples[torch.arange(len(z)) % len(self.samples)]


@dltbench.register_method(task="gan", name="hostile-pool")
class BatchPositionGenerator(GanMethod):
    """Answers from the batch position, not the latent: the auditor catches it."""

    def train(self, data, config, ctx):
        """Keep the training samples, index them by batch position."""
        return _Pooler(data.train.x)


class _WrongShape(Generator):
    def __init__(self):
        super().__init__()
        self.latent_dim, self.conditional = 4, False
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, z):
        return torch.sigmoid(z) * self.w  # (N, 4): not a sample


@dltbench.register_method(task="gan", name="hostile-shape")
class WrongShapeGenerator(GanMethod):
    """Returns latents, not samples: invalid."""

    def train(self, data, config, ctx):
        """A generator of the wrong shape."""
        return _WrongShape()


@dltbench.register_method(task="gan", name="hostile-peek")
class PeekingGenerator(GanMethod):
    """Looks for the test split and the exact mixture in its view; fails if it finds them."""

    def train(self, data, config, ctx):
        """Raise if the view leaks anything; else a copier (so the run goes on)."""
        if data.test is not None or data.mixture is not None:
            raise AssertionError("the view leaked the test split or the exact target")
        return _Copier(data.train.x)
