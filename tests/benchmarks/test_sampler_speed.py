"""Speed of the sampler task's hot paths against the peers a user would otherwise use.

1. Our diagnostics (bulk-ESS, tail-ESS, R-hat per coordinate) vs calling ArviZ directly on
   an ``arviz.convert_to_dataset`` of the same draws: the overhead ratio should be ~1.
2. Our chain-vectorized RWM and MALA (draws/s over all chains) vs the same algorithm as a
   plain per-chain Python loop calling the target one row at a time.
Run: pytest -m benchmark --benchmark-enable tests/benchmarks/test_sampler_speed.py
"""

from __future__ import annotations

import math
import time

import arviz as az
import numpy as np
import pytest
import torch

from dltbench.tasks.sampler import TargetView, ess_bulk, ess_tail, make_target, rhat, samplers


def _best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@pytest.mark.benchmark
def test_diagnostics_overhead_vs_arviz(benchmark):
    x = np.random.default_rng(0).standard_normal((4, 2000, 10))

    def ours():
        return ess_bulk(x), ess_tail(x), rhat(x)

    def peer():
        ds = az.convert_to_dataset(x)
        return (az.ess(ds, method="bulk"), az.ess(ds, method="tail", prob=(0.05, 0.95)),
                az.rhat(ds, method="rank"))  # fmt: skip

    b, t, r = benchmark(ours)
    peer_s, ours_s = _best_of(peer), benchmark.stats.stats.min
    benchmark.extra_info.update(
        ours_s=ours_s, arviz_direct_s=peer_s, overhead_ratio=ours_s / peer_s
    )
    pb, pt, pr = peer()
    np.testing.assert_array_equal(b, pb["x"].values)
    np.testing.assert_array_equal(r, pr["x"].values)


def rwm_per_chain_loop(target, init, n_draws, step, gen):
    """RWM the plain way: one chain at a time, one row per density call."""
    out = []
    for c in range(len(init)):
        x = init[c : c + 1].clone()
        lp = target.log_prob(x)
        chain = []
        for _ in range(n_draws):
            y = x + step * torch.randn(x.shape, generator=gen, dtype=x.dtype)
            lp_y = target.log_prob(y)
            if math.log(float(torch.rand(1, generator=gen, dtype=x.dtype))) < float(lp_y - lp):
                x, lp = y, lp_y
            chain.append(x[0])
        out.append(torch.stack(chain))
    return torch.stack(out)


def mala_per_chain_loop(target, init, n_draws, h, gen):
    """MALA the plain way: one chain at a time."""
    out = []
    for c in range(len(init)):
        x = init[c : c + 1].clone()
        lp, g = target.log_prob_and_grad(x)
        chain = []
        for _ in range(n_draws):
            y = x + h * g + math.sqrt(2 * h) * torch.randn(x.shape, generator=gen, dtype=x.dtype)
            lp_y, g_y = target.log_prob_and_grad(y)
            log_a = (
                lp_y
                - lp
                + (((y - x - h * g) ** 2).sum() - ((x - y - h * g_y) ** 2).sum()) / (4 * h)
            )
            if math.log(float(torch.rand(1, generator=gen, dtype=x.dtype))) < float(log_a):
                x, lp, g = y, lp_y, g_y
            chain.append(x[0])
        out.append(torch.stack(chain))
    return torch.stack(out)


@pytest.mark.benchmark
@pytest.mark.parametrize("name", ["rwm", "mala"])
@pytest.mark.parametrize("chains", [4, 16])
def test_vectorized_draws_per_second_vs_per_chain_loop(benchmark, name, chains):
    t = make_target("gaussian-d10")
    view, n = TargetView(t), 500
    init = t.init(chains, torch.Generator().manual_seed(0))
    run = getattr(samplers, name)
    benchmark(lambda: run(view, init, n, 0, torch.Generator().manual_seed(1)))
    loop = rwm_per_chain_loop if name == "rwm" else mala_per_chain_loop
    step = 2.38 / math.sqrt(10) if name == "rwm" else 0.2
    peer_s = _best_of(lambda: loop(view, init, n, step, torch.Generator().manual_seed(1)), 2)
    ours_s = benchmark.stats.stats.min
    benchmark.extra_info.update(
        chains=chains, draws_per_s=chains * n / ours_s, loop_draws_per_s=chains * n / peer_s,
        speedup_vs_per_chain_loop=peer_s / ours_s, threads=torch.get_num_threads(),
    )  # fmt: skip
