"""Closed-form checks of the vae bounds on linear-Gaussian models (probabilistic PCA and factor
analysis), where log p(x), the exact posterior and the ELBO of any Gaussian q are known, and
against scikit-learn's PCA / FactorAnalysis log-likelihoods on the same data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA, FactorAnalysis
from torch.distributions import Independent, MultivariateNormal, Normal

from dltbench.tasks.vae import elbo, iwae_bound, iwae_bounds, marginal_elbo, marginal_iwae_bound

F64 = dict(dtype=torch.float64)  # the closed forms are compared at ~1e-7


class LinearGaussian:
    """p(z) = N(0, I), p(x|z) = N(W z + mu, diag(psi)); encoder exact or deliberately off."""

    def __init__(self, w, mu, psi, shift=0.0, inflate=1.0, diag_q=False):
        self.w, self.mu, self.psi = w, mu, psi
        self.shift, self.inflate, self.diag_q = shift, inflate, diag_q
        latent = w.shape[1]
        prec = torch.eye(latent, dtype=w.dtype) + w.T @ (w / psi[:, None])
        self.post_cov = torch.linalg.inv(prec)
        self.post_cov = (self.post_cov + self.post_cov.T) / 2

    def post_mean(self, x):
        return (x - self.mu) @ (self.w / self.psi[:, None]) @ self.post_cov

    def q_params(self, x):
        m = self.post_mean(x) + self.shift
        cov = self.inflate * self.post_cov
        return m, (torch.diag(torch.diagonal(cov)) if self.diag_q else cov)

    def encode(self, x):
        m, cov = self.q_params(x)
        if self.diag_q:
            return Independent(Normal(m, torch.diagonal(cov).sqrt().expand_as(m)), 1)
        return MultivariateNormal(m, covariance_matrix=cov.expand(len(x), *cov.shape))

    def decode(self, z):
        return Independent(Normal(z @ self.w.T + self.mu, self.psi.sqrt().expand(len(z), -1)), 1)

    def prior(self):
        latent = self.w.shape[1]
        if self.diag_q:
            zero = torch.zeros(latent, dtype=self.w.dtype)
            return Independent(Normal(zero, torch.ones_like(zero)), 1)
        return MultivariateNormal(
            torch.zeros(latent, dtype=self.w.dtype), torch.eye(latent, dtype=self.w.dtype)
        )

    def log_px(self, x):
        cov = self.w @ self.w.T + torch.diag(self.psi)
        return MultivariateNormal(self.mu, covariance_matrix=cov).log_prob(x)

    def elbo_closed_form(self, x):
        """E_q log N(x; Wz+mu, Psi) - KL(N(m, S) || N(0, I)) for the Gaussian q."""
        m, s = self.q_params(x)
        rec = Independent(Normal(m @ self.w.T + self.mu, self.psi.sqrt()), 1).log_prob(x)
        rec = rec - 0.5 * torch.trace(self.w.T @ (self.w / self.psi[:, None]) @ s)
        kl = 0.5 * (torch.trace(s) + (m * m).sum(1) - m.shape[1] - torch.logdet(s))
        return rec - kl


def make(d=6, latent=3, n=200, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, latent, generator=g, **F64)
    mu = torch.randn(d, generator=g, **F64)
    psi = 0.3 + torch.rand(d, generator=g, **F64)
    model = LinearGaussian(w, mu, psi, **kw)
    z = torch.randn(n, latent, generator=g, **F64)
    x = z @ w.T + mu + psi.sqrt() * torch.randn(n, d, generator=g, **F64)
    return model, x


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


def test_exact_posterior_makes_every_bound_exact():
    model, x = make()
    exact = model.log_px(x)
    for k in (1, 7, 64):
        torch.testing.assert_close(iwae_bound(model, x, k, generator=gen(), k_chunk=5), exact)
    terms = elbo(model, x, n_samples=3, generator=gen(), analytic_kl=False)
    torch.testing.assert_close(terms.elbo, exact)
    torch.testing.assert_close(terms.reconstruction - terms.kl, terms.elbo)


def test_closed_form_elbo_of_exact_posterior_is_log_px():
    model, x = make()
    torch.testing.assert_close(model.elbo_closed_form(x), model.log_px(x))


@pytest.mark.parametrize("diag_q", [False, True])
def test_analytic_kl_elbo_matches_closed_form(diag_q):
    model, x = make(shift=0.4, inflate=1.7, diag_q=diag_q)
    terms = elbo(model, x, n_samples=4000, generator=gen(), analytic_kl=True)
    assert terms.kl_analytic
    closed = model.elbo_closed_form(x)
    # The reconstruction term is Monte Carlo: compare the mean over points within 5 SE.
    err = (terms.elbo - closed).mean().abs()
    rec_draws = elbo(model, x[:50], n_samples=1, generator=gen(2)).elbo - closed[:50]
    se = rec_draws.std() / math.sqrt(4000 * len(x))
    assert err < 5 * se + 1e-9


def test_bounds_are_ordered_and_iwae_converges():
    model, x = make(shift=0.5, inflate=2.0, diag_q=True, n=400)
    exact = model.log_px(x).mean()
    closed_elbo = model.elbo_closed_form(x).mean()
    ks = (1, 4, 16, 64, 256, 1024, 4096)
    per_point = iwae_bounds(model, x, ks, generator=gen(), k_chunk=300)
    by_k = {k: v.mean() for k, v in per_point.items()}
    # the encoder is far enough off for the test to mean something
    assert closed_elbo < exact - 0.5
    # IWAE_1 is a one-draw estimate of the ELBO: equal within 4 standard errors
    se = (per_point[1] - model.elbo_closed_form(x)).std() / math.sqrt(len(x))
    assert abs(by_k[1] - closed_elbo) < 4 * se
    values = [by_k[k] for k in ks]
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), values
    assert values[-1] <= exact
    assert exact - values[-1] < 0.05 * (exact - closed_elbo)


def test_running_log_sum_exp_is_stable_far_in_the_tail():
    # x far from the model: log p(x) ~ -1e5 nats; exp would underflow to 0 in float64 and float32.
    model, x = make(n=20)
    far = x + 300.0
    exact = model.log_px(far)
    assert exact.max() < -1e4
    torch.testing.assert_close(iwae_bound(model, far, 50, generator=gen(), k_chunk=7), exact)


def test_float32_model_accumulates_in_float64():
    model, x = make(n=50)
    m32 = LinearGaussian(model.w.float(), model.mu.float(), model.psi.float())
    out = iwae_bound(m32, x.float(), 100, generator=gen(), k_chunk=9)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, model.log_px(x), atol=2e-3, rtol=1e-5)


class ConditionalLinearGaussian:
    """One linear-Gaussian model per class y, each with its exact posterior."""

    conditional = True

    def __init__(self, models):
        self.models = models

    def _pick(self, y, fn):
        # All labels of a call are equal in marginal_iwae_bound; mixed labels are not needed here.
        assert (y == y[0]).all()
        return fn(self.models[int(y[0])])

    def encode(self, x, y):
        return self._pick(y, lambda m: m.encode(x))

    def decode(self, z, y):
        return self._pick(y, lambda m: m.decode(z))

    def prior(self, y):
        return self._pick(y, lambda m: m.prior())


def test_marginal_bound_of_a_conditional_model_is_exact_with_exact_posteriors():
    models = [make(seed=s)[0] for s in range(3)]
    x = make(seed=7, n=30)[1]
    p_y = torch.tensor([0.2, 0.5, 0.3], **F64)
    cond = ConditionalLinearGaussian(models)
    exact = torch.logsumexp(
        torch.stack([p.log() + m.log_px(x) for p, m in zip(p_y, models, strict=True)]), 0
    )
    torch.testing.assert_close(marginal_iwae_bound(cond, x, 5, p_y, generator=gen()), exact)
    torch.testing.assert_close(marginal_elbo(cond, x, p_y, 2, gen(), analytic_kl=False), exact)


def test_marginal_elbo_is_below_marginal_iwae_for_an_inexact_encoder():
    models = [make(seed=s, shift=0.5, inflate=2.0, diag_q=True)[0] for s in range(3)]
    x = make(seed=7, n=100)[1]
    p_y = torch.tensor([0.2, 0.5, 0.3], **F64)
    cond = ConditionalLinearGaussian(models)
    exact = torch.logsumexp(
        torch.stack([p.log() + m.log_px(x) for p, m in zip(p_y, models, strict=True)]), 0
    )
    low = marginal_elbo(cond, x, p_y, 500, gen()).mean()
    mid = marginal_iwae_bound(cond, x, 500, p_y, generator=gen()).mean()
    assert low < mid <= exact.mean()


def _data(d=8, n=300, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return rng.normal(size=(n, d)) @ a + rng.normal(size=d)


def test_matches_sklearn_probabilistic_pca():
    x = _data()
    pca = PCA(n_components=3).fit(x)
    comps = torch.from_numpy(pca.components_)
    w = comps.T * torch.from_numpy(pca.explained_variance_ - pca.noise_variance_).sqrt()
    psi = torch.full((x.shape[1],), float(pca.noise_variance_))
    model = LinearGaussian(w, torch.from_numpy(pca.mean_), psi)
    xt = torch.from_numpy(x)
    ours = iwae_bound(model, xt, 4, generator=gen())
    torch.testing.assert_close(ours, torch.from_numpy(pca.score_samples(x)))
    torch.testing.assert_close(elbo(model, xt, generator=gen(), analytic_kl=False).elbo, ours)


def test_matches_sklearn_factor_analysis():
    x = _data(seed=3)
    fa = FactorAnalysis(n_components=2, random_state=0).fit(x)
    model = LinearGaussian(
        torch.from_numpy(fa.components_.T),
        torch.from_numpy(fa.mean_),
        torch.from_numpy(fa.noise_variance_),
    )
    ours = iwae_bound(model, torch.from_numpy(x), 4, generator=gen())
    torch.testing.assert_close(ours, torch.from_numpy(fa.score_samples(x)))
