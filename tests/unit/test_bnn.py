"""The bnn task's parts: the network, the counted posterior oracle, the view, the artifact checks."""

from __future__ import annotations

import pytest
import torch

from dltbench import registry
from dltbench.api import Context, InvalidArtifact
from dltbench.oracle import Exposed
from dltbench.tasks.bnn import MLP, SETTINGS, BNNConfig, BNNPosterior, BNNRun, BNNTask, load_data
from dltbench.tasks.bnn.methods import MCDropout, last_layer_ggn
from dltbench.tasks.sampler.targets import DTYPE, LEDGER, evaluation_cost
from dltbench.testing import fit_in_process

TASK = BNNTask()
NET = MLP((3, 4, 5, 2))


def small_posterior(n=12) -> BNNPosterior:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g, dtype=DTYPE)
    return BNNPosterior(NET, x, torch.arange(n) % 2, prior_sd=0.7)


def test_batched_logits_match_one_row_at_a_time_and_unit_dropout_is_row_zeroing():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, NET.n_params, generator=g, dtype=DTYPE)
    x = torch.randn(6, 3, generator=g, dtype=DTYPE)
    assert NET.n_params == 4 * 4 + 5 * 5 + 6 * 2
    batched = NET.logits(w, x)
    assert torch.allclose(batched[1], NET.logits_one(w[1], x))
    # dropping hidden unit 2 of layer 0 by hand == zeroing its outgoing row in the flat vector
    (w1, b1), (w2, b2), (w3, b3) = [(w[0, a].reshape(-1), w[0, b]) for a, b in NET.layer_slices()]
    h = torch.relu(x @ w1.reshape(3, 4) + b1)
    h[:, 2] = 0
    h = torch.relu(h @ w2.reshape(4, 5) + b2)
    want = h @ w3.reshape(5, 2) + b3
    wm = w[0].clone()
    wm[NET.hidden_unit_rows(0)[2]] = 0
    assert torch.allclose(NET.logits_one(wm, x), want)


def test_posterior_gradients_minibatches_and_per_example_gradients_agree():
    post = small_posterior()
    w = 0.5 * torch.randn(2, post.dim, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    wr = w.clone().requires_grad_(True)
    auto = torch.autograd.grad((post.log_lik(wr) + post.log_prior(wr)).sum(), wr)[0]
    LEDGER.clear()
    lp, g = post.log_prob_and_grad(w)
    assert torch.allclose(g, auto) and torch.allclose(lp, post._log_prob(w))
    everything = torch.arange(post.n_data)
    assert torch.allclose(post.minibatch_grad(w, everything), g)
    half = post.minibatch_grad(w, everything[:6])  # unbiased: N/|B| scaling of the likelihood
    prior = -w / post.prior_sd**2
    assert torch.allclose((half - prior) / 2, (half - prior) / 2)  # shape sanity
    pe = post.per_example_grad(w, everything)
    assert pe.shape == (2, post.n_data, post.dim)
    assert torch.allclose(pe.sum(1), g - prior)
    assert torch.allclose(2 * pe[:, :6].sum(1) + prior, half)
    assert dict(LEDGER) == {"grad": 2, "data_grad": 2 * (12 + 6 + 12)}
    assert evaluation_cost(dict(LEDGER), post.dim, post.n_data) == pytest.approx(2 + 2 * 30 / 12)
    with pytest.raises(IndexError):
        post.per_example_grad(w, torch.tensor([12]))
    with pytest.raises(TypeError):
        post.per_example_grad(w, torch.tensor([0.0]))


def test_train_view_holds_the_oracle_and_declared_facts_but_no_data_points():
    cfg = TASK.smoke(TASK.configs("quick")[0])
    data = TASK.prepare(cfg, Context(0, torch.device("cpu")))
    view = TASK.train_view(data, cfg)
    assert set(view) == {"target", "problem", "init"}
    assert isinstance(view["target"], Exposed) and "per_example_grad" in view["target"].methods
    assert "sample_iid" not in view["target"].methods and "log_lik" not in view["target"].methods
    assert view["problem"]["sizes"] == list(SETTINGS[cfg.dataset].sizes)
    assert view["init"].shape == (cfg.n_init, data.posterior.dim)
    # nothing in the plain part of the view is a tensor the size of a split
    flat = [v for v in view["problem"].values() if isinstance(v, torch.Tensor)]
    assert flat == [] and not any(
        isinstance(v, torch.Tensor) for v in view["target"].attributes.values()
    )


def _run(samples, weights=None, counts=None):
    return BNNRun({"samples": samples, "weights": weights}, counts or {"grad": 1}, 0.1)


@pytest.mark.parametrize(
    ("samples", "weights", "counts", "message"),
    [
        (torch.full((2, 100), float("nan")), None, None, "shape"),
        ("NaN", None, None, "non-finite"),
        ("too many", None, None, "over the cap"),
        ("ok", torch.tensor([1.0, -1.0]), None, "non-negative"),
        ("ok", None, {"grad": 11}, "over the budget"),
    ],
)
def test_bad_artifacts_are_invalid_with_the_reason(samples, weights, counts, message):
    cfg = TASK.smoke(TASK.configs("quick")[0])
    data = TASK.prepare(cfg, Context(0, torch.device("cpu")))
    p = data.posterior.dim
    if samples == "NaN":
        samples = torch.zeros(2, p, dtype=DTYPE)
        samples[1, 3] = float("nan")
    elif samples == "too many":
        samples = torch.zeros(cfg.n_samples + 1, p, dtype=DTYPE)
    elif samples == "ok":
        samples = torch.zeros(2, p, dtype=DTYPE)
    with pytest.raises(InvalidArtifact, match=message):
        TASK.evaluate(_run(samples, weights, counts), data, cfg, Context(1, torch.device("cpu")))


def test_mc_dropout_masks_zero_whole_units_and_scale_the_rest():
    net = MLP((3, 4, 5, 2))
    m = MCDropout(p=0.5)._masks(net, 64, net.n_params, torch.Generator().manual_seed(0))
    rows = net.hidden_unit_rows(1)  # (5 units, 2 outgoing weights)
    unit = m[:, rows]  # (64, 5, 2): constant over a unit's outgoing weights
    assert torch.all(unit[:, :, 0] == unit[:, :, 1])
    assert set(unit.unique().tolist()) == {0.0, 2.0}
    first = net.layer_slices()[0]  # the input layer's weights are never dropped
    assert torch.all(m[:, first[0]] == 1) and torch.all(m[:, first[1]] == 1)


def test_the_fixed_splits_do_not_depend_on_the_seed():
    a, b = load_data("moons-gap"), load_data("moons-gap")
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_ood, b.x_ood)
    # the gap: no train point on the top third of either arc
    assert len(a.y_train) == 200 and len(a.y_test) == 500


@pytest.mark.parametrize(
    "method", ["map", "ensemble", "mfvi", "mc-dropout", "laplace", "sgld", "hmc"]
)
@pytest.mark.parametrize("dataset", ["moons-gap", "digits"])
def test_each_builtin_trains_and_scores_on_smoke(method, dataset):
    registry.load_builtins("bnn")
    cfg = TASK.smoke(BNNConfig(dataset, 100, 20_000))
    data_ctx, method_ctx, eval_ctx = (Context(k, torch.device("cpu")) for k in range(3))
    data = TASK.prepare(cfg, data_ctx)
    method_obj = registry.get_method_class("bnn", method)()
    run = fit_in_process(TASK, method_obj, data, cfg, method_ctx, eval_ctx)
    ev = TASK.evaluate(run, data, cfg, eval_ctx)
    m = ev.metrics
    assert 0 < m["evals"] <= cfg.budget_evals and 1 <= m["n_samples"] <= cfg.n_samples
    assert 0 <= m["ece"] <= 1 and m["test_lpd"] <= 0 and m["ood_entropy"] >= 0
    if ev.estimator["reference"].startswith("shipped"):
        assert 0 <= m["tv_to_reference"] <= 1 and 0 <= m["agreement"] <= 1


def test_last_layer_ggn_from_per_example_gradients_matches_the_jacobian_form():
    post = small_posterior()
    w = torch.randn(1, post.dim, generator=torch.Generator().manual_seed(4), dtype=DTYPE)
    sw, sb = NET.layer_slices()[-1]
    g = post.per_example_grad(w, torch.arange(post.n_data))[0]
    got = last_layer_ggn(g[:, sw].reshape(-1, 5, 2), g[:, sb])
    want = torch.zeros_like(got)
    for i in range(post.n_data):
        x = post._x[i : i + 1]

        def f(last, i=i, x=x):
            full = torch.cat([w[0, : sw.start], last])
            return NET.logits_one(full, x)[0]

        jac = torch.autograd.functional.jacobian(f, w[0, sw.start : sb.stop])  # (C, P_last)
        p = torch.softmax(f(w[0, sw.start : sb.stop]), 0)
        want += jac.T @ (torch.diag(p) - torch.outer(p, p)) @ jac
    assert torch.allclose(got, want, atol=1e-10)
