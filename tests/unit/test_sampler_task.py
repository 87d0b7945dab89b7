"""The sampler task end to end in process: moments reached, theory's ordering, cheats caught, ranking."""

import numpy as np
import pytest
import torch

from dltbench import registry
from dltbench.api import Context, InvalidArtifact
from dltbench.leaderboard import build
from dltbench.runner import Cell, RunOptions, execute_cell
from dltbench.tasks.sampler import (
    LEDGER,
    SamplerConfig,
    SamplerMethod,
    SamplerTask,
    TargetView,
    evaluation_cost,
    make_target,
    moment_threshold,
    samplers,
)
from dltbench.tasks.sampler.diagnostics import ess_bulk
from dltbench.testing import fit_in_process

TASK = SamplerTask()


def run(method_cls, target="gaussian-d10", n_draws=2000, seed=0, **params):
    """One cell in process with the quick profile's chains and draws."""
    cfg = SamplerConfig(target, 4, n_draws)
    data_ctx, method_ctx, eval_ctx = (Context(seed + k, torch.device("cpu")) for k in range(3))
    data = TASK.prepare(cfg, data_ctx)
    artifact = fit_in_process(TASK, method_cls(**params), data, cfg, method_ctx, eval_ctx)
    return TASK.evaluate(artifact, data, cfg, eval_ctx)


def builtin(name):
    registry.load_builtins("sampler")
    return registry.get_method_class("sampler", name)


@pytest.mark.parametrize("name", ["rwm", "imh", "gibbs", "mala", "hmc"])
def test_exact_samplers_reach_the_gaussian_moments(name):
    ev = run(builtin(name))
    thr = moment_threshold(10)
    assert ev.metrics["mean_z_max"] < thr and ev.metrics["var_z_max"] < thr, ev.metrics
    assert ev.metrics["rhat_max"] < 1.05 and ev.metrics["ess_bulk_min"] > 100


@pytest.mark.parametrize(("name", "target"), [("ula", "gaussian-d10"), ("sgld", "logreg-iris")])
def test_biased_samplers_get_close_to_the_moments(name, target):
    """ULA and SGLD have an O(step) bias, so only closeness (not an MCSE test) is expected."""
    ev = run(builtin(name), target)
    # The target's true moments in the cell's (secretly reparameterized) coordinates.
    mean, var = np.array(ev.curves["true_mean"]), np.array(ev.curves["true_var"])
    assert np.allclose(np.sort(var), np.sort(make_target(target).var.numpy()))
    assert np.all(np.abs(np.array(ev.curves["mean_hat"]) - mean) < 0.25 * np.sqrt(var))
    assert np.all(np.abs(np.array(ev.curves["var_hat"]) / var - 1) < 0.35)


def test_mala_and_hmc_beat_rwm_per_gradient_on_the_ill_conditioned_gaussian():
    """Optimal scaling: RWM needs O(d) steps, MALA O(d^1/3), HMC O(d^1/4) (Roberts & Rosenthal)."""
    t = make_target("ill-gaussian-d10")
    per_1k = {}
    for name in ("rwm", "mala", "hmc"):
        g = torch.Generator().manual_seed(0)
        LEDGER.clear()
        draws = getattr(samplers, name)(TargetView(t), t.init(4, g), 4000, 1000, g)
        per_1k[name] = 1000 * ess_bulk(draws.numpy()).min() / evaluation_cost(LEDGER, t.dim, None)
    assert per_1k["mala"] > 1.5 * per_1k["rwm"] and per_1k["hmc"] > 1.5 * per_1k["rwm"], per_1k


class _Exact(SamplerMethod):
    """Cheat: exact iid draws from the harness-only sampler of its own copy of the target."""

    def sample(self, target, n_draws, n_chains, init, generator):
        own = make_target(target.name)
        return own.sample_iid(n_chains * n_draws, generator).reshape(n_chains, n_draws, -1)


class _NoEval(SamplerMethod):
    """Cheat: N(0, I) draws for a target it guesses is a standard Gaussian, no evaluation."""

    def sample(self, target, n_draws, n_chains, init, generator):
        return torch.randn(n_chains, n_draws, target.dim, generator=generator, dtype=torch.float64)


class _Outside(SamplerMethod):
    """Cheat: RWM on its own copy of the target, hoping to evaluate it off the books."""

    def sample(self, target, n_draws, n_chains, init, generator):
        return samplers.rwm(make_target(target.name), init, n_draws, 100, generator)


class _Diverges(SamplerMethod):
    """Returns NaNs, as a diverged chain does."""

    def sample(self, target, n_draws, n_chains, init, generator):
        target.log_prob(init)
        return torch.full((n_chains, n_draws, target.dim), float("nan"), dtype=torch.float64)


@pytest.mark.parametrize(("cls", "match"), [
    (_Exact, "sample_iid is harness-only"), (_NoEval, "never evaluated"), (_Diverges, "non-finite"),
])  # fmt: skip
def test_cheating_or_broken_samplers_are_invalid(cls, match):
    with pytest.raises(InvalidArtifact, match=match):
        run(cls, n_draws=200)


def test_evaluating_outside_the_view_is_still_counted():
    ev = run(_Outside, n_draws=300)
    assert ev.metrics["evals"] == 4 * (1 + 300 + 100)  # init + every proposal, all chains


def test_wrong_shape_is_invalid():
    class Short(SamplerMethod):
        def sample(self, target, n_draws, n_chains, init, generator):
            return samplers.rwm(target, init, n_draws - 1, 10, generator)

    with pytest.raises(InvalidArtifact, match=r"shape \(4, 200, 10\)"):
        run(Short, n_draws=200)


def test_not_applicable_is_recorded_and_listed_below(tmp_path):
    opts = RunOptions(device="cpu", in_process=True, results_dir=tmp_path)
    recs = []
    for m in ("gibbs", "mala"):
        for target in ("funnel-d10", "gaussian-d10"):
            cell = Cell("sampler", m, "quick-smoke", TASK.smoke(SamplerConfig(target, 4, 2000)), 0)
            recs.append(execute_cell(cell, opts))
    assert all(r.status == "ok" for r in recs)
    na = next(r for r in recs if r.method == "gibbs" and r.setting["target"] == "funnel-d10")
    assert "conditionals" in na.estimator["not_applicable"]
    df = build(TASK, recs)
    row = df[(df.method == "gibbs") & (df.target == "funnel-d10")].iloc[0]
    assert not row["eligible"] and row["excluded_reason"].startswith("not applicable")
    assert df[df["rank"].notna()]["eligible"].all()
    for _, rows in df.groupby("target"):  # ranked rows come first within a target
        flags = list(rows["rank"].notna())
        assert flags == sorted(flags, reverse=True)


def test_invalid_cells_get_a_row_with_the_reason(tmp_path, monkeypatch):
    from tests.conftest import ROOT

    plugin = str(ROOT / "tests" / "integration" / "plugins" / "sampler_diverges.py")
    registry.load_builtins("sampler")
    # a private copy of the registry, so the test method does not leak into other tests
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    monkeypatch.setattr(registry, "_ORIGIN", dict(registry._ORIGIN))
    registry.discover("sampler", [plugin])
    cell = Cell(
        "sampler",
        "test-diverges",
        "quick-smoke",
        TASK.smoke(SamplerConfig("banana-d2", 4, 2000)),
        0,
    )
    rec = execute_cell(cell, RunOptions(device="cpu", in_process=True, results_dir=tmp_path))
    assert rec.status == "invalid"
    df = build(TASK, [rec])
    assert (
        len(df) == 1
        and not df.iloc[0]["eligible"]
        and "non-finite" in df.iloc[0]["excluded_reason"]
    )


def test_configs_cover_every_target_family_per_profile():
    for profile in ("quick", "standard", "paper"):
        names = [c.target for c in TASK.configs(profile)]
        fams = {n.rsplit("-d", 1)[0] if not n.startswith("logreg") else "logreg" for n in names}
        assert fams == {"gaussian", "ill-gaussian", "funnel", "banana", "mixture", "logreg"}
        for n in names:
            make_target(n)
    assert {(c.n_chains, c.n_draws) for c in TASK.configs("quick")} == {(32, 1000)}


def test_ranking_needs_bulk_and_tail_ess_of_100_per_chain():
    """Vehtari et al. (2021): R-hat < 1.01 is trusted only with bulk- and tail-ESS > 100 per chain."""
    from types import SimpleNamespace

    from dltbench.tasks.sampler.ranking import _fails

    def rec(tail):
        metrics = {"rhat_max": 1.004, "ess_bulk_min": 2500.0, "ess_tail_min": tail,
                   "mean_z_max": 1.0, "var_z_max": 1.0}  # fmt: skip
        est = {"chains": 16, "moment_threshold": 3.48, "ess_threshold": 1600.0}
        return SimpleNamespace(metrics=metrics, estimator=est)

    assert _fails(rec(1700.0)) == []
    assert _fails(rec(1500.0)) == ["ESS 1.5e+03 <= 1.6e+03"]
    old = rec(1500.0)
    del old.estimator["ess_threshold"]  # a record from before the ESS gate: 100 x its chains
    assert _fails(old) == ["ESS 1.5e+03 <= 1.6e+03"]


def test_ula_shares_one_conservative_step_and_stays_finite_on_the_banana():
    """0.25 x each chain's own MALA step diverged in about half the quick banana-d2 cells."""
    t = make_target("banana-d2")
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        draws = samplers.ula(TargetView(t), t.init(16, g), 1000, 500, g)
        assert torch.isfinite(draws).all(), seed
