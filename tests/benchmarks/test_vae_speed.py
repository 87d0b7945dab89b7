"""Speed of the IWAE bound (points/s) against the textbook recipe, in the same run.

The peer is what a user writes from Burda et al. 2016 without chunking: repeat the batch
K times, one forward pass, one log-sum-exp over a (K, N) matrix (memory grows with K*N).
Run: pytest -m benchmark --benchmark-enable tests/benchmarks/test_vae_speed.py
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from dltbench.tasks.vae import MLPVAE, iwae_bound, load_binary

K = 1000


def naive_iwae(model, x: torch.Tensor, k: int) -> torch.Tensor:
    """The unchunked recipe: all K x N weights at once."""
    with torch.no_grad():
        q = model.encode(x)
        z = q.rsample((k,))
        n = len(x)
        log_px = model.decode(z.reshape(k * n, -1)).log_prob(x.repeat(k, 1)).reshape(k, n)
        lw = log_px + model.prior().log_prob(z) - q.log_prob(z)
        return torch.logsumexp(lw, 0) - math.log(k)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = MLPVAE(64, 8, (128,)).eval()
    x = load_binary("digits").test.x
    return model, x


def _best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@pytest.mark.benchmark
@pytest.mark.parametrize("k_chunk", [20, 100])
def test_iwae_bound_points_per_second(benchmark, setup, k_chunk):
    model, x = setup
    gen = torch.Generator().manual_seed(0)
    ours = benchmark(
        lambda: iwae_bound(model, x, K, generator=gen, k_chunk=k_chunk, batch_size=len(x))
    )
    peer_s = _best_of(lambda: naive_iwae(model, x, K))
    ours_s = benchmark.stats.stats.min
    benchmark.extra_info.update(
        points=len(x), k=K, points_per_s=len(x) / ours_s, peer_points_per_s=len(x) / peer_s,
        speed_ratio_vs_unchunked=peer_s / ours_s, threads=torch.get_num_threads(),
    )  # fmt: skip
    # Same estimator, different draws: agree within a few standard errors over the points.
    diff = ours - naive_iwae(model, x, K).double()
    assert abs(float(diff.mean())) < 5 * float(diff.std()) / math.sqrt(len(x)) + 1e-4
