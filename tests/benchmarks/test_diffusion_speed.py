"""Speed of the diffusion evaluators, in points/s, against their peers in the same run.

Run: pytest -m benchmark --benchmark-enable tests/benchmarks/test_diffusion_speed.py

* ode_nll (all points in one solve) vs the same ODE solved point by point with
  torchdiffeq (what a loop over a test set does): the ratio is the vectorization gain.
* ode_nll through torchdiffeq vs through scipy's solve_ivp.
* vlb (steps batched through the network) vs one network call per step.
"""

from __future__ import annotations

import time

import pytest
import torch

from dltbench.tasks.diffusion import CosineSchedule, MLPDenoiser, ode_nll, vlb_terms

pytestmark = pytest.mark.benchmark

N, D = 256, 2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MLPDenoiser(D, 128, 3, CosineSchedule(), "v").eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(N, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _rate(fn, n: int, repeats: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return n * repeats / (time.perf_counter() - start)


def test_ode_nll_points_per_s(benchmark, model, x):
    pytest.importorskip("torchdiffeq")
    benchmark.pedantic(lambda: ode_nll(model, x, 1e-4, 1e-4, backend="torchdiffeq"), rounds=3)
    vec = N / benchmark.stats.stats.mean
    loop = _rate(
        lambda: [
            ode_nll(model, x[i : i + 1], 1e-4, 1e-4, backend="torchdiffeq") for i in range(16)
        ],
        16,
    )
    scipy = _rate(lambda: ode_nll(model, x, 1e-4, 1e-4, backend="scipy"), N)
    benchmark.extra_info.update(points_per_s=vec, per_point_loop_points_per_s=loop,
                                scipy_points_per_s=scipy, speedup_vs_loop=vec / loop,
                                torchdiffeq_over_scipy=vec / scipy)  # fmt: skip
    print(
        f"\node_nll: {vec:.1f} points/s vectorized, {loop:.1f} point by point "
        f"(x{vec / loop:.1f}); scipy backend {scipy:.1f} points/s"
    )


def test_vlb_points_per_s(benchmark, model, x):
    steps = 200
    benchmark.pedantic(lambda: vlb_terms(model, x, None, steps), rounds=3)
    vec = N / benchmark.stats.stats.mean
    per_step = _rate(lambda: vlb_terms(model, x, None, steps, max_rows=N), N)
    benchmark.extra_info.update(points_per_s=vec, one_step_per_call_points_per_s=per_step,
                                speedup=vec / per_step)  # fmt: skip
    print(
        f"\nvlb ({steps} steps): {vec:.1f} points/s batched, {per_step:.1f} one step per call (x{vec / per_step:.1f})"
    )


def test_stratified_vlb_points_per_s(benchmark, model, x):
    """The quick profile's VLB: T = 1000 estimated from 100 stratified steps per point, vs all 999."""
    benchmark.pedantic(lambda: vlb_terms(model, x, None, 1000, strata=100), rounds=3)
    strat = N / benchmark.stats.stats.mean
    full = _rate(lambda: vlb_terms(model, x, None, 1000), N)
    benchmark.extra_info.update(
        points_per_s=strat, all_steps_points_per_s=full, speedup=strat / full
    )
    print(
        f"\nvlb (T = 1000): {strat:.1f} points/s stratified (100), {full:.1f} all steps (x{strat / full:.1f})"
    )
