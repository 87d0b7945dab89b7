"""Sampling from a diffusion model (DDPM ancestral and DDIM steps) and a sample-quality MMD.

Both samplers walk the model's time grid from t_max (x ~ N(0, I) there) down to t_min and
return the final x0-prediction. One step from t to s < t (Song et al. 2021, DDIM eq. 12):
x_s = alpha_s x0-hat + sqrt(sigma_s^2 - c^2) eps-hat + c z, with c = eta * sqrt(posterior
variance); eta = 1 is DDPM's ancestral step with the "fixed small" variance, eta = 0 the
deterministic DDIM step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .schedules import LOG_SNR_END, t_max, to_eps, to_x0


@torch.no_grad()
def sample(
    model,
    n: int,
    dim: int,
    steps: int | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    clip: tuple[float, float] | None = None,
    log_snr_end: float | None = LOG_SNR_END,
    eps_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    | None = None,
) -> torch.Tensor:
    """``n`` samples (n, dim), float64, with ``steps`` steps (None: a discrete schedule's own T).

    The walk starts at the last step at or before ``t_max(schedule, log_snr_end)`` (see
    :data:`~.schedules.LOG_SNR_END`); ``clip`` bounds x0-hat at every step (the data range
    of discrete data, as Ho et al.'s and Nichol & Dhariwal's samplers do).
    ``eps_fn(x, t, alpha, sigma) -> eps-hat`` (float64, x (n, dim), t (n,), alpha and sigma
    scalars) replaces the model's own noise prediction, e.g. a guided one (:mod:`.guidance`).
    Example: ``ddim = sample(model, 512, 2, steps=50, eta=0.0, generator=g)``.
    """
    sched = model.schedule
    ts = sched.timesteps(steps)
    ts = ts[ts <= t_max(sched, log_snr_end) + 1e-12].to(device)
    lam = sched.log_snr(ts)
    alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
    dtype = (
        next(iter(model.parameters()), torch.empty(0)).dtype
        if hasattr(model, "parameters")
        else torch.float32
    )
    x = torch.randn((n, dim), generator=generator, dtype=torch.float64, device=device)
    x0_hat = x
    for i in range(len(ts) - 1, -1, -1):
        if eps_fn is None:
            out = model(x.to(dtype), ts[i].to(dtype).expand(n)).to(torch.float64)
            eps = to_eps(out, model.prediction, x, alpha[i], sigma[i])
            x0_hat = to_x0(out, model.prediction, x, alpha[i], sigma[i])
        else:
            eps = eps_fn(x, ts[i].expand(n), alpha[i], sigma[i]).to(torch.float64)
            x0_hat = (x - sigma[i] * eps) / alpha[i]
        if clip is not None:
            x0_hat = x0_hat.clamp(*clip)
            eps = (x - alpha[i] * x0_hat) / sigma[i]
        if i == 0:
            break
        a_s, s_s = alpha[i - 1], sigma[i - 1]
        # sigma_{t|s}^2 = 1 - alpha_bar_t / alpha_bar_s, by expm1 of log alpha_bar = logsigmoid(lambda)
        logsig = torch.nn.functional.logsigmoid
        var_ts = -torch.expm1(logsig(lam[i]) - logsig(lam[i - 1]))
        c = eta * torch.sqrt(var_ts * s_s**2 / sigma[i] ** 2)
        x = a_s * x0_hat + torch.sqrt((s_s**2 - c**2).clamp_min(0)) * eps
        if eta > 0:
            x = x + c * torch.randn(
                x.shape, generator=generator, dtype=torch.float64, device=device
            )
    return x0_hat


def median_bandwidth(x: torch.Tensor) -> float:
    """The median pairwise Euclidean distance of the points x (the RBF kernel's bandwidth)."""
    d = torch.cdist(x.to(torch.float64), x.to(torch.float64))
    return float(d[torch.triu(torch.ones_like(d, dtype=torch.bool), 1)].median())


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """Unbiased squared MMD between samples x (n, D) and y (m, D), RBF kernel exp(-|a-b|^2 / (2 h^2))."""
    x, y = x.to(torch.float64), y.to(torch.float64)

    def k(a, b):
        return torch.exp(-(torch.cdist(a, b) ** 2) / (2 * bandwidth**2))

    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())
