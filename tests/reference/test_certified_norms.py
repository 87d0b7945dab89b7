"""Certified part II against closed forms: l1 and l-inf certificates from Laplace, uniform and
Gaussian smoothing, the Lipschitz-margin certificate, and the curse of dimensionality.

A linear binary classifier f(x) = 1[w.x + b > 0] under symmetric noise has the smoothed
classifier's decision boundary of f itself, so its exact robustness in a norm is the distance
|w.x + b| / ||w||_* to the hyperplane (the dual norm: l1 -> l-inf of w, l-inf -> l1 of w).
A certificate can only be below it; for w along a coordinate (Laplace, uniform; l1) or along
(1, ..., 1) (Gaussian; l-inf) the certificates are tight, so they approach it as n grows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import laplace, norm, uniform

from dltbench.tasks.certified import (
    CertifiedConfig,
    CertifiedTask,
    LipschitzMLP,
    certify_batch,
    draw_noise,
    radius_from_pa,
)
from dltbench.tasks.certified.lipschitz import lipschitz_bound, margin_certify, rebuild
from dltbench.tasks.certified.task import Subsampled, noise_scale, radius_ceiling, upsample
from tests.reference.test_certified_closed_form import LinearBinary

D = 16
SIGMA = 0.5


def exact_distance(w: torch.Tensor, b: float, x: torch.Tensor, norm_name: str) -> float:
    """Distance from x to the hyperplane w.x + b = 0 in ``norm_name``."""
    dual = {"l2": 2, "l1": math.inf, "linf": 1}[norm_name]
    return abs(float(x @ w + b)) / float(torch.linalg.vector_norm(w, ord=dual))


TIGHT = {  # (noise, norm): the direction of w for which the certificate is exact
    ("laplace", "l1"): torch.eye(D)[0],
    ("uniform", "l1"): torch.eye(D)[0],
    ("gaussian", "linf"): torch.ones(D),
    ("gaussian", "l2"): torch.ones(D),
}


@pytest.mark.parametrize(("noise", "norm_name"), list(TIGHT))
def test_certificates_of_a_linear_classifier_are_below_the_exact_distance_and_approach_it(
    noise, norm_name
):
    w, b = TIGHT[(noise, norm_name)], 0.0
    x = torch.full((1, D), 0.0)
    x[0, 0] = 0.5  # w.x = 0.5: far enough from the boundary that the bound loses < 7%
    exact = exact_distance(w, b, x[0], norm_name)
    scale = noise_scale(noise, SIGMA)
    gen = torch.Generator().manual_seed(0)
    labels, radii, _ = certify_batch(
        LinearBinary(w, b), x, scale, 100, 200_000, 0.001, 50_000, gen, noise, norm_name
    )
    assert labels[0] == 1
    assert radii[0] <= exact
    assert radii[0] >= 0.93 * exact  # tight direction: only the confidence bound is lost


@pytest.mark.parametrize(("noise", "norm_name"), list(TIGHT))
def test_certificates_of_a_generic_linear_classifier_never_exceed_the_exact_distance(
    noise, norm_name
):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(D, generator=g)
    x = 0.2 * torch.randn(8, D, generator=g)
    labels, radii, _ = certify_batch(
        LinearBinary(w, 0.1), x, noise_scale(noise, SIGMA), 100, 20_000, 0.001, 50_000, g,
        noise, norm_name,
    )  # fmt: skip
    for i in range(len(x)):
        side = int(float(x[i] @ w + 0.1) > 0)
        if labels[i] >= 0:
            assert labels[i] == side
            assert radii[i] <= exact_distance(w, 0.1, x[i], norm_name) + 1e-9


@pytest.mark.parametrize(("noise", "norm_name"), list(TIGHT))
def test_a_constant_classifier_gets_the_closed_form_radius_at_pA_alpha_to_the_1_over_n(
    noise, norm_name
):
    const = LinearBinary(torch.zeros(D), 1.0)  # always class 1
    n, alpha = 1000, 0.001
    _, radii, p_a = certify_batch(
        const, torch.zeros(3, D), noise_scale(noise, SIGMA), 10, n, alpha, 1000,
        torch.Generator().manual_seed(0), noise, norm_name,
    )  # fmt: skip
    p = alpha ** (1 / n)
    np.testing.assert_allclose(p_a, p, rtol=1e-9)
    closed = {
        ("gaussian", "l2"): SIGMA * norm.ppf(p),
        ("gaussian", "linf"): SIGMA * norm.ppf(p) / math.sqrt(D),
        ("laplace", "l1"): -(SIGMA / math.sqrt(2)) * math.log(2 * (1 - p)),
        ("uniform", "l1"): 2 * (SIGMA * math.sqrt(3)) * (p - 0.5),
    }[(noise, norm_name)]
    np.testing.assert_allclose(radii, closed, rtol=1e-9)
    assert radius_ceiling(SIGMA, n, alpha, noise, norm_name, D) == pytest.approx(closed, rel=1e-9)


@pytest.mark.parametrize(
    ("noise", "dist"),
    [("gaussian", norm(0, SIGMA)), ("laplace", laplace(0, SIGMA / math.sqrt(2))),
     ("uniform", uniform(-SIGMA * math.sqrt(3), 2 * SIGMA * math.sqrt(3)))],
)  # fmt: skip
def test_noise_has_its_distribution_and_the_rows_std(noise, dist):
    from scipy.stats import kstest

    z = draw_noise(noise, (20_000,), noise_scale(noise, SIGMA), torch.Generator().manual_seed(3))
    assert kstest(z.numpy(), dist.cdf).pvalue > 1e-3
    assert float(z.std()) == pytest.approx(SIGMA, rel=0.03)


def test_radius_from_pa_abstains_below_one_half_and_rejects_unknown_pairs():
    assert radius_from_pa(np.array([0.4]), "laplace", 1.0, "l1", D)[0] == 0.0
    with pytest.raises(ValueError, match="no certificate"):
        radius_from_pa(0.9, "laplace", 1.0, "l2", D)


def linear_lipschitz(w: torch.Tensor, b: float) -> LipschitzMLP:
    """A one-layer LipschitzMLP with logits (-(w.x + b) / 2, (w.x + b) / 2)."""
    net = LipschitzMLP([len(w), 2])
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.stack([-w / 2, w / 2]))
        net.layers[0].bias.copy_(torch.tensor([-b / 2, b / 2]))
    return net


def test_lipschitz_certificate_of_a_linear_model_is_its_exact_margin_distance():
    g = torch.Generator().manual_seed(2)
    w, b = torch.randn(D, generator=g), 0.2
    x = torch.randn(6, D, generator=g)
    net = linear_lipschitz(w, b)
    bound = lipschitz_bound(net)
    assert bound == pytest.approx(float(w.norm()) / math.sqrt(2), rel=1e-6)
    labels, radii = margin_certify(net(x).detach(), bound)
    for i in range(len(x)):
        assert labels[i] == int(float(x[i] @ w + b) > 0)
        assert radii[i] == pytest.approx(exact_distance(w, b, x[i], "l2"), rel=1e-5)


def test_rebuild_refuses_layers_that_do_not_chain_or_are_not_finite():
    from dltbench.api import InvalidArtifact

    net = linear_lipschitz(torch.ones(D), 0.0)
    assert torch.equal(
        rebuild(net.lipschitz_layers, D, 2)(torch.ones(1, D)), net(torch.ones(1, D))
    )
    w, bias = net.lipschitz_layers[0]
    for bad in ([[w, bias], [w, bias]], [[w[:, :3], bias]], [[w * float("nan"), bias]], "x", []):
        with pytest.raises(InvalidArtifact):
            rebuild(bad, D, 2)


class _Lying(LipschitzMLP):
    """Declares layers half the size of the ones it answers with: twice the true margin/L."""

    @property
    def lipschitz_layers(self):
        return [[w / 2, b / 2] for w, b in super().lipschitz_layers]


def _task_inputs(sigma: float = 0.25, norm_name: str = "l2"):
    from dltbench.api import Context
    from dltbench.data import load

    task = CertifiedTask()
    config = next(c for c in task.configs("quick") if c.norm == norm_name)
    config = task.smoke(config)
    return task, load("digits"), config, Context(0, torch.device("cpu"))


def test_a_lipschitz_model_whose_declared_layers_are_not_its_own_is_invalid():
    from dltbench.api import InvalidArtifact

    task, data, config, ctx = _task_inputs()
    lying = _Lying([64, 10])
    with pytest.raises(InvalidArtifact, match="lipschitz_layers"):
        task.evaluate(lying, data, config, ctx)
    honest = LipschitzMLP([64, 10])
    ev = task.evaluate(honest, data, config, ctx)
    assert ev.estimator["certificate"].startswith("Lipschitz margin")
    assert ev.metrics["abstain_rate"] == 0.0 and ev.metrics["smoothed_clean_acc"] is None
    assert task.check_record(_record(ev)) is None


def _record(ev):
    from types import SimpleNamespace

    return SimpleNamespace(metrics=ev.metrics, estimator=ev.estimator, curves=ev.curves)


def test_the_linf_radius_of_a_fixed_classifier_falls_like_one_over_sqrt_d():
    """The same classifier on k-upsampled inputs: pA has the same law, d grows by k^2."""
    g = torch.Generator().manual_seed(4)
    w = torch.randn(64, generator=g)
    base = LinearBinary(w, 0.0)
    x = torch.rand(40, 1, 8, 8, generator=g)
    dims, acrs = [], []
    for k in (1, 2, 4):
        _, radii, _ = certify_batch(
            Subsampled(base, k), upsample(x, k), 0.25, 50, 2000, 0.001, 20_000, g, "gaussian",
            "linf",
        )  # fmt: skip
        dims.append(64 * k * k)
        acrs.append(float(radii.mean()))
    slope = np.polyfit(np.log(dims), np.log(acrs), 1)[0]
    assert slope == pytest.approx(-0.5, abs=0.1)


def test_upsample_then_subsample_is_the_identity():
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(upsample(x, 4)[..., ::4, ::4], x)
    assert upsample(x, 4).shape == (3, 1, 32, 32)


def test_quick_profile_has_each_threat_model_once_and_l2_radii_unchanged():
    configs = CertifiedTask().configs("quick")
    got = [(c.noise, c.sigma, c.norm) for c in configs]
    assert got == [("gaussian", 0.25, "l2"), ("gaussian", 0.5, "l2"), ("gaussian", 0.25, "linf"),
                   ("laplace", 0.25, "l1"), ("uniform", 0.25, "l1"),
                   ("brightness", 0.2, "brightness"), ("contrast", 0.4, "contrast"),
                   ("translation", 0.5, "translation")]  # fmt: skip
    assert all(c.resolutions == ((1, 2, 4) if c.norm == "linf" else ()) for c in configs)
    assert isinstance(configs[0], CertifiedConfig) and configs[0].radii[-1] == 1.0


def test_the_lipschitz_method_returns_a_plain_savable_model_with_its_declared_layers():
    """The harness snapshots every artifact for its audits: a parametrized module cannot be."""
    import io

    from dltbench.tasks.certified.methods import LipschitzMargin

    task, data, config, ctx = _task_inputs()
    view = task.train_view(data, config)
    model = LipschitzMargin(hidden=32).train(view, config, ctx)
    torch.save(model, io.BytesIO())
    x = data.test.x[:5]
    rebuilt = rebuild(model.lipschitz_layers, 64, 10)
    assert torch.allclose(rebuilt(x), model(x), atol=1e-5)
    assert lipschitz_bound(rebuilt) == pytest.approx(1.0, rel=0.05)  # spectral normalisation
