"""The 2-D Gaussian mixtures of the quick profile, whose exact distribution is known.

``ring8``: 8 equal components on the circle of radius 2 (Metz et al. 2017's unrolled-GAN
ring); ``grid25``: 25 equal components on the 5x5 grid {-4, -2, 0, 2, 4}^2 (the grid of
Srivastava et al. 2017 / Lin et al. 2018). Each component is isotropic with std ``std``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Mixture:
    """An equal-weight isotropic Gaussian mixture in 2-D: its means (K, 2) and common std."""

    name: str
    means: np.ndarray
    std: float

    @property
    def num_modes(self) -> int:
        """K, the number of components."""
        return len(self.means)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws (n, 2) float32 and their component labels (n,) int64."""
        labels = rng.integers(self.num_modes, size=n)
        x = self.means[labels] + self.std * rng.standard_normal((n, 2))
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(labels.astype(np.int64))

    def assign(self, x: np.ndarray, within_std: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
        """Nearest component of each point (N,), and whether it is within ``within_std`` stds
        of it (the "high-quality" samples of Srivastava et al. 2017)."""
        d = np.linalg.norm(np.asarray(x, dtype=np.float64)[:, None, :] - self.means[None], axis=2)
        nearest = d.argmin(1)
        return nearest, d[np.arange(len(d)), nearest] <= within_std * self.std


def ring8(std: float) -> Mixture:
    """8 components on the circle of radius 2."""
    angles = 2 * np.pi * np.arange(8) / 8
    return Mixture("ring8", 2.0 * np.stack([np.cos(angles), np.sin(angles)], 1), std)


def grid25(std: float) -> Mixture:
    """25 components on the grid {-4, -2, 0, 2, 4}^2."""
    g = np.arange(-4.0, 5.0, 2.0)
    return Mixture("grid25", np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2), std)


MIXTURES = {"ring8": ring8, "grid25": grid25}
