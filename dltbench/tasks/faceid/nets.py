"""The embedding networks the built-ins share: a small CNN (quick, standard) and a timm ResNet (paper)."""

from __future__ import annotations

import torch
from torch import nn


class SmallFaceCNN(nn.Module):
    """Three conv-BN-ReLU blocks with pooling, then a linear map to a ``dim``-d embedding.

    Any input size works (adaptive pooling to 3x3 before the linear layer).
    """

    def __init__(self, channels: int = 1, dim: int = 64, width: int = 32):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.features = nn.Sequential(
            block(channels, width // 2), nn.MaxPool2d(2),
            block(width // 2, width), nn.MaxPool2d(2),
            block(width, 2 * width), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
        )  # fmt: skip
        self.embed = nn.Sequential(nn.Linear(2 * width * 9, dim), nn.BatchNorm1d(dim))
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, dim) of images (N, C, H, W) in [0, 1]."""
        return self.embed(self.features(x))


def backbone(shape: tuple[int, ...], dim: int, arch: str = "small-cnn") -> nn.Module:
    """The shared embedding network for images of ``shape`` (C, H, W).

    ``small-cnn`` is :class:`SmallFaceCNN` of width 32, ``small-cnn-<w>`` of width w;
    any other name is a timm model.
    """
    if arch == "small-cnn":
        return SmallFaceCNN(shape[0], dim)
    if arch.startswith("small-cnn-") and arch.removeprefix("small-cnn-").isdigit():
        return SmallFaceCNN(shape[0], dim, int(arch.removeprefix("small-cnn-")))
    try:
        import timm
    except ImportError as exc:
        raise RuntimeError(f"{arch} is built with timm: pip install 'dltbench[data]'") from exc
    return timm.create_model(arch, pretrained=False, num_classes=dim, in_chans=shape[0])


class WithClassifier(nn.Module):
    """An embedding network plus the classifier rows it was trained with (for neural collapse).

    ``classifier_weight()`` returns (C, d) rows w_c such that the method's training-time
    prediction is argmax_c <w_c, h> for an embedding h (rows already normalised for
    cosine heads).
    """

    def __init__(self, net: nn.Module, weight: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("weight", weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, d) of images (N, C, H, W) in [0, 1]."""
        return self.net(x)

    def classifier_weight(self) -> torch.Tensor:
        """The classifier rows (C, d)."""
        return self.weight
