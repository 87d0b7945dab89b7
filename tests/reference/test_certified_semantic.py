"""Certificates for semantic transformations (brightness, contrast) against closed forms.

Brightness x + b: a classifier of the mean pixel, f(x) = 1[mean(x) > t], sees mean(x) + b, so
its exact robustness interval in b is |mean(x) - t| on the side it is on, and Gaussian
smoothing over b (std s) gives pA = Phi(|mean(x) - t| / s) exactly: the certificate
s Phi^-1(pA) is that distance, approached from below as n grows. Contrast about the mean,
m + c (x - m): a classifier of the image's spread, f(x) = 1[||x - m||_2 > t], sees
c ||x - m||, so its exact robustness in ln c is |ln(||x - m|| / t)|, and smoothing over ln c
certifies exactly that.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from dltbench.tasks.certified import certify_batch
from dltbench.tasks.certified.smoothing import perturb, transform
from dltbench.tasks.certified.task import lipschitz_radii, radius_ceiling
from tests.reference.test_certified_closed_form import LinearBinary

D = 16


class Spread(nn.Module):
    """Logits (0, ln ||x - mean(x)||_2 - ln t): class 1 iff the image's spread exceeds t."""

    def __init__(self, t: float):
        super().__init__()
        self.t = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        z = torch.log((flat - flat.mean(1, keepdim=True)).norm(dim=1)) - math.log(self.t)
        return torch.stack([torch.zeros_like(z), z], 1)


def mean_classifier(t: float) -> LinearBinary:
    """Class 1 iff mean(x) > t."""
    return LinearBinary(torch.full((D,), 1.0 / D), -t)


def test_transformations_compose_additively_and_do_not_clip():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 4, 4, generator=g)
    a, b = torch.randn(5, generator=g), torch.randn(5, generator=g)
    for kind in ("brightness", "contrast"):
        twice = transform(kind, transform(kind, x, a), b)
        torch.testing.assert_close(twice, transform(kind, x, a + b), rtol=1e-5, atol=1e-5)
    assert float(transform("brightness", x, torch.full((5,), 2.0)).min()) > 1.0  # unclipped
    shifted = transform("contrast", x, a)  # the mean pixel stays; the spread scales by e^k
    torch.testing.assert_close(shifted.mean((1, 2, 3)), x.mean((1, 2, 3)), rtol=1e-5, atol=1e-6)
    spread = lambda v: (v.flatten(1) - v.flatten(1).mean(1, keepdim=True)).norm(dim=1)  # noqa: E731
    torch.testing.assert_close(spread(shifted), spread(x) * a.exp(), rtol=1e-4, atol=1e-6)


def test_perturb_draws_one_gaussian_parameter_per_row():
    x = torch.zeros(20_000, 1, 2, 2)
    out = perturb("brightness", x, 0.3, torch.Generator().manual_seed(1))
    b = out.flatten(1)
    assert torch.equal(b[:, 0], b[:, 3])  # every pixel shifted alike
    assert float(b[:, 0].std()) == pytest.approx(0.3, rel=0.03)
    assert abs(float(b[:, 0].mean())) < 0.01


@pytest.mark.parametrize("distance", [0.15, -0.25])
def test_brightness_certificate_of_a_mean_pixel_classifier_approaches_its_exact_interval(
    distance,
):
    t, s = 0.4, 0.2
    x = torch.full((1, D), t + distance)
    labels, radii, p_a = certify_batch(
        mean_classifier(t), x, s, 100, 200_000, 0.001, 50_000,
        torch.Generator().manual_seed(2), "brightness", "brightness",
    )  # fmt: skip
    exact = abs(distance)
    assert labels[0] == int(distance > 0)
    assert radii[0] <= exact
    assert radii[0] >= 0.95 * exact  # tight: only the confidence bound is lost
    assert p_a[0] <= norm.cdf(exact / s)  # a lower bound on the exact pA


def test_brightness_certificate_of_a_generic_linear_classifier_never_exceeds_its_interval():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(D, generator=g)
    x = torch.rand(12, D, generator=g)
    model = LinearBinary(w, -float(x.mean(0) @ w))
    labels, radii, _ = certify_batch(
        model, x, 0.3, 100, 20_000, 0.001, 50_000, g, "brightness", "brightness"
    )
    exact = (x @ w + model.b).abs() / w.sum().abs()  # w.(x + b 1) = w.x + b sum(w)
    for i in range(len(x)):
        if labels[i] >= 0:
            assert labels[i] == int(float(x[i] @ w + model.b) > 0)
            assert radii[i] <= float(exact[i]) + 1e-9


@pytest.mark.parametrize("factor", [1.3, 0.6])
def test_contrast_certificate_of_a_spread_classifier_approaches_its_exact_interval(factor):
    t, s = 1.0, 0.3
    g = torch.Generator().manual_seed(4)
    x = torch.rand(1, D, generator=g)
    x = x.mean() + (x - x.mean()) * (factor * t / float((x - x.mean()).norm()))
    labels, radii, _ = certify_batch(
        Spread(t), x, s, 100, 200_000, 0.001, 50_000, g, "contrast", "contrast"
    )
    exact = abs(math.log(factor))
    assert labels[0] == int(factor > 1)
    assert radii[0] <= exact + 1e-6
    assert radii[0] >= 0.95 * exact


@pytest.mark.parametrize("kind", ["brightness", "contrast"])
def test_a_constant_classifier_gets_the_ceiling(kind):
    n, alpha, s = 1000, 0.001, 0.2
    _, radii, _ = certify_batch(
        LinearBinary(torch.zeros(D), 1.0), torch.rand(3, D), s, 10, n, alpha, 1000,
        torch.Generator().manual_seed(5), kind, kind,
    )  # fmt: skip
    closed = s * norm.ppf(alpha ** (1 / n))
    np.testing.assert_allclose(radii, closed, rtol=1e-9)
    assert radius_ceiling(s, n, alpha, kind, kind, D) == pytest.approx(closed, rel=1e-9)


def test_lipschitz_radii_are_the_largest_transformations_inside_the_l2_ball():
    g = torch.Generator().manual_seed(6)
    x = torch.rand(7, 1, 4, 4, generator=g)
    r = torch.rand(7, generator=g).numpy() * 2
    flat = x.flatten(1)
    centred = (flat - flat.mean(1, keepdim=True)).norm(dim=1).numpy()
    # Brightness: ||b 1||_2 = |b| sqrt(d); the bound is reached at |b| = R.
    rb = lipschitz_radii(r, x, "brightness")
    np.testing.assert_allclose(rb * math.sqrt(16), r, rtol=1e-6)
    # Contrast: k = +R moves x by exactly r, k = -R by less (|e^-R - 1| < e^R - 1).
    rc = lipschitz_radii(r, x, "contrast")
    for sign, check in ((1, "equal"), (-1, "below")):
        moved = transform("contrast", x, torch.as_tensor(sign * rc, dtype=torch.float32)) - x
        dist = moved.flatten(1).norm(dim=1).numpy()
        if check == "equal":
            np.testing.assert_allclose(dist, r, rtol=1e-4)
        else:
            assert (dist <= r + 1e-6).all()
    np.testing.assert_allclose(np.exp(rc) - 1, r / centred, rtol=1e-6)
