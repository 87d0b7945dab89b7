"""Unit tests of the vae task: data, the harness's model checks, the evaluator, the leaderboard."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

from dltbench import data as datasets
from dltbench import leaderboard, registry
from dltbench.api import Context, DataMissing, InvalidArtifact, Result
from dltbench.tasks.vae import (
    MLPVAE,
    PointMass,
    active_unit_points,
    binarize,
    binarize_batch,
    check_model,
    fit_model,
    load_binary,
)

TASK = registry.get_task("vae")
CPU = torch.device("cpu")


@pytest.fixture  # function scope: built after conftest's 1-thread fixture (see the CLI test)
def data():
    d = load_binary("digits")
    return dataclasses.replace(d, test=d.test.subset(slice(0, 40)))


@pytest.fixture
def config():
    return TASK.smoke(TASK.configs("quick")[0])


def gen():
    return torch.Generator().manual_seed(0)


def test_static_binarization_is_fixed_and_harness_owned(data):
    again = load_binary("digits")
    assert torch.equal(again.train.x, data.train.x)  # independent of any run seed
    assert set(data.train.x.unique().tolist()) == {0.0, 1.0} and data.x_dim == 64
    assert data.train.x.shape == (len(data.train.y), 64)
    grey = torch.rand(4000, 1, 2, 2, generator=gen())
    bits = binarize(grey, 1)
    assert abs(float(bits.mean() - grey.mean())) < 0.02  # a Bernoulli draw at the grey level
    assert torch.equal(bits, binarize(grey, 1)) and not torch.equal(bits, binarize(grey, 2))
    torch.testing.assert_close(data.label_prior.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_method_view_has_no_test_split_nor_class_prior(data, config):
    seen = {}

    class Spy:
        def train(self, d, cfg, ctx):
            seen["d"] = d
            return None

    # What run_plugin sends to the plugin process: the train view, then fit there.
    TASK.fit(Spy(), TASK.train_view(data, config), config, Context(0, CPU))
    assert seen["d"].test is None and seen["d"].label_prior is None


def test_mnist_profiles_say_what_to_put_where():
    cfg = TASK.configs("standard")[0]
    with pytest.raises(DataMissing, match="data-dir"):
        TASK.check_data(cfg, None)


class Uniform:
    """Bernoulli(1/2) pixels, q = p = N(0, I): exactly 1 bit/dim."""

    def encode(self, x):
        return Independent(Normal(torch.zeros(len(x), 3), torch.ones(len(x), 3)), 1)

    def decode(self, z):
        return Independent(Bernoulli(probs=torch.full((len(z), 64), 0.5)), 1)

    def prior(self):
        return Independent(Normal(torch.zeros(3), torch.ones(3)), 1)


def test_evaluate_uniform_model_gives_exactly_one_bit_per_dim(data, config):
    ev = TASK.evaluate(Uniform(), data, config, Context(0, CPU))
    assert ev.metrics["iwae"] == pytest.approx(-64 * math.log(2), abs=1e-5)  # float32 model
    assert f"{ev.metrics['nll_bpd']:.6f}" == "1.000000"
    assert ev.metrics["elbo_bpd"] == pytest.approx(1.0, abs=1e-6)
    assert ev.metrics["kl"] == 0.0 and ev.metrics["active_units"] == 0
    assert math.isnan(ev.metrics["cond_iwae"])
    assert ev.estimator["iwae_k"] == config.iwae_k and ev.estimator["has_likelihood"]


def test_evaluate_is_reproducible_from_the_eval_seed(data, config):
    torch.manual_seed(0)
    model = MLPVAE(64, 4, (16,))
    a = TASK.evaluate(model, data, config, Context(3, CPU)).metrics
    b = TASK.evaluate(model, data, config, Context(3, CPU)).metrics
    assert a["iwae"] == b["iwae"] and a["elbo"] == b["elbo"]
    assert a["elbo"] <= a["iwae"] + 0.5  # one draw per point for ELBO noise; IWAE_20 is tighter


def test_conditional_model_gets_marginal_and_conditional_bounds(data, config):
    torch.manual_seed(0)
    ev = TASK.evaluate(MLPVAE(64, 4, (16,), num_classes=10), data, config, Context(0, CPU))
    assert math.isfinite(ev.metrics["cond_iwae"]) and math.isfinite(ev.metrics["iwae"])
    assert math.isfinite(ev.metrics["cond_elbo"])
    # marginal bounds on log p(x): ELBO below IWAE; log p(x|y) - log p(x) <= -log min p(y)
    assert ev.metrics["elbo"] < ev.metrics["iwae"]
    assert (
        ev.metrics["cond_iwae"] - ev.metrics["iwae"]
        < -math.log(float(data.label_prior.min())) + 0.5
    )
    assert ev.estimator["conditional"] and len(ev.estimator["label_prior"]) == 10


class NoPrior(Uniform):
    def encode(self, x):
        return PointMass(torch.zeros(len(x), 3))

    def prior(self):
        return None


def test_a_model_without_prior_is_scored_by_reconstruction_only(data, config):
    ev = TASK.evaluate(NoPrior(), data, config, Context(0, CPU))
    assert math.isnan(ev.metrics["iwae"]) and math.isnan(ev.metrics["elbo"])
    assert ev.metrics["recon_nll"] == pytest.approx(64 * math.log(2))
    assert not ev.estimator["has_likelihood"]


def _broken(**over):
    m = Uniform()
    for name, fn in over.items():
        setattr(m, name, fn)
    return m


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (object(), "encode"),
        (_broken(encode=lambda x: x), "Distribution"),
        (_broken(encode=lambda x: Independent(Normal(torch.zeros(1, 3), 1.0), 1)), "batch shape"),
        (_broken(encode=lambda x: Normal(torch.zeros(len(x)), 1.0)), "event shape"),
        (_broken(decode=lambda z: Independent(Bernoulli(probs=torch.full((len(z), 8, 8), 0.5)), 2)), "event shape"),
        (_broken(decode=lambda z: Independent(Normal(torch.full((len(z), 64), math.nan), 1.0, validate_args=False), 1)), "not finite"),
        (_broken(prior=lambda: Independent(Normal(torch.zeros(5), 1.0), 1)), "event shape"),
        (_broken(decode=lambda z: 1 / 0), "ZeroDivisionError"),
    ],
)  # fmt: skip
def test_protocol_violations_are_invalid_artifacts(data, model, match):
    with pytest.raises(InvalidArtifact, match=match):
        check_model(model, data, CPU, gen())


def test_conditional_models_receive_the_labels(data):
    got = {}

    class Cond(Uniform):
        conditional = True

        def encode(self, x, y):
            got["y"] = y
            return super().encode(x)

        def decode(self, z, y):
            return super().decode(z)

        def prior(self, y):
            return super().prior()

    info = check_model(Cond(), data, CPU, gen())
    assert info.conditional and torch.equal(got["y"], data.test.y[:8])


def _record(method, seed, iwae, has_likelihood):
    return Result(
        id=f"{method}{seed}", task="vae", task_version="1", method=method, method_version="1",
        method_source_hash="h", method_params={}, method_origin="builtin", profile="quick",
        setting={"dataset": "digits"}, config={}, config_hash="c", seed=seed, status="ok",
        metrics={"iwae": iwae, "recon_nll": 20.0}, estimator={"has_likelihood": has_likelihood},
        timestamp=f"2024-01-0{seed + 1}",
    )  # fmt: skip


def test_leaderboard_lists_the_autoencoder_unranked_with_the_reason():
    recs = [_record("vae", s, -24.0 - s, True) for s in (0, 1)]
    recs += [_record("ae", s, None, False) for s in (0, 1)]
    recs += [_record("iwae", s, -23.0, True) for s in (0, 1)]
    df = leaderboard.build(TASK, recs)
    row = df.set_index("method")
    assert row.loc["iwae", "rank"] == 1 and row.loc["vae", "rank"] == 2
    assert pd.isna(row.loc["ae", "rank"]) and not row.loc["ae", "eligible"]
    assert "no likelihood" in row.loc["ae", "excluded_reason"]
    assert list(df["method"]) == ["iwae", "vae", "ae"]
    assert "no likelihood" in leaderboard.to_markdown(TASK, df)


def test_dynamic_binarization_keeps_training_grey_levels_and_the_same_test_bits(data):
    dyn = load_binary("digits", dynamic=True)
    grey = datasets.load("digits")
    assert dyn.dynamic and not data.dynamic
    torch.testing.assert_close(dyn.train.x, grey.train.x.flatten(1).float())  # train, not test
    assert dyn.train.x.shape == (len(grey.train.y), 64) and len(dyn.train.x) != len(grey.test.x)
    assert torch.equal(dyn.test.x, load_binary("digits").test.x)  # one fixed test draw
    view = TASK.train_view(dyn, TASK.configs("quick")[0])
    assert view.test is None and view.dynamic and torch.equal(view.train.x, dyn.train.x)


def test_binarize_batch_draws_differ_per_call_and_have_the_grey_level_as_mean():
    p = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0]).repeat(3, 1)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([binarize_batch(p, g) for _ in range(4000)])
    assert set(draws.unique().tolist()) <= {0.0, 1.0} and draws.dtype == p.dtype
    assert not torch.equal(draws[0], draws[1]) or not torch.equal(draws[1], draws[2])
    sd = (p * (1 - p) / len(draws)).sqrt()
    assert ((draws.mean(0) - p).abs() <= 4 * sd + 1e-12).all()  # exact at p = 0 and 1


def test_fit_model_binarizes_every_epoch_when_dynamic():
    grey = torch.rand(50, 64, generator=torch.Generator().manual_seed(1))
    seen = []

    def spy(m, x, y, g):
        seen.append(x.clone())
        return (m.weight * 0).sum()

    fit_model(nn.Linear(1, 1), grey, torch.zeros(50, dtype=torch.long), spy, Context(0, CPU),
              epochs=100, batch_size=50, dynamic=True)  # fmt: skip
    assert all(set(x.unique().tolist()) == {0.0, 1.0} for x in seen)
    assert not torch.equal(seen[0], seen[1])  # a fresh draw each epoch, not one fixed one
    # Rows come shuffled; the per-epoch row means of bits track the grey levels' row means.
    rows = torch.stack([x.mean() for x in seen])
    assert abs(float(rows.mean() - grey.mean())) < 4 * 0.5 / math.sqrt(100 * 50 * 64)
    seen.clear()
    fit_model(nn.Linear(1, 1), grey, torch.zeros(50, dtype=torch.long), spy, Context(0, CPU),
              epochs=2, batch_size=50)  # fmt: skip
    assert torch.equal(seen[0].sort(0).values, grey.sort(0).values)  # static: x as given


def test_paper_profile_follows_burda_and_quick_keeps_its_documented_choices():
    paper, quick = TASK.configs("paper")[0], TASK.configs("quick")[0]
    assert (paper.binarization, paper.active_split, paper.active_points, paper.active_ddof) == (
        "dynamic", "train", 500, 0)  # fmt: skip
    assert (quick.binarization, quick.active_split, quick.active_points, quick.active_ddof) == (
        "static", "test", 0, 1)  # fmt: skip
    with pytest.raises(ValueError, match="binarization"):
        TASK.prepare(dataclasses.replace(quick, binarization="fixed"), Context(0, CPU))


def test_active_units_on_training_points_with_ddof_zero(config):
    cfg = dataclasses.replace(config, binarization="dynamic", active_split="train",
                              active_points=100, active_ddof=0)  # fmt: skip
    dyn = TASK.prepare(cfg, Context(0, CPU))
    torch.manual_seed(0)
    model = MLPVAE(64, 4, (16,))
    ev = TASK.evaluate(model, dyn, cfg, Context(0, CPU))
    pts = active_unit_points(dyn, cfg)
    assert pts.x.shape == (100, 64) and set(pts.x.unique().tolist()) == {0.0, 1.0}
    with torch.no_grad():
        means = model.encode(pts.x).mean.double().numpy()
    np.testing.assert_allclose(ev.curves["unit_variance"], np.var(means, axis=0), rtol=1e-6)
    assert ev.metrics["active_units"] == int((np.var(means, axis=0) > 0.01).sum())
    assert "ddof 0, over 100 train points" in ev.estimator["active_units_rule"]
    assert "dynamically binarized" in ev.estimator["data"]
