"""Frechet distance at d=2048 against pytorch-fid's (scipy sqrtm of S1 S2), same statistics.

Run: pytest -m benchmark --benchmark-enable tests/benchmarks/test_gan_speed.py
The ratio (pytorch-fid's time / ours) goes to ``extra_info``; the issue's target is >= 5x.
The chunked k-NN metrics are timed at 20k x 20k points in 64-d with their block size.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from dltbench.tasks.gan import metrics as M

pytestmark = pytest.mark.benchmark
D = 2048


@pytest.fixture(scope="module")
def stats():
    rng = np.random.default_rng(0)
    # Inception-like statistics: full-rank, decaying spectra, from 2 x 4096 samples.
    out = []
    for shift in (0.0, 0.05):
        x = rng.normal(size=(4096, D)) * np.linspace(1.0, 0.01, D) + shift
        out.append(M.feature_statistics(x))
    return out


def _best_of(fn, repeats: int = 2) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")
def test_frechet_distance_d2048_vs_pytorch_fid(benchmark, stats):
    from pytorch_fid.fid_score import calculate_frechet_distance

    (mu1, s1), (mu2, s2) = stats
    with threadpool_limits(1):  # one BLAS thread for both: the ratio is the algorithms'
        ours = benchmark.pedantic(lambda: M.frechet_distance(mu1, s1, mu2, s2), rounds=2)
        peer_s = _best_of(lambda: calculate_frechet_distance(mu1, s1, mu2, s2))
    ours_s = benchmark.stats.stats.min
    benchmark.extra_info.update(d=D, ours_s=ours_s, pytorch_fid_s=peer_s, blas_threads=1,
                                speed_ratio_vs_pytorch_fid=peer_s / ours_s)  # fmt: skip
    assert ours == pytest.approx(calculate_frechet_distance(mu1, s1, mu2, s2), rel=1e-5)


def test_precision_recall_20k_bounded_memory(benchmark):
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(20_000, 64)), rng.normal(size=(20_000, 64))
    p, r = benchmark.pedantic(lambda: M.precision_recall(real, fake), rounds=1)
    benchmark.extra_info.update(points=20_000, chunk=M.DEFAULT_CHUNK,
                                block_bytes=M.DEFAULT_CHUNK * 20_000 * 8)  # fmt: skip
    assert 0.5 < p <= 1 and 0.5 < r <= 1


def test_kid_digits_size_vs_torch_fidelity(benchmark):
    """KID at the quick digits size (540 real and 540 generated 64-d features, 100 subsets of
    500, the same subsets for both): ours sums each subset from the whole sets' kernels; the
    peer, torch-fidelity, computes each subset's kernels anew. One BLAS thread for both."""
    import torch
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(540, 64)), rng.normal(0.1, 1.0, size=(540, 64))
    with threadpool_limits(1):
        ours = benchmark.pedantic(
            lambda: M.kid(x, y, np.random.RandomState(3), subsets=100, subset_size=500), rounds=3
        )
        peer = {}
        peer_s = _best_of(lambda: peer.update(kid_features_to_metric(
            torch.from_numpy(x), torch.from_numpy(y), kid_subsets=100, kid_subset_size=500,
            rng_seed=3, verbose=False)))  # fmt: skip
    ours_s = benchmark.stats.stats.min
    benchmark.extra_info.update(ours_s=ours_s, torch_fidelity_s=peer_s,
                                speed_ratio_vs_torch_fidelity=peer_s / ours_s)  # fmt: skip
    print(f"\nKID 540 x 540, 100 subsets of 500: ours {ours_s:.3f}s torch-fidelity {peer_s:.3f}s "
          f"ratio {peer_s / ours_s:.1f}x")  # fmt: skip
    assert ours[0] == pytest.approx(peer["kernel_inception_distance_mean"], rel=1e-6)
