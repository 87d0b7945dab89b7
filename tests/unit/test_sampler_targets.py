"""Targets: normalization, gradients, exact moments vs iid draws, conditionals, counting."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.integrate import dblquad

from dltbench.tasks.sampler import LEDGER, TargetView, evaluation_cost, make_target
from dltbench.tasks.sampler.targets import DTYPE

QUICK = [
    "gaussian-d10",
    "ill-gaussian-d10",
    "funnel-d10",
    "banana-d2",
    "mixture-d2",
    "logreg-iris",
]
IID = [n for n in QUICK if not n.startswith("logreg")] + ["banana-d5", "mixture-d3"]


def _points(t, n=7, seed=0):
    return t.init(n, torch.Generator().manual_seed(seed)) * 1.3


@pytest.mark.parametrize("name", QUICK + ["logreg-cancer", "funnel-d3"])
def test_gradient_matches_autograd(name):
    t = make_target(name)
    x = _points(t).requires_grad_(True)
    (auto,) = torch.autograd.grad(t._log_prob(x).sum(), x)
    lp, g = t.log_prob_and_grad(x.detach())
    torch.testing.assert_close(t.grad_log_prob(x.detach()), auto, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g, auto, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lp, t.log_prob(x.detach()))


def test_gradient_matches_finite_differences():
    t = make_target("funnel-d3")
    x = _points(t, 3)
    eps = 1e-6
    for i in range(t.dim):
        e = torch.zeros(t.dim, dtype=DTYPE)
        e[i] = eps
        fd = (t.log_prob(x + e) - t.log_prob(x - e)) / (2 * eps)
        torch.testing.assert_close(t.grad_log_prob(x)[:, i], fd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["gaussian-d10", "ill-gaussian-d10"])
def test_gaussian_log_prob_is_scipy_logpdf(name):
    t = make_target(name)
    x = _points(t)
    cov = torch.linalg.inv(t._prec).numpy()
    ref = stats.multivariate_normal(t.mean.numpy(), cov).logpdf(x.numpy())
    np.testing.assert_allclose(t.log_prob(x).numpy(), ref, rtol=1e-10)
    assert np.linalg.cond(cov) == pytest.approx(100.0, rel=1e-6) or name == "gaussian-d10"


def test_funnel_log_prob_is_the_closed_form():
    t = make_target("funnel-d4")
    x = _points(t).numpy()
    ref = stats.norm(0, 3).logpdf(x[:, 0]) + stats.norm(0, np.exp(x[:, :1] / 2)).logpdf(
        x[:, 1:]
    ).sum(1)
    np.testing.assert_allclose(t.log_prob(torch.as_tensor(x)).numpy(), ref, rtol=1e-10)


@pytest.mark.parametrize("name", ["banana-d2", "mixture-d2"])
def test_two_dimensional_densities_integrate_to_one(name):
    t = make_target(name)

    def f(x1, x0):
        return math.exp(float(t._log_prob(torch.tensor([[x0, x1]], dtype=DTYPE))))

    total, err = dblquad(f, -12, 12, -15, 30, epsabs=1e-8)
    assert total == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", IID)
def test_exact_moments_match_long_iid_draws(name):
    t = make_target(name)
    x = t.sample_iid(400_000, torch.Generator().manual_seed(1)).numpy()
    n = len(x)
    z_mean = (x.mean(0) - t.mean.numpy()) / (x.std(0) / math.sqrt(n))
    sq = (x - t.mean.numpy()) ** 2
    z_var = (sq.mean(0) - t.var.numpy()) / (sq.std(0) / math.sqrt(n))
    # 2 * dim z-scores; 4.5 is far beyond their Bonferroni quantile at these dims
    assert np.abs(z_mean).max() < 4.5 and np.abs(z_var).max() < 4.5, (z_mean, z_var)


def test_funnel_sd_is_exp_225():
    t = make_target("funnel-d10")
    assert float(t.var[1].sqrt()) == pytest.approx(math.exp(2.25))
    assert float(t.var[0]) == 9.0


def test_gaussian_conditionals_are_the_schur_complement():
    t = make_target("ill-gaussian-d10")
    cov = torch.linalg.inv(t._prec).numpy()
    x = _points(t, 3)
    for i in (0, 4, 9):
        rest = [j for j in range(t.dim) if j != i]
        k = cov[i, rest] @ np.linalg.inv(cov[np.ix_(rest, rest)])
        mean = k @ x[:, rest].numpy().T
        sd = math.sqrt(cov[i, i] - k @ cov[rest, i])
        m, s = t.conditional(x, i)
        np.testing.assert_allclose(m.numpy(), mean, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(s.numpy(), sd, rtol=1e-8)


def test_minibatch_gradients_are_unbiased():
    t = make_target("logreg-iris")
    x = _points(t, 3)
    perm = torch.arange(t.n_data).reshape(10, 10)  # 10 disjoint batches covering the data
    avg = torch.stack([t.minibatch_grad(x, idx) for idx in perm]).mean(0)
    torch.testing.assert_close(avg, t.grad_log_prob(x))


def test_ledger_counts_rows_and_cost_rules():
    t = make_target("gaussian-d10")
    v = TargetView(t)
    x = _points(t, 4)
    LEDGER.clear()
    v.log_prob(x)
    v.log_prob_and_grad(x)
    v.grad_log_prob(x)
    for i in range(10):
        v.conditional(x, i)
    assert dict(LEDGER) == {"density": 4, "grad": 8, "conditional": 40}
    assert evaluation_cost(LEDGER, t.dim, None) == 4 + 8 + 4  # one sweep = one evaluation
    LEDGER.clear()
    lr = make_target("logreg-iris")
    TargetView(lr).minibatch_grad(_points(lr, 4), torch.arange(10))
    assert evaluation_cost(LEDGER, lr.dim, lr.n_data) == pytest.approx(4 * 10 / 100)


def test_view_hides_moments_and_exact_sampler():
    v = TargetView(make_target("gaussian-d10"))
    for name in ("mean", "var", "sample_iid", "init"):
        assert not hasattr(v, name)
    assert v.dim == 10 and v.capabilities == {"gradient", "conditionals"}


def test_logreg_reference_is_stored_with_provenance():
    t = make_target("logreg-iris")
    assert not t.exact and torch.isfinite(t.mean).all() and (t.var > 0).all()
    how = t.reference["how"]
    assert how["draws_per_chain"] * how["chains"] >= 100_000 and "hmc" in how["sampler"]
    assert t.reference["rhat_max"] < 1.01 and t.reference["cross_check"]["max_abs_z_mean"] < 4


def test_unknown_target_is_a_clear_error():
    with pytest.raises(ValueError, match="families"):
        make_target("gausian-d10")


def _through_the_oracle(target, plugin):
    """Run ``plugin(proxy)`` in a worker endpoint (a thread) against the harness's exposed view."""
    import socket
    import threading
    from multiprocessing.connection import Connection

    from dltbench.oracle import Endpoint, Exposed, PluginError

    ours, theirs = socket.socketpair()
    harness = Endpoint(Connection(ours.detach()), trusted_peer=False)
    worker = Endpoint(Connection(theirs.detach()), trusted_peer=True)
    thread = threading.Thread(
        target=worker.serve_forever, args=({"run": lambda ref: plugin(worker._live(ref))},)
    )
    thread.start()
    methods = {"log_prob", "grad_log_prob", "log_prob_and_grad", "conditional", "minibatch_grad"}
    try:
        exposed = Exposed(TargetView(target), frozenset(methods), kind="object")
        try:
            return harness.request("run", exposed)
        except PluginError as exc:
            return f"refused: {exc}"
    finally:
        harness.request("close")
        thread.join()


def test_a_batched_oracle_call_of_n_points_counts_n_and_smuggling_is_refused():
    """One round trip may carry many points, but each row is charged, duplicates included."""
    t = make_target("gaussian-d10")
    x = _points(t, 5)
    LEDGER.clear()
    lp, g = _through_the_oracle(t, lambda p: p.log_prob_and_grad(x))
    torch.testing.assert_close(lp, t._log_prob(x))
    assert dict(LEDGER) == {"grad": 5}
    LEDGER.clear()  # 10,000 copies of one point: 10,000 evaluations, not one
    _through_the_oracle(t, lambda p: p.log_prob(x[:1].expand(10_000, -1)))
    assert dict(LEDGER) == {"density": 10_000}
    LEDGER.clear()
    for cheat in (
        lambda p: p.log_prob(x[None].expand(100, -1, -1)),  # (100, 5, d): 500 points as "100 rows"
        lambda p: p.grad_log_prob(x.reshape(-1)),  # one flat row of 5 points
        lambda p: p.log_prob(x.reshape(-1, 2 * t.dim)),  # two points per row
        lambda p: p.conditional(x, [0, 1, 2]),  # three coordinates for the price of one
        lambda p: p.conditional(x, torch.arange(10)),
        lambda p: p.log_prob(x, keepdim=True),  # keyword arguments are not exposed
    ):
        assert str(_through_the_oracle(t, cheat)).startswith("refused"), cheat
    assert sum(LEDGER.values()) == 0
    lr = make_target("logreg-iris")
    LEDGER.clear()  # a minibatch of repeated indices is charged per index
    _through_the_oracle(
        lr, lambda p: p.minibatch_grad(_points(lr, 2), torch.zeros(50, dtype=torch.long))
    )
    assert evaluation_cost(LEDGER, lr.dim, lr.n_data) == pytest.approx(2 * 50 / lr.n_data)
