"""Gaussian variational inference by the reparameterisation trick, mean-field or full covariance.

q(w) = N(mu, L L^T). With w = mu + L eps, eps ~ N(0, I), the ELBO E_q[log p(w)] + H(q)
has the unbiased gradients E[g(w)] in mu and E[g(w) eps^T] + L^{-T} in L (g the gradient
of log p, H(q) = log|det L| + const). Mean-field keeps L = diag(softplus(rho)). Adam
(cosine-decayed) ascends them; ``grad`` may be a minibatch estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .optim import Adam


@dataclass
class GaussianQ:
    """A fitted Gaussian: mean (P,) and scale: a (P,) sd vector (mean-field) or a (P, P) Cholesky factor."""

    mean: torch.Tensor
    scale: torch.Tensor

    @property
    def cov(self) -> torch.Tensor:
        """The covariance matrix (P, P)."""
        if self.scale.dim() == 1:
            return torch.diag(self.scale**2)
        return self.scale @ self.scale.T

    def sample(self, k: int, gen: torch.Generator) -> torch.Tensor:
        """k draws (k, P)."""
        eps = _randn(k, len(self.mean), gen, self.mean)
        return self.mean + (eps * self.scale if self.scale.dim() == 1 else eps @ self.scale.T)


def _randn(k: int, d: int, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    z = torch.randn(k, d, generator=gen, dtype=like.dtype, device=gen.device)
    return z.to(like.device)


def gaussian_vi(
    grad: Callable[[torch.Tensor], torch.Tensor],
    mu0: torch.Tensor,
    steps: int,
    gen: torch.Generator,
    *,
    lr: float = 1e-2,
    n_mc: int = 4,
    init_sd: float = 1e-3,
    full_cov: bool = False,
    scale: float = 1.0,
) -> GaussianQ:
    """Maximise the ELBO of the density whose log-gradient is ``grad`` ((k, P) -> (k, P)).

    ``scale`` divides every gradient (e.g. 1/n_train) so Adam's epsilon is comparable
    across datasets; it does not move the optimum.
    """
    mu = mu0.clone()
    d = len(mu)
    if full_cov:
        lmat = init_sd * torch.eye(d, dtype=mu.dtype, device=mu.device)
        opt_l = Adam(lmat, lr, steps)
    else:
        rho = torch.full_like(mu, math.log(math.expm1(init_sd)))
        opt_l = Adam(rho, lr, steps)
    opt_mu = Adam(mu, lr, steps)
    for _ in range(steps):
        eps = _randn(n_mc, d, gen, mu)
        if full_cov:
            g = grad(mu + eps @ lmat.T)
            g_l = torch.tril(g.T @ eps / n_mc) + torch.diag(1.0 / torch.diagonal(lmat))
            opt_l.ascend(lmat, g_l * scale)
        else:
            sigma = torch.nn.functional.softplus(rho)
            g = grad(mu + sigma * eps)
            g_sigma = (g * eps).mean(0) + 1.0 / sigma
            opt_l.ascend(rho, g_sigma * torch.sigmoid(rho) * scale)  # d softplus / d rho
        opt_mu.ascend(mu, g.mean(0) * scale)
    if full_cov:
        return GaussianQ(mu, lmat)
    return GaussianQ(mu, torch.nn.functional.softplus(rho))
