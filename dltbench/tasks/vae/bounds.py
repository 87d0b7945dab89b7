"""Likelihood bounds of latent-variable models: ELBO, IWAE, active units, unit conversions.

A model exposes ``encode(x) -> q(z|x)``, ``decode(z) -> p(x|z)`` and ``prior() -> p(z)``
as ``torch.distributions`` objects; ``x`` is a batch of flattened examples (N, D), the
encoder and decoder return batch shape (N,) with event shapes (L,) and (D,), the prior
batch shape () or (N,). A conditional model (``model.conditional = True``) takes the
labels ``y`` (N,) as a second argument of all three.

All log-likelihoods are natural-log, per example (nats per example); see
:func:`bits_per_dim` for the conversion. Every function works without the CLI::

    from dltbench.tasks.vae import elbo, iwae_bound
    ll = iwae_bound(model, x, k=5000, generator=torch.Generator().manual_seed(0))  # (N,) nats
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributions import Distribution, Independent, Normal, kl_divergence

LN2 = math.log(2.0)


def bits_per_dim(nats: float | torch.Tensor, dims: int) -> float | torch.Tensor:
    """A log-likelihood in nats per example as a negative log-likelihood in bits per dimension.

    ``-nats / (dims * ln 2)``: a log-likelihood of -64 ln 2 nats over 64 binary pixels
    is 1.0 bit/dim (the uniform model).
    """
    return -nats / (dims * LN2)


def nats_per_example(bpd: float | torch.Tensor, dims: int) -> float | torch.Tensor:
    """The inverse of :func:`bits_per_dim`: a log-likelihood in nats per example."""
    return -bpd * dims * LN2


def draw(
    dist: Distribution, sample_shape: Sequence[int] = (), generator: torch.Generator | None = None
) -> torch.Tensor:
    """Reparameterized sample of ``dist`` drawn from ``generator`` (the global RNG when None).

    torch.distributions take no generator; a (possibly Independent) Normal is sampled as
    loc + scale * eps with eps from ``generator`` (differentiable), any other distribution
    under a forked global RNG seeded from ``generator``, so the caller's RNG is untouched.
    """
    sample_shape = torch.Size(sample_shape)
    base = dist.base_dist if isinstance(dist, Independent) else dist
    if generator is None:
        return dist.rsample(sample_shape) if dist.has_rsample else dist.sample(sample_shape)
    if type(base) is Normal:
        loc, scale = base.loc, base.scale
        shape = sample_shape + torch.broadcast_shapes(loc.shape, scale.shape)
        eps = torch.randn(shape, generator=generator, device=generator.device, dtype=loc.dtype)
        return loc + scale * eps.to(loc.device)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    dev = generator.device
    devices = (
        [dev.index if dev.index is not None else torch.cuda.current_device()]
        if dev.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return dist.rsample(sample_shape) if dist.has_rsample else dist.sample(sample_shape)


def _args(y: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    return () if y is None else (y,)


def _repeat(t: torch.Tensor | None, k: int) -> torch.Tensor | None:
    return None if t is None else t.repeat(k, *([1] * (t.dim() - 1)))


def log_weights(
    model: Any,
    x: torch.Tensor,
    k: int,
    y: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    q: Distribution | None = None,
) -> torch.Tensor:
    """log w = log p(x|z) + log p(z) - log q(z|x) for k draws z ~ q(z|x): shape (k, N), nats.

    ``q`` may be passed when the caller already encoded ``x`` (it must be ``encode(x, y)``).
    """
    q = model.encode(x, *_args(y)) if q is None else q
    z = draw(q, (k,), generator)  # (k, N, L)
    n = x.shape[0]
    log_q = q.log_prob(z)
    log_prior = model.prior(*_args(y)).log_prob(z)
    px = model.decode(z.reshape(k * n, *z.shape[2:]), *_args(_repeat(y, k)))
    log_px = px.log_prob(_repeat(x, k)).reshape(k, n)
    return log_px + log_prior - log_q


def _weight_chunks(
    model: Any, x: torch.Tensor, k: int, k_chunk: int, y: torch.Tensor | None, generator
) -> Iterator[torch.Tensor]:
    """Log weights (kc, N) chunk by chunk over the k importance samples; q(z|x) encoded once."""
    q = model.encode(x, *_args(y))
    for start in range(0, k, k_chunk):
        yield log_weights(model, x, min(k_chunk, k - start), y, generator, q=q)


@torch.no_grad()
def iwae_bounds(
    model: Any,
    x: torch.Tensor,
    ks: Sequence[int],
    y: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    k_chunk: int = 1000,
    batch_size: int = 256,
) -> dict[int, torch.Tensor]:
    """IWAE bounds (Burda et al. 2016) log (1/k) sum_i w_i for each k in ``ks``, from one stream
    of max(ks) draws (nested prefixes): {k: (N,) nats per example}.

    Memory is bounded by ``k_chunk * batch_size`` samples at a time: the k draws of a batch of
    points are consumed in chunks of ``k_chunk`` and combined by a running log-sum-exp.
    """
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"every k must be >= 1, got {ks}")
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for b in range(0, x.shape[0], batch_size):
        xb = x[b : b + batch_size]
        yb = None if y is None else y[b : b + batch_size]
        acc = torch.full((xb.shape[0],), -math.inf, device=xb.device, dtype=torch.float64)
        done, last = 0, 0
        for k in ks:  # split chunks at the checkpoints so each prefix sum is exact
            for chunk in _weight_chunks(model, xb, k - last, k_chunk, yb, generator):
                acc = torch.logaddexp(acc, torch.logsumexp(chunk.double(), dim=0))
                done += chunk.shape[0]
            out[k].append(acc - math.log(done))
            last = k
    return {k: torch.cat(v) for k, v in out.items()}


def iwae_bound(
    model: Any,
    x: torch.Tensor,
    k: int,
    y: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    k_chunk: int = 1000,
    batch_size: int = 256,
) -> torch.Tensor:
    """The IWAE bound log (1/k) sum_{i<=k} p(x, z_i) / q(z_i|x), z_i ~ q(z|x): (N,) nats per example.

    A stochastic lower bound on log p(x) (log p(x|y) for a conditional model given ``y``),
    non-decreasing in k in expectation and converging to log p(x) (Burda et al. 2016).
    Batched over points and chunked over k (see :func:`iwae_bounds`).
    """
    return iwae_bounds(model, x, [k], y, generator, k_chunk, batch_size)[k]


@torch.no_grad()
def marginal_iwae_bound(
    model: Any,
    x: torch.Tensor,
    k: int,
    label_prior: torch.Tensor,
    generator: torch.Generator | None = None,
    k_chunk: int = 1000,
    batch_size: int = 256,
) -> torch.Tensor:
    """Lower bound on log p(x) = log sum_y p(y) p(x|y) of a conditional model: (N,) nats.

    Each p(x|y) is estimated without bias by the mean of k importance weights, so
    sum_y p(y) p_hat(x|y) is unbiased for p(x) and its log a stochastic lower bound.
    ``label_prior`` holds the probabilities p(y) of the C classes.
    """
    n = x.shape[0]
    terms = []
    for c, p_c in enumerate(label_prior.tolist()):
        if p_c <= 0:  # a class of probability 0 adds nothing to the sum
            continue
        y = torch.full((n,), c, dtype=torch.long, device=x.device)
        terms.append(math.log(p_c) + iwae_bound(model, x, k, y, generator, k_chunk, batch_size))
    return torch.logsumexp(torch.stack(terms), dim=0)


@dataclass
class ElboTerms:
    """Per-example ELBO = reconstruction - kl, all in nats per example, shape (N,)."""

    elbo: torch.Tensor
    reconstruction: torch.Tensor  # E_q[log p(x|z)], Monte Carlo
    kl: torch.Tensor  # KL(q(z|x) || p(z)), analytic when torch has it, else Monte Carlo
    kl_analytic: bool


@torch.no_grad()
def elbo(
    model: Any,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    analytic_kl: bool = True,
    batch_size: int = 256,
) -> ElboTerms:
    """The evidence lower bound E_q[log p(x|z)] - KL(q(z|x) || p(z)) per example, in nats.

    The reconstruction term is a Monte Carlo mean over ``n_samples`` draws of q(z|x); the
    KL term is analytic when ``analytic_kl`` and torch knows KL(q || p) (then ELBO is the
    SGVB-B estimator of Kingma & Welling 2014), else the Monte Carlo mean of
    log q(z|x) - log p(z) over the same draws (then ELBO is the mean log-weight, exactly
    log p(x) for every draw when q is the true posterior).
    """
    rec, kl, used_analytic = [], [], analytic_kl
    for b in range(0, x.shape[0], batch_size):
        xb = x[b : b + batch_size]
        yb = None if y is None else y[b : b + batch_size]
        q, prior = model.encode(xb, *_args(yb)), model.prior(*_args(yb))
        z = draw(q, (n_samples,), generator)
        n = xb.shape[0]
        px = model.decode(z.reshape(n_samples * n, *z.shape[2:]), *_args(_repeat(yb, n_samples)))
        rec.append(px.log_prob(_repeat(xb, n_samples)).reshape(n_samples, n).mean(0))
        kl_b = None
        if analytic_kl:
            try:
                kl_b = kl_divergence(q, prior).expand(n)
            except NotImplementedError:
                used_analytic = False
        if kl_b is None:
            kl_b = (q.log_prob(z) - prior.log_prob(z)).mean(0)
        kl.append(kl_b)
    rec_t, kl_t = torch.cat(rec), torch.cat(kl)
    return ElboTerms(rec_t - kl_t, rec_t, kl_t, used_analytic)


@torch.no_grad()
def marginal_elbo(
    model: Any,
    x: torch.Tensor,
    label_prior: torch.Tensor,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    analytic_kl: bool = True,
    batch_size: int = 256,
) -> torch.Tensor:
    """ELBO on log p(x) of a conditional model: log sum_y p(y) exp(ELBO(x|y)), (N,) nats.

    It is the ELBO of q(y, z|x) = q(y|x) q(z|x, y) with the best q(y|x), proportional to
    p(y) exp(ELBO(x|y)); a lower bound on log p(x) because each ELBO(x|y) <= log p(x|y).
    """
    n = x.shape[0]
    terms = []
    for c, p_c in enumerate(label_prior.tolist()):
        if p_c <= 0:
            continue
        y = torch.full((n,), c, dtype=torch.long, device=x.device)
        e = elbo(model, x, y, n_samples, generator, analytic_kl, batch_size).elbo
        terms.append(math.log(p_c) + e.double())
    return torch.logsumexp(torch.stack(terms), dim=0)


@torch.no_grad()
def posterior_means(
    model: Any, x: torch.Tensor, y: torch.Tensor | None = None, batch_size: int = 256
) -> torch.Tensor:
    """E_q[z|x] for every example: (N, L), from ``q.mean``."""
    parts = []
    for b in range(0, x.shape[0], batch_size):
        yb = None if y is None else y[b : b + batch_size]
        parts.append(model.encode(x[b : b + batch_size], *_args(yb)).mean)
    return torch.cat(parts)


def active_units(
    means: torch.Tensor, threshold: float = 0.01, ddof: int = 1
) -> tuple[int, torch.Tensor]:
    """Active units of Burda et al. 2016: latent u is active if Var_x(E_q[u|x]) > threshold.

    ``means`` are posterior means (N, L) over a data set; returns the count and the
    per-unit variances (L,) with ``ddof`` delta degrees of freedom: sum of squared
    deviations / (N - ddof). Burda et al.'s code uses np.var (ddof 0) on 500 training points.
    """
    var = means.double().var(dim=0, correction=ddof)
    return int((var > threshold).sum()), var
