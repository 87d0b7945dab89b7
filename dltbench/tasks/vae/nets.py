"""Reference MLP models of the ``vae`` protocol and the training loop the built-ins share.

Plug-ins may use these or bring any object with ``encode``/``decode``/``prior``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal, constraints

from ...api import Context
from ...models import LossFn
from ...oracle import register_distribution
from .task import binarize_batch

#: ``loss_fn(model, x, y, generator) -> scalar loss`` for one minibatch of flattened x (N, D).


class PointMass(Distribution):
    """A deterministic 'distribution' at ``value`` (the encoder of a plain autoencoder).

    It has a mean and samples but no density: an autoencoder has no likelihood.
    """

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = True

    def __init__(self, value: torch.Tensor, event_dims: int = 1):
        self.value = value
        cut = value.dim() - event_dims
        super().__init__(value.shape[:cut], value.shape[cut:], validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return self.value

    @property
    def variance(self) -> torch.Tensor:
        return torch.zeros_like(self.value)

    def rsample(self, sample_shape: Sequence[int] = ()) -> torch.Tensor:
        return self.value.expand(self._extended_shape(torch.Size(sample_shape)))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("a point mass has no density")


register_distribution(PointMass, ("value",))


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of ``sizes`` with tanh between them (Burda et al. 2016 use tanh)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class MLPVAE(nn.Module):
    """Gaussian encoder q(z|x), Bernoulli decoder p(x|z), prior N(0, I); conditional on a
    one-hot label (concatenated to the inputs of both networks) when ``num_classes`` > 0."""

    def __init__(self, x_dim: int, latent_dim: int, hidden: Sequence[int], num_classes: int = 0):
        super().__init__()
        self.conditional = num_classes > 0
        self.num_classes, self.latent_dim = num_classes, latent_dim
        self.encoder = mlp([x_dim + num_classes, *hidden, 2 * latent_dim])
        self.decoder = mlp([latent_dim + num_classes, *reversed(hidden), x_dim])

    def _with_label(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if not self.conditional:
            return t
        if y is None:
            raise ValueError("a conditional model needs the labels y")
        return torch.cat([t, F.one_hot(y, self.num_classes).to(t.dtype)], dim=-1)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Distribution:
        """q(z|x[, y]): a diagonal Gaussian, batch (N,), event (L,)."""
        loc, pre_scale = self.encoder(self._with_label(x, y)).chunk(2, dim=-1)
        return Independent(Normal(loc, F.softplus(pre_scale) + 1e-5), 1)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> Distribution:
        """p(x|z[, y]): independent Bernoulli pixels, batch (N,), event (D,)."""
        return Independent(Bernoulli(logits=self.decoder(self._with_label(z, y))), 1)

    def prior(self, y: torch.Tensor | None = None) -> Distribution:
        """p(z) = N(0, I), batch (), event (L,) (the same for every label)."""
        p = next(self.parameters())
        zeros = torch.zeros(self.latent_dim, device=p.device, dtype=p.dtype)
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)


class MLPAutoencoder(nn.Module):
    """Deterministic encoder (a point mass) and Bernoulli decoder; no prior, so no likelihood."""

    conditional = False

    def __init__(self, x_dim: int, latent_dim: int, hidden: Sequence[int]):
        super().__init__()
        self.encoder = mlp([x_dim, *hidden, latent_dim])
        self.decoder = mlp([latent_dim, *reversed(hidden), x_dim])

    def encode(self, x: torch.Tensor) -> Distribution:
        """The code as a point mass, batch (N,), event (L,)."""
        return PointMass(self.encoder(x))

    def decode(self, z: torch.Tensor) -> Distribution:
        """p(x|z): independent Bernoulli pixels (the reconstruction's distribution)."""
        return Independent(Bernoulli(logits=self.decoder(z)), 1)

    def prior(self) -> None:
        """An autoencoder has no prior over codes: None tells the harness so."""
        return None


def fit_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    ctx: Context,
    epochs: int,
    batch_size: int = 100,
    lr: float = 1e-3,
    dynamic: bool = False,
) -> nn.Module:
    """Train ``model`` with Adam on minibatches of (x, y) for ``epochs`` passes; eval mode after.

    Shuffling comes from ``ctx.generator`` and the loss's noise from a generator on
    ``ctx.device``, so a fixed seed gives the same model on the same device and versions.
    ``dynamic``: ``x`` are grey levels, and every minibatch is binarized afresh from the
    noise generator (Burda et al. 2016), so each epoch sees new bits of every image.
    """
    model = model.to(ctx.device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = x.to(ctx.device), y.to(ctx.device)
    noise = ctx.device_generator()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=ctx.generator).to(ctx.device)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            xb = binarize_batch(x[idx], noise) if dynamic else x[idx]
            loss = loss_fn(model, xb, y[idx], noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        ctx.progress("train", epoch + 1, epochs)
    return model.eval()
