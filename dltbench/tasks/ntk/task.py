"""The ``ntk`` task: how far a trained finite-width network is from its neural tangent kernel.

A method is an architecture family with a declared parameterisation: ``build(width, io,
ctx) -> nn.Module``. The module stays in the plugin process; the harness owns the
parameters, trains them by full-batch gradient descent through the remote model's
autograd, and audits every kernel and gradient the plugin process computes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from ... import data as datasets
from ...api import Context, Evaluation, InvalidArtifact, Method, MetricSpec, Task, profile_entry
from ...registry import register_task
from .family import WidthFamily
from .kernels import CATALOGUE, analytic_ntk, check_spec, kernel_predictor, loglog_slope

#: Fixed seed of the harness's subsample of each dataset (never the run's seed): every seed
#: and method sees the same points; the seed only changes the networks' initialisation.
SUBSET_SEED = 20191106
#: Largest learning-rate factor a method may declare (2 is the stability edge of GD on the
#: linearised model, in units of its top eigenvalue).
MAX_LR_FACTOR = 1.9
#: Largest (point pair x position pair) count of an analytic CNTK the harness computes.
MAX_CNTK_ENTRIES = 5 * 10**8
#: Tolerance of the finite-difference audit, in units of the check's standard deviation
#: (a relative gradient error). 1e-4 in version 1; honest nets measure up to 1.4e-4 after
#: training at width 2048, where gradient descent pins training points' pre-activations
#: at the ReLU kink (see _fd_check).
FD_TOL = 1e-3
#: Fewest widths within the parameter budget for a cell to be scored (exponents need a grid;
#: a grid of fewer widths must be scored whole).
MIN_WIDTHS = 3


@dataclass(frozen=True)
class IOSpec:
    """What ``build`` needs to know: one input's shape (C, H, W) and the number of outputs."""

    in_shape: tuple[int, ...]
    n_outputs: int


@dataclass(frozen=True)
class NtkConfig:
    """Everything one cell's numbers depend on besides the method and the seed."""

    dataset: str  # digits-sphere | synthetic-sphere | mnist | cifar10
    widths: tuple[int, ...]  # the width grid (log-spaced)
    n_train: int  # training points (fixed subsample)
    n_test: int  # test points (fixed subsample)
    n_outputs: int  # 1: targets +-1 (binary); 10: centred one-hot
    steps: int  # full-batch gradient-descent steps
    lr_factor: float = 0.5  # lr = lr_factor * N*K / lambda_max(Theta_0 on the train set)
    audit_probes: int = 2  # random probe pairs per kernel audit
    max_params: int = 50_000_000  # parameter budget: a width whose module has more is skipped
    memory_mb: int = 256  # Jacobian memory budget of the empirical NTK (plugin side)


_PROFILES = {
    # max_params: theta (float64) crosses the plugin boundary twice per GD step; 4.5M
    # parameters (36 MB) keeps the quick run within its time (docs/tasks/ntk.md, Profiles)
    "quick": dict(datasets=("digits-sphere", "synthetic-sphere"),
                  widths=(64, 128, 256, 512, 1024, 2048), n_train=64, n_test=64, n_outputs=1,
                  steps=60, memory_mb=512, max_params=4_500_000),
    "standard": dict(datasets=("mnist", "cifar10"),
                     widths=(64, 128, 256, 512, 1024, 2048, 4096, 8192),
                     n_train=1000, n_test=1000, n_outputs=10, steps=500, memory_mb=4096),
    "paper": dict(datasets=("cifar10",), widths=(128, 256, 512, 1024, 2048, 4096, 8192),
                  n_train=5000, n_test=2000, n_outputs=10, steps=1000, memory_mb=16384),
}  # fmt: skip


class NtkMethod(Method):
    """Protocol of an ``ntk`` method: an architecture family, one module per width."""

    #: Optional: a learning-rate factor replacing the config's (in (0, 1.9]), e.g. for a
    #: parameterisation that wants a smaller step. The harness validates it.
    lr_factor: float | None = None

    @abstractmethod
    def build(self, width: int, io: IOSpec, ctx: Context) -> nn.Module:
        """Return an nn.Module of hidden width ``width`` mapping (N, *io.in_shape) to (N, K).

        Its parameters are its initialisation (drawn from ``ctx``); the harness trains
        them as one flat vector. It must be a deterministic function of its parameters
        and of each input row alone (no batch statistics, no dropout).
        """

    def infinite_width_kernel(self, io: IOSpec) -> dict[str, Any] | None:
        """The analytic NTK of the family as a catalogue spec (see kernels.CATALOGUE), or None."""
        return None


@dataclass
class NtkData:
    """A harness-owned problem: inputs on the sphere of radius sqrt(d) and targets."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def to_sphere(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` (any shape (N, ...)) scaled to norm sqrt(d), d = numel of one row."""
    flat = x.reshape(len(x), -1).double()
    d = flat.shape[1]
    return (flat * math.sqrt(d) / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view(x.shape)


def targets(labels: torch.Tensor, n_outputs: int, n_classes: int) -> torch.Tensor:
    """(N, K) float64 regression targets: +-1 (class < n_classes/2 is -1) or centred one-hot."""
    if n_outputs == 1:
        return torch.where(labels >= n_classes // 2, 1.0, -1.0).double()[:, None]
    return torch.nn.functional.one_hot(labels, n_outputs).double() - 1.0 / n_outputs


def synthetic_sphere(n_train: int, n_test: int, n_outputs: int) -> NtkData:
    """Uniform points on the sphere of radius 8 in R^64 (as 1x8x8 images), teacher labels.

    Labels are sign(x.a/8 + (x.b/8)(x.c/8)) (K=1) or the argmax of K such teachers;
    the inputs lie exactly on the sphere, so the analytic kernels are exact there.
    """
    g = torch.Generator().manual_seed(SUBSET_SEED)
    x = to_sphere(torch.randn(n_train + n_test, 1, 8, 8, generator=g, dtype=torch.float64))
    heads = max(n_outputs, 1)
    a, b, c = (torch.randn(3, 64, heads, generator=g, dtype=torch.float64) / 8).unbind(0)
    flat = x.reshape(len(x), -1) / 8
    score = flat @ a + (flat @ b) * (flat @ c)
    if n_outputs == 1:
        y = torch.where(score[:, 0] > 0, 1.0, -1.0).double()[:, None]
    else:
        y = targets(score.argmax(1), n_outputs, n_outputs)
    return NtkData("synthetic-sphere", x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def image_problem(ds: datasets.ImageDataset, config: NtkConfig, name: str) -> NtkData:
    """A fixed stratified-by-chance subsample of an image dataset, centred, on the sphere."""
    rng = np.random.default_rng(SUBSET_SEED)
    itr = rng.permutation(len(ds.train))[: config.n_train]
    ite = rng.permutation(len(ds.test))[: config.n_test]
    xtr, xte = ds.train.x[itr].double(), ds.test.x[ite].double()
    mean = xtr.mean(0, keepdim=True)  # centring by the training mean only
    k = config.n_outputs
    return NtkData(
        name,
        to_sphere(xtr - mean),
        targets(ds.train.y[itr], k, ds.num_classes),
        to_sphere(xte - mean),
        targets(ds.test.y[ite], k, ds.num_classes),
    )


@register_task
class NtkTask(Task):
    """Finite-width networks vs their NTK across widths: kernel drift, linearisation gaps."""

    name = "ntk"
    version = "2"
    description = "kernel drift and trained-vs-linearised/NTK output gaps across widths"
    method_type = NtkMethod
    protocol = "build"
    primary_metric = "drift_exponent"
    setting_keys = ("dataset",)
    artifact_attributes = ("kernel", "lr_factor", "widths")
    test_size_fields = ("n_test",)
    metrics = (
        MetricSpec("drift_exponent", False, "log-log slope",
                   "fitted slope of log kernel drift vs log width (lower: lazier faster; "
                   "NTK theory: <= -1/2)", -10.0, 10.0),
        MetricSpec("gap_lin_exponent", None, "log-log slope",
                   "fitted slope of log RMS(net - linearised net) on test vs log width",
                   -10.0, 10.0),
        MetricSpec("gap_ntk0_exponent", None, "log-log slope",
                   "fitted slope of log RMS(net - Theta_0 gradient-flow predictor) vs log width",
                   -10.0, 10.0),
        MetricSpec("max_width", None, "units (channels)",
                   "largest width scored: the grid's, or the largest within the parameter "
                   "budget (max_params); every *_at_max_width and accuracy is at this width",
                   1.0),
        MetricSpec("drift_at_max_width", None, "relative Frobenius",
                   "||Theta_T - Theta_0||_F / ||Theta_0||_F on train points, largest width", 0.0),
        MetricSpec("weight_change_at_max_width", None, "relative l2",
                   "||theta_T - theta_0|| / ||theta_0||, largest width", 0.0),
        MetricSpec("gap_lin_at_max_width", None, "target units (RMS)",
                   "RMS over test points and outputs of net - linearised net, largest width", 0.0),
        MetricSpec("gap_ntk0_at_max_width", None, "target units (RMS)",
                   "RMS of net - Theta_0 gradient-flow predictor at matched time, largest width",
                   0.0),
        MetricSpec("gap_analytic_at_max_width", None, "target units (RMS)",
                   "RMS of net - analytic-NTK gradient-flow predictor (declared kernels only)",
                   0.0),
        MetricSpec("net_test_acc", True, "fraction", "trained network's test accuracy, largest width"),
        MetricSpec("lin_test_acc", True, "fraction", "linearised network's test accuracy, largest width"),
        MetricSpec("ntk0_test_acc", True, "fraction",
                   "Theta_0 gradient-flow predictor's test accuracy, largest width"),
        MetricSpec("analytic_test_acc", True, "fraction",
                   "analytic-NTK predictor's test accuracy (f_0 = 0: the infinite-width mean)"),
        MetricSpec("net_test_loss", False, "1/2 MSE", "trained network's test loss, largest width", 0.0),
        MetricSpec("init_kernel_error_at_max_width", None, "relative Frobenius",
                   "||Theta_0 - Theta_analytic||_F / ||Theta_analytic||_F (declared kernels)", 0.0),
    )  # fmt: skip

    def configs(self, profile: str) -> list[NtkConfig]:
        """One config per dataset of ``profile``."""
        p = dict(profile_entry(_PROFILES, profile))
        names = p.pop("datasets")
        return [NtkConfig(dataset=n, **p) for n in names]

    def smoke(self, config: NtkConfig) -> NtkConfig:
        """A seconds-long version: three small widths, few points and steps."""
        return dataclasses.replace(
            config, widths=(16, 32, 64), n_train=16, n_test=16, steps=5, audit_probes=1
        )

    def check_data(self, config: NtkConfig, data_dir) -> None:
        """Fail early, with what to put where, if the dataset is missing."""
        if config.dataset in ("mnist", "cifar10"):
            datasets.load(config.dataset, data_dir)

    def prepare(self, config: NtkConfig, ctx: Context) -> NtkData:
        """The fixed train/test subsample, inputs on the sphere of radius sqrt(d)."""
        if config.dataset == "synthetic-sphere":
            return synthetic_sphere(config.n_train, config.n_test, config.n_outputs)
        name = "digits" if config.dataset == "digits-sphere" else config.dataset
        return image_problem(datasets.load(name, ctx.data_dir), config, config.dataset)

    def train_view(self, data: NtkData, config: NtkConfig) -> dict[str, Any]:
        """Only the input shape, number of outputs and the width grid: no data at all."""
        return {"io": IOSpec(tuple(data.x_train.shape[1:]), config.n_outputs),
                "widths": tuple(config.widths)}  # fmt: skip

    def fit(self, method: NtkMethod, data: dict, config: NtkConfig, ctx: Context) -> WidthFamily:
        """Build the method's module at every width (in the plugin process)."""
        io = data["io"]
        modules = {}
        for i, w in enumerate(data["widths"]):
            modules[int(w)] = method.build(int(w), io, ctx)
            ctx.progress("build", i + 1, len(data["widths"]))
        return WidthFamily(
            modules,
            kernel=method.infinite_width_kernel(io),
            lr_factor=getattr(method, "lr_factor", None),
            memory=config.memory_mb * 2**20,
        )

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, artifact, data: NtkData, config: NtkConfig, ctx: Context) -> Evaluation:
        """Per width: audit, train by GD, measure drift and output gaps; fit exponents."""
        attrs = getattr(artifact, "attributes", {}) or {}
        lr_factor = _lr_factor(attrs.get("lr_factor"), config)
        kernel_spec = _kernel_spec(attrs.get("kernel"))
        analytic = None if kernel_spec is None else analytic_kernels(kernel_spec, data, config)
        widths, skipped = widths_within_budget(artifact, config)
        rows = []
        for i, w in enumerate(widths):
            start = time.perf_counter()
            rows.append(evaluate_width(artifact, w, data, config, ctx, lr_factor, analytic))
            rows[-1]["eval_s"] = time.perf_counter() - start
            ctx.progress("widths", i + 1, len(widths))
        return summarise(rows, data, config, lr_factor, kernel_spec, skipped)

    def adjust_leaderboard(self, df, records, load):
        """Add a 95% Student-t confidence half-width over seeds for the two exponents."""
        if df.empty:
            return df
        df = df.copy()
        for m in ("drift_exponent", "gap_lin_exponent"):
            if f"{m}_std" in df.columns:
                n = df["n_seeds"].astype(float)
                t = [stats.t.ppf(0.975, k - 1) if k > 1 else float("nan") for k in n]
                df[f"{m}_ci95"] = np.asarray(t) * df[f"{m}_std"].astype(float) / np.sqrt(n)
        return df


def widths_within_budget(proxy: Any, config: NtkConfig) -> tuple[list[int], list[int]]:
    """(widths to score, widths skipped) of the grid: a width whose module has more than
    ``config.max_params`` parameters (as the family reports; a width it under-reports is
    invalid when its ``init_params`` exceeds the budget) is skipped. Fewer than MIN_WIDTHS
    left (or than the grid has, if it has fewer) is invalid."""
    run, skipped = [], []
    for w in config.widths:
        p = proxy.call("n_params", int(w))
        if isinstance(p, bool) or not isinstance(p, int) or p <= 0:
            raise InvalidArtifact(f"n_params({w}) must be a positive integer")
        (run if p <= config.max_params else skipped).append(int(w))
    if len(run) < min(MIN_WIDTHS, len(config.widths)):
        raise InvalidArtifact(
            f"only widths {run} of {list(config.widths)} have at most {config.max_params} "
            f"parameters (the profile's budget); at least {MIN_WIDTHS} are needed"
        )
    return run, skipped


def _lr_factor(declared: Any, config: NtkConfig) -> float:
    """The config's factor, or the method's declared one if it is a number in (0, 1.9]."""
    if declared is None:
        return config.lr_factor
    if isinstance(declared, bool) or not isinstance(declared, (int, float)):
        raise InvalidArtifact("lr_factor must be a number")
    if not 0 < declared <= MAX_LR_FACTOR:
        raise InvalidArtifact(f"lr_factor must be in (0, {MAX_LR_FACTOR}] (GD stability)")
    return float(declared)


def _kernel_spec(spec: Any) -> dict | None:
    """A declared catalogue kernel, validated (names and hyper-parameters), or None."""
    if spec is None:
        return None
    try:
        return check_spec(spec)
    except ValueError as exc:
        raise InvalidArtifact(f"declared kernel is invalid: {exc}") from exc


# ---------------------------------------------------------------------- remote calls, checked


def _finite(v: torch.Tensor) -> bool:
    """Whether every entry is finite (min and max propagate NaN; one pass, no bool copy:
    ~10x faster than isfinite().all() on the 8.5M-entry theta of a width-2048 MLP)."""
    if v.numel() == 0:
        return True
    lo, hi = torch.aminmax(v.detach().reshape(-1))
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def _tensor(v: Any, shape: tuple[int, ...] | None, what: str) -> torch.Tensor:
    if not isinstance(v, torch.Tensor) or not v.is_floating_point():
        raise InvalidArtifact(f"{what} is not a floating-point tensor")
    if shape is not None and tuple(v.shape) != shape:
        raise InvalidArtifact(f"{what} has shape {tuple(v.shape)}, expected {shape}")
    if not _finite(v):
        raise InvalidArtifact(f"{what} is not finite")
    return v.double()


class Probe:
    """The harness's checked view of one width of the remote family."""

    def __init__(self, proxy: Any, width: int, k: int):
        self.proxy, self.width, self.k = proxy, width, k

    def apply(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Outputs (N, K), checked; differentiable in ``theta`` through the remote VJP."""
        out = self.proxy.method("apply", self.width, theta, x)
        return _tensor(out, (len(x), self.k), f"apply at width {self.width}")

    def ntk(self, theta: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor | None) -> torch.Tensor:
        """Empirical NTK (N1*K, N2*K) as the plugin process computes it, shape-checked."""
        n2 = len(x1 if x2 is None else x2)
        out = self.proxy.call("ntk", self.width, theta, x1, x2)
        return _tensor(out, (len(x1) * self.k, n2 * self.k), f"ntk at width {self.width}")

    def vjp(self, theta: torch.Tensor, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """J(x)^T u by the remote VJP (u is (N, K))."""
        th = theta.detach().requires_grad_(True)  # a new leaf on the same storage
        with torch.enable_grad():
            out = self.apply(th, x)
            (g,) = torch.autograd.grad(out, th, u)
        return _tensor(g, tuple(theta.shape), f"gradient at width {self.width}")


def audit_kernel(
    probe: Probe,
    theta: torch.Tensor,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    kernel: torch.Tensor,
    gen: torch.Generator,
    probes: int,
) -> dict[str, float]:
    """Check the plugin's kernel and gradients against the definition; raise InvalidArtifact.

    For random u (outputs) and v (parameters) drawn from the evaluation's stream:
    (1) u^T J v by the remote VJP equals the central finite difference of ``apply`` along v
    (the Jacobian's definition; step 1e-7 of ||theta||, then 1e-9, then up to two more
    directions v, each only if the last failed) within
    FD_TOL of its standard deviation ||J^T u|| ||v|| / sqrt(P); (2) u1^T Theta u2 equals <J1^T u1, J2^T u2> within 1e-8 ||J1^T u1|| ||J2^T u2||
    (float64 rounding). A fake kernel D != Theta fails (2) with probability ~1 (the
    difference has standard deviation ||D - Theta||_F); a gradient inconsistent with the
    forward fails (1). Returns the worst relative errors.
    """
    x2v = x1 if x2 is None else x2
    k = probe.k
    worst_fd = worst_k = 0.0
    for _ in range(probes):
        u1 = torch.randn(len(x1), k, generator=gen, dtype=torch.float64)
        u2 = torch.randn(len(x2v), k, generator=gen, dtype=torch.float64)
        g1, g2 = probe.vjp(theta, x1, u1), probe.vjp(theta, x2v, u2)
        for x, u, g in ((x1, u1, g1), (x2v, u2, g2)):
            rel, lhs, rhs = _fd_check(probe, theta, x, u, g, gen)
            worst_fd = max(worst_fd, rel)
            if not rel <= FD_TOL:
                raise InvalidArtifact(
                    f"audit at width {probe.width}: the gradient u^T J v = {rhs:.6g} from the "
                    f"model's VJP disagrees with the finite difference of its forward {lhs:.6g}"
                )
        quad = float(u1.reshape(-1) @ kernel @ u2.reshape(-1))
        inner = float(g1 @ g2)
        scale = float(g1.norm() * g2.norm()) + 1e-30
        rel = abs(quad - inner) / scale
        worst_k = max(worst_k, rel)
        if not rel <= 1e-8:
            raise InvalidArtifact(
                f"audit at width {probe.width}: the plugin's NTK gives u1^T Theta u2 = {quad:.6g} "
                f"but the model's gradients give <J^T u1, J^T u2> = {inner:.6g}"
            )
    return {"fd": worst_fd, "kernel": worst_k}


def _fd_check(probe: Probe, theta, x, u, g, gen) -> tuple[float, float, float]:
    """(relative error, finite difference, u^T J v) of the best of up to three directions v.

    A ReLU kink inside the step spoils a finite difference; it was seen to spoil both step
    sizes of one direction (an honest built-in judged invalid). Gradient descent also pins
    some training points' pre-activations at a kink (muP at width 2048 after training:
    0.1% of (unit, point) pairs within 1e-6 of 0, none at initialisation): then every
    direction and step crosses it, and honest errors reach 1.4e-4 (hence FD_TOL = 1e-3).
    A gradient inconsistent with the forward fails every direction.
    """
    best = (float("inf"), float("nan"), float("nan"))
    for _ in range(3):
        # drawn in float32 (2.5x faster at P = 8.5M; still a continuous random direction)
        v = torch.randn(theta.shape, generator=gen, dtype=torch.float32).double()
        v *= theta.norm().clamp_min(1.0) / v.norm()
        rhs = float(g @ v)
        sd = float(g.norm() * v.norm()) / math.sqrt(theta.numel()) + 1e-30
        for eps in (1e-7, 1e-9):
            with torch.no_grad():
                up, down = torch.add(theta, v, alpha=eps), torch.add(theta, v, alpha=-eps)
                fd = (probe.apply(up, x) - probe.apply(down, x)) / (2 * eps)
            lhs = float((u * fd).sum())
            if abs(lhs - rhs) / sd < best[0]:
                best = (abs(lhs - rhs) / sd, lhs, rhs)
            if best[0] <= FD_TOL:
                return best  # further steps and directions are asked only on failure
    return best


def _row_check(probe: Probe, theta: torch.Tensor, x: torch.Tensor, out: torch.Tensor, gen) -> None:
    """Rows asked alone, in another order, must get the answers they got in the batch."""
    idx = torch.randperm(len(x), generator=gen)[: min(4, len(x))]
    again = probe.apply(theta, x[idx])
    if not torch.allclose(again, out[idx], rtol=1e-6, atol=1e-9):
        raise InvalidArtifact(
            f"apply at width {probe.width} answers rows differently alone than in a batch: "
            "outputs must depend only on their own input row and on theta"
        )


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    if y.shape[1] == 1:
        return float(((pred[:, 0] > 0) == (y[:, 0] > 0)).double().mean())
    return float((pred.argmax(1) == y.argmax(1)).double().mean())


def _loss(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float(0.5 * ((pred - y) ** 2).mean())


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean().sqrt())


def evaluate_width(
    proxy: Any,
    width: int,
    data: NtkData,
    config: NtkConfig,
    ctx: Context,
    lr_factor: float,
    analytic: tuple[torch.Tensor, torch.Tensor] | None,
) -> dict[str, Any]:
    """One width: audited kernels at init and after training, the predictors and their gaps."""
    k = config.n_outputs
    probe = Probe(proxy, width, k)
    xtr, ytr, xte, yte = data.x_train, data.y_train, data.x_test, data.y_test
    n = len(xtr)
    theta0 = _tensor(proxy.call("init_params", width), None, f"init_params({width})")
    if theta0.dim() != 1 or not 0 < theta0.numel() <= config.max_params:
        raise InvalidArtifact(
            f"init_params({width}) must be a vector of at most {config.max_params} parameters"
        )
    p = theta0.numel()
    xall = torch.cat([xtr, xte])
    with torch.no_grad():
        f0_all = probe.apply(theta0, xall)
    _row_check(probe, theta0, xall, f0_all, ctx.generator)
    f0_tr, f0_te = f0_all[:n], f0_all[n:]
    # Theta_0 on (train + test) x train: what the linearised and kernel predictors need.
    k0 = probe.ntk(theta0, xall, xtr)
    audit0 = audit_kernel(probe, theta0, xall, xtr, k0, ctx.generator, config.audit_probes)
    k0_tr, k0_te = k0[: n * k], k0[n * k :]
    lam_max = float(torch.linalg.eigvalsh((k0_tr + k0_tr.T) / 2)[-1])
    if not lam_max > 0:
        raise InvalidArtifact(f"the NTK at width {width} is zero on the training set")
    lr = lr_factor * n * k / lam_max
    theta = theta0.clone()
    losses = []
    for _ in range(config.steps):
        th = theta.detach().requires_grad_(True)  # a new leaf on theta's storage
        with torch.enable_grad():
            loss = 0.5 * ((probe.apply(th, xtr) - ytr) ** 2).mean()
            (grad,) = torch.autograd.grad(loss, th)
        losses.append(float(loss.detach()))
        # In place: theta was copied into the request, and the graph is gone (allocating a
        # fresh 67 MB vector per step costs its page faults at width 2048).
        theta.add_(_tensor(grad, (p,), f"gradient at width {width}"), alpha=-lr)
    with torch.no_grad():
        ft_all = probe.apply(theta, xall)
    ft_tr, ft_te = ft_all[:n], ft_all[n:]
    kt = probe.ntk(theta, xtr, None)
    audit_t = audit_kernel(probe, theta, xtr, None, kt, ctx.generator, config.audit_probes)
    drift = float((kt - k0_tr).norm() / k0_tr.norm())
    lin_tr, lin_te = kernel_predictor(k0_tr, k0_te, f0_tr, f0_te, ytr, lr, config.steps, True)
    flow_tr, flow_te = kernel_predictor(k0_tr, k0_te, f0_tr, f0_te, ytr, lr, config.steps, False)
    row = {
        "width": width, "n_params": p, "lr": lr, "time": lr * config.steps,
        "drift": drift, "weight_change": float((theta - theta0).norm() / theta0.norm()),
        "gap_lin": _rms(ft_te, lin_te), "gap_ntk0": _rms(ft_te, flow_te),
        "gap_lin_train": _rms(ft_tr, lin_tr),
        "net_test_loss": _loss(ft_te, yte), "net_test_acc": _accuracy(ft_te, yte),
        "net_train_loss": _loss(ft_tr, ytr),
        "lin_test_loss": _loss(lin_te, yte), "lin_test_acc": _accuracy(lin_te, yte),
        "ntk0_test_loss": _loss(flow_te, yte), "ntk0_test_acc": _accuracy(flow_te, yte),
        "train_loss_curve": losses[:: max(1, len(losses) // 50)],
        "audit_fd_rel": max(audit0["fd"], audit_t["fd"]),
        "audit_kernel_rel": max(audit0["kernel"], audit_t["kernel"]),
    }  # fmt: skip
    if analytic is not None:
        row.update(_analytic(analytic, data, k0_tr, f0_tr, f0_te, ft_te, lr, config.steps))
    return row


def analytic_kernels(spec: dict, data: NtkData, config: NtkConfig):
    """The declared analytic NTK on train x train and test x train, (N*K, N*K) and (M*K, N*K);
    None when a CNTK would need more than MAX_CNTK_ENTRIES patch-pair entries."""
    xtr, xte = data.x_train.numpy(), data.x_test.numpy()
    if spec["name"] == "relu_cntk_gap":
        positions = math.prod(xtr.shape[2:])
        cost = len(xtr) * (len(xtr) + len(xte)) * positions**2
        if cost > MAX_CNTK_ENTRIES:
            return None  # the patch-pair tensor would not fit: the estimator says so
    n = len(xtr)
    full = analytic_ntk(spec, np.concatenate([xtr, xte]), xtr)
    eye = np.eye(config.n_outputs)
    return torch.from_numpy(np.kron(full[:n], eye)), torch.from_numpy(np.kron(full[n:], eye))


def _analytic(analytic, data: NtkData, k0_tr, f0_tr, f0_te, ft_te, lr, steps) -> dict[str, float]:
    """Gaps and scores of the declared analytic NTK's gradient-flow predictor."""
    a_tr, a_te = analytic
    _, pred = kernel_predictor(a_tr, a_te, f0_tr, f0_te, data.y_train, lr, steps, False)
    zero_tr, zero_te = torch.zeros_like(f0_tr), torch.zeros_like(f0_te)
    _, mean_pred = kernel_predictor(a_tr, a_te, zero_tr, zero_te, data.y_train, lr, steps, False)
    return {
        "gap_analytic": _rms(ft_te, pred),
        "init_kernel_error": float((k0_tr - a_tr).norm() / a_tr.norm()),
        "analytic_test_loss": _loss(mean_pred, data.y_test),
        "analytic_test_acc": _accuracy(mean_pred, data.y_test),
    }


def summarise(
    rows: list[dict],
    data: NtkData,
    config: NtkConfig,
    lr_factor: float,
    spec: dict | None,
    skipped: list[int] | tuple[int, ...] = (),
) -> Evaluation:
    """Exponents over the widths scored, the largest one's numbers, and the per-width curves."""
    widths = [r["width"] for r in rows]
    last = rows[-1]
    metrics = {
        "max_width": float(last["width"]),
        "drift_exponent": loglog_slope(widths, [r["drift"] for r in rows]),
        "gap_lin_exponent": loglog_slope(widths, [r["gap_lin"] for r in rows]),
        "gap_ntk0_exponent": loglog_slope(widths, [r["gap_ntk0"] for r in rows]),
        "drift_at_max_width": last["drift"],
        "weight_change_at_max_width": last["weight_change"],
        "gap_lin_at_max_width": last["gap_lin"],
        "gap_ntk0_at_max_width": last["gap_ntk0"],
        "gap_analytic_at_max_width": last.get("gap_analytic", float("nan")),
        "net_test_acc": last["net_test_acc"],
        "lin_test_acc": last["lin_test_acc"],
        "ntk0_test_acc": last["ntk0_test_acc"],
        "analytic_test_acc": last.get("analytic_test_acc", float("nan")),
        "net_test_loss": last["net_test_loss"],
        "init_kernel_error_at_max_width": last.get("init_kernel_error", float("nan")),
    }
    keys = [k for k in rows[0] if k != "train_loss_curve"]
    curves = {key: [r.get(key) for r in rows] for key in keys}
    curves["train_loss_curve"] = {str(r["width"]): r["train_loss_curve"] for r in rows}
    estimator = {
        "dataset": data.name, "n_train": len(data.x_train), "n_test": len(data.x_test),
        "n_outputs": config.n_outputs, "widths": list(config.widths),
        "widths_scored": widths, "widths_skipped": list(skipped), "max_params": config.max_params,
        "width_budget": "a width whose module has more than max_params parameters is skipped; "
                        "the exponents are fitted over widths_scored",
        "inputs": "rows scaled to norm sqrt(d) (on the sphere); images centred by the train mean",
        "targets": "+-1 (K=1) or one-hot minus 1/K",
        "loss": "1/2 * mean over points and outputs of (f - y)^2 (divisor N*K)",
        "training": f"full-batch gradient descent, {config.steps} steps, harness-owned parameters",
        "lr_rule": "lr = lr_factor * N*K / lambda_max(Theta_0 on train points), per width",
        "lr_factor": lr_factor,
        "time_matching": "Theta_0 and analytic predictors: gradient flow for t = lr * steps; "
                         "linearised net: the same discrete GD steps (exact for it)",
        "kernel_points": "Theta_0 on (train+test) x train; Theta_T (drift) on train x train",
        "gaps": "RMS over test points and outputs; gap_analytic uses the net's own f_0, "
                "analytic_test_acc uses f_0 = 0 (the infinite-width mean predictor)",
        "exponents": "least-squares slope of log metric vs log width over widths_scored",
        "analytic_kernel": spec,
        "analytic_computed": "gap_analytic" in last,
        "audit": f"per kernel: u^T J v vs central finite difference (rel {FD_TOL:g} of its sd), "
                 f"u1^T Theta u2 vs <J^T u1, J^T u2> (rel 1e-8), {config.audit_probes} probes",
        "subset_seed": SUBSET_SEED,
    }  # fmt: skip
    return Evaluation(metrics, curves, estimator)


__all__ = ["CATALOGUE", "IOSpec", "NtkConfig", "NtkData", "NtkMethod", "NtkTask"]
