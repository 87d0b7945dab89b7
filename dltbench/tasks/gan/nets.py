"""Generators and discriminators of the built-in GANs, and the :class:`Generator` protocol.

A generator is an ``nn.Module`` that maps latents the harness draws, z ~ N(0, I) of shape
(N, latent_dim), to samples: ``forward(z)``, or ``forward(z, y)`` with integer labels y
(N,) when ``conditional``. It must answer each row from that row alone (the harness
audits this). :meth:`Generator.sample` draws z itself, for library use only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class Generator(nn.Module):
    """Base of a ``gan`` artifact: declares ``latent_dim`` and ``conditional``; maps z to samples."""

    latent_dim: int = 0
    conditional: bool = False
    num_classes: int = 0

    def sample(
        self, n: int, generator: torch.Generator, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``n`` samples from z ~ N(0, I) drawn with ``generator`` (labels ``y``, or uniform
        ones drawn from ``generator``, for a conditional model)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device=generator.device)
        if not self.conditional:
            return self(z.to(device))
        if y is None:
            y = torch.randint(self.num_classes, (n,), generator=generator, device=generator.device)
        return self(z.to(device), y.to(device))


def _with_labels(z: torch.Tensor, y: torch.Tensor | None, num_classes: int) -> torch.Tensor:
    if not num_classes:
        return z
    if y is None:
        raise ValueError("a conditional network needs labels y")
    return torch.cat([z, F.one_hot(y.long(), num_classes).to(z.dtype)], 1)


class MLPGenerator(Generator):
    """z (+ one-hot y) -> ``depth`` hidden ReLU layers (optional BatchNorm) -> 2-D points."""

    def __init__(self, latent_dim: int = 8, out_dim: int = 2, width: int = 128, depth: int = 3,
                 batchnorm: bool = False, num_classes: int = 0):  # fmt: skip
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.conditional = num_classes > 0
        layers: list[nn.Module] = []
        d = latent_dim + num_classes
        for _ in range(depth):
            layers += [nn.Linear(d, width), *([nn.BatchNorm1d(width)] if batchnorm else []),
                       nn.ReLU()]  # fmt: skip
            d = width
        self.net = nn.Sequential(*layers, nn.Linear(d, out_dim))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Points (N, out_dim)."""
        return self.net(_with_labels(z, y, self.num_classes))


class MLPCritic(nn.Module):
    """x (+ one-hot y) -> ``depth`` LeakyReLU(0.2) layers -> one score (optional spectral norm)."""

    def __init__(self, in_dim: int = 2, width: int = 128, depth: int = 3, sn: bool = False,
                 num_classes: int = 0):  # fmt: skip
        super().__init__()
        self.num_classes = num_classes
        wrap = spectral_norm if sn else (lambda m: m)
        layers: list[nn.Module] = []
        d = in_dim + num_classes
        for _ in range(depth):
            layers += [wrap(nn.Linear(d, width)), nn.LeakyReLU(0.2)]
            d = width
        self.net = nn.Sequential(*layers, wrap(nn.Linear(d, 1)))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (N,)."""
        return self.net(_with_labels(x.flatten(1), y, self.num_classes))[:, 0]


class ConvGenerator(Generator):
    """DCGAN-style: z (+ one-hot y) -> linear to (2w, s/4, s/4) -> two stride-2 transposed
    convs -> (C, s, s) through a sigmoid, so samples lie in [0, 1]."""

    def __init__(self, latent_dim: int = 32, channels: int = 1, side: int = 8, width: int = 32,
                 batchnorm: bool = True, num_classes: int = 0):  # fmt: skip
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.conditional = num_classes > 0
        self.width, self.start = width, side // 4

        def bn(c: int) -> list[nn.Module]:
            return [nn.BatchNorm2d(c)] if batchnorm else []

        self.fc = nn.Linear(latent_dim + num_classes, 2 * width * self.start**2)
        self.net = nn.Sequential(
            *bn(2 * width), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), *bn(width), nn.ReLU(),
            nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Images (N, C, side, side) in [0, 1]."""
        h = self.fc(_with_labels(z, y, self.num_classes))
        return self.net(h.view(len(z), 2 * self.width, self.start, self.start))


class ConvCritic(nn.Module):
    """Two stride-2 4x4 convs with LeakyReLU(0.2) (one-hot y as extra input planes) -> one
    score; optional BatchNorm (DCGAN) or spectral norm (SN-GAN)."""

    def __init__(self, channels: int = 1, side: int = 8, width: int = 32, batchnorm: bool = False,
                 sn: bool = False, num_classes: int = 0):  # fmt: skip
        super().__init__()
        self.num_classes = num_classes
        wrap = spectral_norm if sn else (lambda m: m)
        self.net = nn.Sequential(
            wrap(nn.Conv2d(channels + num_classes, width, 4, 2, 1)), nn.LeakyReLU(0.2),
            wrap(nn.Conv2d(width, 2 * width, 4, 2, 1)),
            *([nn.BatchNorm2d(2 * width)] if batchnorm else []), nn.LeakyReLU(0.2),
            nn.Flatten(), wrap(nn.Linear(2 * width * (side // 4) ** 2, 1)),
        )  # fmt: skip

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (N,)."""
        if self.num_classes:
            planes = F.one_hot(y.long(), self.num_classes).to(x.dtype)[:, :, None, None]
            x = torch.cat([x, planes.expand(-1, -1, *x.shape[2:])], 1)
        return self.net(x)[:, 0]
