"""Randomized smoothing: CERTIFY and PREDICT of Cohen, Rosenfeld & Kolter (ICML 2019).

The smoothed classifier is g(x) = argmax_c P(f(x + eps) = c), eps ~ N(0, sigma^2 I).
CERTIFY draws n0 noisy samples to select the top class cA, then n fresh samples to
bound pA from below with a one-sided Clopper-Pearson interval at level 1 - alpha; it
returns cA with the l2 radius sigma * Phi^-1(pA_lower), or abstains (-1, radius 0)
when pA_lower < 1/2. With probability at least 1 - alpha over the noise, g is constant
on the l2 ball of that radius around x (Theorem 1 of the paper).

The batched functions run the same per-point procedure for many points at once: each
point gets its own independent selection and estimation draws; only the order in which
the noise is drawn from the generator differs from a point-by-point loop.

Other noises certify other norms from the same pA_lower (:func:`radius_from_pa`): Laplace
noise of scale b certifies the l1 radius -b log(2 (1 - pA)) (Teng, Lee & Yuan, ICLR 2020),
uniform noise on [-lam, lam]^d the l1 radius 2 lam (pA - 1/2) (Yang et al., ICML 2020,
"Randomized smoothing of all shapes and sizes"), and Gaussian noise the l-inf radius
sigma Phi^-1(pA) / sqrt(d), since ||delta||_2 <= sqrt(d) ||delta||_inf.

Semantic transformations are smoothed in their own parameter space (Fischer, Baader & Vechev,
NeurIPS 2020; Li et al., "TSS", CCS 2021): for a transformation whose parameters add under
composition, phi(phi(x, a), b) = phi(x, a + b), the smoothed classifier over a ~ N(0, s^2)
at the transformed input phi(x, t) is the one at x with the Gaussian shifted by t, so Cohen
et al.'s theorem in one dimension certifies every |t| < s Phi^-1(pA). Brightness x + b
(b in pixel units, every pixel shifted alike; TSS's brightness shift) and contrast
m + exp(k) (x - m) about the image's mean pixel m (k = ln of the contrast factor; the mean
is unchanged, so factors multiply) compose additively as long as nothing clips, so neither
clips here: the threat model is the unclipped transformation, as in TSS. TSS's own contrast
is the scaling x * exp(k), which a ReLU network with small biases nearly ignores (it is
positively homogeneous up to them); contrast about the mean is what image libraries call
contrast and removes the image's content as k goes to -infinity.

Translation by a real shift t = (dx, dy) pixels is made a group action the same way: the
image is periodic (cyclic boundary) and band-limited (its Fourier / sinc interpolation), so
shifting multiplies each Fourier coefficient X_f by exp(-2 pi i f.t), and shifts add exactly,
T(a) T(b) = T(a + b). Gaussian smoothing over t ~ N(0, s^2 I_2) then certifies every shift
with ||t||_2 < s Phi^-1(pA) (Cohen et al.'s theorem in two dimensions). The Nyquist row and
column of an even-sized image have no unique band-limited interpolation (their real part
would move as cos(pi t), which does not compose), so they stay in place: T(t) x = x + (U(t) -
I) P x with P the projection onto the other frequencies; T(0) is the identity, and an integer
shift is a cyclic roll of P x. Zero padding (TSS's black-pad translation) and bilinear
interpolation are not group actions, so smoothing over them certifies nothing by this
argument; TSS certifies integer translations with cyclic padding (its ``Translational``
rounds the Gaussian shift to whole pixels: a subgroup of this one) or by enumeration.
Rotations of a pixel grid are not a group action under any interpolation (a rotated lattice
is not the lattice), so they are not certified here: see docs/tasks/certified.md.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import binomtest
from scipy.stats import norm as norm_dist
from statsmodels.stats.proportion import proportion_confint
from torch import nn

ABSTAIN = -1
#: (noise, norm) pairs with a certificate: the noise's scale parameter is ``sigma`` (the
#: Gaussian's std, the Laplace scale b, the uniform half-width lam).
CERTIFICATES: dict[tuple[str, str], str] = {
    ("gaussian", "l2"): "sigma * Phi^-1(pA) (Cohen et al. 2019)",
    ("gaussian", "linf"): "sigma * Phi^-1(pA) / sqrt(d) (the l2 ball contains it)",
    ("laplace", "l1"): "-b * log(2 * (1 - pA)) (Teng et al. 2020)",
    ("uniform", "l1"): "2 * lam * (pA - 1/2) (Yang et al. 2020)",
    ("brightness", "brightness"): (
        "sigma_b * Phi^-1(pA) on the brightness shift |b| (Fischer et al. 2020; Li et al. 2021)"
    ),
    ("contrast", "contrast"): (
        "sigma_k * Phi^-1(pA) on |ln c| of the contrast factor c about the image mean "
        "(Fischer et al. 2020; Li et al. 2021)"
    ),
    ("translation", "translation"): (
        "sigma_t * Phi^-1(pA) on the l2 norm of the shift (dx, dy) in pixels, cyclic band-limited "
        "(Fourier) translation (Fischer et al. 2020; Li et al. 2021)"
    ),
}
#: Noises that act on a transformation's parameter (one N(0, scale^2 I) draw per noisy input,
#: of the dimension below), not on each pixel; each certifies its own parameter, the row's
#: ``norm``.
TRANSFORMS = ("brightness", "contrast", "translation")
PARAM_DIMS = {"brightness": 1, "contrast": 1, "translation": 2}


def draw_noise(
    kind: str,
    shape: tuple[int, ...],
    scale: float,
    generator: torch.Generator | None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """i.i.d. noise of ``kind`` (gaussian std, laplace scale b, uniform half-width lam = ``scale``)."""
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, device=device, dtype=dtype).mul_(scale)
    if kind == "laplace":  # the difference of two unit exponentials is a unit Laplace
        u = torch.rand((2, *shape), generator=generator, device=device, dtype=dtype)
        e = -torch.log1p(-u)  # 1 - U is in (0, 1]: no log(0)
        return (e[0] - e[1]).mul_(scale)
    if kind == "uniform":
        u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
        return u.mul_(2.0).sub_(1.0).mul_(scale)
    raise ValueError(f"unknown noise {kind!r}; use gaussian, laplace or uniform")


def transform(kind: str, x: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``x`` (N, ...) under transformation ``kind`` with one parameter per row: brightness
    x + b and contrast m + exp(k) (x - m) about each image's mean pixel m (torchvision's
    ``adjust_contrast`` without its clipping), ``param`` (N,); translation by (dx, dy) pixels
    (:func:`translate`), ``param`` (N, 2). No clipping (it would break additivity)."""
    if kind == "translation":
        return translate(x, param)
    p = param.reshape(-1, *([1] * (x.dim() - 1))).to(x)
    if kind == "brightness":
        return x + p
    if kind == "contrast":
        mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
        return mean + torch.exp(p) * (x - mean)
    raise ValueError(f"unknown transformation {kind!r}; use {', '.join(TRANSFORMS)}")


def _frequencies(
    x: torch.Tensor, half: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(vertical, horizontal) DFT frequencies of images ``x`` (..., H, W) in cycles per pixel
    (horizontal: the non-negative half if ``half``, as ``rfft2`` stores them), and the mask of
    the frequencies below Nyquist (P of :func:`translate`)."""
    real = x.real.dtype if x.is_complex() else x.dtype
    fy = torch.fft.fftfreq(x.shape[-2], device=x.device, dtype=real)
    fx = (torch.fft.rfftfreq if half else torch.fft.fftfreq)(
        x.shape[-1], device=x.device, dtype=real
    )
    keep = (fy.abs() < 0.5)[:, None] & (fx.abs() < 0.5)[None, :]  # even size: drop +-1/2
    return fy, fx, keep


def translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Images ``x`` (N, C, H, W) translated cyclically by ``shift`` (N, 2) = (dx, dy) pixels
    (dx along W, dy along H; content moves towards higher indices) with band-limited (sinc)
    interpolation: x + (U(t) - I) P x, P dropping the Nyquist row and column (kept in place),
    U(t) the phase shift exp(-2 pi i f.t). Shifts add exactly: T(a) T(b) = T(a + b)."""
    fy, fx, keep = _frequencies(x, half=True)
    t = shift.to(device=x.device, dtype=fy.dtype).reshape(-1, 2)
    half = torch.pi * (fy[None, :, None] * t[:, 1, None, None]
                       + fx[None, None, :] * t[:, 0, None, None])  # fmt: skip
    # exp(-2 pi i f.t) - 1 = -2 sin^2(pi f.t) - i sin(2 pi f.t): no cancellation for small
    # shifts, and exactly 0 at t = 0. The real FFT holds f_x >= 0 only; the phase is
    # Hermitian (f -> -f conjugates it), so the result is real.
    move = torch.complex(-2 * torch.sin(half) ** 2, -torch.sin(2 * half)) * keep
    spectrum = torch.fft.rfft2(x)
    return x + torch.fft.irfft2(spectrum * move[:, None], s=x.shape[-2:])


def translation_speed(x: torch.Tensor) -> torch.Tensor:
    """G(x) (N,), such that ||T(t) x - x||_2 <= G(x) ||t||_2 for every shift t (pixels):
    2 pi sqrt(sum_f |X_f|^2 |f|^2 / (H W)) over the frequencies below Nyquist, since
    |exp(-2 pi i f.t) - 1| <= 2 pi |f.t| <= 2 pi |f| ||t|| (Parseval)."""
    fy, fx, keep = _frequencies(x)
    weight = (fy[:, None] ** 2 + fx[None, :] ** 2) * keep
    power = torch.fft.fft2(x.double()).abs() ** 2
    total = (power * weight).flatten(1).sum(1) / (x.shape[-2] * x.shape[-1])
    return 2 * torch.pi * total.sqrt()


def perturb(
    kind: str, x: torch.Tensor, scale: float, generator: torch.Generator | None
) -> torch.Tensor:
    """A noisy copy of each row of ``x``: pixel noise of ``kind`` and ``scale`` added (see
    :func:`draw_noise`), or transformation ``kind`` at a parameter drawn from N(0, scale^2)."""
    if kind in TRANSFORMS:
        shape = (len(x),) if PARAM_DIMS[kind] == 1 else (len(x), PARAM_DIMS[kind])
        param = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
        return transform(kind, x, param.mul_(scale))
    return draw_noise(kind, tuple(x.shape), scale, generator, x.device, x.dtype).add_(x)


def radius_from_pa(
    p_a: np.ndarray | float, noise: str, scale: float, norm: str, dim: int
) -> np.ndarray:
    """The certified radius (in ``norm``, pixels in [0, 1]) for a lower bound ``p_a`` on the
    top class's probability under ``noise`` of ``scale`` in ``dim`` input dimensions; 0 where
    ``p_a`` < 1/2 (abstain)."""
    if (noise, norm) not in CERTIFICATES:
        raise ValueError(
            f"no certificate for {noise} noise in {norm}; known: {list(CERTIFICATES)}"
        )
    p = np.clip(np.asarray(p_a, dtype=float), 0.5, 1.0)
    with np.errstate(divide="ignore"):
        if noise in ("gaussian", *TRANSFORMS):
            r = scale * norm_dist.ppf(p) / (np.sqrt(dim) if norm == "linf" else 1.0)
        elif noise == "laplace":
            r = -scale * np.log(2.0 * (1.0 - p))
        else:
            r = 2.0 * scale * (p - 0.5)
    return np.where(np.asarray(p_a) < 0.5, 0.0, r)


def lower_confidence_bound(k: int | np.ndarray, n: int, alpha: float) -> float | np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion k / n."""
    # The two-sided interval at level 1 - 2 alpha has the one-sided lower bound at 1 - alpha.
    low, _ = proportion_confint(k, n, alpha=2 * alpha, method="beta")
    low = np.nan_to_num(np.asarray(low, dtype=float), nan=0.0)  # k = 0 gives NaN: the bound is 0
    return low if low.ndim else float(low)


@torch.no_grad()
def noisy_counts(
    model: nn.Module,
    x: torch.Tensor,
    num: int,
    sigma: float,
    batch_size: int,
    generator: torch.Generator | None = None,
    noise: str = "gaussian",
) -> torch.Tensor:
    """Class counts (P, K) of ``model``'s argmax over ``num`` noisy draws around each of P points
    (``noise`` of scale ``sigma``: see :func:`perturb`).

    ``x`` has shape (P, C, H, W) and lives on the model's device; noisy inputs are
    formed ``batch_size`` at a time across points, so small ``num`` still fills batches.
    """
    p = x.shape[0]
    total = p * num
    counts: torch.Tensor | None = None
    for start in range(0, total, batch_size):
        owner = torch.arange(start, min(start + batch_size, total), device=x.device) // num
        logits = model(perturb(noise, x[owner], sigma, generator))
        if counts is None:
            counts = torch.zeros(p, logits.shape[1], dtype=torch.long, device=x.device)
        pred = logits.argmax(1)
        counts.index_put_((owner, pred), torch.ones_like(pred), accumulate=True)
    assert counts is not None
    return counts


def certify_batch(
    model: nn.Module,
    x: torch.Tensor,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    generator: torch.Generator | None = None,
    noise: str = "gaussian",
    norm: str = "l2",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CERTIFY for each of P points in ``x`` (P, C, H, W): (labels, radii in ``norm``, pA lower
    bounds), smoothing with ``noise`` of scale ``sigma`` (default: Gaussian, l2).

    Labels are -1 where the procedure abstains; the radius is 0 there.
    """
    model.eval()
    selection = noisy_counts(model, x, n0, sigma, batch_size, generator, noise)
    c_a = selection.argmax(1)  # first index on ties, as numpy's argmax in the reference code
    estimation = noisy_counts(model, x, n, sigma, batch_size, generator, noise)
    n_a = estimation.gather(1, c_a[:, None])[:, 0].cpu().numpy()
    p_a = np.atleast_1d(lower_confidence_bound(n_a, n, alpha))
    labels = np.where(p_a < 0.5, ABSTAIN, c_a.cpu().numpy())
    radii = radius_from_pa(p_a, noise, sigma, norm, int(np.prod(x.shape[1:])))
    return labels.astype(np.int64), radii.astype(np.float64), p_a


def certify(
    model: nn.Module,
    x: torch.Tensor,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> tuple[int, float]:
    """CERTIFY one input ``x`` (C, H, W): (label or -1 to abstain, certified l2 radius).

    Example::

        label, radius = certify(model, x, sigma=0.25, n0=100, n=100_000, alpha=0.001,
                                batch_size=1000)
    """
    labels, radii, _ = certify_batch(model, x[None], sigma, n0, n, alpha, batch_size, generator)
    return int(labels[0]), float(radii[0])


def predict_batch(
    model: nn.Module,
    x: torch.Tensor,
    sigma: float,
    n: int,
    alpha: float,
    batch_size: int,
    generator: torch.Generator | None = None,
    noise: str = "gaussian",
) -> np.ndarray:
    """PREDICT for each of P points: the top class, or -1 where the two-sided binomial test
    of the top two counts (nA vs nB, p = 1/2) does not reject at level alpha."""
    model.eval()
    counts = noisy_counts(model, x, n, sigma, batch_size, generator, noise).cpu().numpy()
    top2 = np.argsort(-counts, axis=1, kind="stable")[:, :2]
    n_a = counts[np.arange(len(counts)), top2[:, 0]]
    n_b = counts[np.arange(len(counts)), top2[:, 1]]
    labels = top2[:, 0].astype(np.int64)
    for i, (a, b) in enumerate(zip(n_a, n_b, strict=True)):
        if binomtest(int(a), int(a + b), 0.5).pvalue > alpha:
            labels[i] = ABSTAIN
    return labels


def predict(
    model: nn.Module,
    x: torch.Tensor,
    sigma: float,
    n: int,
    alpha: float,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> int:
    """PREDICT one input ``x`` (C, H, W): the smoothed classifier's label, or -1 to abstain."""
    return int(predict_batch(model, x[None], sigma, n, alpha, batch_size, generator)[0])


def certified_accuracy(
    labels: np.ndarray, radii: np.ndarray, y: np.ndarray, radius: float
) -> float:
    """Approximate certified accuracy at ``radius``: fraction correct with radius >= it."""
    return float(np.mean((labels == y) & (radii >= radius)))
