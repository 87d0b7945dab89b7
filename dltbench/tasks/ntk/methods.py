"""Built-in ``ntk`` methods, registered exactly as a third-party plugin would be.

Parameterisations (n = width, d = input size, all raw parameters trained by the same GD):

* NTK (Jacot et al. 2018): raw weights N(0, 1), layer output sigma_w * W h / sqrt(fan_in)
  (+ sigma_b * b); the analytic kernel is :func:`~dltbench.tasks.ntk.kernels.mlp_kernels`.
* standard: PyTorch's default ``nn.Linear`` (Kaiming-uniform weights, uniform biases).
* muP (Yang & Hu 2021, abc-parameterisation with SGD, Table 3): input layer multiplier
  sqrt(n) on weights N(0, 2/(n d)), hidden layers weights N(0, 2/n), output multiplier
  1/sqrt(n) on weights N(0, 1/n); one global learning rate.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import skip_init

from ...api import Context
from ...registry import register_method
from .task import IOSpec, NtkMethod

_ACTS = {"relu": torch.relu, "erf": torch.erf}


def _linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """An nn.Linear holding ``weight`` (out, in) and ``bias``: the layer kind whose NTK the
    harness computes in closed form (:mod:`~dltbench.tasks.ntk.layered`)."""
    layer = skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight = nn.Parameter(weight)
    if bias is not None:
        layer.bias = nn.Parameter(bias)
    return layer


class NTKMLP(nn.Module):
    """MLP in NTK parameterisation: ``depth`` hidden layers of ``width`` units.

    Layer l computes ``sigma_w W a / sqrt(fan_in) + sigma_b b`` with raw W, b ~ N(0, 1),
    written as ``c * Linear(a * sigma_w / (sqrt(fan_in) c))`` with ``c = sigma_b`` (1
    without biases): the same function of the same raw parameters, as nn.Linear layers.
    """

    def __init__(
        self, d: int, width: int, k: int, depth: int, act: str, sigma_w: float,
        sigma_b: float, generator: torch.Generator,
    ):  # fmt: skip
        super().__init__()
        sizes = [d] + [width] * depth + [k]
        self.act, self.sigma_w, self.sigma_b = act, sigma_w, sigma_b
        # Drawn in this order (all weights, then all biases) since version 1.
        weights = [torch.randn(o, i, generator=generator)
                   for i, o in zip(sizes[:-1], sizes[1:], strict=True)]  # fmt: skip
        biases = [torch.randn(o, generator=generator) for o in sizes[1:]] if sigma_b > 0 else None
        self.layers = nn.ModuleList(
            _linear(w, None if biases is None else biases[i]) for i, w in enumerate(weights)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (N, K)."""
        h = x.flatten(1)
        last = len(self.layers) - 1
        c = self.sigma_b if self.sigma_b > 0 else 1.0
        for i, layer in enumerate(self.layers):
            h = layer(h * (self.sigma_w / (math.sqrt(layer.in_features) * c)))
            if c != 1.0:
                h = c * h
            if i < last:
                h = _ACTS[self.act](h)
        return h


class MuPMLP(nn.Module):
    """ReLU MLP in the maximal-update parameterisation (abc-form, global SGD learning rate)."""

    def __init__(self, d: int, width: int, k: int, depth: int, generator: torch.Generator):
        super().__init__()
        self.width = width
        g = generator
        self.inp = _linear(torch.randn(width, d, generator=g) * math.sqrt(2.0 / (width * d)))
        self.hidden = nn.ModuleList(
            _linear(torch.randn(width, width, generator=g) * math.sqrt(2.0 / width))
            for _ in range(depth - 1)
        )
        self.out = _linear(torch.randn(k, width, generator=g) / math.sqrt(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (N, K): multipliers sqrt(n) on the input, 1/sqrt(n) on the readout."""
        h = torch.relu(self.inp(math.sqrt(self.width) * x.flatten(1)))
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return self.out(h / math.sqrt(self.width))


class CNNGAP(nn.Module):
    """One 3x3 ReLU conv layer of ``width`` channels, global average pooling, linear readout,
    NTK parameterisation (Arora et al. 2019's CNN-GAP at one layer)."""

    def __init__(self, in_shape, width: int, k: int, sigma_w: float, generator):
        super().__init__()
        c = in_shape[0]
        self.in_shape, self.sigma_w = tuple(in_shape), sigma_w
        self.conv = nn.Parameter(torch.randn(width, c, 3, 3, generator=generator))
        self.out = _linear(torch.randn(k, width, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, K)."""
        x = x.reshape(len(x), *self.in_shape)
        fan = self.conv[0].numel()
        h = torch.relu(
            self.sigma_w * nn.functional.conv2d(x, self.conv, padding=1) / math.sqrt(fan)
        )
        pooled = h.mean(dim=(2, 3))
        return self.out(pooled * (self.sigma_w / math.sqrt(self.out.in_features)))


def _d(io: IOSpec) -> int:
    return math.prod(io.in_shape)


class _NTKParamMLP(NtkMethod):
    """Base of the NTK-parameterised MLPs (declares its analytic kernel)."""

    act = "relu"

    def __init__(self, depth: int = 1, sigma_w: float = math.sqrt(2.0), sigma_b: float = 0.0):
        self.depth = depth
        self.sigma_w = sigma_w
        self.sigma_b = sigma_b

    def build(self, width: int, io: IOSpec, ctx: Context) -> nn.Module:
        """An NTK-parameterised MLP of this width, initialised from ``ctx.generator``."""
        return NTKMLP(_d(io), width, io.n_outputs, self.depth, self.act, self.sigma_w,
                      self.sigma_b, ctx.generator)  # fmt: skip

    def infinite_width_kernel(self, io: IOSpec) -> dict:
        """The catalogue's MLP NTK with the same depth, sigma_w and sigma_b."""
        return {"name": f"{self.act}_ntk", "depth": self.depth, "sigma_w": self.sigma_w,
                "sigma_b": self.sigma_b}  # fmt: skip


@register_method(task="ntk", name="relu-ntk-d1")
class ReluNTK1(_NTKParamMLP):
    """One-hidden-layer ReLU MLP, NTK parameterisation, sigma_w = sqrt(2) (He), no bias."""

    version = "1"


@register_method(task="ntk", name="relu-ntk-d2")
class ReluNTK2(_NTKParamMLP):
    """Two-hidden-layer ReLU MLP, NTK parameterisation, sigma_w = sqrt(2), no bias."""

    version = "1"

    def __init__(self, depth: int = 2, sigma_w: float = math.sqrt(2.0), sigma_b: float = 0.0):
        super().__init__(depth, sigma_w, sigma_b)


@register_method(task="ntk", name="relu-ntk-d3")
class ReluNTK3(_NTKParamMLP):
    """Three-hidden-layer ReLU MLP, NTK parameterisation, sigma_w = sqrt(2), no bias."""

    version = "1"

    def __init__(self, depth: int = 3, sigma_w: float = math.sqrt(2.0), sigma_b: float = 0.0):
        super().__init__(depth, sigma_w, sigma_b)


@register_method(task="ntk", name="erf-ntk")
class ErfNTK(_NTKParamMLP):
    """One-hidden-layer erf MLP, NTK parameterisation (arcsine kernel, Williams 1997), sigma_b = 0.1."""

    version = "1"
    act = "erf"

    def __init__(self, depth: int = 1, sigma_w: float = 1.0, sigma_b: float = 0.1):
        super().__init__(depth, sigma_w, sigma_b)


@register_method(task="ntk", name="relu-standard")
class ReluStandard(NtkMethod):
    """Two-hidden-layer ReLU MLP of torch.nn.Linear with PyTorch's default initialisation."""

    version = "1"

    def __init__(self, depth: int = 2):
        self.depth = depth

    def build(self, width: int, io: IOSpec, ctx: Context) -> nn.Module:
        """nn.Flatten, then Linear/ReLU blocks (default init from the seeded global RNG)."""
        layers: list[nn.Module] = [nn.Flatten()]
        fan = _d(io)
        for _ in range(self.depth):
            layers += [nn.Linear(fan, width), nn.ReLU()]
            fan = width
        return nn.Sequential(*layers, nn.Linear(fan, io.n_outputs))


@register_method(task="ntk", name="cnn-gap")
class CnnGap(NtkMethod):
    """One 3x3 ReLU conv layer (width = channels), global average pooling, NTK param (CNTK-GAP)."""

    version = "1"

    def __init__(self, sigma_w: float = math.sqrt(2.0)):
        self.sigma_w = sigma_w

    def build(self, width: int, io: IOSpec, ctx: Context) -> nn.Module:
        """The CNN of this channel width, initialised from ``ctx.generator``."""
        return CNNGAP(io.in_shape, width, io.n_outputs, self.sigma_w, ctx.generator)

    def infinite_width_kernel(self, io: IOSpec) -> dict | None:
        """The one-layer CNTK with global average pooling (images only)."""
        if len(io.in_shape) != 3:
            return None
        return {"name": "relu_cntk_gap", "sigma_w": self.sigma_w, "kernel_size": 3}


@register_method(task="ntk", name="mup-mlp")
class MuP(NtkMethod):
    """One-hidden-layer ReLU MLP in muP (mean-field at one layer): features keep learning."""

    version = "1"

    def __init__(self, depth: int = 1):
        self.depth = depth

    def build(self, width: int, io: IOSpec, ctx: Context) -> nn.Module:
        """The muP MLP of this width, initialised from ``ctx.generator``."""
        return MuPMLP(_d(io), width, io.n_outputs, self.depth, ctx.generator)
