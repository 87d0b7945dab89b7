"""Review repros: artifacts whose answers depend on the batch or on earlier queries.

Each cheat wraps exactly what its honest twin trains, so with the same evaluation
entropy a sound harness gives it no better score than the twin (or marks it invalid).
"""

from __future__ import annotations

import torch
from torch import nn

import dltbench
from dltbench.tasks.certified.methods import Standard as CertifiedStandard
from dltbench.tasks.robust.methods import Standard as RobustStandard
from dltbench.tasks.sampler.task import SamplerMethod

# --------------------------------------------------------------------------- certified


class _BatchDenoiser(nn.Module):
    """Classifies each row by the mean of the rows of its batch that are close to it.

    CERTIFY sends the n noisy copies of a point in one batch, so the mean of a row's
    neighbours is the clean point up to sigma / sqrt(n): every copy gets the clean
    point's class, pA's lower bound hits alpha**(1/n), the radius its ceiling.
    """

    def __init__(self, honest: nn.Module, sigma: float, dim: int):
        super().__init__()
        self.honest = honest
        # copies of one point are ~ sigma * sqrt(2 dim) apart; other points are further
        self.tau = 1.2 * sigma * (2 * dim) ** 0.5

    def forward(self, x):
        flat = x.flatten(1)
        close = (torch.cdist(flat, flat) <= self.tau).to(flat.dtype)
        denoised = (close @ flat) / close.sum(1, keepdim=True)
        return self.honest(denoised.view_as(x))


@dltbench.register_method(task="certified", name="review-twin")
class CertifiedTwin(CertifiedStandard):
    """Honest twin: the built-in clean training."""


@dltbench.register_method(task="certified", name="review-batch-denoise")
class CertifiedBatchDenoise(CertifiedStandard):
    """The twin's model, answering every row from the average of its batch neighbours."""

    def train(self, data, config, ctx):
        """Train as the twin, then wrap in the batch denoiser."""
        model = super().train(data, config, ctx)
        dim = int(torch.tensor(data.shape).prod())
        return _BatchDenoiser(model, config.sigma, dim)


# --------------------------------------------------------------------------- robust


class _Memory(nn.Module):
    """Remembers the first input seen near each point; inside the eps ball of a remembered
    input it answers that input's logits (with the honest gradient, so nothing looks masked).

    The harness queries the clean test points before attacking them, so every attack
    query and every verdict on x_adv lands inside a remembered ball.
    """

    def __init__(self, honest: nn.Module, eps: float, norm: str):
        super().__init__()
        self.honest, self.eps, self.norm = honest, eps * (1 + 1e-4) + 2e-5, norm
        self.keys: list[torch.Tensor] = []
        self.vals: list[torch.Tensor] = []

    def _dist(self, a, b):
        d = a.flatten(1)[:, None, :] - b.flatten(1)[None, :, :]
        return d.abs().amax(-1) if self.norm == "linf" else d.norm(dim=-1)

    def forward(self, x):
        out = self.honest(x)
        fixed = out.detach().clone()
        if self.keys:
            keys, vals = torch.cat(self.keys), torch.cat(self.vals)
            dist, j = self._dist(x.detach(), keys).min(1)
            hit = dist <= self.eps
            fixed[hit] = vals[j[hit]]
        else:
            hit = torch.zeros(len(x), dtype=torch.bool)
        if (~hit).any():  # new points: remember them as they are
            self.keys.append(x.detach()[~hit].clone())
            self.vals.append(out.detach()[~hit].clone())
        return out - out.detach() + fixed


@dltbench.register_method(task="robust", name="review-robust-twin")
class RobustTwin(RobustStandard):
    """Honest twin: the built-in undefended training."""


@dltbench.register_method(task="robust", name="review-memory")
class RobustMemory(RobustStandard):
    """The twin's model behind a memory of the clean inputs the harness queries first."""

    def train(self, data, config, ctx):
        """Train as the twin, then wrap in the memory."""
        return _Memory(super().train(data, config, ctx), config.eps, config.norm)


# --------------------------------------------------------------------------- sampler


@dltbench.register_method(task="sampler", name="review-tuple-minibatch")
class TupleMinibatchULA(SamplerMethod):
    """Unadjusted Langevin with the exact full-data gradient, bought as two "minibatch"
    calls of one data point each: ``idx=(arange(n),)`` has len 1 but indexes every row."""

    def sample(self, target, n_draws, n_chains, init, generator):
        """ULA; each gradient costs 2 / n_data evaluations in the harness's ledger."""
        n = int(target.n_data)
        every, none = (torch.arange(n),), (torch.zeros(0, dtype=torch.long),)

        def grad(x):
            a = target.minibatch_grad(x, every)  # n * likelihood grad + prior grad
            b = target.minibatch_grad(x, none)  # prior grad only
            return (a - b) / n + b

        x, out, h = init.clone(), [], 0.01
        for _ in range(n_draws):
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x = x + h * grad(x) + (2 * h) ** 0.5 * noise
            out.append(x)
        return torch.stack(out, 1)


# --------------------------------------------------------------------------- vae


class _PeekingVAE(nn.Module):
    """The twin's VAE whose decoder answers with the last batch the encoder saw.

    The evaluator calls ``decode`` on z drawn for the batch it just encoded (z's rows are
    that batch tiled), so a decoder that remembers the encoder's input puts almost all
    of p(x|z)'s mass on the test point itself: log p(x|z) ~ 0 instead of ~ -60 nats.
    """

    def __init__(self, honest: nn.Module):
        super().__init__()
        self.honest, self.last = honest, None

    def encode(self, x, *y):
        """The honest q(z|x); remembers x."""
        self.last = x.detach().clone()
        return self.honest.encode(x, *y)

    def decode(self, z, *y):
        """Bernoulli logits +-30 at the remembered x when z's rows tile it, else honest."""
        honest = self.honest.decode(z, *y)
        if self.last is None or len(z) % len(self.last):
            return honest
        x = self.last.repeat(len(z) // len(self.last), 1)
        return torch.distributions.Independent(
            torch.distributions.Bernoulli(logits=30.0 * (2 * x - 1)), 1
        )

    def prior(self, *y):
        """The honest prior."""
        return self.honest.prior(*y)


def _vae_methods():
    from dltbench.tasks.vae.methods import VAE

    @dltbench.register_method(task="vae", name="review-vae-twin")
    class VAETwin(VAE):
        """Honest twin: the built-in VAE."""

    @dltbench.register_method(task="vae", name="review-vae-peek")
    class VAEPeek(VAE):
        """The twin's VAE with a decoder that remembers the encoder's last input."""

        def train(self, data, config, ctx):
            """Train as the twin, then wrap."""
            return _PeekingVAE(super().train(data, config, ctx))


_vae_methods()
