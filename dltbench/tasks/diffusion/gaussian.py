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
