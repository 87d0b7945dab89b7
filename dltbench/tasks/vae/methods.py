"""Built-in ``vae`` methods, registered exactly as a third-party plugin would be."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import kl_divergence

from ...api import Context
from ...models import LossFn
from ...registry import register_method
from .bounds import draw, log_weights
from .nets import MLPVAE, MLPAutoencoder, fit_model
from .task import BinaryData, VAEConfig, VAEMethod


def neg_elbo(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, gen, beta: float = 1.0):
    """Mean over the batch of -(E_q[log p(x|z)] - beta KL(q || p)), one reparameterized draw."""
    extra = () if y is None else (y,)
    q = model.encode(x, *extra)
    rec = model.decode(draw(q, (), gen), *extra).log_prob(x)
    return -(rec - beta * kl_divergence(q, model.prior(*extra))).mean()


class _LossTrained(VAEMethod):
    """An MLP model trained by ``fit_model`` on the per-minibatch loss ``self.loss()``."""

    def __init__(self, lr: float = 1e-3, batch_size: int = 100):
        self.lr = lr
        self.batch_size = batch_size

    def model(self, data: BinaryData, config: VAEConfig) -> nn.Module:
        """The untrained model: an unconditional MLP VAE unless overridden."""
        return MLPVAE(data.x_dim, config.latent_dim, config.hidden)

    def loss(self) -> LossFn:
        """``loss(model, x, y, generator)`` for one minibatch."""
        raise NotImplementedError

    def train(self, data: BinaryData, config: VAEConfig, ctx: Context) -> nn.Module:
        """Fit ``self.model`` on ``self.loss`` for the profile's epoch budget."""
        return fit_model(
            self.model(data, config), data.train.x, data.train.y, self.loss(), ctx,
            config.epochs, self.batch_size, self.lr, dynamic=data.dynamic,
        )  # fmt: skip


@register_method(task="vae", name="vae")
class VAE(_LossTrained):
    """Kingma & Welling 2014: Gaussian encoder, Bernoulli decoder, trained on the ELBO (analytic KL)."""

    version = "1"

    def loss(self) -> LossFn:
        """The negative ELBO with one reparameterized sample per point."""
        return lambda m, x, y, g: neg_elbo(m, x, None, g)


@register_method(task="vae", name="beta-vae")
class BetaVAE(_LossTrained):
    """Higgins et al. 2017: the ELBO with the KL term weighted by beta (> 1 trades likelihood for a smaller rate)."""

    version = "1"

    def __init__(self, beta: float = 4.0, lr: float = 1e-3, batch_size: int = 100):
        super().__init__(lr, batch_size)
        self.beta = beta

    def loss(self) -> LossFn:
        """-E_q[log p(x|z)] + beta KL(q(z|x) || p(z))."""
        return lambda m, x, y, g: neg_elbo(m, x, None, g, self.beta)


@register_method(task="vae", name="iwae")
class IWAE(_LossTrained):
    """Burda et al. 2016: the same model trained on the k-sample importance-weighted bound."""

    version = "1"

    def __init__(self, k: int = 5, lr: float = 1e-3, batch_size: int = 100):
        super().__init__(lr, batch_size)
        self.k = k

    def loss(self) -> LossFn:
        """-log (1/k) sum_i w_i with reparameterized draws (gradients through all k)."""

        def loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor, g) -> torch.Tensor:
            lw = log_weights(m, x, self.k, generator=g)
            return -(torch.logsumexp(lw, dim=0) - math.log(self.k)).mean()

        return loss


@register_method(task="vae", name="cvae")
class CVAE(_LossTrained):
    """Conditional VAE (Kingma et al. 2014, Sohn et al. 2015): q(z|x,y), p(x|z,y), p(z) = N(0, I)."""

    version = "1"

    def model(self, data: BinaryData, config: VAEConfig) -> nn.Module:
        """An MLP VAE conditioned on the class label."""
        return MLPVAE(data.x_dim, config.latent_dim, config.hidden, num_classes=data.num_classes)

    def loss(self) -> LossFn:
        """The conditional ELBO of log p(x|y) on the training labels."""
        return lambda m, x, y, g: neg_elbo(m, x, y, g)


@register_method(task="vae", name="ae")
class Autoencoder(_LossTrained):
    """Plain deterministic autoencoder (binary cross-entropy): no prior, so no likelihood; reconstruction only."""

    version = "1"

    def model(self, data: BinaryData, config: VAEConfig) -> nn.Module:
        """A deterministic MLP encoder and decoder."""
        return MLPAutoencoder(data.x_dim, config.latent_dim, config.hidden)

    def loss(self) -> LossFn:
        """The reconstruction cross-entropy -log p(x | z = f(x))."""

        def loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor, g) -> torch.Tensor:
            logits = m.decoder(m.encoder(x))
            return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1).mean()

        return loss
