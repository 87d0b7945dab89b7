"""faceid: identity split, the training view, the harness's checks, attacks and every built-in."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from dltbench import registry
from dltbench.api import Context, InvalidArtifact
from dltbench.tasks.faceid import FaceIDTask
from dltbench.tasks.faceid.attacks import attack_pairs, check_adversarial, eyeglass_mask
from dltbench.tasks.faceid.data import FaceData, SyntheticSpec, TrainView, make_synthetic
from dltbench.tasks.faceid.nets import SmallFaceCNN
from dltbench.tasks.faceid.task import check_embedder, evaluate_embedder

SMALL = SyntheticSpec(train_identities=30, train_images=6, test_identities=20, test_images=4,
                      pairs_per_fold=6)  # fmt: skip
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small() -> FaceData:
    return make_synthetic(SMALL)


@pytest.fixture(scope="module")
def config():
    task = FaceIDTask()
    return dataclasses.replace(task.smoke(task.configs("quick")[0]), embedding_dim=16)


def test_train_and_test_identities_are_disjoint(small):
    assert not set(small.train_ids) & set(small.test_ids)
    assert len(small.pairs) == 2 * 6 * 10 and small.pairs.same.sum() == 60
    # every pair is within one fold's identities, and folds share no identity
    ident = np.array(small.test_ids)
    fold_ids = [set(ident[np.r_[small.pairs.i, small.pairs.j][np.r_[small.pairs.fold, small.pairs.fold] == f]])
                for f in range(10)]  # fmt: skip
    assert all(not (a & b) for k, a in enumerate(fold_ids) for b in fold_ids[k + 1 :])
    assert np.array_equal(ident[small.pairs.i] == ident[small.pairs.j], small.pairs.same)
    with pytest.raises(ValueError, match="both training and test"):
        dataclasses.replace(small, test_ids=("id0",) * len(small.test_ids))


def test_the_view_holds_only_training_images_and_labels(small, config):
    view = FaceIDTask().train_view(small, config)
    assert isinstance(view, TrainView)
    assert {f.name for f in dataclasses.fields(view)} == {"name", "x", "y", "num_identities"}
    assert view.x is small.train_x and int(view.y.max()) + 1 == view.num_identities == 30


def test_quick_data_has_enough_negatives_for_tar_at_1e3():
    spec = SyntheticSpec()
    assert spec.pairs_per_fold * 10 >= 1000 and spec.test_identities % 10 == 0


def test_synthetic_data_is_fixed_and_the_test_seed_is_a_hidden_package_file(small):
    again = make_synthetic(SMALL)
    assert torch.equal(again.test_x, small.test_x) and np.array_equal(again.pairs.i, small.pairs.i)
    from dltbench.sandbox import _hidden_data_paths
    from dltbench.tasks.faceid.data import TEST_SEED_FILE

    assert TEST_SEED_FILE.resolve() in {p.resolve() for p in _hidden_data_paths()}


class _Const(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize(
    "fn,message",
    [
        (lambda x: torch.full((len(x), 8), float("nan")), "non-finite"),
        (lambda x: torch.zeros(len(x)), "shape"),
        (lambda x: torch.zeros(len(x), 8), "all-zero"),
        (lambda x: torch.randn(len(x), 8), "not deterministic"),
        (lambda x: torch.ones(len(x), 16), r"embeddings of shape \(8, 8\), got \(8, 16\)"),
    ],
)
def test_bad_embedders_are_invalid(fn, message, small):
    with pytest.raises(InvalidArtifact, match=message):
        check_embedder(_Const(fn), small.test_x[:8], CPU, 8)


def test_an_attack_that_leaves_its_budget_is_caught():
    x = torch.rand(4, 1, 24, 24) * 0.5 + 0.25
    check_adversarial(x + 0.03, x, 0.03 + 1e-6, "linf")
    with pytest.raises(InvalidArtifact, match="broke the linf budget"):
        check_adversarial(x + 0.05, x, 0.03, "linf")
    with pytest.raises(InvalidArtifact, match="l2 budget"):
        check_adversarial(x + 0.1, x, 0.5, "l2")
    mask = eyeglass_mask(24, 24)
    assert 0.05 < float(mask.mean()) < 0.3
    check_adversarial(x + 0.2 * mask, x, 1.0, "linf", mask)
    with pytest.raises(InvalidArtifact, match="outside its mask"):
        check_adversarial(x + 0.01, x, 1.0, "linf", mask)


def test_attacked_accuracy_never_exceeds_clean_and_attacks_bite(small):
    torch.manual_seed(0)
    net = SmallFaceCNN(1, 16).eval()
    p = small.pairs
    x1, x2 = small.test_x[p.i], small.test_x[p.j]
    thr = np.full(len(p), 0.9)
    gen = torch.Generator().manual_seed(0)
    weak = attack_pairs(net, x1, x2, p.same, thr, 1e-4, "linf", 2, gen)
    strong = attack_pairs(net, x1, x2, p.same, thr, 0.3, "linf", 5, gen)
    for out in (weak, strong):
        assert (out.adv_correct <= out.clean_correct).all()
    assert strong.adv_correct.mean() < strong.clean_correct.mean()
    assert strong.summary()["adv_acc"] <= weak.summary()["adv_acc"]


BUILTINS = ["softmax", "center-loss", "sphereface", "cosface", "arcface", "contrastive", "triplet"]


def test_the_builtins_are_registered():
    registry.discover("faceid")
    assert set(BUILTINS) <= set(registry.method_names("faceid"))


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_trains_and_scores_on_a_small_config(name, small, config):
    method = registry.get_method_class("faceid", name)()
    task = FaceIDTask()
    model = task.fit(method, task.train_view(small, config), config, Context(0, CPU))
    ev = evaluate_embedder(model, small, config, Context(1, CPU))
    m = ev.metrics
    assert 0.0 <= m["verification_acc"] <= 1.0 and m["embedding_dim"] == 16
    assert (
        m["tar@far=1e-3"] is None
        and "not estimable" in ev.estimator["not_estimable"]["tar@far=1e-3"]
    )
    for a in ("linf", "l2", "glasses"):
        assert m[f"adv_acc_{a}"] <= m["attack_clean_acc"]
    has_classifier = name not in ("contrastive", "triplet")
    assert (m["nc3_self_duality"] is not None) == has_classifier
    assert m["nc1"] >= 0 and len(ev.curves["fold_accuracy"]) == 10
