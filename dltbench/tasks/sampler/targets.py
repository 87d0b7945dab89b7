"""Harness-owned targets: batched densities with exact (or stored reference) moments.

Every target works on a batch of points ``x`` of shape (n, dim), one row per chain, in
float64. It gives ``log_prob(x) -> (n,)``, ``grad_log_prob(x) -> (n, dim)``,
``log_prob_and_grad(x)``, the first two moments of each coordinate (``mean``, ``var``),
a suggested init distribution (Stan's: uniform(-2, 2) per coordinate), and where they
exist exact Gaussian full conditionals (Gibbs) or minibatch gradients (SGLD).

Every public evaluation is counted in the process-wide :data:`LEDGER`, whichever
instance it is called on, so a sampler that builds its own copy of a target and
evaluates it "outside" the view it was given is still charged. Samplers only receive a
:class:`TargetView` (no moments, no exact sampler).

Example::

    t = make_target("funnel-d10")
    x = t.init(4, torch.Generator().manual_seed(0))
    lp, g = t.log_prob_and_grad(x)       # (4,), (4, 10); LEDGER["grad"] += 4
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import torch

#: Evaluations per chain-row since the last reset: density, grad, conditional, data_grad, iid.
LEDGER: Counter = Counter()
DTYPE = torch.float64
_REFERENCE_FILE = Path(__file__).with_name("reference_moments.json")


def evaluation_cost(counts: dict[str, float], dim: int, n_data: int | None) -> float:
    """Total cost in density-or-gradient evaluations (per chain-row, summed over chains).

    A density, a gradient, or a joint density+gradient call at one point costs 1; a
    full-conditional draw of one coordinate costs 1/dim (a sweep costs one evaluation);
    one data point's likelihood gradient costs 1/n_data (a full batch costs one).
    """
    cost = counts.get("density", 0) + counts.get("grad", 0) + counts.get("conditional", 0) / dim
    if n_data:
        cost += counts.get("data_grad", 0) / n_data
    return float(cost)


class Target:
    """Base of a target; subclasses implement ``_log_prob`` and ``_grad`` on (n, dim) float64."""

    name: str = ""
    dim: int = 0
    normalized: bool = True  # log_prob includes the normalizing constant
    exact: bool = True  # moments are exact (False: stored reference moments with their SEs)
    capabilities: frozenset[str] = frozenset({"gradient"})
    n_data: int | None = None

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.mean_se = torch.zeros(self.dim, dtype=DTYPE)
        self.var_se = torch.zeros(self.dim, dtype=DTYPE)

    # -- counted public API -------------------------------------------------------------
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log density (nats) at each row of ``x`` (n, dim); shape (n,)."""
        LEDGER["density"] += _rows(x, self.dim)
        return self._log_prob(x)

    def grad_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Gradient of the log density at each row of ``x``; shape (n, dim)."""
        LEDGER["grad"] += _rows(x, self.dim)
        return self._grad(x)

    def log_prob_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both at once; counted as one gradient evaluation per row."""
        LEDGER["grad"] += _rows(x, self.dim)
        return self._log_prob_and_grad(x)

    def conditional(self, x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (each (n,)) of the Gaussian full conditional of coordinate ``i``."""
        if "conditionals" not in self.capabilities:
            raise NotImplementedError(f"target {self.name!r} has no Gaussian full conditionals")
        # One coordinate per call: an index list or tensor would fetch several conditionals
        # for the price of one.
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.dim:
            raise TypeError(f"i must be one coordinate index, an int in [0, {self.dim})")
        LEDGER["conditional"] += _rows(x, self.dim)
        return self._conditional(x, i)

    def minibatch_grad(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Unbiased gradient estimate from the data points ``idx`` (prior + N/|idx| * likelihood)."""
        if "minibatch" not in self.capabilities:
            raise NotImplementedError(f"target {self.name!r} has no data to subsample")
        # Charged by the number of data points the index selects: a tuple or a 2-d index
        # must not fetch every point for the price of one.
        if not (isinstance(idx, torch.Tensor) and idx.dim() == 1 and idx.dtype == torch.long):
            raise TypeError("idx must be a 1-d tensor of data-point indices (torch.long)")
        if len(idx) and not (int(idx.min()) >= 0 and int(idx.max()) < (self.n_data or 0)):
            raise IndexError(f"idx must lie in [0, {self.n_data})")
        LEDGER["data_grad"] += _rows(x, self.dim) * idx.numel()
        return self._minibatch_grad(x, idx)

    def sample_iid(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Exact iid draws (n, dim), for tests; a sampler calling it is marked invalid."""
        LEDGER["iid"] += n
        return self._sample_iid(n, generator)

    # -- harness side -------------------------------------------------------------------
    def init(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Stan's default inits: uniform(-2, 2) per coordinate, (n, dim) on the target's device."""
        u = torch.rand(n, self.dim, generator=generator, dtype=DTYPE)
        return (4.0 * u - 2.0).to(self.device)

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _grad(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _log_prob_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Subclasses share the work of both where they can: HMC and MALA make ~all calls here.
        return self._log_prob(x), self._grad(x)

    def _conditional(self, x, i):
        raise NotImplementedError

    def _minibatch_grad(self, x, idx):
        raise NotImplementedError

    def _sample_iid(self, n: int, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError(f"target {self.name!r} has no exact sampler")


def _rows(x: torch.Tensor, dim: int) -> int:
    """Rows of a batch of points, the unit the ledger counts; anything but (n, dim) is refused."""
    # Every row is charged, duplicates included; extra leading dimensions would let one
    # "row" carry many points, so only exactly two dimensions pass.
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != dim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected points of shape (n, {dim}), got {shape}")
    return int(x.shape[0])


def _randn(n: int, d: int, generator: torch.Generator, device) -> torch.Tensor:
    return torch.randn(n, d, generator=generator, dtype=DTYPE).to(device)


class GaussianTarget(Target):
    """N(mean, cov) given by its eigen-decomposition cov = Q diag(lam) Q^T."""

    capabilities = frozenset({"gradient", "conditionals"})

    def __init__(
        self, name: str, mean: torch.Tensor, q: torch.Tensor, lam: torch.Tensor, device="cpu"
    ):
        self.name, self.dim = name, len(mean)
        super().__init__(device)
        cov = (q * lam) @ q.T
        self.mean, self.var = mean.clone(), torch.diagonal(cov).clone()
        self.cond = float(lam.max() / lam.min())
        self._mu = mean.to(self.device)
        self._prec = ((q / lam) @ q.T).to(self.device)
        self._chol = (q * lam.sqrt()).to(self.device)  # x = mu + Q sqrt(lam) z
        self._logz = -0.5 * (self.dim * math.log(2 * math.pi) + float(torch.log(lam).sum()))

    def _log_prob(self, x):
        r = x - self._mu
        return -0.5 * ((r @ self._prec) * r).sum(1) + self._logz

    def _grad(self, x):
        return -(x - self._mu) @ self._prec

    def _log_prob_and_grad(self, x):
        g = (self._mu - x) @ self._prec
        return 0.5 * (g * (x - self._mu)).sum(1) + self._logz, g

    def _conditional(self, x, i):
        p_ii = self._prec[i, i]
        r = x - self._mu
        # sum over j != i of P_ij (x_j - mu_j), without materialising the mask
        s = r @ self._prec[:, i] - p_ii * r[:, i]
        return self._mu[i] - s / p_ii, torch.full_like(s, float(p_ii.rsqrt()))

    def _sample_iid(self, n, generator):
        return self._mu + _randn(n, self.dim, generator, self.device) @ self._chol.T


def isotropic_gaussian(dim: int, device="cpu") -> GaussianTarget:
    """N(0, I_dim)."""
    eye = torch.eye(dim, dtype=DTYPE)
    return GaussianTarget(
        f"gaussian-d{dim}",
        torch.zeros(dim, dtype=DTYPE),
        eye,
        torch.ones(dim, dtype=DTYPE),
        device,
    )


def ill_conditioned_gaussian(dim: int, condition: float = 100.0, device="cpu") -> GaussianTarget:
    """N(0, Q diag(lam) Q^T): variances log-spaced in [1/condition, 1], a fixed random rotation Q."""
    gen = torch.Generator().manual_seed(20240601 + dim)  # part of the target's definition
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=DTYPE))
    lam = torch.logspace(-math.log10(condition), 0.0, dim, dtype=DTYPE)
    return GaussianTarget(f"ill-gaussian-d{dim}", torch.zeros(dim, dtype=DTYPE), q, lam, device)


class Funnel(Target):
    """Neal's funnel: x0 ~ N(0, 3^2), x_i | x0 ~ N(0, exp(x0)); sd(x_i) = exp(2.25)."""

    def __init__(self, dim: int = 10, device="cpu"):
        self.name, self.dim = f"funnel-d{dim}", dim
        super().__init__(device)
        self.mean = torch.zeros(dim, dtype=DTYPE)
        # E[x_i^2] = E[exp(x0)] = exp(9 / 2), the lognormal mean
        self.var = torch.full((dim,), math.exp(4.5), dtype=DTYPE)
        self.var[0] = 9.0

    def _log_prob(self, x):
        x0, xs = x[:, 0], x[:, 1:]
        k = self.dim - 1
        return (
            -0.5 * x0**2 / 9.0 - 0.5 * math.log(2 * math.pi * 9.0)
            - 0.5 * (xs**2).sum(1) * torch.exp(-x0) - 0.5 * k * x0 - 0.5 * k * math.log(2 * math.pi)
        )  # fmt: skip

    def _grad(self, x):
        x0, xs = x[:, 0], x[:, 1:]
        e = torch.exp(-x0)
        g0 = -x0 / 9.0 + 0.5 * (xs**2).sum(1) * e - 0.5 * (self.dim - 1)
        return torch.cat([g0[:, None], -xs * e[:, None]], 1)

    def _log_prob_and_grad(self, x):
        x0, xs = x[:, 0], x[:, 1:]
        k = self.dim - 1
        e = torch.exp(-x0)
        half_ss = 0.5 * (xs**2).sum(1)
        lp = (
            -0.5 * x0**2 / 9.0 - 0.5 * math.log(2 * math.pi * 9.0)
            - half_ss * e - 0.5 * k * x0 - 0.5 * k * math.log(2 * math.pi)
        )  # fmt: skip
        g0 = -x0 / 9.0 + half_ss * e - 0.5 * k
        return lp, torch.cat([g0[:, None], -xs * e[:, None]], 1)

    def _sample_iid(self, n, generator):
        z = _randn(n, self.dim, generator, self.device)
        x0 = 3.0 * z[:, :1]
        return torch.cat([x0, z[:, 1:] * torch.exp(0.5 * x0)], 1)


class Banana(Target):
    """Rosenbrock-type banana (Haario et al. 1999): x0 ~ N(0, a^2), x1 | x0 ~ N(b (x0^2 - a^2), 1).

    The other coordinates are N(0, 1). Exact moments: mean 0, var(x0) = a^2,
    var(x1) = 1 + 2 b^2 a^4.
    """

    def __init__(self, dim: int = 2, a: float = 1.0, b: float = 1.0, device="cpu"):
        self.name, self.dim, self.a, self.b = f"banana-d{dim}", dim, a, b
        super().__init__(device)
        self.mean = torch.zeros(dim, dtype=DTYPE)
        self.var = torch.ones(dim, dtype=DTYPE)
        self.var[0], self.var[1] = a**2, 1.0 + 2.0 * b**2 * a**4

    def _log_prob(self, x):
        a, b = self.a, self.b
        r = x[:, 1] - b * (x[:, 0] ** 2 - a**2)
        return (
            -0.5 * x[:, 0] ** 2 / a**2 - math.log(a) - 0.5 * r**2 - 0.5 * (x[:, 2:] ** 2).sum(1)
            - 0.5 * self.dim * math.log(2 * math.pi)
        )  # fmt: skip

    def _grad(self, x):
        a, b = self.a, self.b
        r = x[:, 1] - b * (x[:, 0] ** 2 - a**2)
        g = -x.clone()
        g[:, 0] = -x[:, 0] / a**2 + 2.0 * b * x[:, 0] * r
        g[:, 1] = -r
        return g

    def _log_prob_and_grad(self, x):
        a, b = self.a, self.b
        r = x[:, 1] - b * (x[:, 0] ** 2 - a**2)
        lp = (
            -0.5 * x[:, 0] ** 2 / a**2 - math.log(a) - 0.5 * r**2 - 0.5 * (x[:, 2:] ** 2).sum(1)
            - 0.5 * self.dim * math.log(2 * math.pi)
        )  # fmt: skip
        g = -x.clone()
        g[:, 0] = -x[:, 0] / a**2 + 2.0 * b * x[:, 0] * r
        g[:, 1] = -r
        return lp, g

    def _sample_iid(self, n, generator):
        z = _randn(n, self.dim, generator, self.device)
        x = z.clone()
        x[:, 0] = self.a * z[:, 0]
        x[:, 1] = z[:, 1] + self.b * (x[:, 0] ** 2 - self.a**2)
        return x


class Mixture(Target):
    """0.5 N(-s e0, I) + 0.5 N(s e0, I): two modes 2s standard deviations apart along x0."""

    def __init__(self, dim: int = 2, separation: float = 4.0, device="cpu"):
        self.name, self.dim, self.s = f"mixture-d{dim}", dim, separation
        super().__init__(device)
        self.mean = torch.zeros(dim, dtype=DTYPE)
        self.var = torch.ones(dim, dtype=DTYPE)
        self.var[0] = 1.0 + separation**2

    def _parts(self, x):
        a = -0.5 * (x[:, 0] + self.s) ** 2
        b = -0.5 * (x[:, 0] - self.s) ** 2
        return a, b

    def _log_prob(self, x):
        a, b = self._parts(x)
        rest = -0.5 * (x[:, 1:] ** 2).sum(1) - 0.5 * self.dim * math.log(2 * math.pi)
        return torch.logaddexp(a, b) - math.log(2.0) + rest

    def _grad(self, x):
        a, b = self._parts(x)
        w = torch.sigmoid(b - a)  # responsibility of the +s component
        g = -x.clone()
        g[:, 0] = -(x[:, 0] + self.s) * (1 - w) - (x[:, 0] - self.s) * w
        return g

    def _log_prob_and_grad(self, x):
        a, b = self._parts(x)
        rest = -0.5 * (x[:, 1:] ** 2).sum(1) - 0.5 * self.dim * math.log(2 * math.pi)
        w = torch.sigmoid(b - a)
        g = -x.clone()
        g[:, 0] = -(x[:, 0] + self.s) * (1 - w) - (x[:, 0] - self.s) * w
        return torch.logaddexp(a, b) - math.log(2.0) + rest, g

    def _sample_iid(self, n, generator):
        z = _randn(n, self.dim, generator, self.device)
        sign = torch.randint(0, 2, (n,), generator=generator).to(self.device, DTYPE) * 2 - 1
        z[:, 0] += self.s * sign
        return z


class Reparameterized(Target):
    """``base`` seen through a secret coordinate permutation, sign flips and shift.

    x'_i = s_i x_{perm_i} + b_i with s_i = +-1, a map of determinant +-1, so densities
    are unchanged in value and the moments move exactly (mean' = s * mean[perm] + b,
    var' = var[perm]). Drawn per cell from the evaluation's secret stream, it leaves the
    problem's geometry (and so a sampler's difficulty) as it was, while a plugin that
    knows a target's public definition cannot produce its draws or moments without
    evaluating it.
    """

    def __init__(self, base: Target, generator: torch.Generator):
        d = base.dim
        self.base, self.name, self.dim = base, base.name, d
        self.normalized, self.exact = base.normalized, base.exact
        self.capabilities, self.n_data, self.device = base.capabilities, base.n_data, base.device
        self.perm = torch.randperm(d, generator=generator)
        self.sign = torch.where(torch.rand(d, generator=generator, dtype=DTYPE) < 0.5, -1.0, 1.0)
        self.shift = torch.randn(d, generator=generator, dtype=DTYPE)
        self.perm, self.sign, self.shift = (
            t.to(base.device) for t in (self.perm, self.sign, self.shift)
        )
        inv = torch.argsort(self.perm)
        self._inv_perm, self._inv_sign = inv, self.sign[inv]
        self._inv_offset = -(self.shift * self.sign)[inv]
        cpu = (self.perm.cpu(), self.sign.cpu(), self.shift.cpu())
        self.mean = cpu[1] * base.mean[cpu[0]] + cpu[2]
        self.var = base.var[cpu[0]].clone()
        self.mean_se = base.mean_se[cpu[0]].clone()
        self.var_se = base.var_se[cpu[0]].clone()

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """Points of the base target in this target's coordinates."""
        return self.sign * x[..., self.perm] + self.shift

    def inverse_map(self, y: torch.Tensor) -> torch.Tensor:
        """Points of this target in the base target's coordinates."""
        # x[perm] = (y - shift) * sign, as one gather and one fused multiply-add (bitwise the same)
        return torch.addcmul(self._inv_offset, y[..., self._inv_perm], self._inv_sign)

    def _log_prob(self, x):
        return self.base._log_prob(self.inverse_map(x))

    def _grad(self, x):
        return self.base._grad(self.inverse_map(x))[..., self.perm] * self.sign

    def _log_prob_and_grad(self, x):
        lp, g = self.base._log_prob_and_grad(self.inverse_map(x))
        return lp, g[..., self.perm] * self.sign

    def _conditional(self, x, i):
        j = int(self.perm[i])
        m, sd = self.base._conditional(self.inverse_map(x), j)
        return self.sign[i] * m + self.shift[i], sd

    def _minibatch_grad(self, x, idx):
        return self.base._minibatch_grad(self.inverse_map(x), idx)[..., self.perm] * self.sign

    def _sample_iid(self, n, generator):
        return self.forward_map(self.base._sample_iid(n, generator))

    def init(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The base target's inits, mapped (the sampler starts where it would have)."""
        return self.forward_map(self.base.init(n, generator))


class TargetView:
    """What a sampler sees: the counted density, gradient, conditionals and minibatches, no moments."""

    __slots__ = ("_t",)

    def __init__(self, target: Target):
        self._t = target

    name = property(lambda self: self._t.name, doc="target name")
    dim = property(lambda self: self._t.dim, doc="dimension")
    device = property(lambda self: self._t.device, doc="device the target evaluates on")
    dtype = property(lambda self: DTYPE, doc="float64")
    capabilities = property(
        lambda self: self._t.capabilities, doc="gradient, conditionals, minibatch"
    )
    n_data = property(
        lambda self: self._t.n_data, doc="data points (minibatch targets), else None"
    )

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log density (nats), (n, dim) -> (n,); counted."""
        return self._t.log_prob(x)

    def grad_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Gradient of the log density, (n, dim) -> (n, dim); counted."""
        return self._t.grad_log_prob(x)

    def log_prob_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both, counted as one gradient evaluation per row."""
        return self._t.log_prob_and_grad(x)

    def conditional(self, x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of coordinate ``i``'s Gaussian full conditional; counted as 1/dim."""
        return self._t.conditional(x, i)

    def minibatch_grad(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Unbiased gradient from data points ``idx``; counted as len(idx)/n_data."""
        return self._t.minibatch_grad(x, idx)
