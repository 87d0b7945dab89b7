"""Reference MCMC samplers, vectorized over chains: one batched target call per step for all chains.

Each function takes a target view (``log_prob``, ``grad_log_prob``, ``log_prob_and_grad``,
``conditional``, ``minibatch_grad``), ``init`` (chains, dim), the number of kept draws
and of warm-up iterations, and a torch generator on the target's device; it returns
the kept draws (chains, draws, dim). Warm-up iterations are evaluated (and counted) but
not returned.

Step-size rule (documented, shared): during warm-up each chain's log step size follows
the Robbins-Monro recursion ``log h <- log h + (a_t - a*) / t^0.6`` where a_t is the
step's Metropolis acceptance probability min(1, exp(log_alpha)) and a* the target rate
(0.234 RWM, Roberts et al. 1997; 0.574 MALA, Roberts & Rosenthal 1998; 0.65 HMC,
Beskos et al. 2013). After warm-up the step is frozen, so the kept draws are a valid
Markov chain.
"""

from __future__ import annotations

import math

import torch

#: Optimal-scaling acceptance rates the warm-up adapts to.
ACCEPT_RWM, ACCEPT_MALA, ACCEPT_HMC = 0.234, 0.574, 0.65


def _randn(like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)


def _log_u(n: int, like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.log(torch.rand(n, generator=gen, device=like.device, dtype=like.dtype))


def _accept(x, lp, y, lp_y, log_a, gen):
    """Metropolis accept/reject per chain; NaN log-ratios (overflow) are rejections."""
    log_a = torch.nan_to_num(log_a, nan=-math.inf)
    ok = _log_u(len(x), x, gen) < log_a
    return torch.where(ok[:, None], y, x), torch.where(ok, lp_y, lp), ok, log_a


def _adapt(log_h: torch.Tensor, log_a: torch.Tensor, t: int, target: float) -> torch.Tensor:
    prob = torch.exp(torch.clamp(log_a, max=0.0))
    return log_h + (prob - target) / (t + 1) ** 0.6


def _run(n_warmup: int, n_draws: int, init: torch.Tensor) -> torch.Tensor:
    return torch.empty(init.shape[0], n_draws, init.shape[1], dtype=init.dtype, device=init.device)


def rwm(target, init, n_draws: int, n_warmup: int, gen: torch.Generator) -> torch.Tensor:
    """Random-walk Metropolis with an isotropic Gaussian proposal, step adapted to 0.234."""
    x = init.clone()
    lp = target.log_prob(x)
    log_h = torch.full(
        (len(x),), math.log(2.38 / math.sqrt(x.shape[1])), dtype=x.dtype, device=x.device
    )
    out = _run(n_warmup, n_draws, x)
    for t in range(n_warmup + n_draws):
        y = x + log_h.exp()[:, None] * _randn(x, gen)
        lp_y = target.log_prob(y)
        x, lp, _, log_a = _accept(x, lp, y, lp_y, lp_y - lp, gen)
        if t < n_warmup:
            log_h = _adapt(log_h, log_a, t, ACCEPT_RWM)
        else:
            out[:, t - n_warmup] = x
    return out


def _mala_step(target, x, lp, g, log_h, gen):
    h = log_h.exp()[:, None]
    y = x + h * g + torch.sqrt(2 * h) * _randn(x, gen)
    lp_y, g_y = target.log_prob_and_grad(y)
    fwd = ((y - x - h * g) ** 2).sum(1)
    bwd = ((x - y - h * g_y) ** 2).sum(1)
    log_a = lp_y - lp + (fwd - bwd) / (4 * h[:, 0])
    log_a = torch.nan_to_num(log_a, nan=-math.inf)
    ok = _log_u(len(x), x, gen) < log_a
    return (
        torch.where(ok[:, None], y, x), torch.where(ok, lp_y, lp), torch.where(ok[:, None], g_y, g), log_a
    )  # fmt: skip


def mala(target, init, n_draws: int, n_warmup: int, gen: torch.Generator) -> torch.Tensor:
    """Metropolis-adjusted Langevin, step adapted to acceptance 0.574."""
    x = init.clone()
    lp, g = target.log_prob_and_grad(x)
    log_h = torch.full(
        (len(x),), math.log(0.1 / x.shape[1] ** (1 / 3)), dtype=x.dtype, device=x.device
    )
    out = _run(n_warmup, n_draws, x)
    for t in range(n_warmup + n_draws):
        x, lp, g, log_a = _mala_step(target, x, lp, g, log_h, gen)
        if t < n_warmup:
            log_h = _adapt(log_h, log_a, t, ACCEPT_MALA)
        else:
            out[:, t - n_warmup] = x
    return out


def mala_warmup(
    target, init, n_warmup: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run MALA's warm-up only; return the last state and each chain's adapted step (ULA, SGLD)."""
    x = init.clone()
    lp, g = target.log_prob_and_grad(x)
    log_h = torch.full(
        (len(x),), math.log(0.1 / x.shape[1] ** (1 / 3)), dtype=x.dtype, device=x.device
    )
    for t in range(n_warmup):
        x, lp, g, log_a = _mala_step(target, x, lp, g, log_h, gen)
        log_h = _adapt(log_h, log_a, t, ACCEPT_MALA)
    return x, log_h.exp()


def ula(
    target, init, n_draws: int, n_warmup: int, gen: torch.Generator, step_factor: float = 0.1
) -> torch.Tensor:
    """Unadjusted Langevin: x + h grad + sqrt(2h) xi, h = step_factor * the median over chains
    of MALA's adapted step, one step for all chains."""
    x, h = mala_warmup(target, init, n_warmup, gen)
    # No accept/reject catches a step that is too large where a chain wanders, and where the
    # gradient is not globally Lipschitz (banana, funnel) the Euler step is unstable once
    # h * curvature > 2, so one chain's noisy adapted step must not set its own: the median
    # removes the per-chain adaptation noise (0.2-0.56 on banana-d2) and a tenth keeps the
    # step well inside the stable region (0.25 x per-chain steps diverged in half the cells).
    h = (step_factor * h.median()).expand(len(x))[:, None]
    out = _run(0, n_draws, x)
    for t in range(n_draws):
        x = x + h * target.grad_log_prob(x) + torch.sqrt(2 * h) * _randn(x, gen)
        out[:, t] = x
    return out


def sgld(
    target, init, n_draws: int, n_warmup: int, gen: torch.Generator,
    batch_size: int = 20, step_factor: float = 0.1,
) -> torch.Tensor:  # fmt: skip
    """Stochastic-gradient Langevin (Welling & Teh 2011), constant step h = step_factor * MALA's."""
    x, h = mala_warmup(target, init, n_warmup, gen)
    h = (step_factor * h)[:, None]
    n_data = target.n_data
    out = _run(0, n_draws, x)
    for t in range(n_draws):
        idx = torch.randperm(n_data, generator=gen, device=gen.device)[:batch_size].to(x.device)
        x = x + h * target.minibatch_grad(x, idx) + torch.sqrt(2 * h) * _randn(x, gen)
        out[:, t] = x
    return out


def hmc(
    target, init, n_draws: int, n_warmup: int, gen: torch.Generator, n_leapfrog: int = 10
) -> torch.Tensor:
    """HMC with a fixed number of leapfrog steps, identity mass; step adapted to 0.65.

    Each iteration the step is jittered uniformly in [0.9 h, 1.1 h] per chain, which
    avoids the periodic orbits a fixed (step, steps) pair has on Gaussians (Neal 2011).
    """
    x = init.clone()
    lp, g = target.log_prob_and_grad(x)
    log_h = torch.full(
        (len(x),), math.log(0.5 / x.shape[1] ** 0.25), dtype=x.dtype, device=x.device
    )
    out = _run(n_warmup, n_draws, x)
    for t in range(n_warmup + n_draws):
        u = torch.rand(len(x), generator=gen, device=x.device, dtype=x.dtype)
        eps = (log_h.exp() * (0.9 + 0.2 * u))[:, None]
        p0 = _randn(x, gen)
        q, p = x, p0 + 0.5 * eps * g
        for step in range(n_leapfrog):
            q = q + eps * p
            lp_q, g_q = target.log_prob_and_grad(q)
            p = p + (eps if step < n_leapfrog - 1 else 0.5 * eps) * g_q
        log_a = (lp_q - 0.5 * (p**2).sum(1)) - (lp - 0.5 * (p0**2).sum(1))
        log_a = torch.nan_to_num(log_a, nan=-math.inf)
        ok = _log_u(len(x), x, gen) < log_a
        x, lp, g = (
            torch.where(ok[:, None], q, x),
            torch.where(ok, lp_q, lp),
            torch.where(ok[:, None], g_q, g),
        )
        if t < n_warmup:
            log_h = _adapt(log_h, log_a, t, ACCEPT_HMC)
        else:
            out[:, t - n_warmup] = x
    return out


def gibbs(target, init, n_draws: int, n_warmup: int, gen: torch.Generator) -> torch.Tensor:
    """Systematic-scan Gibbs from the exact Gaussian full conditionals; one sweep per draw."""
    x = init.clone()
    out = _run(n_warmup, n_draws, x)
    z = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for t in range(n_warmup + n_draws):
        for i in range(x.shape[1]):
            m, s = target.conditional(x, i)
            x[:, i] = m + s * z.normal_(generator=gen)
        if t >= n_warmup:
            out[:, t - n_warmup] = x
    return out


def independence_mh(
    target, init, n_draws: int, n_warmup: int, gen: torch.Generator, inflation: float = 1.5
) -> torch.Tensor:
    """Independence Metropolis-Hastings with a Gaussian proposal fitted in warm-up.

    Warm-up runs adaptive RWM; the proposal is N(m, inflation^2 S) with m, S the mean and
    covariance of the second half of the warm-up draws pooled over chains.
    """
    n_rwm = max(n_warmup, 2)
    warm = rwm(target, init, n_rwm - n_rwm // 2, n_rwm // 2, gen)
    pooled = warm.reshape(-1, warm.shape[2])
    m = pooled.mean(0)
    cov = torch.atleast_2d(torch.cov(pooled.T)) + 1e-9 * torch.eye(
        len(m), dtype=m.dtype, device=m.device
    )
    chol = inflation * torch.linalg.cholesky(cov)

    def log_q(z):
        w = torch.linalg.solve_triangular(chol, (z - m).T, upper=False)
        return -0.5 * (w**2).sum(0)

    x = warm[:, -1].clone()
    lp, lq = target.log_prob(x), log_q(x)
    out = _run(0, n_draws, x)
    for t in range(n_draws):
        y = m + _randn(x, gen) @ chol.T
        lp_y, lq_y = target.log_prob(y), log_q(y)
        x_new, lp, ok, _ = _accept(x, lp, y, lp_y, lp_y - lp + lq - lq_y, gen)
        lq = torch.where(ok, lq_y, lq)
        x = x_new
        out[:, t] = x
    return out
