"""Unit tests of the vae library: unit conversions, sampling streams, chunking, active units."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, Normal

from dltbench.tasks.vae import (
    MLPVAE,
    active_units,
    bits_per_dim,
    draw,
    elbo,
    iwae_bound,
    iwae_bounds,
    log_weights,
    nats_per_example,
)

D, L = 64, 4


class Uniform:
    """p(x|z) = Bernoulli(1/2) per pixel whatever z; q(z|x) = p(z) = N(0, I): log p(x) = -D ln 2."""

    def encode(self, x):
        return Independent(Normal(torch.zeros(len(x), L), torch.ones(len(x), L)), 1)

    def decode(self, z):
        return Independent(Bernoulli(probs=torch.full((len(z), D), 0.5)), 1)

    def prior(self):
        return Independent(Normal(torch.zeros(L), torch.ones(L)), 1)


def binary(n=20, seed=0):
    return (torch.rand(n, D, generator=torch.Generator().manual_seed(seed)) < 0.3).float()


def test_bits_per_dim_hand_computations():
    assert bits_per_dim(-D * math.log(2), D) == pytest.approx(1.0, abs=1e-15)
    assert bits_per_dim(-79.0, 784) == pytest.approx(79.0 / (784 * math.log(2)))
    assert nats_per_example(bits_per_dim(-12.5, 64), 64) == pytest.approx(-12.5)


def test_uniform_model_scores_exactly_one_bit_per_dim():
    x, m = binary(), Uniform()
    ll = iwae_bound(m, x, 17, generator=torch.Generator().manual_seed(0), k_chunk=4)
    torch.testing.assert_close(ll, torch.full((len(x),), -D * math.log(2), dtype=torch.float64))
    terms = elbo(m, x, n_samples=3)
    assert terms.kl_analytic and float(terms.kl.abs().max()) == 0.0
    assert float(bits_per_dim(terms.elbo.mean(), D)) == pytest.approx(1.0, abs=1e-6)


def test_draw_uses_the_generator_and_leaves_the_global_rng_alone():
    q = Independent(Normal(torch.zeros(3, L), torch.ones(3, L)), 1)
    c = Categorical(logits=torch.zeros(3, 5))  # no loc/scale: sampled under a forked RNG
    for dist in (q, c):
        torch.manual_seed(123)
        before = torch.random.get_rng_state()
        a = draw(dist, (4,), torch.Generator().manual_seed(7))
        assert torch.equal(torch.random.get_rng_state(), before)
        b = draw(dist, (4,), torch.Generator().manual_seed(7))
        assert torch.equal(a, b) and a.shape == (4, 3, *dist.event_shape)


def test_draw_is_reparameterized_for_normals():
    loc = torch.zeros(2, L, requires_grad=True)
    z = draw(Independent(Normal(loc, 1.0), 1), (3,), torch.Generator().manual_seed(0))
    z.sum().backward()
    torch.testing.assert_close(loc.grad, torch.full((2, L), 3.0))


def _model(seed=0):
    torch.manual_seed(seed)
    return MLPVAE(D, L, (16,)).eval()


def test_iwae_is_the_log_mean_exp_of_log_weights_drawn_in_the_same_chunks():
    m, x = _model(), binary()
    k, chunk = 10, 3
    ours = iwae_bound(
        m, x, k, generator=torch.Generator().manual_seed(5), k_chunk=chunk, batch_size=8
    )
    g = torch.Generator().manual_seed(5)
    ref = []
    for b in range(0, len(x), 8):
        with torch.no_grad():
            lw = torch.cat(
                [
                    log_weights(m, x[b : b + 8], min(chunk, k - s), generator=g)
                    for s in range(0, k, chunk)
                ]
            )
        ref.append(torch.logsumexp(lw.double(), 0) - math.log(k))
    torch.testing.assert_close(ours, torch.cat(ref))


def test_nested_prefixes_are_log_mean_exps_of_the_first_k_draws():
    m, x = _model(), binary()
    many = iwae_bounds(m, x, (12, 5), generator=torch.Generator().manual_seed(3), k_chunk=4)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # chunks split at the checkpoint: 4 + 1 draws, then 4 + 3
        lw = torch.cat([log_weights(m, x, c, generator=g) for c in (4, 1, 4, 3)]).double()
    torch.testing.assert_close(many[5], torch.logsumexp(lw[:5], 0) - math.log(5))
    torch.testing.assert_close(many[12], torch.logsumexp(lw, 0) - math.log(12))
    with pytest.raises(ValueError):
        iwae_bounds(m, x, (0, 3))


def test_chunking_and_batching_do_not_change_the_law():
    m, x = _model(), binary(200)
    a = iwae_bound(
        m, x, 64, generator=torch.Generator().manual_seed(1), k_chunk=64, batch_size=200
    )
    b = iwae_bound(m, x, 64, generator=torch.Generator().manual_seed(2), k_chunk=5, batch_size=7)
    diff = a - b
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(len(x)) + 1e-6


def test_elbo_decomposes_and_mc_kl_matches_analytic_in_mean():
    m, x = _model(), binary(100)
    g = torch.Generator().manual_seed(0)
    a = elbo(m, x, n_samples=2000, generator=g, analytic_kl=True)
    b = elbo(m, x, n_samples=2000, generator=g, analytic_kl=False)
    torch.testing.assert_close(a.reconstruction - a.kl, a.elbo)
    diff = a.kl - b.kl  # Monte Carlo KL is unbiased for the analytic one
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(len(x)) and diff.abs().max() < 0.15
    assert not b.kl_analytic and a.kl_analytic


def test_active_units_counts_variances_above_the_threshold():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(20000, 4, generator=g) * torch.tensor([1.0, 0.2, 0.05, 0.0])
    count, var = active_units(means)
    assert count == 2  # variances ~ 1, 0.04, 0.0025, 0
    torch.testing.assert_close(
        var, torch.tensor([1.0, 0.04, 0.0025, 0.0], dtype=torch.float64), rtol=0.05, atol=0
    )
    assert active_units(means, threshold=0.001)[0] == 3


def test_active_units_ddof_decides_a_unit_at_the_threshold_as_numpy_does():
    # 500 points at +-a: mean 0, sum of squares 500 a^2, so the population variance (ddof 0,
    # Burda et al.'s np.var) is a^2 = 0.00999 < 0.01 and the unbiased one is a^2 500/499 > 0.01.
    a = math.sqrt(0.00999)
    col = torch.tensor([a, -a] * 250, dtype=torch.float64)
    means = torch.stack([col, 10 * col, 0.1 * col], dim=1)
    count0, var0 = active_units(means, 0.01, ddof=0)
    count1, var1 = active_units(means, 0.01, ddof=1)
    np.testing.assert_allclose(var0.numpy(), np.var(means.numpy(), axis=0), rtol=1e-12)
    np.testing.assert_allclose(var1.numpy(), np.var(means.numpy(), axis=0, ddof=1), rtol=1e-12)
    assert var0[0] < 0.01 < var1[0]
    assert (count0, count1) == (1, 2)  # only the 10x column is active under ddof 0
    assert active_units(means)[0] == count1  # the default stays ddof 1
