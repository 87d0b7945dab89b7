"""The log posterior over a network's flat weights, as a sampler-style counted target.

``BNNPosterior`` is a :class:`dltbench.tasks.sampler.targets.Target`: every public call is
charged to the shared :data:`~dltbench.tasks.sampler.targets.LEDGER` (a full-batch density
or gradient = 1 per weight row; a minibatch gradient or per-example gradients = |B|/N per
row). The posterior is the task's: isotropic Gaussian prior N(0, prior_sd^2) on every weight
and bias, categorical (softmax) likelihood of the train labels, temperature 1.

Example::

    post = BNNPosterior(MLP((2, 50, 50, 2)), x, y, prior_sd=1.0)
    w = torch.zeros(4, post.dim, dtype=torch.float64)
    lp, g = post.log_prob_and_grad(w)   # (4,), (4, P); LEDGER["grad"] += 4
"""

from __future__ import annotations

import math

import torch
from torch.func import grad, vmap

from ..sampler.targets import DTYPE, LEDGER, Target, TargetView, _rows
from .network import MLP


class BNNPosterior(Target):
    """log p(w | D) + const = sum_i log softmax(f_w(x_i))[y_i] - |w|^2 / (2 prior_sd^2)."""

    capabilities = frozenset({"gradient", "minibatch", "per_example"})
    normalized = False
    exact = False

    def __init__(
        self, net: MLP, x: torch.Tensor, y: torch.Tensor, prior_sd: float, device="cpu", name=""
    ):
        self.name, self.net, self.dim, self.n_data = name, net, net.n_params, len(y)
        super().__init__(device)
        self.prior_sd = float(prior_sd)
        self._x = x.reshape(len(y), -1).to(self.device, DTYPE)
        self._y = y.to(self.device, torch.long)
        self.mean = self.var = torch.full((self.dim,), float("nan"), dtype=DTYPE)

    # -- uncounted internals (the harness and the counted API use them) -----------------
    def log_lik(self, w: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Sum over the selected train points of log p(y | x, w), per row of ``w``; uncounted."""
        x, y = (self._x, self._y) if idx is None else (self._x[idx], self._y[idx])
        logp = torch.log_softmax(self.net.logits(w, x), -1)  # (S, n, C)
        return logp.gather(-1, y.expand(w.shape[0], -1).unsqueeze(-1)).squeeze(-1).sum(-1)

    def log_prior(self, w: torch.Tensor) -> torch.Tensor:
        """log N(w; 0, prior_sd^2 I) per row, normalized (nats)."""
        v = self.prior_sd**2
        return -0.5 * (w**2).sum(1) / v - 0.5 * self.dim * math.log(2 * math.pi * v)

    def _value_and_grad(self, w, idx=None, scale=1.0):
        w = w.detach().to(DTYPE)
        x, y = (self._x, self._y) if idx is None else (self._x[idx], self._y[idx])
        ll, g = self.net.log_lik_and_grad(w, x, y)
        v = self.prior_sd**2
        return scale * ll + self.log_prior(w), scale * g - w / v

    def _log_prob(self, w):
        with torch.no_grad():
            return self.log_lik(w.to(DTYPE)) + self.log_prior(w.to(DTYPE))

    def _grad(self, w):
        return self._value_and_grad(w)[1]

    def _log_prob_and_grad(self, w):
        return self._value_and_grad(w)

    def _minibatch_grad(self, w, idx):
        return self._value_and_grad(w, idx, self.n_data / max(len(idx), 1))[1]

    def per_example_grad(self, w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Gradients of each selected point's log-likelihood (no prior), (rows, |idx|, P); counted |idx|/N."""
        if not (isinstance(idx, torch.Tensor) and idx.dim() == 1 and idx.dtype == torch.long):
            raise TypeError("idx must be a 1-d tensor of data-point indices (torch.long)")
        if len(idx) and not (int(idx.min()) >= 0 and int(idx.max()) < self.n_data):
            raise IndexError(f"idx must lie in [0, {self.n_data})")
        LEDGER["data_grad"] += _rows(w, self.dim) * idx.numel()
        x, net = self._x[idx], self.net
        y = torch.nn.functional.one_hot(self._y[idx], net.sizes[-1]).to(DTYPE)

        def one(wi, xi, yi):  # one-hot product: vmap cannot index by a batched label
            return (torch.log_softmax(net.logits_one(wi, xi[None]), -1)[0] * yi).sum()

        per_point = vmap(grad(one), in_dims=(None, 0, 0))
        return torch.stack([per_point(wi, x, y) for wi in w.to(DTYPE)])


class BNNView(TargetView):
    """What a method sees of the posterior: the sampler task's counted oracle plus per-example gradients."""

    __slots__ = ()

    def per_example_grad(self, w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Per-point log-likelihood gradients (rows, |idx|, P); counted as |idx|/N per row."""
        return self._t.per_example_grad(w, idx)
