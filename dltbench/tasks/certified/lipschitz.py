"""Deterministic certificates from a Lipschitz bound (Tsuzuku, Sato & Sugiyama, NeurIPS 2018).

If every logit difference z_i - z_j of a network is sqrt(2) L-Lipschitz in l2 (true when the
network is L-Lipschitz from l2 to l2), a point predicted c with margin m = z_c - max_{j != c}
z_j keeps its prediction on the l2 ball of radius m / (sqrt(2) L). The harness never takes a
plugin's word for L: the method returns a :class:`LipschitzMLP` (Linear and ReLU layers), the
harness rebuilds the network from its layers with its own code, checks that it answers as the
plugin's model does, and bounds L by the product of the layers' exact spectral norms (ReLU is
1-Lipschitz).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ...api import InvalidArtifact

CERTIFICATE = "lipschitz-margin"


class LipschitzMLP(nn.Module):
    """An MLP of Linear layers with ReLU between them, on flattened inputs, whose Lipschitz
    bound the harness can compute: the artifact of a Lipschitz-certified method."""

    certificate = CERTIFICATE

    def __init__(self, sizes: list[int], spectral: bool = False):
        super().__init__()
        layers = [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        if spectral:  # weights kept at spectral norm ~1 by power iteration during training
            layers = [nn.utils.parametrizations.spectral_norm(layer) for layer in layers]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) of inputs (N, ...) flattened."""
        h = x.flatten(1)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h

    @property
    def lipschitz_layers(self) -> list[list[torch.Tensor]]:
        """The layers' effective (weight, bias) pairs, as the harness rebuilds them."""
        return [
            [layer.weight.detach().clone(), layer.bias.detach().clone()] for layer in self.layers
        ]


def rebuild(layers: object, in_dim: int, num_classes: int) -> LipschitzMLP:
    """The harness's own copy of a declared LipschitzMLP from its (weight, bias) pairs;
    InvalidArtifact if they are not a chain of finite Linear layers from in_dim to num_classes."""
    if not isinstance(layers, list) or not layers or len(layers) > 64:
        raise InvalidArtifact("lipschitz_layers must be a non-empty list of (weight, bias) pairs")
    sizes = [in_dim]
    for pair in layers:
        ok = isinstance(pair, (list, tuple)) and len(pair) == 2
        w, b = pair if ok else (None, None)
        if not (isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor)) or w.dim() != 2:
            raise InvalidArtifact("each lipschitz layer must be a (2-D weight, 1-D bias) pair")
        if w.shape[1] != sizes[-1] or b.shape != (w.shape[0],):
            raise InvalidArtifact("the lipschitz layers' shapes do not chain")
        if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
            raise InvalidArtifact("a lipschitz layer has a non-finite entry")
        sizes.append(int(w.shape[0]))
    if sizes[-1] != num_classes:
        raise InvalidArtifact(
            f"the lipschitz layers end in {sizes[-1]} outputs, not {num_classes}"
        )
    net = LipschitzMLP(sizes)
    with torch.no_grad():
        for layer, (w, b) in zip(net.layers, layers, strict=True):
            layer.weight.copy_(w.float())
            layer.bias.copy_(b.float())
    return net.eval()


def lipschitz_bound(net: LipschitzMLP) -> float:
    """An upper bound on the l2 Lipschitz constant of ``net``: the product of exact spectral norms."""
    bound = 1.0
    for layer in net.layers:
        bound *= float(torch.linalg.matrix_norm(layer.weight.detach().double(), ord=2))
    return bound


def margin_certify(logits: torch.Tensor, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """(predicted labels, certified l2 radii margin / (sqrt(2) L)) from logits (N, K)."""
    top2 = logits.double().topk(2, dim=1).values
    margin = (top2[:, 0] - top2[:, 1]).cpu().numpy()
    labels = logits.argmax(1).cpu().numpy().astype(np.int64)
    return labels, margin / (math.sqrt(2.0) * bound)
