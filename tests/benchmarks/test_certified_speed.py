"""CERTIFY throughput vs a plain batched forward pass and vs the per-point reference loop.

Run: pytest -m benchmark --benchmark-enable tests/benchmarks/test_certified_speed.py
All three do the same number of noisy forward passes of the same model on the same
device; pytest-benchmark prints them side by side per group. Targets (issue 2): at least
the per-point reference's throughput, and within 10% of the plain forward pass (which
is given its noisy inputs ready-made, so it is a lower bound on any certifier's time).
"""

from __future__ import annotations

import pytest
import torch

from dltbench.models import MLP, SmallCNN
from dltbench.tasks.certified import certify_batch
from tests.reference.cohen_reference import certify_reference

pytestmark = pytest.mark.benchmark
POINTS, N0, N, SIGMA = 10, 100, 1000, 0.25
MODELS = {
    "mlp-digits": (lambda: MLP(64, 10), (1, 8, 8)),
    "cnn-mnist": (lambda: SmallCNN(1, 10, side=28), (1, 28, 28)),
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BATCH = {"cpu": 1000, "cuda": 10_000}
CASES = [(m, d) for m in MODELS for d in DEVICES]


def setup(name: str, device: str):
    torch.manual_seed(0)
    factory, shape = MODELS[name]
    return factory().eval().to(device), torch.rand(POINTS, *shape, device=device)


def sync(device: str, value):
    if device == "cuda":
        torch.cuda.synchronize()
    return value


@pytest.mark.parametrize("name,device", CASES)
def test_ours_batched(benchmark, name, device):
    model, x = setup(name, device)
    benchmark.group = f"certify {name} {device}"
    gen = torch.Generator(device=device).manual_seed(0)
    labels, _, _ = benchmark(
        lambda: sync(device, certify_batch(model, x, SIGMA, N0, N, 0.001, BATCH[device], gen))
    )
    assert labels.shape == (POINTS,)


@pytest.mark.parametrize("name,device", CASES)
def test_plain_forward(benchmark, name, device):
    model, x = setup(name, device)
    benchmark.group = f"certify {name} {device}"
    b = BATCH[device]
    total = POINTS * (N0 + N)
    noisy = [
        x[(i * b // (N0 + N)) % POINTS].expand(b, *x.shape[1:])
        + SIGMA * torch.randn(b, *x.shape[1:], device=device)
        for i in range(total // b)
    ]

    @torch.no_grad()
    def forward_only():
        return sync(device, [model(nb).argmax(1) for nb in noisy])

    benchmark(forward_only)


@pytest.mark.parametrize("name,device", CASES)
def test_reference_per_point_loop(benchmark, name, device):
    model, x = setup(name, device)
    benchmark.group = f"certify {name} {device}"
    gen = torch.Generator(device=device).manual_seed(0)

    def per_point():
        return sync(
            device,
            [
                certify_reference(model, xi, SIGMA, N0, N, 0.001, BATCH[device], 10, gen)
                for xi in x
            ],
        )

    benchmark(per_point)
