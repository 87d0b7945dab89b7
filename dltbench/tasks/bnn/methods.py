"""Built-in ``bnn`` methods, registered exactly as a third-party plugin would be.

Every built-in works only through the counted posterior oracle (no data points): it sizes
its run from ``problem["budget_evals"]`` (each spends at most its stated fraction of it)
and returns at most ``problem["n_samples"]`` weight samples. Gradients from the oracle
are of the log posterior (ascent direction); optimisers see them divided by n_train so
that Adam's epsilon means the same on every dataset.
"""

from __future__ import annotations

import torch

from ...registry import register_method
from ..sampler import samplers
from .network import MLP
from .optim import Adam
from .posterior import BNNView
from .task import BNNMethod
from .vi import _randn, gaussian_vi


def _steps(budget: float, fraction: float, cost_per_step: float, cap: int) -> int:
    """Iterations that spend at most ``fraction`` of ``budget`` at ``cost_per_step`` each (>= 1)."""
    return max(1, min(cap, int(fraction * budget / cost_per_step)))


def _batch(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=gen, device=gen.device)[: min(size, n)].cpu()


def adam_map(
    target: BNNView, w0: torch.Tensor, steps: int, batch: int, lr: float, gen: torch.Generator
) -> torch.Tensor:
    """Maximize the log posterior from each row of ``w0`` with Adam on minibatch gradients."""
    n = target.n_data
    w = w0.clone()
    opt = Adam(w, lr, steps)
    for _ in range(steps):
        opt.ascend(w, target.minibatch_grad(w, _batch(n, batch, gen)) / n)
    return w


class _Builtin(BNNMethod):
    version = "1"

    def __init__(self, batch_size: int = 128, lr: float = 3e-3, max_steps: int = 1000):
        self.batch_size, self.lr, self.max_steps = batch_size, lr, max_steps

    def _map(self, target, w0, problem, fraction, gen):
        cost = len(w0) * min(self.batch_size, target.n_data) / target.n_data
        steps = _steps(problem["budget_evals"], fraction, cost, self.max_steps)
        return adam_map(target, w0, steps, self.batch_size, self.lr, gen)


@register_method(task="bnn", name="map")
class MAP(_Builtin):
    """The MAP network: Adam (cosine-decayed) on minibatch log-posterior gradients; one sample."""

    def posterior(self, target, problem, init, generator):
        """One Adam run from the harness's first init row."""
        return self._map(target, init[:1], problem, 1.0, generator)


@register_method(task="bnn", name="ensemble")
class DeepEnsemble(_Builtin):
    """Deep ensemble (Lakshminarayanan et al. 2017): MAP from n_members inits, equal weights."""

    def __init__(self, n_members: int = 5, batch_size: int = 128, lr: float = 3e-3,
                 max_steps: int = 1000):  # fmt: skip
        super().__init__(batch_size, lr, max_steps)
        self.n_members = n_members

    def posterior(self, target, problem, init, generator):
        """Members trained side by side (one oracle row each, shared minibatch order)."""
        k = min(self.n_members, len(init), problem["n_samples"])
        return self._map(target, init[:k], problem, 1.0, generator)


@register_method(task="bnn", name="mfvi")
class MeanFieldVI(_Builtin):
    """Mean-field Gaussian VI, Bayes by Backprop (Blundell et al. 2015): reparameterised ELBO, Adam.

    q(w) = N(mu, diag(softplus(rho)^2)); per step ``n_mc`` draws w = mu + sigma * eps give
    the unbiased ELBO gradient (E[g(w)], E[g(w) eps] + 1/sigma) with g the minibatch
    log-posterior gradient. mu starts at a MAP run (``map_fraction`` of the budget), sigma
    at ``init_sd``.
    """

    def __init__(self, n_mc: int = 4, batch_size: int = 128, lr: float = 1e-2,
                 max_steps: int = 1500, map_fraction: float = 0.25, init_sd: float = 1e-3):  # fmt: skip
        super().__init__(batch_size, 3e-3, max_steps)
        self.n_mc, self.lr_vi, self.map_fraction, self.init_sd = n_mc, lr, map_fraction, init_sd

    def posterior(self, target, problem, init, generator):
        """MAP warm start, then Adam on (mu, rho); returns n_samples draws from q."""
        n = target.n_data
        mu0 = self._map(target, init[:1], problem, self.map_fraction, generator)[0]
        cost = self.n_mc * min(self.batch_size, n) / n
        steps = _steps(problem["budget_evals"], 1 - self.map_fraction, cost, self.max_steps)

        def grad(w):
            return target.minibatch_grad(w, _batch(n, self.batch_size, generator))

        q = gaussian_vi(grad, mu0, steps, generator, lr=self.lr_vi, n_mc=self.n_mc,
                        init_sd=self.init_sd, scale=1.0 / n)  # fmt: skip
        return q.sample(problem["n_samples"], generator)


@register_method(task="bnn", name="mc-dropout")
class MCDropout(_Builtin):
    """MC dropout (Gal & Ghahramani 2016) on the hidden units, p = 0.1, the prior as weight decay.

    Dropping hidden unit j is zeroing its outgoing weights and scaling the kept ones by
    1/(1-p), so each dropout mask is a weight vector of the task's network: training
    ascends E_mask[log lik(w * m / (1-p))] + log prior(w) with one mask per minibatch,
    and the returned samples are the trained weights under n_samples fresh masks.
    """

    def __init__(self, p: float = 0.1, batch_size: int = 128, lr: float = 3e-3,
                 max_steps: int = 1500):  # fmt: skip
        super().__init__(batch_size, lr, max_steps)
        self.p = p

    def _masks(self, net: MLP, k: int, dim: int, gen: torch.Generator) -> torch.Tensor:
        m = torch.ones(k, dim, dtype=torch.float64)
        for layer in range(len(net.sizes) - 2):
            rows = net.hidden_unit_rows(layer)
            keep = (torch.rand(k, rows.shape[0], generator=gen, device=gen.device) >= self.p).cpu()
            m[:, rows] = (keep.double() / (1 - self.p))[:, :, None].expand(-1, -1, rows.shape[1])
        return m

    def posterior(self, target, problem, init, generator):
        """Adam on the dropout objective, then n_samples masked copies of the weights."""
        net, n, var = MLP(tuple(problem["sizes"])), target.n_data, problem["prior_sd"] ** 2
        w = init[:1].clone()
        cost = min(self.batch_size, n) / n
        steps = _steps(problem["budget_evals"], 1.0, cost, self.max_steps)
        opt = Adam(w, self.lr, steps)
        for _ in range(steps):
            m = self._masks(net, 1, target.dim, generator).to(w.device)
            wm = w * m
            g = target.minibatch_grad(wm, _batch(n, self.batch_size, generator))
            lik = g + wm / var  # remove the prior's gradient at the masked weights
            opt.ascend(w, (lik * m - w / var) / n)
        return w * self._masks(net, problem["n_samples"], target.dim, generator).to(w.device)


@register_method(task="bnn", name="laplace")
class LastLayerLaplace(_Builtin):
    """Last-layer Laplace at the MAP (Kristiadi et al. 2020) with the exact last-layer GGN.

    The last layer's weights and biases get N(w_map, (GGN + I / prior_sd^2)^-1) and the
    other layers stay at the MAP. For softmax outputs the GGN is sum_i (phi_i phi_i^T) kron
    (diag(p_i) - p_i p_i^T), phi_i = [features_i, 1]; both phi_i and p_i are read off point
    i's per-example gradient (bias part r = e_y - p, weight part phi r^T), one pass.
    """

    def __init__(self, batch_size: int = 128, lr: float = 3e-3, max_steps: int = 1000,
                 chunk: int = 256):  # fmt: skip
        super().__init__(batch_size, lr, max_steps)
        self.chunk = chunk

    def posterior(self, target, problem, init, generator):
        """MAP, one per-example-gradient pass for the GGN, then Gaussian draws."""
        n, budget = target.n_data, problem["budget_evals"]
        w = self._map(target, init[:1], problem, max(0.0, 1 - 1.0 / budget), generator)
        sizes = tuple(problem["sizes"])
        fan_in, k = sizes[-2], sizes[-1]
        sw, sb = MLP(sizes).layer_slices()[-1]
        ggn = torch.eye((fan_in + 1) * k, dtype=w.dtype) / problem["prior_sd"] ** 2
        for i in range(0, n, self.chunk):
            g = target.per_example_grad(w, torch.arange(i, min(n, i + self.chunk)))[0].cpu()
            ggn += last_layer_ggn(g[:, sw].reshape(-1, fan_in, k), g[:, sb])
        # draws z with cov ggn^-1: solve L^T z = eps with ggn = L L^T
        chol = torch.linalg.cholesky(ggn)
        eps = _randn(problem["n_samples"], len(ggn), generator, w).cpu()
        z = torch.linalg.solve_triangular(chol.T, eps.T, upper=True).T
        out = w.repeat(problem["n_samples"], 1)
        out[:, sw.start : sb.stop] += z.to(w.device)
        return out


def last_layer_ggn(g_w: torch.Tensor, g_b: torch.Tensor) -> torch.Tensor:
    """Sum over points of the softmax GGN of the last layer, from per-example gradients.

    ``g_w`` (n, fan_in, C) = phi r^T and ``g_b`` (n, C) = r = e_y - p are the gradients
    of log p(y | x) in the last layer's weights and biases; returns the ((fan_in + 1) C)^2
    matrix in the flat layout (W row-major, then b). Points with r = 0 (p_y = 1) add 0.
    """
    r2 = (g_b**2).sum(1)
    ok = r2 > 0
    g_w, g_b, r2 = g_w[ok], g_b[ok], r2[ok]
    phi = torch.cat([torch.einsum("njc,nc->nj", g_w, g_b) / r2[:, None],
                     torch.ones(len(g_b), 1, dtype=g_b.dtype)], 1)  # fmt: skip
    y = g_b.argmax(1)  # the only positive entry of e_y - p
    p = torch.nn.functional.one_hot(y, g_b.shape[1]).to(g_b.dtype) - g_b
    h = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (n, C, C)
    a = phi[:, :, None] * phi[:, None, :]  # (n, J, J)
    c = g_b.shape[1]
    return torch.einsum("njk,nab->jakb", a, h).reshape(a.shape[1] * c, a.shape[1] * c)


@register_method(task="bnn", name="sgld")
class SGLD(BNNMethod):
    """SGLD (Welling & Teh 2011), the sampler task's: full-batch MALA warm-up sets the step, then
    minibatch Langevin steps at step_factor times it; n_chains chains, draws thinned to n_samples."""

    version = "1"

    def __init__(self, n_chains: int = 4, batch_size: int = 128, step_factor: float = 0.5,
                 warmup_fraction: float = 0.2, max_steps: int = 1500):  # fmt: skip
        self.n_chains, self.batch_size, self.step_factor = n_chains, batch_size, step_factor
        self.warmup_fraction, self.max_steps = warmup_fraction, max_steps

    def posterior(self, target, problem, init, generator):
        """Warm-up and draws sized from the budget; every k-th draw of each chain returned."""
        frac = min(self.batch_size, target.n_data) / target.n_data
        # Fewest chains first to go when the budget cannot pay one warm-up step and one draw each.
        for c in range(min(self.n_chains, len(init)), 0, -1):
            budget = problem["budget_evals"] - c  # the warm-up's first gradient
            warm = _steps(budget, self.warmup_fraction, c, self.max_steps)
            draws = _steps(budget - warm * c, 1.0, c * frac, self.max_steps)
            if c * (1 + warm) + draws * c * frac <= problem["budget_evals"]:
                break
        x = samplers.sgld(target, init[:c], draws, warm, generator, self.batch_size,
                          self.step_factor)  # fmt: skip
        return _thin(x, problem["n_samples"])


@register_method(task="bnn", name="hmc")
class HMC(BNNMethod):
    """Full-batch HMC, the sampler task's (identity mass, step adapted to 0.65 in warm-up)."""

    version = "1"

    def __init__(self, n_chains: int = 4, n_leapfrog: int = 10, warmup_fraction: float = 0.5):
        self.n_chains, self.n_leapfrog, self.warmup_fraction = (
            n_chains,
            n_leapfrog,
            warmup_fraction,
        )

    def posterior(self, target, problem, init, generator):
        """Iterations sized from the budget (n_leapfrog gradients per chain each); draws thinned."""
        budget, steps = problem["budget_evals"], self.n_leapfrog
        # A budget too small for two iterations of every chain runs fewer chains and steps.
        c = max(1, min(self.n_chains, len(init), int(budget // (2 * steps + 1))))
        steps = max(1, min(steps, int((budget - c) // (2 * c))))
        total = max(2, int((budget - c) / (c * steps)))
        warm = int(self.warmup_fraction * total)
        x = samplers.hmc(target, init[:c], total - warm, warm, generator, steps)
        return _thin(x, problem["n_samples"])


def _thin(x: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Every k-th draw of each chain (chains, draws, P), at most ``n_samples`` in all."""
    c, d = x.shape[:2]
    per = max(1, n_samples // c)
    idx = torch.linspace(d - 1, 0, min(per, d)).round().long().flip(0)
    return x[:, idx].reshape(-1, x.shape[2])[:n_samples]
