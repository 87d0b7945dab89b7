"""Data of the ``diffusion`` task: 2-D densities with a known log-density, and 8x8 digits.

2-D datasets are continuous, scaled to about unit variance per coordinate (what a VP
diffusion assumes). Images are stored as integer levels k in 0..K-1 (K=17 for digits,
256 for MNIST/CIFAR-10) and shown to methods on the grid -1 + 2k/(K-1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ... import data as image_data
from .likelihood import to_grid

#: Fixed seed of the 2-D test sets: every run seed and method is scored on the same points.
TEST_SEED = 20200619

TWO_D = ("gmm8", "rings")
IMAGES = {"digits": 17, "mnist": 256, "cifar10": 256}


@dataclass(frozen=True)
class DiffusionData:
    """Train (and, for the harness, test) points as flat float64 tensors (N, D).

    ``labels`` are the training points' classes (a method may train a class-conditional
    model on them); test labels are never held here.

    ``levels`` is K for discrete data (points on the grid -1 + 2k/(K-1)), None for
    continuous 2-D data. ``shape`` is one point's original shape, e.g. (1, 8, 8).
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor | None  # None in the view a method gets
    levels: int | None
    shape: tuple[int, ...]
    labels: torch.Tensor | None = None  # classes (N,) of the training points (images only)
    num_classes: int = 0
    reference: torch.Tensor | None = None  # the whole test split (FID reference; harness only)

    @property
    def dim(self) -> int:
        """D, the number of coordinates of a point."""
        return int(self.train.shape[1])

    def train_view(self) -> DiffusionData:
        """What a method sees: the training split only."""
        return replace(self, test=None, reference=None)


def _gmm8_params() -> tuple[np.ndarray, float]:
    angles = 2 * np.pi * np.arange(8) / 8
    return 1.5 * np.stack([np.cos(angles), np.sin(angles)], 1), 0.15


_RINGS = ((0.6, 0.08), (1.5, 0.08))  # (radius, radial std), equal weights


def sample_2d(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points of the 2-D density ``name`` (gmm8: 8 Gaussians on a circle; rings: two rings)."""
    if name == "gmm8":
        centers, std = _gmm8_params()
        return centers[rng.integers(0, 8, n)] + std * rng.standard_normal((n, 2))
    if name == "rings":
        which = rng.integers(0, len(_RINGS), n)
        radius = np.array([_RINGS[w][0] for w in which])
        std = np.array([_RINGS[w][1] for w in which])
        r = radius + std * rng.standard_normal(n)
        while (r <= 0).any():  # truncation to r > 0 is part of the density (Phi(R/s) below)
            bad = r <= 0
            r[bad] = radius[bad] + std[bad] * rng.standard_normal(int(bad.sum()))
        theta = rng.uniform(0, 2 * np.pi, n)
        return np.stack([r * np.cos(theta), r * np.sin(theta)], 1)
    raise ValueError(f"unknown 2-D dataset {name!r}; known: {', '.join(TWO_D)}")


def log_density_2d(name: str, x: torch.Tensor) -> torch.Tensor:
    """The exact log-density in nats of the 2-D dataset ``name`` at points x (N, 2), float64."""
    x = x.to(torch.float64)
    if name == "gmm8":
        centers, std = _gmm8_params()
        c = torch.as_tensor(centers, dtype=torch.float64, device=x.device)
        sq = ((x[:, None, :] - c[None]) ** 2).sum(-1)
        comp = -0.5 * sq / std**2 - 2 * math.log(std) - math.log(2 * math.pi)
        return torch.logsumexp(comp, 1) - math.log(8)
    if name == "rings":
        r = x.norm(dim=1)
        parts = []
        for radius, std in _RINGS:
            # Radius ~ N(R, s^2) truncated to r > 0, angle uniform: p(x) = p_r(|x|) / (2 pi |x|).
            log_pr = (
                -0.5 * ((r - radius) / std) ** 2 - math.log(std * math.sqrt(2 * math.pi))
                - math.log(0.5 * math.erfc(-radius / (std * math.sqrt(2))))
            )  # fmt: skip
            parts.append(log_pr - torch.log(2 * math.pi * r))
        return torch.logsumexp(torch.stack(parts, 1), 1) - math.log(len(_RINGS))
    raise ValueError(f"unknown 2-D dataset {name!r}; known: {', '.join(TWO_D)}")


def load(
    name: str, n_train: int, n_test: int, rng: np.random.Generator, data_dir: Path | None
) -> DiffusionData:
    """The dataset ``name``: 2-D train points from ``rng``, a fixed test set; images from their split."""
    if name in TWO_D:
        train = torch.from_numpy(sample_2d(name, n_train, rng))
        test = torch.from_numpy(sample_2d(name, n_test, np.random.default_rng(TEST_SEED)))
        return DiffusionData(name, train, test, None, (2,))
    if name not in IMAGES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join((*TWO_D, *IMAGES))}")
    images = image_data.load(name, data_dir)
    levels = IMAGES[name]

    def grid(x: torch.Tensor) -> torch.Tensor:
        return to_grid(torch.round(x.flatten(1) * (levels - 1)), levels)

    return DiffusionData(
        name, grid(images.train.x), grid(images.test.x)[:n_test], levels, images.shape,
        images.train.y.long(), images.num_classes,
        # the FID reference, for the datasets that have a feature network (task.FEATURE_NETS)
        grid(images.test.x) if name == "digits" else None,
    )  # fmt: skip


def levels_of(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Integer levels 0..K-1 of points on the grid -1 + 2k/(K-1)."""
    return torch.round((x.to(torch.float64) + 1) * (levels - 1) / 2).clamp(0, levels - 1).long()
