"""The task's network: a ReLU MLP evaluated for a batch of flat weight vectors at once.

The flat layout (public, so that a method can act on whole units, e.g. dropout): for each
layer in order, the weight matrix ``W`` of shape (fan_in, fan_out) row-major, then the bias
``b`` (fan_out). Row ``j`` of ``W`` holds input unit ``j``'s outgoing weights, so dropping
hidden unit ``j`` of layer ``l`` is zeroing row ``j`` of layer ``l + 1``'s ``W``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MLP:
    """A ReLU multi-layer perceptron ``sizes[0] - ... - sizes[-1]`` (inputs to logits)."""

    sizes: tuple[int, ...]

    @property
    def n_params(self) -> int:
        """Length of the flat weight vector."""
        return sum((a + 1) * b for a, b in zip(self.sizes[:-1], self.sizes[1:], strict=True))

    def layer_slices(self) -> list[tuple[slice, slice]]:
        """Per layer, the flat slices of its ``W`` (fan_in * fan_out) and of its ``b``."""
        out, at = [], 0
        for a, b in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            out.append((slice(at, at + a * b), slice(at + a * b, at + a * b + b)))
            at += (a + 1) * b
        return out

    def hidden_unit_rows(self, layer: int) -> torch.Tensor:
        """Flat indices (n_units, fan_out) of the outgoing weights of hidden layer ``layer``'s units.

        ``layer`` counts hidden layers from 0; the rows belong to the next layer's ``W``.
        """
        a, b = self.sizes[layer + 1], self.sizes[layer + 2]
        start = self.layer_slices()[layer + 1][0].start
        return start + torch.arange(a * b).reshape(a, b)

    def logits(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits (S, n, classes) of the S weight rows ``w`` (S, P) at inputs ``x`` (n, d)."""
        if w.dim() != 2 or w.shape[1] != self.n_params:
            raise ValueError(f"weights must have shape (S, {self.n_params}), got {tuple(w.shape)}")
        h = x.to(w.dtype).expand(w.shape[0], *x.shape)
        last = len(self.sizes) - 2
        for i, (sw, sb) in enumerate(self.layer_slices()):
            a, b = self.sizes[i], self.sizes[i + 1]
            h = torch.baddbmm(w[:, sb].unsqueeze(1), h, w[:, sw].reshape(-1, a, b))
            if i < last:
                h = torch.relu(h)
        return h

    def log_lik_and_grad(
        self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum over points of log softmax(f_w(x))[y] per row of ``w`` (S,), and its gradient (S, P).

        The backward pass written out (softmax cross-entropy, then each layer's bmm), the
        same arithmetic autograd would do without building its graph: about a third
        cheaper per call on the task's small networks.
        """
        if w.dim() != 2 or w.shape[1] != self.n_params:
            raise ValueError(f"weights must have shape (S, {self.n_params}), got {tuple(w.shape)}")
        s, slices, last = w.shape[0], self.layer_slices(), len(self.sizes) - 2
        h = x.to(w.dtype).expand(s, *x.shape)
        inputs = []
        for i, (sw, sb) in enumerate(slices):
            inputs.append(h)
            h = torch.baddbmm(
                w[:, sb].unsqueeze(1), h, w[:, sw].reshape(s, *self.sizes[i : i + 2])
            )
            if i < last:
                h = torch.relu(h)
        logp = torch.log_softmax(h, -1)  # (S, n, C)
        yi = y.expand(s, -1).unsqueeze(-1)
        ll = logp.gather(-1, yi).squeeze(-1).sum(-1)
        delta = torch.exp(logp).neg_().scatter_add_(-1, yi, torch.ones_like(yi, dtype=w.dtype))
        g = torch.empty_like(w)
        for i in range(last, -1, -1):
            sw, sb = slices[i]
            g[:, sw] = torch.bmm(inputs[i].transpose(1, 2), delta).reshape(s, -1)
            g[:, sb] = delta.sum(1)
            if i:  # relu'(pre-activation) = 1 where the layer's output (the next input) is > 0
                wi = w[:, sw].reshape(s, *self.sizes[i : i + 2])
                delta = torch.bmm(delta, wi.transpose(1, 2)) * (inputs[i] > 0)
        return ll, g

    def logits_one(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits (n, classes) of one weight vector ``w`` (P,) (for torch.func transforms)."""
        h = x.to(w.dtype)
        last = len(self.sizes) - 2
        for i, (sw, sb) in enumerate(self.layer_slices()):
            h = h @ w[sw].reshape(self.sizes[i], self.sizes[i + 1]) + w[sb]
            if i < last:
                h = torch.relu(h)
        return h

    def predictive(
        self,
        w: torch.Tensor,
        x: torch.Tensor,
        weights: torch.Tensor | None = None,
        chunk: int = 64,
    ) -> torch.Tensor:
        """Posterior predictive probabilities (n, classes): the (weighted) mean of softmax over rows."""
        s = w.shape[0]
        p = torch.full((s,), 1.0 / s, dtype=w.dtype) if weights is None else weights.to(w.dtype)
        out = torch.zeros(x.shape[0], self.sizes[-1], dtype=w.dtype)
        for i in range(0, s, chunk):
            probs = torch.softmax(self.logits(w[i : i + chunk], x), -1)
            out += torch.einsum("s,snc->nc", p[i : i + chunk], probs)
        return out
