"""The gan task's pieces: feature network, generator protocol, checks, view, built-ins."""

from __future__ import annotations

import dataclasses
import importlib.resources
import math

import numpy as np
import pandas as pd
import pytest
import torch

from dltbench import registry
from dltbench.api import Context, InvalidArtifact, Result
from dltbench.data import digits
from dltbench.runner import RunOptions, execute_cell, plan
from dltbench.tasks.gan import GanTask, Generator, digits_features
from dltbench.tasks.gan.features import sha256_file
from dltbench.tasks.gan.nets import ConvGenerator, MLPGenerator
from dltbench.tasks.gan.task import check_generator, sample_check, score

METHODS = ["gan", "dcgan", "wgan", "wgan-gp", "cgan", "sngan"]


def test_digits_feature_net_loads_from_the_installed_package_and_classifies():
    path = importlib.resources.files("dltbench.tasks.gan") / "digits_features.npz"
    assert path.is_file()
    fnet = digits_features()
    assert fnet.sha256 == sha256_file(path) and len(fnet.sha256) == 64
    test = digits().test
    feats, logits = fnet.features_and_logits(test.x)
    assert feats.shape == (len(test), 64) and feats.dtype == np.float64
    assert np.mean(logits.argmax(1) == test.y.numpy()) > 0.95


def test_generator_sample_draws_its_own_latents():
    g = MLPGenerator(latent_dim=3, num_classes=4)
    x = g.sample(10, torch.Generator().manual_seed(0))
    assert x.shape == (10, 2) and g.conditional
    img = ConvGenerator(latent_dim=5).eval()
    out = img.sample(6, torch.Generator().manual_seed(0))
    assert out.shape == (6, 1, 8, 8) and out.min() >= 0 and out.max() <= 1
    assert isinstance(img, Generator) and not img.conditional


def test_sample_check_refuses_nan_range_and_shape():
    check = sample_check((1, 8, 8), image=True)
    z = torch.zeros(3, 4)
    check("__call__", (z,), torch.rand(3, 1, 8, 8))
    with pytest.raises(InvalidArtifact, match="non-finite"):
        check("__call__", (z,), torch.full((3, 1, 8, 8), float("nan")))
    with pytest.raises(InvalidArtifact, match=r"\[0, 1\]"):
        check("__call__", (z,), torch.full((3, 1, 8, 8), 1.5))
    with pytest.raises(InvalidArtifact, match="shape"):
        check("__call__", (z,), torch.rand(2, 1, 8, 8))
    sample_check((2,), image=False)("__call__", (z,), torch.full((3, 2), 50.0))  # any finite


def test_check_generator_needs_declared_latent_dim():
    task = GanTask()
    cfg = task.configs("quick")[0]
    data, _ = task.prepare(cfg, Context(0, torch.device("cpu")))
    assert check_generator(MLPGenerator(latent_dim=3), data, cfg) == (3, False)
    with pytest.raises(InvalidArtifact, match="latent_dim"):
        check_generator(torch.nn.Linear(2, 2), data, cfg)


def test_train_view_holds_only_the_training_split():
    task = GanTask()
    for cfg in task.configs("quick"):
        data = task.prepare(cfg, Context(0, torch.device("cpu")))
        view = task.train_view(data, cfg)
        assert view.test is None and view.mixture is None
        assert len(view.train) == len(data[0].train) and view.num_classes == data[0].num_classes


def test_two_d_targets_are_fixed_and_independent_of_the_seed():
    task = GanTask()
    cfg = task.configs("quick")[1]
    a, _ = task.prepare(cfg, Context(0, torch.device("cpu")))
    b, _ = task.prepare(cfg, Context(7, torch.device("cpu")))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.x, b.test.x)
    nearest, hq = a.mixture.assign(a.test.x.numpy())
    assert hq.mean() > 0.98 and np.array_equal(nearest, a.test.y.numpy())


@pytest.mark.parametrize("method,dataset", [(m, "digits") for m in METHODS] + [("cgan", "ring8")])
def test_every_builtin_trains_and_scores_on_smoke(method, dataset):
    registry.discover("gan")
    task = registry.get_task("gan")
    cells = [
        c for c in plan(task, [method], "quick", [0], smoke=True) if c.config.dataset == dataset
    ]
    r = execute_cell(cells[0], RunOptions(device="cpu", in_process=True))
    assert r.status == "ok", r.error
    assert r.metrics["distance"] >= 0 and 0 <= r.metrics["precision"] <= 1
    assert task.check_record(r) is None
    conditional_score = r.metrics["class_accuracy"]
    assert (method == "cgan") == (
        conditional_score is not None and not math.isnan(conditional_score)
    )


def test_a_copy_of_the_training_set_is_flagged_by_the_evaluator():
    task = GanTask()
    cfg = task.smoke(task.configs("quick")[2])
    data, fnet = task.prepare(cfg, Context(0, torch.device("cpu")))
    copies = data.train.x[torch.randint(len(data.train), (200,), generator=torch.Generator())]
    ev = score(copies, None, data, fnet, cfg, Context(1, torch.device("cpu")))
    assert ev.metrics["memorised_fraction"] > 0.9 > cfg.memorised_flag
    fresh = score(data.test.x[:200], None, data, fnet, cfg, Context(1, torch.device("cpu")))
    assert fresh.metrics["memorised_fraction"] < 0.2  # held-out data: ~ the 5% quantile
    assert ev.metrics["fid"] < 50 and ev.estimator["feature_net"]["name"] == "digits-cnn64"


def _record(rid: str, memorised: float) -> Result:
    return Result(
        id=rid, task="gan", task_version="1", method="m", method_version="1",
        method_source_hash="", method_params={}, method_origin="", profile="quick",
        setting={}, config={}, config_hash="", seed=0, status="ok",
        metrics={"memorised_fraction": memorised, "modes": 3},
        estimator={"memorisation": {"flag_above": 0.25}, "num_modes": 8},
    )  # fmt: skip


def test_memorising_rows_are_not_ranked_and_modes_are_bounded():
    task = GanTask()
    df = pd.DataFrame({"records": ["a b", "c"], "distance_mean": [0.1, 0.5]})
    out = task.adjust_leaderboard(
        df, [_record("a", 0.05), _record("b", 0.9), _record("c", 0.04)], None
    )
    assert out["eligible"].tolist() == [False, True]
    assert "memorisation" in out["excluded_reason"][0]
    bad = _record("d", 0.0)
    bad.metrics["modes"] = 9
    assert "modes" in task.check_record(bad)


def test_smoke_and_limit_shrink_the_config():
    task = GanTask()
    cfg = task.configs("quick")[2]
    small = task.smoke(cfg)
    assert small.steps < cfg.steps and small.n_samples <= 200
    assert task.limit(cfg, 300).n_samples == 300
    assert dataclasses.replace(cfg, n_samples=5).n_samples == 5
    assert math.isfinite(small.memorised_flag)


class _Fresh:
    """Stands for the auditor's fresh plugin copy: calls a copy of the module directly."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def call(self, method: str, *args):
        with torch.no_grad():
            return self.module(*args)


def test_the_auditor_catches_a_generator_that_answers_from_its_batch_position():
    from dltbench.oracle import Auditor

    train = torch.rand(50, 1, 8, 8)

    class Pooler(Generator):
        latent_dim, conditional = 4, False

        def forward(self, z):  # ignores z: row i is training sample i
            return train[torch.arange(len(z)) % len(train)]

    class Honest(Generator):
        latent_dim, conditional = 4, False

        def forward(self, z):
            return torch.sigmoid(z[:, :1, None, None].expand(-1, 1, 8, 8))

    z = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    ok = Auditor(_Fresh(Honest()), torch.Generator().manual_seed(1))
    ok.maybe("__call__", (z,), Honest()(z))
    bad = Auditor(_Fresh(Pooler()), torch.Generator().manual_seed(1))
    with pytest.raises(InvalidArtifact, match="audit"):
        bad.maybe("__call__", (z,), Pooler()(z))
