"""What the plugin boundary costs: the same evaluator on a model in this process and on the
same model behind the oracle in a sandboxed plugin process, in one run, as a ratio."""

from __future__ import annotations

import pickle
import time
import timeit
from pathlib import Path

import pytest
import torch

from dltbench import data as datasets
from dltbench import registry
from dltbench.models import MLP
from dltbench.oracle import decode, encode
from dltbench.runner import cell_contexts
from dltbench.sandbox import PluginProcess
from dltbench.tasks.certified import certify_batch

pytestmark = pytest.mark.benchmark
PLUGIN = Path(__file__).parent / "plugins" / "fixed_mlp.py"


@pytest.fixture(scope="module")
def models():
    """(local model, remote oracle of the same weights, plugin process start-up seconds)."""
    registry.discover("certified", [str(PLUGIN)])
    task = registry.get_task("certified")
    config = task.smoke(task.configs("quick")[0])
    data = datasets.load("digits")
    _, method_ctx, eval_ctx = cell_contexts(0, torch.device("cpu"), None, lambda *a: None)
    start = time.perf_counter()
    plugin = PluginProcess(plugin_files=(str(PLUGIN),), threads=1)
    plugin.request("init", {"task": "certified", "method": "bench-fixed-mlp", "seed": 0,
                            "device": "cpu", "plugin_files": [str(PLUGIN)]})  # fmt: skip
    remote = task.run_plugin(plugin, data, config, eval_ctx)
    startup = time.perf_counter() - start
    torch.manual_seed(0)  # the plugin's fixed_mlp(), built here without importing the plugin
    yield MLP(64, 10).eval(), remote, startup, data
    plugin.close()


def _certify(model, x):
    gen = torch.Generator().manual_seed(1)
    return certify_batch(model, x, 0.25, 100, 2000, 0.001, 4000, gen)


def test_boundary_cost_of_certify(models, benchmark):
    """CERTIFY (n0=100, n=2000, batch 4000) on 20 digits: local model vs the remote oracle."""
    local, remote, startup, data = models
    x = data.test.x[:20]
    torch.set_num_threads(1)
    a, b = _certify(local, x), _certify(remote, x)
    assert (a[0] == b[0]).all() and abs(a[1] - b[1]).max() < 1e-9  # same answers
    t0 = time.perf_counter()
    _certify(local, x)
    t_local = time.perf_counter() - t0
    benchmark.pedantic(_certify, args=(remote, x), rounds=3, iterations=1)
    t_remote = benchmark.stats.stats.mean
    benchmark.extra_info.update(local_s=t_local, remote_s=t_remote, ratio=t_remote / t_local,
                                worker_startup_s=startup)  # fmt: skip
    print(f"\ncertify 20 pts: local {t_local:.3f}s remote {t_remote:.3f}s "
          f"ratio {t_remote / t_local:.2f}x; plugin process start-up {startup:.2f}s")  # fmt: skip


def test_boundary_cost_of_small_calls(models, benchmark):
    """A sampler-sized query: 1000 forwards of (4, 64) inputs, local vs remote (round trips)."""
    local, remote, _, _ = models
    x = torch.rand(4, 1, 8, 8)

    def loop(model):
        with torch.no_grad():
            for _ in range(1000):
                model(x)

    t0 = time.perf_counter()
    loop(local)
    t_local = time.perf_counter() - t0
    benchmark.pedantic(loop, args=(remote,), rounds=3, iterations=1)
    t_remote = benchmark.stats.stats.mean
    benchmark.extra_info.update(local_s=t_local, remote_s=t_remote, per_call_us=1e3 * t_remote)
    print(
        f"\n1000 small calls: local {t_local:.3f}s remote {t_remote:.3f}s "
        f"({1e3 * t_remote:.0f} us per round trip)"
    )


def test_codec_vs_pickle_on_a_sampler_message(benchmark):
    """The plain-data codec (what a plugin's messages must use) against pickle (which the harness
    never unpickles from a plugin) on a sampler-sized request and reply, encode plus decode."""
    x, lp = torch.randn(16, 10, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    msgs = (["req", "call", 1, "log_prob_and_grad", [x], {}, False], ["rep", [lp, x]])

    def codec():
        for _ in range(1000):
            for m in msgs:
                decode(encode(m))

    def pickled():
        for _ in range(1000):
            for m in msgs:
                pickle.loads(pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL))

    t_pickle = min(timeit.repeat(pickled, number=1, repeat=3))
    benchmark.pedantic(codec, rounds=3, iterations=1)
    t_codec = benchmark.stats.stats.min
    benchmark.extra_info.update(codec_s=t_codec, pickle_s=t_pickle, ratio=t_codec / t_pickle)
    print(f"\n1000 request+reply pairs: codec {t_codec:.3f}s pickle {t_pickle:.3f}s "
          f"ratio {t_codec / t_pickle:.2f}x")  # fmt: skip


def test_frame_tag_joined_vs_prepended_on_ntk_theta(benchmark):
    """A 67 MB frame (ntk's float64 theta at width 2048, P = 8.4M): the transport's tag joined
    into the frame (what ``Endpoint`` sends) against prepending it to an encoded frame (what
    it sent before: a second copy of the whole buffer), in one run, as a ratio."""
    msg = ["rep", torch.randn(8_400_000, dtype=torch.float64)]
    t_prepended = min(timeit.repeat(lambda: b"E" + encode(msg), number=1, repeat=5))
    frame = benchmark.pedantic(lambda: encode(msg, b"E"), rounds=5, iterations=1)
    assert frame == b"E" + encode(msg)  # the same bytes on the wire
    t_joined = benchmark.stats.stats.min
    benchmark.extra_info.update(joined_s=t_joined, prepended_s=t_prepended,
                                ratio=t_joined / t_prepended)  # fmt: skip
    print(f"\n67 MB frame: joined {1000 * t_joined:.1f} ms, prepended {1000 * t_prepended:.1f} ms, "
          f"ratio {t_joined / t_prepended:.2f}x")  # fmt: skip


def _first_answer(plugin: PluginProcess) -> None:
    plugin.request("init", {"task": "certified", "method": "bench-fixed-mlp", "seed": 0,
                            "device": "cpu", "plugin_files": [str(PLUGIN)]})  # fmt: skip
    plugin.close()


def test_worker_start_fresh_vs_zygote(benchmark):
    """Seconds until a plugin process has loaded its method: a fresh sandboxed interpreter vs a
    worker forked from the run's zygote, which has imported the task package as in a run (its
    own start, once per run, is not counted)."""
    from dltbench.sandbox import Zygote, bwrap_version

    if bwrap_version() is None:
        pytest.skip("the zygote needs bubblewrap")
    try:
        zygote = Zygote(plugin_files=(str(PLUGIN),), packages=("dltbench.tasks.certified",))
    except RuntimeError as exc:
        pytest.skip(f"no zygote here: {exc}")
    try:
        fresh = []
        for _ in range(3):
            t0 = time.perf_counter()
            _first_answer(PluginProcess(plugin_files=(str(PLUGIN),), threads=1))
            fresh.append(time.perf_counter() - t0)

        def forked() -> None:
            spawned = zygote.spawn(1, None)
            _first_answer(PluginProcess.adopt(spawned))
            zygote.kill(spawned.wid)

        benchmark.pedantic(forked, rounds=5, iterations=1)
        t_fork = benchmark.stats.stats.mean
        t_fresh = sum(fresh) / len(fresh)
        benchmark.extra_info.update(fresh_s=t_fresh, forked_s=t_fork, ratio=t_fresh / t_fork)
    finally:
        zygote.close()
