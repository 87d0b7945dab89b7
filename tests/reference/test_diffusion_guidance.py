"""Guidance and sample quality of the diffusion task against closed forms.

On an isotropic Gaussian mixture the noisy marginal, the class-conditional densities and
the classifier p_t(y | x) are all closed form, so both guided noise predictions must equal
-sigma_t [grad log p_t(x) + w grad log p_t(y | x)] written out independently here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dltbench.tasks.diffusion import (
    CosineSchedule,
    DiscreteSchedule,
    linear_alphas_cumprod,
    sample,
)
from dltbench.tasks.diffusion.gaussian import GaussianMixtureClassifier, GaussianMixtureDenoiser
from dltbench.tasks.diffusion.guidance import cfg_eps, classifier_eps, stack_scales
from dltbench.tasks.diffusion.likelihood import vlb_terms

MEANS = torch.tensor([[1.5, 0.0], [-1.0, 1.0], [0.0, -1.2]], dtype=torch.float64)
STD, WEIGHTS = 0.3, torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)


def _closed_form_eps(x, t, y, w, sched):
    """-sigma (grad log p_t(x) + w grad log p_t(y|x)) from the mixture's formulas, in numpy."""
    x, t, y, w = (v.numpy() for v in (x, t, y, w))
    lam = sched.log_snr(torch.as_tensor(t)).numpy()
    a2 = 1 / (1 + np.exp(-lam))
    alpha, sigma = np.sqrt(a2), np.sqrt(1 - a2)
    var = alpha**2 * STD**2 + sigma**2
    m = MEANS.numpy()
    out = np.empty_like(x)
    for i in range(len(x)):
        d = x[i][None] - alpha[i] * m  # (K, D)
        logn = (
            np.log(WEIGHTS.numpy()) - 0.5 * (d**2).sum(1) / var[i] - math.log(2 * math.pi * var[i])
        )
        r = np.exp(logn - logn.max())
        r /= r.sum()
        grads = -d / var[i]
        marginal = (r[:, None] * grads).sum(0)
        # grad log p(y|x) = grad log N_y - grad log p(x)
        out[i] = -sigma[i] * (marginal + w[i] * (grads[y[i]] - marginal))
    return torch.from_numpy(out)


@pytest.mark.parametrize(
    "sched", [CosineSchedule(), DiscreteSchedule(linear_alphas_cumprod(1000))]
)
def test_guided_eps_is_the_closed_form_on_a_gaussian_mixture(sched):
    model = GaussianMixtureDenoiser(MEANS, STD, WEIGHTS, sched)
    g = torch.Generator().manual_seed(0)
    n = 60
    x = 1.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    w = torch.tensor([0.0, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64).repeat(n // 5)
    cg = classifier_eps(model, GaussianMixtureClassifier(model), y, w)
    cfg = cfg_eps(model, y, w)
    for step in (0.03, 0.3, 0.7, 0.97):  # the samplers call with one t per step
        t = torch.full((n,), step, dtype=torch.float64)
        alpha, sigma = (v[0] for v in sched.alpha_sigma(t))
        want = _closed_form_eps(x, t, y, w, sched)
        for fn in (cg, cfg):
            torch.testing.assert_close(fn(x, t, alpha, sigma), want, rtol=1e-5, atol=1e-5)


def test_guidance_at_w0_is_unguided_sampling():
    sched = CosineSchedule()
    model = GaussianMixtureDenoiser(MEANS, STD, WEIGHTS, sched)
    y, w = stack_scales([0.0], 64, 3)
    plain = sample(model, 64, 2, 30, 1.0, torch.Generator().manual_seed(5))
    for fn in (
        cfg_eps(model, y, w),
        classifier_eps(model, GaussianMixtureClassifier(model), y, w),
    ):
        guided = sample(model, 64, 2, 30, 1.0, torch.Generator().manual_seed(5), eps_fn=fn)
        torch.testing.assert_close(guided, plain, rtol=1e-10, atol=1e-10)


def test_guidance_at_w1_samples_the_asked_component():
    """w = 1 samples p(x | y) (Bayes: p(x) p(y|x) = p(y) p(x|y)); w = 0 the mixture."""
    sched = CosineSchedule()
    model = GaussianMixtureDenoiser(MEANS, STD, WEIGHTS, sched)
    y, w = stack_scales([1.0], 300, 3)
    for fn in (
        cfg_eps(model, y, w),
        classifier_eps(model, GaussianMixtureClassifier(model), y, w),
    ):
        x = sample(model, 300, 2, 100, 0.0, torch.Generator().manual_seed(1), eps_fn=fn)
        nearest = torch.cdist(x, MEANS).argmin(1)
        assert (nearest == y).double().mean() > 0.97
        for k in range(3):
            torch.testing.assert_close(x[y == k].mean(0), MEANS[k], atol=0.12, rtol=0)


def test_stratified_vlb_is_unbiased_for_the_full_bound():
    from dltbench.tasks.diffusion import GaussianDenoiser

    sched = DiscreteSchedule(linear_alphas_cumprod(1000))
    model = GaussianDenoiser(torch.zeros(2), torch.diag(torch.tensor([0.5, 0.1])), sched)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(2000, 2, generator=g, dtype=torch.float64) * torch.tensor([0.5, 0.1]).sqrt()
    full = vlb_terms(model, x0, None, generator=torch.Generator().manual_seed(1)).diffusion
    strat = vlb_terms(
        model, x0, None, generator=torch.Generator().manual_seed(2), strata=40
    ).diffusion
    se = math.sqrt(float(full.var() + strat.var()) / len(x0))
    assert abs(float(full.mean() - strat.mean())) < 4 * se
    # all strata = every step exactly: the same estimator as the full sum
    assert vlb_terms(model, x0[:5], None, steps=20, strata=19).steps == 20


def test_fid_of_the_training_data_against_itself_is_zero():
    from dltbench.data import digits
    from dltbench.tasks.diffusion import quality as Q

    train = digits().train.x[:400]
    ref = Q.reference(train)
    q = Q.quality(train, ref, np.random.default_rng(0), labels=digits().train.y[:400])
    assert q["fid"] < 1e-6
    assert (
        abs(q["kid"])
        < 0.05 * Q.quality(torch.rand_like(train), ref, np.random.default_rng(0))["kid"]
    )
    assert q["class_acc"] > 0.95  # the feature net's classifier on its own training images
