"""Empirical NTK speed: ours vs the torch.func recipe of the PyTorch NTK tutorial.

Run: pytest -m benchmark --benchmark-enable tests/benchmarks/test_ntk_speed.py
Same network (a 301k-parameter MLP 64-512-512-10, the issue's reference size), same 200
inputs, full (N*K, N*K) kernel; pytest-benchmark prints them side by side. The tutorial
("Neural Tangent Kernels", pytorch.org/tutorials/intermediate/neural_tangent_kernels.html)
computes vmap(jacrev) per-sample Jacobians of both inputs as dicts and contracts them
parameter by parameter with einsum; ours reuses the one Jacobian of a repeated input,
contracts flat blocks with one GEMM per parameter and bounds memory by chunking. Every
mode of ours is measured in the same run (auto, jacobian = vmap(jacrev), jacobian-loop =
per-sample autograd without torch.func, ntvp = NTK-vector products, layers = the
closed form of nn.Linear layers), so the ratios to the tutorial's row are comparable.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from dltbench.tasks.ntk import empirical_ntk, empirical_ntk_layers

pytestmark = pytest.mark.benchmark
N = 200


def setup():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                        nn.Linear(512, 10))  # fmt: skip
    assert sum(p.numel() for p in net.parameters()) == 301_066
    params = {k: v.detach() for k, v in net.named_parameters()}
    return net, params, torch.randn(N, 64)


def tutorial_ntk(net, params, x1, x2):
    """The tutorial's empirical_ntk_jacobian_contraction, verbatim in substance."""

    def fnet_single(p, x):
        return functional_call(net, p, (x.unsqueeze(0),)).squeeze(0)

    jac1 = vmap(jacrev(fnet_single), (None, 0))(params, x1)
    jac1 = [j.flatten(2) for j in jac1.values()]
    jac2 = vmap(jacrev(fnet_single), (None, 0))(params, x2)
    jac2 = [j.flatten(2) for j in jac2.values()]
    result = torch.stack(
        [torch.einsum("Naf,Mbf->NMab", j1, j2) for j1, j2 in zip(jac1, jac2, strict=True)]
    )
    return result.sum(0)


def ours(net, params, x, impl="auto", memory=2**28):
    names = list(params)

    def f(ps, xx):
        return functional_call(net, dict(zip(names, ps, strict=True)), (xx,))

    return empirical_ntk(f, tuple(params.values()), x, None, impl=impl, memory=memory)


def test_tutorial_recipe(benchmark):
    net, params, x = setup()
    benchmark.group = "empirical NTK, 301k-param MLP, 200 inputs, K=10"
    out = benchmark.pedantic(lambda: tutorial_ntk(net, params, x, x), rounds=1, iterations=1)
    assert out.shape == (N, N, 10, 10)


@pytest.mark.parametrize("impl", ["auto", "jacobian", "jacobian-loop", "ntvp"])
def test_ours(benchmark, impl):
    net, params, x = setup()
    benchmark.group = "empirical NTK, 301k-param MLP, 200 inputs, K=10"
    out = benchmark.pedantic(lambda: ours(net, params, x, impl), rounds=1, iterations=1)
    ref = tutorial_ntk(net, params, x[:20], x[:20]).permute(0, 2, 1, 3).reshape(200, 200)
    torch.testing.assert_close(out[:200, :200], ref, rtol=1e-4, atol=1e-4)


def test_ours_within_a_memory_budget(benchmark):
    """64 MiB of Jacobian chunks (the full Jacobian is 2.4 GB in float32... here 0.24 GB)."""
    net, params, x = setup()
    benchmark.group = "empirical NTK, 301k-param MLP, 200 inputs, K=10"
    out = benchmark.pedantic(
        lambda: ours(net, params, x, "jacobian", memory=2**26), rounds=1, iterations=1
    )
    assert out.shape == (N * 10, N * 10)


def test_ours_layers(benchmark):
    """The closed form of nn.Linear layers (what the task's families use), same network."""
    net, params, x = setup()
    benchmark.group = "empirical NTK, 301k-param MLP, 200 inputs, K=10"
    out = benchmark.pedantic(lambda: empirical_ntk_layers(net, params, x), rounds=1, iterations=1)
    ref = tutorial_ntk(net, params, x[:20], x[:20]).permute(0, 2, 1, 3).reshape(200, 200)
    torch.testing.assert_close(out[:200, :200], ref, rtol=1e-4, atol=1e-4)
