"""Closed-form checks of the diffusion evaluators: Gaussian data under its exact denoiser,
the discretized decoder against scipy's normal CDF, unit conversions, and torchdiffeq vs scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from dltbench.tasks.diffusion import (
    CosineSchedule,
    DiscreteSchedule,
    GaussianDenoiser,
    LinearSchedule,
    bits_per_dim_to_nats,
    dequantize,
    discretized_gaussian_log_likelihood,
    gaussian_entropy,
    gaussian_marginal_log_density,
    linear_alphas_cumprod,
    log_diff_ndtr,
    nats_to_bits_per_dim,
    ode_nll,
    to_grid,
    vlb_bits_per_dim,
    vlb_terms,
)


def gaussian_problem(dim: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mean = 0.5 * torch.randn(dim, generator=g, dtype=torch.float64)
    a = 0.6 * torch.randn(dim, dim, generator=g, dtype=torch.float64)
    cov = a @ a.T + 0.05 * torch.eye(dim, dtype=torch.float64)
    return mean, cov, g


SCHEDULES = {
    "linear": LinearSchedule(),
    "cosine": CosineSchedule(),
    "discrete-linear": DiscreteSchedule(linear_alphas_cumprod(1000)),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_ode_nll_equals_exact_gaussian_density(name):
    """With the exact denoiser the flow is exact: -log N(x; alpha m, alpha^2 S + sigma^2 I) at t_min."""
    sched = SCHEDULES[name]
    mean, cov, g = gaussian_problem()
    model = GaussianDenoiser(mean, cov, sched)
    x = torch.distributions.MultivariateNormal(mean, cov).sample((16,))
    # A discrete schedule's log-SNR is piecewise linear: its 1000 kinks make a tight
    # tolerance slow and cost the adaptive solver some accuracy.
    tol, atol = (1e-6, 1e-3) if name.startswith("discrete") else (1e-8, 1e-5)
    res = ode_nll(model, x, rtol=tol, atol=tol, trace="exact", backend="scipy", log_snr_end=None,
                  prior_log_prob=lambda z: gaussian_marginal_log_density(z, mean, cov, sched, 1.0))  # fmt: skip
    exact = -gaussian_marginal_log_density(x, mean, cov, sched, sched.t_min)
    assert res.trace == "exact" and res.t_min == sched.t_min
    torch.testing.assert_close(res.nll, exact, atol=atol, rtol=0)


def test_default_prior_error_is_the_terminal_mismatch():
    """With N(0, I) at t = 1 instead of the exact marginal, the error is the prior mismatch only."""
    sched = LinearSchedule()
    mean, cov, _ = gaussian_problem()
    model = GaussianDenoiser(mean, cov, sched)
    x = torch.distributions.MultivariateNormal(mean, cov).sample((64,))
    default = ode_nll(model, x, rtol=1e-8, atol=1e-8, backend="scipy")
    exact = ode_nll(model, x, rtol=1e-8, atol=1e-8, backend="scipy",
                    prior_log_prob=lambda z: gaussian_marginal_log_density(z, mean, cov, sched, 1.0))  # fmt: skip
    assert default.t_max == 1.0  # the linear schedule ends above log-SNR -10.5
    # The density at t=1 differs from N(0, I) by alpha_1 = 0.0066: a small, nonzero shift.
    gap = (default.nll - exact.nll).abs()
    assert 0 < gap.max() < 0.05


def test_torchdiffeq_and_scipy_agree():
    """The same ODE through the peer solvers (dopri5 and RK45) gives the same NLL."""
    pytest.importorskip("torchdiffeq")
    mean, cov, _ = gaussian_problem(3, seed=1)
    model = GaussianDenoiser(mean, cov, CosineSchedule())
    x = torch.distributions.MultivariateNormal(mean, cov).sample((32,))
    a = ode_nll(model, x, rtol=1e-7, atol=1e-7, backend="torchdiffeq")
    b = ode_nll(model, x, rtol=1e-7, atol=1e-7, backend="scipy")
    assert a.backend == "torchdiffeq" and b.backend == "scipy"
    torch.testing.assert_close(a.nll, b.nll, atol=1e-4, rtol=0)


def test_hutchinson_is_unbiased_for_the_exact_trace():
    """One Rademacher probe per point: the per-point errors average out to the exact NLL."""
    mean, cov, _ = gaussian_problem(4, seed=2)
    sched = CosineSchedule()
    model = GaussianDenoiser(mean, cov, sched)
    x = torch.distributions.MultivariateNormal(mean, cov).sample((1,)).expand(400, 4).contiguous()
    exact = ode_nll(model, x[:1], rtol=1e-6, atol=1e-6, trace="exact", backend="scipy").nll[0]
    est = ode_nll(model, x, rtol=1e-6, atol=1e-6, trace="hutchinson", backend="scipy",
                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert est.trace == "hutchinson"
    assert est.nll.std() > 1e-3  # it really is random
    assert abs(float(est.nll.mean() - exact)) < 4 * float(est.nll.std()) / math.sqrt(len(x))


def test_vlb_bounds_the_nll_and_tightens_with_more_steps():
    """E[VLB_T] >= E[-log p(x)] = the entropy, and it decreases on nested grids (Kingma et al. 2021)."""
    mean, cov, g = gaussian_problem()
    sched = LinearSchedule()
    model = GaussianDenoiser(mean, cov, sched)
    x = torch.distributions.MultivariateNormal(mean, cov).sample((3000,))
    ode = ode_nll(model, x[:200], rtol=1e-6, atol=1e-6, backend="scipy").nll.mean()
    entropy = gaussian_entropy(cov)
    assert abs(float(ode) - entropy) < 0.3  # the ODE NLL estimates the cross-entropy = entropy
    means = []
    for steps in (17, 65, 257, 1025):  # nested grids: 2^k + 1 points on [t_min, 1]
        terms = vlb_terms(model, x, None, steps, generator=torch.Generator().manual_seed(steps))
        means.append(float(terms.total.mean()))
    assert all(m > entropy for m in means)
    assert all(a > b for a, b in zip(means[:-1], means[1:], strict=False))


def test_vlb_prior_term_closed_form():
    """The prior term is KL(N(alpha_T x, sigma_T^2) || N(0, 1)) summed over dimensions."""
    sched = LinearSchedule()
    x = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    terms = vlb_terms(GaussianDenoiser(torch.zeros(2), torch.eye(2), sched), x, None, 10)
    a2 = float(torch.sigmoid(sched.log_snr(torch.tensor([1.0]))))
    s2 = 1 - a2
    expected = 0.5 * sum(a2 * v**2 + s2 - 1 - math.log(s2) for v in (0.5, -1.0))
    assert float(terms.prior[0]) == pytest.approx(expected, rel=1e-10)


def test_discretized_decoder_matches_scipy_and_sums_to_one():
    """P(k) = Phi(upper) - Phi(lower) over each bin, outer bins to +-inf; the K probabilities sum to 1."""
    levels = 256
    grid = to_grid(torch.arange(levels), levels)
    for mean, scale in ((0.1, 0.05), (-0.93, 0.003), (0.99, 0.5)):
        logp = discretized_gaussian_log_likelihood(
            grid, torch.full_like(grid, mean), torch.full_like(grid, scale), levels
        )
        assert float(torch.logsumexp(logp, 0).exp()) == pytest.approx(1.0, abs=1e-12)
        g = grid.numpy()
        hi = np.where(g > 1 - 1 / 255, np.inf, g + 1 / 255)
        lo = np.where(g < -1 + 1 / 255, -np.inf, g - 1 / 255)
        # Survival functions above the mean: cdf(hi) - cdf(lo) would cancel to ~1e-16 there.
        upper = lo > mean
        ref = np.where(upper, norm.sf(lo, mean, scale) - norm.sf(hi, mean, scale),
                       norm.cdf(hi, mean, scale) - norm.cdf(lo, mean, scale))  # fmt: skip
        big = ref > 1e-300
        np.testing.assert_allclose(logp.numpy()[big], np.log(ref[big]), rtol=1e-9, atol=1e-9)


def test_exact_cdf_vs_tanh_approximation_in_the_tails():
    """Why the exact CDF: Ho et al.'s tanh approximation is wrong by many nats a few sigmas out."""

    def approx_cdf(x):
        return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    a, b = torch.tensor([-6.0], dtype=torch.float64), torch.tensor([-5.9], dtype=torch.float64)
    exact = float(log_diff_ndtr(a, b))
    assert exact == pytest.approx(math.log(norm.cdf(-5.9) - norm.cdf(-6.0)), rel=1e-10)
    approx = math.log(max(float(approx_cdf(b) - approx_cdf(a)), 1e-12))
    assert abs(approx - exact) > 1.0
    # Far tails on both sides stay finite and accurate.
    far = log_diff_ndtr(
        torch.tensor([30.0, -40.0], dtype=torch.float64),
        torch.tensor([31.0, -39.0], dtype=torch.float64),
    )
    assert torch.isfinite(far).all()
    assert float(far[0]) == pytest.approx(norm.logsf(30.0), rel=1e-6)


@pytest.mark.parametrize("convention", ["centered", "song"])
def test_uniform_model_scores_exactly_8_bits_per_dim(convention):
    """A density uniform on the dequantization range of 8-bit data is exactly log2(256) = 8 bits/dim."""
    levels, dim = 256, 5
    k = torch.randint(0, levels, (100, dim), generator=torch.Generator().manual_seed(0))
    z, offset = dequantize(k, levels, convention, torch.Generator().manual_seed(1))
    lo, hi = (-1 - 1 / 255, 1 + 1 / 255) if convention == "centered" else (-1.0, 1.0)
    assert float(z.min()) >= lo and float(z.max()) <= hi
    nll = torch.full(
        (len(z),), dim * math.log(hi - lo), dtype=torch.float64
    )  # -log of 1/(hi-lo)^D
    bpd = nats_to_bits_per_dim(nll, dim) + offset
    torch.testing.assert_close(bpd, torch.full_like(bpd, 8.0), atol=1e-12, rtol=0)


def test_uniform_decoder_grid_probability_is_8_bits():
    """Hand computation: 1/256 per pixel is 8 bits/dim; nats <-> bits/dim round-trip."""
    dim = 3072
    nats = dim * math.log(256)
    assert nats_to_bits_per_dim(nats, dim) == pytest.approx(8.0, abs=1e-12)
    assert bits_per_dim_to_nats(8.0, dim) == pytest.approx(nats, rel=1e-12)


def test_vlb_of_discrete_data_is_a_bound_on_bits():
    """On 8-bit data the VLB in bits/dim of the exact Gaussian denoiser is finite and above the
    entropy of the discretized Gaussian (a lower bound on any model's expected bits)."""
    dim = 2
    mean = torch.zeros(dim, dtype=torch.float64)
    cov = 0.09 * torch.eye(dim, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    cont = (torch.randn(2000, dim, generator=g, dtype=torch.float64) * 0.3).clamp(-1, 1)
    k = torch.round((cont + 1) * 255 / 2)
    x = to_grid(k, 256)
    model = GaussianDenoiser(mean, cov, DiscreteSchedule(linear_alphas_cumprod(1000)))
    bpd = vlb_bits_per_dim(model, x, levels=256, generator=g)
    # Entropy of the discretized N(0, 0.09) per dim, in bits (bins of width 2/255).
    c = to_grid(torch.arange(256), 256).numpy()
    p = norm.cdf(np.minimum(c + 1 / 255, 1), 0, 0.3) - norm.cdf(
        np.maximum(c - 1 / 255, -1), 0, 0.3
    )
    p = p / p.sum()
    entropy_bits = -(p[p > 0] * np.log2(p[p > 0])).sum()
    assert torch.isfinite(bpd).all()
    assert float(bpd.mean()) > entropy_bits - 0.05
    assert float(bpd.mean()) < entropy_bits + 1.5


class _ConstantX0(torch.nn.Module):
    """A 'model' whose x0-prediction is a fixed vector: the decoder term is then deterministic."""

    prediction = "x0"

    def __init__(self, c: torch.Tensor, schedule):
        super().__init__()
        self.c, self.schedule = c, schedule

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.c.to(x).expand_as(x)


def _reference_posterior_variance(betas: np.ndarray) -> np.ndarray:
    """improved-diffusion's / Ho et al.'s ``posterior_variance`` (0-indexed steps), in numpy."""
    abar = np.cumprod(1.0 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    return betas * (1.0 - abar_prev) / (1.0 - abar)


def test_decoder_variance_is_the_reference_posterior_variance():
    """L_0 uses posterior_variance[1] (both fixed-variance settings of the reference code), not
    1 - alpha_bar_1 = beta_1: pinned on 8-bit data with a fixed x0-prediction, where the two
    conventions give different decoder terms, against scipy's normal CDF."""
    betas = np.linspace(1e-4, 0.02, 1000)  # Ho et al.'s linear schedule, T = 1000
    sched = DiscreteSchedule(linear_alphas_cumprod(1000))
    var_ref = _reference_posterior_variance(betas)[1]  # the log-variance _vb_terms_bpd uses at t=0
    assert var_ref == pytest.approx(betas[1] * betas[0] / (1 - (1 - betas[0]) * (1 - betas[1])))
    k = torch.tensor([[0, 100, 128, 255, 130, 131]])
    x = to_grid(k, 256)
    c = x[0] + torch.tensor([0.0, 0.004, -0.006, 0.01, 0.02, -1e-3], dtype=torch.float64)
    model = _ConstantX0(c, sched)
    times = torch.tensor([1, 2, 7], dtype=torch.float64) / 1000  # the first two steps fix sigma_1

    def expected(var: float) -> float:
        s, xv, cv = math.sqrt(var), x[0].numpy(), c.numpy()
        upper = np.where(xv > 1 - 1 / 255, 1.0, norm.cdf((xv + 1 / 255 - cv) / s))
        lower = np.where(xv < -1 + 1 / 255, 0.0, norm.cdf((xv - 1 / 255 - cv) / s))
        return float(-np.log(upper - lower).sum())

    ours = vlb_terms(model, x, 256, times=times, generator=torch.Generator().manual_seed(0))
    beta = vlb_terms(model, x, 256, times=times, generator=torch.Generator().manual_seed(0),
                     decoder="beta")  # fmt: skip
    assert float(ours.decoder[0]) == pytest.approx(expected(var_ref), rel=1e-9)
    assert float(beta.decoder[0]) == pytest.approx(expected(betas[0]), rel=1e-9)
    assert expected(var_ref) - expected(betas[0]) > 0.3  # nats: the case tells them apart


def test_decoder_term_of_gaussian_data_under_the_exact_denoiser():
    """E[L_0] for x0 ~ N(m, S) and the exact x0-hat = E[x0 | x1] is D/2 log(2 pi s^2) +
    tr(Cov(x0 | x1)) / (2 s^2), Cov(x0 | x1) = (S^-1 + a^2/sig^2 I)^-1, with s^2 the reference
    posterior variance; the version-1 s^2 = 1 - alpha_bar_1 gives a lower value here."""
    mean, cov, g = gaussian_problem(dim=2, seed=4)
    betas = np.linspace(1e-4, 0.02, 1000)
    sched = DiscreteSchedule(linear_alphas_cumprod(1000))
    model = GaussianDenoiser(mean, cov, sched)
    x = torch.distributions.MultivariateNormal(mean, cov).sample((20000,))
    times = torch.tensor([1, 2], dtype=torch.float64) / 1000
    a2, sig2 = 1 - betas[0], betas[0]  # alpha_bar_1 and 1 - alpha_bar_1
    post = np.linalg.inv(np.linalg.inv(cov.numpy()) + a2 / sig2 * np.eye(2))
    want = {}
    for kind, s2 in (("posterior", _reference_posterior_variance(betas)[1]), ("beta", betas[0])):
        want[kind] = math.log(2 * math.pi * s2) + np.trace(post) / (2 * s2)  # D/2 log(.), D = 2
        got = vlb_terms(model, x, None, times=times, generator=torch.Generator().manual_seed(1),
                        decoder=kind).decoder  # fmt: skip
        sem = float(got.std()) / math.sqrt(len(got))
        assert abs(float(got.mean()) - want[kind]) < 4 * sem, (kind, float(got.mean()), want, sem)
        assert 4 * sem < 0.1  # well below the 0.23-nat gap between the conventions
    # s^2 = 5.45e-5 vs 1e-4 with tr(Cov)/D ~ 1e-4: 0.23 nats apart, far beyond 4 SEM.
    assert want["posterior"] - want["beta"] > 0.2


def test_chi2_outliers_on_constructed_norms():
    """Flag exactly the squared norms outside chi^2_D's central 1 - tail interval (and non-finite ones)."""
    from scipy.stats import chi2

    from dltbench.tasks.diffusion import chi2_outliers

    for dim in (2, 64, 3072):
        lo, hi = chi2.ppf(5e-7, dim), chi2.isf(5e-7, dim)
        v = torch.tensor(
            [lo * 0.99, lo * 1.01, dim, hi * 0.99, hi * 1.01, 1e6 * dim, math.inf, math.nan]
        )
        got = chi2_outliers(v, dim, 1e-6).tolist()
        assert got == [True, False, False, False, True, True, True, True], dim
    # A wider tail flags more: the 1 - 0.1 interval excludes what the 1 - 1e-6 one keeps.
    assert bool(chi2_outliers(torch.tensor([chi2.isf(0.01, 2)]), 2, 0.1)[0])


def test_prior_outliers_flag_points_the_flow_sends_far_from_the_prior():
    """Under the exact Gaussian flow x(t_max) is N(0, I) for data points (none flagged), while a point
    40 standard deviations out ends with |x|^2 ~ 1600 >> chi2_2's 1-1e-6 quantile (flagged)."""
    mean, cov, g = gaussian_problem(dim=2, seed=5)
    sched = LinearSchedule()
    model = GaussianDenoiser(mean, cov, sched)
    inliers = torch.distributions.MultivariateNormal(mean, cov).sample((64,))
    evals, evecs = torch.linalg.eigh(cov)
    far = mean + 40 * evals[0].sqrt() * evecs[:, 0]
    near = mean + 3 * evals[1].sqrt() * evecs[:, 1]
    x = torch.cat([inliers, far[None], near[None]])
    res = ode_nll(model, x, rtol=1e-6, atol=1e-6, backend="scipy")
    flags = res.prior_outliers(1e-6)
    assert flags.tolist() == [False] * 64 + [True, False]
    assert float(res.terminal_sq_norm[64]) == pytest.approx(1600, rel=0.05)
    torch.testing.assert_close(
        res.prior_logp, -0.5 * res.terminal_sq_norm - math.log(2 * math.pi), rtol=1e-10, atol=1e-10
    )


def test_dequantization_conventions_differ_off_the_uniform_model():
    """'centered' (K-1 bins on the VLB grid, + log2((K-1)/2) = 6.994 for 8 bits) and 'song' (K bins on
    [-1, 1], + log2(K/2) = 7, score_sde's `offset = 7 - inverse_scaler(-1)`) agree on a uniform
    model but not on N(0, 0.5^2): each matches its own closed form E_u[-log2 p(z)] + offset."""
    levels, dim = 256, 4
    k = torch.tensor([[0, 77, 128, 255]]).expand(40000, dim)
    model = torch.distributions.Normal(0.0, 0.5)
    want = {}
    for convention, width, centre, offset in (
        ("centered", 2 / 255, lambda k: -1 + 2 * k / 255, math.log2(127.5)),
        ("song", 2 / 256, lambda k: -1 + (2 * k + 1) / 256, 7.0),
    ):
        z, off = dequantize(k, levels, convention, torch.Generator().manual_seed(2))
        assert off == pytest.approx(offset, abs=1e-12)
        c = centre(k[0].double())
        assert (z - c).abs().max() <= width / 2 + 1e-12  # uniform within its bin
        ez2 = c**2 + width**2 / 12  # E[z^2] for z uniform on [c - w/2, c + w/2]
        nats = (0.5 * math.log(2 * math.pi * 0.25) + ez2 / (2 * 0.25)).sum()
        want[convention] = float(nats) / (dim * math.log(2)) + offset
        got = -model.log_prob(z).sum(1) / (dim * math.log(2)) + off
        assert float(got.mean()) == pytest.approx(want[convention], abs=4 * float(got.std()) / 200)
    assert abs(want["song"] - want["centered"]) > 0.005  # here -0.0065 bits/dim: the two differ
