"""Closed forms for Gaussian data N(m, S): the exact denoiser and the exact marginal density.

For x_t = alpha_t x_0 + sigma_t eps with x_0 ~ N(m, S), x_t ~ N(alpha_t m, C_t) with
C_t = alpha_t^2 S + sigma_t^2 I, and the minimum-mean-square-error noise prediction is
linear: E[eps | x_t] = sigma_t C_t^{-1} (x_t - alpha_t m). With it the probability-flow
ODE transports p_t exactly, so the ODE NLL must equal -log N(x; alpha m, C) at t_min.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .schedules import Schedule


class GaussianDenoiser(nn.Module):
    """The exact eps-prediction for data N(mean, cov) under ``schedule`` (a test oracle)."""

    prediction = "eps"

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, schedule: Schedule):
        super().__init__()
        evals, evecs = torch.linalg.eigh(torch.as_tensor(cov, dtype=torch.float64))
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64))
        self.register_buffer("evals", evals)
        self.register_buffer("evecs", evecs)
        self.schedule = schedule

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = (v[:, None] for v in self.schedule.alpha_sigma(t.to(torch.float64)))
        r = (x.to(torch.float64) - alpha * self.mean) @ self.evecs
        return ((sigma * r / (alpha**2 * self.evals + sigma**2)) @ self.evecs.T).to(x.dtype)


def gaussian_marginal_log_density(
    x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, schedule: Schedule, t: float
) -> torch.Tensor:
    """log N(x; alpha_t m, alpha_t^2 S + sigma_t^2 I) in nats per point (float64)."""
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor([t], dtype=torch.float64)))
    cov_t = alpha**2 * torch.as_tensor(cov, dtype=torch.float64) + sigma**2 * torch.eye(
        len(cov), dtype=torch.float64
    )
    dist = torch.distributions.MultivariateNormal(
        alpha * torch.as_tensor(mean, dtype=torch.float64), cov_t
    )
    return dist.log_prob(x.to(torch.float64))


def gaussian_entropy(cov: torch.Tensor) -> float:
    """Differential entropy of N(., cov) in nats: (D log(2 pi e) + log det cov) / 2."""
    cov = torch.as_tensor(cov, dtype=torch.float64)
    return 0.5 * (len(cov) * math.log(2 * math.pi * math.e) + float(torch.logdet(cov)))


class GaussianMixtureDenoiser(nn.Module):
    """The exact eps-prediction for an isotropic Gaussian mixture sum_k pi_k N(m_k, s^2 I), with
    its class-conditional one (class k = component k; a test oracle of guidance).

    x_t's law is sum_k pi_k N(alpha m_k, (alpha^2 s^2 + sigma^2) I), so eps-hat = -sigma times
    its score; ``conditional(x, t, y)`` is component y's, and y = -1 the mixture's.
    """

    prediction = "eps"
    num_classes: int

    def __init__(self, means: torch.Tensor, std: float, weights: torch.Tensor, schedule: Schedule):
        super().__init__()
        self.register_buffer("means", torch.as_tensor(means, dtype=torch.float64))
        self.register_buffer("log_w", torch.log(torch.as_tensor(weights, dtype=torch.float64)))
        self.std, self.schedule, self.num_classes = float(std), schedule, len(self.means)

    def component_log_density(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """log pi_k + log N(x; alpha m_k, v I) (N, K) with v = alpha^2 s^2 + sigma^2."""
        var = alpha**2 * self.std**2 + sigma**2
        sq = ((x[:, None, :] - alpha[:, :, None] * self.means[None]) ** 2).sum(-1)
        return self.log_w - 0.5 * sq / var - 0.5 * x.shape[1] * torch.log(2 * math.pi * var)

    def score(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """grad_x log p_t(x) (y None or -1) or grad_x log p_t(x | y), float64 (N, D)."""
        x = x.to(torch.float64)
        alpha, sigma = (v[:, None] for v in self.schedule.alpha_sigma(t.to(torch.float64)))
        var = alpha**2 * self.std**2 + sigma**2
        comp = -(x[:, None, :] - alpha[:, :, None] * self.means[None]) / var[:, :, None]
        resp = torch.softmax(self.component_log_density(x, alpha, sigma), 1)
        mix = (resp[:, :, None] * comp).sum(1)
        if y is None:
            return mix
        y = y.long()
        own = comp[torch.arange(len(x)), y.clamp_min(0)]
        return torch.where((y >= 0)[:, None], own, mix)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = self.schedule.alpha_sigma(t.to(torch.float64))[1][:, None]
        return (-sigma * self.score(x, t)).to(x.dtype)

    def conditional(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """eps-hat of component y (y = -1: of the mixture)."""
        sigma = self.schedule.alpha_sigma(t.to(torch.float64))[1][:, None]
        return (-sigma * self.score(x, t, y)).to(x.dtype)


class GaussianMixtureClassifier(nn.Module):
    """The exact p(y = k | x_t) of :class:`GaussianMixtureDenoiser`'s mixture at log-SNR lambda
    (the harness classifier's interface: ``classifier(x, log_snr) -> logits``)."""

    def __init__(self, mixture: GaussianMixtureDenoiser):
        super().__init__()
        self.mixture = mixture

    def forward(self, x: torch.Tensor, log_snr: torch.Tensor) -> torch.Tensor:
        lam = log_snr.to(torch.float64)[:, None]
        alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        return self.mixture.component_log_density(x.to(torch.float64), alpha, sigma)
