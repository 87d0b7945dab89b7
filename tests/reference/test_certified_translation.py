"""Certificates for translations (cyclic, band-limited) against closed forms.

The translation T(t) shifts the band-limited part of a periodic image by t = (dx, dy) pixels:
each Fourier coefficient X_f is multiplied by exp(-2 pi i f.t), so shifts add exactly and
Gaussian smoothing over t certifies an l2 radius in shift space (Cohen et al.'s theorem in two
dimensions). Closed forms: the phase of the first horizontal and vertical harmonics is the
image's circular centre of mass, which T(t) moves by exactly t, so a classifier of that
position with a straight decision boundary is a half-plane in shift space: its exact distance
d gives pA = Phi(d / s), and the certificate s Phi^-1(pA) is d, approached from below as n
grows. A classifier of the Fourier magnitudes is translation invariant: pA = 1 and every
point gets the radius ceiling.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import nn

from dltbench.tasks.certified import CertifiedTask, certify_batch
from dltbench.tasks.certified.smoothing import (
    perturb,
    radius_from_pa,
    translate,
    translation_speed,
)
from dltbench.tasks.certified.task import lipschitz_radii, radius_ceiling

H = W = 8


def position(x: torch.Tensor) -> torch.Tensor:
    """Circular centre of mass (N, 2) = (horizontal, vertical) in pixels: minus the phase of
    the first harmonic along each axis, times size / (2 pi)."""
    spectrum = torch.fft.fft2(x.double().flatten(0, -3))  # (N, H, W) for one channel
    return torch.stack(
        [-torch.angle(spectrum[:, 0, 1]) * W / (2 * math.pi),
         -torch.angle(spectrum[:, 1, 0]) * H / (2 * math.pi)], dim=1,
    )  # fmt: skip


def wrapped(v: torch.Tensor, period: float) -> torch.Tensor:
    """``v`` wrapped into [-period / 2, period / 2)."""
    return torch.remainder(v + period / 2, period) - period / 2


class HalfPlane(nn.Module):
    """Class 1 iff u . (position(x) - c) > 0 (positions compared on the circle)."""

    def __init__(self, u: torch.Tensor, c: torch.Tensor):
        super().__init__()
        self.u, self.c = u.double() / u.double().norm(), c.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (wrapped(position(x) - self.c, float(W)) * self.u).sum(1)
        return torch.stack([torch.zeros_like(z), z], 1).float()


class Magnitudes(nn.Module):
    """Class 1 iff the sum of the Fourier magnitudes exceeds t: invariant under T(t)."""

    def __init__(self, t: float):
        super().__init__()
        self.t = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.fft.fft2(x.double()).abs().flatten(1).sum(1) - self.t
        return torch.stack([torch.zeros_like(z), z], 1).float()


def digit_like(n: int, seed: int, size: int = H) -> torch.Tensor:
    """Random images (n, 1, size, size) in [0, 1]."""
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", [8, 7])
def test_translation_is_a_group_action_to_float_precision(size):
    g = torch.Generator().manual_seed(0)
    x = digit_like(6, 1, size).double()
    a, b = (torch.randn(6, 2, generator=g, dtype=torch.float64) * 2 for _ in range(2))
    torch.testing.assert_close(translate(translate(x, a), b), translate(x, a + b),
                               rtol=0, atol=1e-12)  # fmt: skip
    assert torch.equal(translate(x, torch.zeros(6, 2, dtype=torch.float64)), x)  # T(0) = I
    # float32, what the harness runs: the same to float precision
    x32, a32, b32 = x.float(), a.float(), b.float()
    torch.testing.assert_close(translate(translate(x32, a32), b32), translate(x32, a32 + b32),
                               rtol=0, atol=1e-5)  # fmt: skip
    # Integer shifts are cyclic rolls; an even size keeps its Nyquist row and column in place.
    shift = torch.tensor([[3.0, -2.0]] * 6, dtype=torch.float64)
    rolled = translate(x, shift)
    if size % 2:
        torch.testing.assert_close(rolled, torch.roll(x, (-2, 3), (-2, -1)), rtol=0, atol=1e-12)
    else:
        spectrum = torch.fft.fft2(x)
        spectrum[..., size // 2, :] = 0
        spectrum[..., :, size // 2] = 0
        band = torch.fft.ifft2(spectrum).real
        torch.testing.assert_close(rolled - (x - band), torch.roll(band, (-2, 3), (-2, -1)),
                                   rtol=0, atol=1e-12)  # fmt: skip


def test_zero_padding_and_bilinear_shifts_are_not_additive():
    """Why the certificate needs the cyclic band-limited shift: the usual ones do not compose."""
    x = digit_like(4, 2).double()

    def bilinear(v: torch.Tensor, t: torch.Tensor, padding: str) -> torch.Tensor:
        theta = torch.zeros(len(v), 2, 3, dtype=v.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        theta[:, 0, 2], theta[:, 1, 2] = -2 * t[:, 0] / W, -2 * t[:, 1] / H
        grid = F.affine_grid(theta, list(v.shape), align_corners=False)
        return F.grid_sample(v, grid, mode="bilinear", padding_mode=padding, align_corners=False)

    half = torch.full((4, 2), 0.5, dtype=torch.float64)
    for padding in ("zeros", "border"):
        gap = bilinear(bilinear(x, half, padding), half, padding) - bilinear(x, 2 * half, padding)
        assert float(gap.abs().max()) > 0.05  # interpolation blurs: half + half != one
    exact = translate(translate(x, half), half) - translate(x, 2 * half)
    assert float(exact.abs().max()) < 1e-12


def test_position_moves_by_exactly_the_shift():
    x = digit_like(5, 3)
    t = torch.randn(5, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    moved = position(translate(x.double(), t)) - position(x)
    torch.testing.assert_close(wrapped(moved - t, float(W)), torch.zeros_like(t), rtol=0,
                               atol=1e-9)  # fmt: skip


def test_perturb_draws_two_independent_gaussian_coordinates_per_row():
    x = digit_like(1, 5).expand(20_000, 1, H, W).contiguous()
    out = perturb("translation", x, 0.5, torch.Generator().manual_seed(6))
    t = wrapped(position(out) - position(x[:1]), float(W))
    assert t.std(0).numpy() == pytest.approx([0.5, 0.5], rel=0.03)
    assert abs(float(t.mean())) < 0.01
    assert abs(float(torch.corrcoef(t.T)[0, 1])) < 0.03


@pytest.mark.parametrize("distance", [0.6, 1.0])
def test_the_certificate_of_a_half_plane_in_shift_space_approaches_its_exact_distance(distance):
    s = 0.5
    x = digit_like(1, 7)
    u = torch.tensor([0.6, -0.8], dtype=torch.float64)
    model = HalfPlane(u, position(x)[0] - distance * u)  # x is `distance` inside class 1
    # The exact distance: the smallest shift that flips the base classifier is along -u.
    for frac, label in ((0.999, 1), (1.001, 0)):
        moved = translate(x.double(), -frac * distance * u[None]).float()
        assert int(model(moved).argmax(1)) == label
    assert float(radius_from_pa(norm.cdf(distance / s), "translation", s, "translation", 64)) == (
        pytest.approx(distance, rel=1e-9)
    )  # Cohen et al.'s bound is tight for a half-plane
    labels, radii, p_a = certify_batch(
        model, x, s, 100, 200_000, 0.001, 50_000, torch.Generator().manual_seed(8),
        "translation", "translation",
    )  # fmt: skip
    assert labels[0] == 1
    assert radii[0] <= distance
    assert radii[0] >= 0.95 * distance  # tight: only the confidence bound is lost
    assert p_a[0] <= norm.cdf(distance / s)


def test_a_translation_invariant_classifier_gets_the_ceiling():
    n, alpha, s = 1000, 0.001, 0.5
    x = digit_like(3, 9)
    model = Magnitudes(float(torch.fft.fft2(x.double()).abs().flatten(1).sum(1).min()) - 1.0)
    _, radii, _ = certify_batch(model, x, s, 10, n, alpha, 1000,
                                torch.Generator().manual_seed(10), "translation", "translation")  # fmt: skip
    closed = s * norm.ppf(alpha ** (1 / n))
    np.testing.assert_allclose(radii, closed, rtol=1e-9)
    assert radius_ceiling(s, n, alpha, "translation", "translation", 64) == pytest.approx(closed)


def test_the_lipschitz_translation_radius_keeps_every_shift_inside_the_l2_ball():
    x = digit_like(6, 11)
    r = np.linspace(0.2, 1.5, 6)
    radius = lipschitz_radii(r, x, "translation")
    angles = torch.linspace(0, 2 * math.pi, 64, dtype=torch.float64)
    worst = np.zeros(6)
    for a in angles:
        t = (
            torch.stack([torch.cos(a), torch.sin(a)]).expand(6, 2)
            * torch.as_tensor(radius)[:, None]
        )
        dist = (translate(x.double(), t) - x.double()).flatten(1).norm(dim=1).numpy()
        worst = np.maximum(worst, dist)
    assert (worst <= r + 1e-9).all()
    assert (worst >= 0.4 * r).all()  # a bound, but not a vacuous one
    speed = translation_speed(x).numpy()
    np.testing.assert_allclose(radius * speed, r, rtol=1e-9)


def test_the_quick_translation_row_smooths_in_pixels():
    (row,) = [c for c in CertifiedTask().configs("quick") if c.noise == "translation"]
    assert (row.sigma, row.norm, row.scale) == (0.5, "translation", 0.5)
    assert row.radii == (0.0, 0.25, 0.5, 0.75, 1.0) and row.radius_max == 2.0
