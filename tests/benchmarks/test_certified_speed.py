"""CERTIFY throughput vs a plain batched forward pass and vs the per-point reference loop.

Run: pytest -m benchmark --benchmark-enable tests/benchmarks/test_certified_speed.py
All three do the same number of noisy forward passes of the same model; pytest-benchmark
prints them side by side per group, with their ratios. Targets (issue 2): at least the
per-point reference's throughput, within 10% of the plain forward pass.
"""

from __future__ import annotations

import pytest
import torch

from dltbench.models import MLP, SmallCNN
from dltbench.tasks.certified import certify_batch
from tests.reference.cohen_reference import certify_reference

pytestmark = pytest.mark.benchmark
POINTS, N0, N, SIGMA, BATCH = 20, 100, 2000, 0.25, 1000
MODELS = {
    "mlp-digits": (lambda: MLP(64, 10), (1, 8, 8)),
    "cnn-mnist": (lambda: SmallCNN(1, 10, side=28), (1, 28, 28)),
}


def setup(name: str):
    torch.manual_seed(0)
    factory, shape = MODELS[name]
    return factory().eval(), torch.rand(POINTS, *shape)


@pytest.mark.parametrize("name", list(MODELS))
def test_ours_batched(benchmark, name):
    model, x = setup(name)
    benchmark.group = f"certify {name}"
    benchmark.extra_info["noisy_forwards"] = POINTS * (N0 + N)
    labels, _, _ = benchmark(
        certify_batch, model, x, SIGMA, N0, N, 0.001, BATCH, torch.Generator().manual_seed(0)
    )
    assert labels.shape == (POINTS,)


@pytest.mark.parametrize("name", list(MODELS))
def test_plain_forward(benchmark, name):
    model, x = setup(name)
    benchmark.group = f"certify {name}"
    total = POINTS * (N0 + N)
    noisy = [
        x[i % POINTS].expand(BATCH, *x.shape[1:]) + SIGMA * torch.randn(BATCH, *x.shape[1:])
        for i in range(total // BATCH)
    ]

    @torch.no_grad()
    def forward_only():
        return [model(b).argmax(1) for b in noisy]

    benchmark(forward_only)


@pytest.mark.parametrize("name", list(MODELS))
def test_reference_per_point_loop(benchmark, name):
    model, x = setup(name)
    benchmark.group = f"certify {name}"
    gen = torch.Generator().manual_seed(0)

    def per_point():
        return [certify_reference(model, xi, SIGMA, N0, N, 0.001, BATCH, 10, gen) for xi in x]

    benchmark(per_point)
