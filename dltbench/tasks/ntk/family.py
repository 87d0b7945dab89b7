"""The per-width family a method's ``build`` makes, as the harness drives it (plugin side).

It runs in the plugin process, around modules built by plugin code: the harness never
trusts its answers (see :func:`dltbench.tasks.ntk.task.audit_kernel`), it only uses
the functional interface below, with parameters it owns.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .kernels import DEFAULT_MEMORY
from .layered import empirical_ntk_layers


class WidthFamily:
    """Modules of one architecture at several widths, used as pure functions of flat params.

    ``kernel`` (a catalogue spec or None) and ``lr_factor`` (None or a float) are what the
    method declared; the harness reads them once and validates them.
    """

    def __init__(
        self,
        modules: dict[int, nn.Module],
        kernel: dict[str, Any] | None = None,
        lr_factor: float | None = None,
        memory: int = DEFAULT_MEMORY,
    ):
        self.modules = {int(w): m.to(torch.float64).eval() for w, m in modules.items()}
        self.kernel = kernel
        self.lr_factor = lr_factor
        self.widths = sorted(self.modules)
        self.memory = int(memory)

    def _module(self, width: int) -> nn.Module:
        if int(width) not in self.modules:
            raise KeyError(f"no module of width {width}")
        return self.modules[int(width)]

    def _params(self, width: int) -> list[tuple[str, torch.Tensor]]:
        return list(self._module(width).named_parameters())

    def init_params(self, width: int) -> torch.Tensor:
        """The module's initial parameters as one flat float64 vector."""
        return torch.cat([p.detach().reshape(-1) for _, p in self._params(width)])

    def n_params(self, width: int) -> int:
        """Number of trainable scalars at ``width``."""
        return sum(p.numel() for _, p in self._params(width))

    def split(self, width: int, theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The flat vector ``theta`` as the module's parameter tensors (views)."""
        shapes = [p.shape for _, p in self._params(width)]
        sizes = [math.prod(s) for s in shapes]
        if sum(sizes) != theta.numel():
            raise ValueError(f"theta has {theta.numel()} entries, the module {sum(sizes)}")
        return tuple(t.view(s) for t, s in zip(theta.split(sizes), shapes, strict=True))

    def _call(self, width: int, params: tuple[torch.Tensor, ...], x: torch.Tensor):
        names = [n for n, _ in self._params(width)]
        return functional_call(self._module(width), dict(zip(names, params, strict=True)), (x,))

    def apply(self, width: int, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Outputs (N, K) of the width-``width`` module with flat parameters ``theta``."""
        return self._call(width, self.split(width, theta), x)

    def ntk(
        self, width: int, theta: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Empirical NTK (N1*K, N2*K) at ``theta`` by :func:`empirical_ntk_layers`: nn.Linear
        layers in closed form, other parameters by ``empirical_ntk(impl="auto-loop")`` (a
        worker process lives for one cell, and torch.func's first use would cost it more,
        importing torch._dynamo, than its vectorisation saves at these sizes)."""
        names = [n for n, _ in self._params(width)]
        params = dict(zip(names, self.split(width, theta), strict=True))
        return empirical_ntk_layers(self._module(width), params, x1, x2, memory=self.memory)
