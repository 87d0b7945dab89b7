"""The ntk task's kernels against closed forms: the one-hidden-layer ReLU NTK, the deep
He-init diagonal, wide empirical NTKs, width^-1/2 fluctuations and the GD/flow predictors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dltbench.tasks.ntk import (
    WidthFamily,
    cntk_gap,
    empirical_ntk,
    kernel_predictor,
    loglog_slope,
    mlp_kernels,
    ntk_jacobian,
    ntk_vector_products,
)
from dltbench.tasks.ntk.methods import CNNGAP, NTKMLP
from dltbench.tasks.ntk.task import to_sphere


def sphere(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return to_sphere(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).double())


def closed_form(gamma: np.ndarray) -> np.ndarray:
    """Theta(gamma) = [sin g + 2 (pi - g) cos g] / (2 pi): sigma_w = 1, ||x||^2 / d = 1."""
    return (np.sin(gamma) + 2 * (np.pi - gamma) * np.cos(gamma)) / (2 * np.pi)


def mlp_family(d: int, width: int, depth: int, sigma_w: float, act: str = "relu", k: int = 1,
               seed: int = 0, sigma_b: float = 0.0) -> tuple[WidthFamily, torch.Tensor]:  # fmt: skip
    net = NTKMLP(d, width, k, depth, act, sigma_w, sigma_b, torch.Generator().manual_seed(seed))
    fam = WidthFamily({width: net})
    return fam, fam.init_params(width)


def test_one_hidden_layer_relu_ntk_matches_the_closed_form():
    x = sphere(20, 8).numpy()
    gamma = np.arccos(np.clip(x @ x.T / 8, -1, 1))
    _, ntk = mlp_kernels(x, x, depth=1, activation="relu", sigma_w=1.0, sigma_b=0.0)
    np.testing.assert_allclose(ntk, closed_form(gamma), atol=1e-7)
    # sigma_w^2 = 2 multiplies each of the two layers' factors: 4x the closed form
    _, he = mlp_kernels(x, x, depth=1, activation="relu", sigma_w=math.sqrt(2), sigma_b=0.0)
    np.testing.assert_allclose(he, 4 * closed_form(gamma), atol=1e-6)


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_deep_relu_recursion_he_diagonal_is_depth_plus_one_times_two_norm_over_d(depth):
    x = np.random.default_rng(0).normal(size=(6, 10)) * np.arange(1, 7)[:, None]
    nngp, ntk = mlp_kernels(x, x, depth, "relu", math.sqrt(2), 0.0)
    q = 2 * (x**2).sum(1) / 10
    np.testing.assert_allclose(np.diag(ntk), (depth + 1) * q, rtol=1e-6)
    np.testing.assert_allclose(np.diag(nngp), q, rtol=1e-6)


def test_erf_kernel_matches_monte_carlo_and_a_wide_network():
    x = sphere(5, 6, seed=3)
    nngp, ntk = mlp_kernels(x.numpy(), x.numpy(), 1, "erf", 1.0, 0.1)
    fam, theta = mlp_family(6, 20000, 1, 1.0, "erf", sigma_b=0.1)
    emp = fam.ntk(20000, theta, x).numpy()
    np.testing.assert_allclose(emp, ntk, atol=0.05)


def test_wide_empirical_relu_ntk_is_close_to_the_closed_form():
    x = sphere(8, 8)
    fam, theta = mlp_family(8, 20000, 1, 1.0)
    emp = fam.ntk(20000, theta, x).numpy()
    gamma = np.arccos(np.clip(x.numpy() @ x.numpy().T / 8, -1, 1))
    # fluctuations ~ 1/sqrt(width) = 0.007
    np.testing.assert_allclose(emp, closed_form(gamma), atol=0.04)


def test_one_layer_cntk_gap_matches_a_wide_cnn():
    x = to_sphere(torch.randn(4, 1, 5, 5, generator=torch.Generator().manual_seed(0)).double())
    _, ntk = cntk_gap(x.numpy(), x.numpy(), sigma_w=math.sqrt(2))
    net = CNNGAP((1, 5, 5), 8000, 1, math.sqrt(2), torch.Generator().manual_seed(1))
    fam = WidthFamily({8000: net})
    emp = fam.ntk(8000, fam.init_params(8000), x).numpy()
    np.testing.assert_allclose(emp, ntk, rtol=0.06, atol=0.03)


def test_jacobian_contraction_and_ntk_vector_products_agree():
    x = sphere(7, 5)
    fam, theta = mlp_family(5, 16, 2, math.sqrt(2), "erf", k=3, sigma_b=0.2)
    params = fam.split(16, theta)

    def f(ps, xx):
        return fam._call(16, ps, xx)

    a = ntk_jacobian(f, params, x, x[:4], memory=4000)  # forces chunking and recomputation
    b = ntk_vector_products(f, params, x, x[:4], memory=3000)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    sym = ntk_jacobian(f, params, x, memory=4000)
    torch.testing.assert_close(sym, ntk_vector_products(f, params, x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sym, empirical_ntk(f, params, x, impl="auto"))
    # the per-sample autograd loop (no torch.func) gives the vmap(jacrev) numbers
    torch.testing.assert_close(a, ntk_jacobian(f, params, x, x[:4], memory=4000, loop=True))
    torch.testing.assert_close(sym, empirical_ntk(f, params, x, impl="jacobian-loop"))
    # x2's whole Jacobian kept, x1 chunked (room for 6 rows: 4 of x2, chunks of 2 of x1)
    six_rows = 6 * 3 * sum(p.numel() for p in params) * 8
    torch.testing.assert_close(a, ntk_jacobian(f, params, x, x[:4], memory=six_rows))
    torch.testing.assert_close(sym, ntk_jacobian(f, params, x, memory=7 * six_rows // 6))


def test_k1_auto_loop_matches_vmap_and_needs_no_torch_func():
    """The task's path (auto-loop, K = 1) computes the vmap(jacrev) kernel without importing
    torch._dynamo (checked in a fresh interpreter)."""
    import functools
    import subprocess
    import sys

    code = (
        "import sys, math, torch\n"
        "from dltbench.tasks.ntk.family import WidthFamily\n"
        "from dltbench.tasks.ntk.methods import CnnGap, ReluNTK2\n"
        "from dltbench.tasks.ntk.task import IOSpec\n"
        "from dltbench.api import Context\n"
        "x = torch.randn(6, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))\n"
        "out = []\n"
        "for m in (ReluNTK2(), CnnGap()):\n"
        "    fam = WidthFamily({8: m.build(8, IOSpec((1, 4, 4), 1), Context(0, torch.device('cpu')))})\n"
        "    out.append(fam.ntk(8, fam.init_params(8), x, x[:3]))\n"
        "assert 'torch._dynamo' not in sys.modules\n"
        "torch.save(out, sys.argv[1])\n"
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/k.pt"
        subprocess.run([sys.executable, "-c", code, path], check=True)
        loop = torch.load(path)
    from dltbench.api import Context
    from dltbench.tasks.ntk.family import WidthFamily
    from dltbench.tasks.ntk.methods import CnnGap, ReluNTK2
    from dltbench.tasks.ntk.task import IOSpec

    x = torch.randn(6, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for m, k in zip((ReluNTK2(), CnnGap()), loop, strict=True):
        fam = WidthFamily({8: m.build(8, IOSpec((1, 4, 4), 1), Context(0, torch.device("cpu")))})
        params = fam.split(8, fam.init_params(8))
        ref = ntk_jacobian(functools.partial(fam._call, 8), params, x, x[:3])
        torch.testing.assert_close(k, ref, rtol=1e-12, atol=1e-12)


def test_flow_predictor_returns_f0_at_time_zero_and_kernel_regression_at_infinity():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(10, 10, generator=g, dtype=torch.float64)
    k = a @ a.T + 0.1 * torch.eye(10, dtype=torch.float64)
    kt = torch.randn(4, 10, generator=g, dtype=torch.float64)
    f0, f0t = torch.randn(5, 2, generator=g).double(), torch.randn(2, 2, generator=g).double()
    y = torch.randn(5, 2, generator=g).double()
    tr, te = kernel_predictor(k, kt, f0, f0t, y, 1.0, 0, discrete=False)
    torch.testing.assert_close(tr, f0)
    torch.testing.assert_close(te, f0t)
    tr, te = kernel_predictor(k, kt, f0, f0t, y, 1.0, math.inf, discrete=False)
    torch.testing.assert_close(tr, y)
    coef = torch.linalg.solve(k, (y - f0).reshape(-1))
    torch.testing.assert_close(te, f0t + (kt @ coef).reshape(2, 2))
    # many discrete steps converge to the same point
    _, te_gd = kernel_predictor(k, kt, f0, f0t, y, 0.5 * 10 / float(torch.linalg.eigvalsh(k)[-1]),
                                20000, discrete=True)  # fmt: skip
    torch.testing.assert_close(te_gd, te, rtol=1e-4, atol=1e-4)


def test_discrete_predictor_is_exact_for_a_model_linear_in_its_parameters():
    g = torch.Generator().manual_seed(1)
    phi = lambda x: torch.cat([x, torch.sin(x)], 1)  # noqa: E731  features, fixed
    x, xt = torch.randn(6, 3, generator=g).double(), torch.randn(3, 3, generator=g).double()
    y = torch.randn(6, 1, generator=g).double()
    w = torch.randn(6, 1, generator=g).double()
    k, kt = phi(x) @ phi(x).T, phi(xt) @ phi(x).T
    lr, steps = 0.5 * 6 / float(torch.linalg.eigvalsh(k)[-1]), 37
    wt = w.clone()
    for _ in range(steps):  # loss 1/2 mean (f - y)^2: gradient phi^T (f - y) / N
        wt = wt - lr * phi(x).T @ (phi(x) @ wt - y) / 6
    tr, te = kernel_predictor(k, kt, phi(x) @ w, phi(xt) @ w, y, lr, steps, discrete=True)
    torch.testing.assert_close(te, phi(xt) @ wt)
    torch.testing.assert_close(tr, phi(x) @ wt)
    # gradient flow at the same time lr * steps differs by the step-size error only
    _, flow = kernel_predictor(k, kt, phi(x) @ w, phi(xt) @ w, y, lr, steps, discrete=False)
    assert float((flow - te).abs().max()) < 0.1 * float((te - phi(xt) @ w).abs().max()) + 1e-3


def test_empirical_ntk_error_at_init_shrinks_as_width_to_minus_half():
    x = sphere(6, 8)
    _, exact = mlp_kernels(x.numpy(), x.numpy(), 1, "relu", math.sqrt(2), 0.0)
    widths = [64, 256, 1024, 4096]
    errs = []
    for w in widths:
        e = []
        for seed in range(8):
            fam, theta = mlp_family(8, w, 1, math.sqrt(2), seed=seed)
            e.append(np.linalg.norm(fam.ntk(w, theta, x).numpy() - exact) / np.linalg.norm(exact))
        errs.append(float(np.sqrt(np.mean(np.square(e)))))
    slope = loglog_slope(widths, errs)
    assert -0.6 <= slope <= -0.4, (slope, errs)
