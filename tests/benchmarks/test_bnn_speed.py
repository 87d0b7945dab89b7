"""Speed of the bnn task's hot paths against the peer a user would otherwise write.

1. The harness's predictive: S weight vectors at once through batched matmuls (``MLP.logits``)
   vs the torch.func peer, ``vmap`` of ``functional_call`` on an ``nn.Sequential``, same numbers.
2. The counted posterior's full-batch gradient for 4 rows at once vs 4 single-row calls.
Run: pytest -m benchmark --benchmark-enable tests/benchmarks/test_bnn_speed.py
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from dltbench.tasks.bnn import SETTINGS, BNNPosterior, load_data
from tests.benchmarks.test_sampler_speed import _best_of


def _sequential_params(net, w):
    """The flat rows ``w`` (S, P) as an nn.Sequential's stacked parameters (torch layout)."""
    out = {}
    for i, (sw, sb) in enumerate(net.layer_slices()):
        a, b = net.sizes[i], net.sizes[i + 1]
        out[f"{2 * i}.weight"] = w[:, sw].reshape(-1, a, b).transpose(1, 2)
        out[f"{2 * i}.bias"] = w[:, sb]
    return out


@pytest.mark.benchmark
def test_predictive_vs_torch_func_vmap(benchmark):
    s = SETTINGS["digits"]
    net, x = s.net, load_data("digits").x_test
    w = 0.1 * torch.randn(100, net.n_params, generator=torch.Generator().manual_seed(0),
                          dtype=torch.float64)  # fmt: skip
    layers = []
    for i in range(len(net.sizes) - 1):
        layers += [nn.Linear(net.sizes[i], net.sizes[i + 1]), nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).double()
    params = _sequential_params(net, w)

    def peer():
        logits = vmap(lambda p: functional_call(model, p, (x,)))(params)
        return torch.softmax(logits, -1).mean(0)

    ours = benchmark(net.predictive, w, x)
    peer_s, ours_s = _best_of(peer), benchmark.stats.stats.min
    benchmark.extra_info.update(ours_s=ours_s, torch_func_s=peer_s, speedup=peer_s / ours_s)
    torch.testing.assert_close(ours, peer())


@pytest.mark.benchmark
def test_batched_gradient_vs_row_at_a_time(benchmark):
    s = SETTINGS["moons-gap"]
    d = load_data(s.dataset)
    post = BNNPosterior(s.net, d.x_train, d.y_train, s.prior_sd)
    w = 0.1 * torch.randn(4, post.dim, generator=torch.Generator().manual_seed(0),
                          dtype=torch.float64)  # fmt: skip

    def rows():
        return torch.cat([post.log_prob_and_grad(w[i : i + 1])[1] for i in range(4)])

    _, g = benchmark(post.log_prob_and_grad, w)
    peer_s, ours_s = _best_of(rows), benchmark.stats.stats.min
    benchmark.extra_info.update(ours_s=ours_s, row_at_a_time_s=peer_s, speedup=peer_s / ours_s)
    torch.testing.assert_close(g, rows())
