"""Built-in ``gan`` methods, registered exactly as a third-party plugin would be.

Each pairs a generator/critic architecture with its paper's loss and optimiser. On 2-D
targets every method uses MLPs (3 hidden layers of 64; DCGAN adds BatchNorm to its
generator, DCGAN's guideline carried over to an MLP); on images small convolutional nets
(:mod:`dltbench.tasks.gan.nets`). The budget is ``config.steps`` generator updates of
``config.batch_size``; a critic takes ``n_critic`` updates per generator update.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...api import Context
from ...registry import register_method
from .nets import ConvCritic, ConvGenerator, Generator, MLPCritic, MLPGenerator
from .task import GanConfig, GanData, GanMethod

LATENT_2D, LATENT_IMAGE = 8, 32
#: Hidden width of the 2-D MLPs (generator and critic): 64 since version 2 (128 before), a
#: quarter of the multiply-adds per step for the quick budget (issue 19).
WIDTH_2D = 64


class _Adversarial(GanMethod):
    """Alternating critic/generator updates; subclasses give the losses and networks."""

    #: Architecture choices of the paper (BatchNorm in G and D, spectral norm in D).
    g_batchnorm = False
    d_batchnorm = False
    spectral_norm = False
    conditional = False

    def __init__(self, lr: float = 2e-4, beta1: float = 0.5, beta2: float = 0.999,
                 n_critic: int = 1, lr_points: float = 1e-3):  # fmt: skip
        self.lr, self.beta1, self.beta2, self.n_critic = lr, beta1, beta2, n_critic
        #: 2-D targets: the papers' image learning rates need 10-50x the quick budget there.
        self.lr_points = lr_points

    def learning_rate(self, data: GanData) -> float:
        """The paper's ``lr`` on images, ``lr_points`` on 2-D targets."""
        return self.lr if data.is_image else self.lr_points

    def networks(self, data: GanData) -> tuple[Generator, nn.Module]:
        """Untrained generator and critic for ``data``'s sample shape."""
        k = data.num_classes if self.conditional else 0
        if data.is_image:
            c, side = data.shape[0], data.shape[-1]
            g = ConvGenerator(LATENT_IMAGE, c, side, batchnorm=self.g_batchnorm, num_classes=k)
            d = ConvCritic(c, side, batchnorm=self.d_batchnorm, sn=self.spectral_norm,
                           num_classes=k)  # fmt: skip
        else:
            g = MLPGenerator(LATENT_2D, data.shape[0], WIDTH_2D, batchnorm=self.g_batchnorm,
                             num_classes=k)  # fmt: skip
            d = MLPCritic(data.shape[0], WIDTH_2D, sn=self.spectral_norm, num_classes=k)
        return g, d

    def optimizers(self, g: nn.Module, d: nn.Module, lr: float):
        """Adam with the method's betas for both networks."""
        betas = (self.beta1, self.beta2)
        return (torch.optim.Adam(g.parameters(), lr, betas=betas),
                torch.optim.Adam(d.parameters(), lr, betas=betas))  # fmt: skip

    def d_loss(self, d: nn.Module, real: torch.Tensor, fake: torch.Tensor, y, gen) -> torch.Tensor:
        """The critic's loss on a real and a generated minibatch."""
        raise NotImplementedError

    def g_loss(self, d: nn.Module, fake: torch.Tensor, y) -> torch.Tensor:
        """The generator's loss on a generated minibatch."""
        raise NotImplementedError

    def after_critic_step(self, d: nn.Module) -> None:
        """Hook after each critic update (weight clipping)."""

    def train(self, data: GanData, config: GanConfig, ctx: Context) -> nn.Module:
        """Alternate ``n_critic`` critic updates and one generator update, ``config.steps`` times."""
        g, d = self.networks(data)
        g, d = g.to(ctx.device), d.to(ctx.device)
        opt_g, opt_d = self.optimizers(g, d, self.learning_rate(data))
        x_all, y_all = data.train.x.to(ctx.device), data.train.y.to(ctx.device)
        gen, dev_gen = ctx.generator, ctx.device_generator()
        bs = config.batch_size

        def latents() -> tuple[torch.Tensor, torch.Tensor | None]:
            z = torch.randn(bs, g.latent_dim, generator=dev_gen, device=ctx.device)
            y = (torch.randint(data.num_classes, (bs,), generator=dev_gen, device=ctx.device)
                 if self.conditional else None)  # fmt: skip
            return z, y

        g.train(), d.train()
        for step in range(config.steps):
            for _ in range(self.n_critic):
                idx = torch.randint(len(x_all), (bs,), generator=gen).to(ctx.device)
                real, y_real = x_all[idx], (y_all[idx] if self.conditional else None)
                z, _ = latents()
                with torch.no_grad():
                    fake = g(z, y_real) if self.conditional else g(z)
                loss = self.d_loss(d, real, fake, y_real, dev_gen)
                opt_d.zero_grad(set_to_none=True)
                loss.backward()
                opt_d.step()
                self.after_critic_step(d)
            z, y = latents()
            fake = g(z, y) if self.conditional else g(z)
            loss = self.g_loss(d, fake, y)
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            if (step + 1) % 100 == 0:
                ctx.progress("train", step + 1, config.steps)
        return g.eval()


def _score(d: nn.Module, x: torch.Tensor, y) -> torch.Tensor:
    return d(x, y) if y is not None else d(x)


class _NonSaturating(_Adversarial):
    """Goodfellow et al. 2014's losses: D maximises log D(x) + log(1 - D(G(z))); G maximises
    log D(G(z)) (the non-saturating generator loss)."""

    def d_loss(self, d, real, fake, y, gen):
        """Binary cross-entropy: real labelled 1, generated 0."""
        sr, sf = _score(d, real, y), _score(d, fake, y)
        return (F.binary_cross_entropy_with_logits(sr, torch.ones_like(sr))
                + F.binary_cross_entropy_with_logits(sf, torch.zeros_like(sf)))  # fmt: skip

    def g_loss(self, d, fake, y):
        """-log D(G(z))."""
        sf = _score(d, fake, y)
        return F.binary_cross_entropy_with_logits(sf, torch.ones_like(sf))


@register_method(task="gan", name="gan")
class NonSaturatingGAN(_NonSaturating):
    """Goodfellow et al. 2014: the non-saturating GAN, plain MLP/conv nets without normalisation."""

    version = "2"


@register_method(task="gan", name="dcgan")
class DCGAN(_NonSaturating):
    """Radford et al. 2016: non-saturating loss, BatchNorm in G and D, Adam(2e-4, beta1=0.5)."""

    version = "2"
    g_batchnorm = True
    d_batchnorm = True


@register_method(task="gan", name="cgan")
class ConditionalGAN(_NonSaturating):
    """Mirza & Osindero 2014: G(z, y) and D(x, y) with one-hot labels; non-saturating loss."""

    version = "2"
    conditional = True


@register_method(task="gan", name="wgan")
class WGAN(_Adversarial):
    """Arjovsky et al. 2017: critic loss E D(G(z)) - E D(x), weights clipped to [-c, c],
    RMSprop(5e-5), 5 critic updates per generator update (the paper's Algorithm 1)."""

    version = "2"

    def __init__(self, lr: float = 5e-5, clip: float = 0.01, n_critic: int = 5,
                 lr_points: float = 1e-3):  # fmt: skip
        super().__init__(lr=lr, n_critic=n_critic, lr_points=lr_points)
        self.clip = clip

    def optimizers(self, g, d, lr):
        """RMSprop, as the paper (momentum-based optimisers were unstable there)."""
        return (torch.optim.RMSprop(g.parameters(), lr),
                torch.optim.RMSprop(d.parameters(), lr))  # fmt: skip

    def d_loss(self, d, real, fake, y, gen):
        """E D(fake) - E D(real)."""
        return _score(d, fake, y).mean() - _score(d, real, y).mean()

    def g_loss(self, d, fake, y):
        """-E D(G(z))."""
        return -_score(d, fake, y).mean()

    def after_critic_step(self, d):
        """Clip every critic weight to [-clip, clip]."""
        with torch.no_grad():
            for p in d.parameters():
                p.clamp_(-self.clip, self.clip)


@register_method(task="gan", name="wgan-gp")
class WGANGP(WGAN):
    """Gulrajani et al. 2017: the WGAN loss plus lambda E(||grad D(x_hat)|| - 1)^2 at random
    interpolates, no clipping, Adam(1e-4, betas (0.5, 0.9)), 5 critic updates, lambda=10."""

    version = "2"

    def __init__(self, lr: float = 1e-4, gp_lambda: float = 10.0, n_critic: int = 5,
                 beta1: float = 0.5, beta2: float = 0.9, lr_points: float = 1e-3):  # fmt: skip
        _Adversarial.__init__(self, lr, beta1, beta2, n_critic, lr_points)
        self.gp_lambda = gp_lambda

    def optimizers(self, g, d, lr):
        """Adam with the paper's betas."""
        return _Adversarial.optimizers(self, g, d, lr)

    def d_loss(self, d, real, fake, y, gen):
        """Wasserstein critic loss plus the gradient penalty."""
        eps = torch.rand(len(real), *([1] * (real.dim() - 1)), generator=gen, device=real.device)
        x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(_score(d, x_hat, y).sum(), x_hat, create_graph=True)
        penalty = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        return super().d_loss(d, real, fake, y, gen) + self.gp_lambda * penalty

    def after_critic_step(self, d):
        """No clipping."""


@register_method(task="gan", name="sngan")
class SNGAN(_Adversarial):
    """Miyato et al. 2018: hinge loss, spectral normalisation on every critic layer,
    Adam(2e-4, betas (0.5, 0.999)), one critic update per generator update."""

    version = "2"
    spectral_norm = True

    def d_loss(self, d, real, fake, y, gen):
        """E relu(1 - D(x)) + E relu(1 + D(G(z)))."""
        return F.relu(1 - _score(d, real, y)).mean() + F.relu(1 + _score(d, fake, y)).mean()

    def g_loss(self, d, fake, y):
        """-E D(G(z))."""
        return -_score(d, fake, y).mean()
