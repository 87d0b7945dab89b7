"""Closed forms for the new threat models: the exact l0 budget of a box-constrained linear
model, the universal perturbation of a linear model, and top-1 robustness."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from dltbench.tasks.robust import apgd, pgd
from dltbench.tasks.robust.attacks import apply_universal, universal_perturbation
from dltbench.tasks.robust.sparse import sparse_rs
from dltbench.tasks.robust.threat import label_rank, lp_norm, project_l0

SIDE = 4
D = SIDE * SIDE


def _binary_linear(w: torch.Tensor, b: float) -> nn.Module:
    """Logits (0, w.x + b): class 1 iff w.x + b > 0."""
    lin = nn.Linear(D, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[1] = w
        lin.bias[1] = b
    return nn.Sequential(nn.Flatten(), lin).eval()


def _min_pixels(x: torch.Tensor, w: torch.Tensor, b: float) -> np.ndarray:
    """Exact minimal number of changed pixels that flips class 1 (greedy on |w_i| * headroom).

    Pixel i can lower w.x by at most |w_i| * (x_i if w_i > 0 else 1 - x_i); with one channel
    the largest such gains first is optimal (a knapsack with free item sizes).
    """
    flat = x.flatten(1).double()
    head = torch.where(w > 0, flat, 1 - flat)
    gains = (w.abs().double() * head).sort(dim=1, descending=True).values.cumsum(1)
    margin = flat @ w.double() + b
    return ((gains <= margin[:, None]).sum(1) + 1).numpy()  # first m with gain > margin


def _l0_problem(seed: int, equal_headroom: bool):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, generator=g)
    if equal_headroom:  # every pixel of point n has headroom h_n towards lowering w.x
        h = 0.3 + 0.6 * torch.rand(60, 1, generator=g)
        x = torch.where(w > 0, h, 1 - h).reshape(60, 1, SIDE, SIDE)
    else:
        x = 0.2 + 0.6 * torch.rand(60, 1, SIDE, SIDE, generator=g)
    # biases spread the minimal pixel counts over 1..4
    score = x.flatten(1) @ w
    b = float(-score.mean()) + 1.2
    model = _binary_linear(w, b)
    y = torch.ones(60, dtype=torch.long)
    keep = (x.flatten(1) @ w + b) > 0.05  # correctly classified, not on the boundary
    return model, x[keep], y[keep], w, b


@pytest.mark.parametrize("attack", ["sparse-rs", "pgd-l0"])
def test_l0_attacks_find_the_exact_minimal_pixel_count_of_a_linear_model(attack):
    model, x, y, w, b = _l0_problem(seed=3, equal_headroom=attack == "pgd-l0")
    m = _min_pixels(x, w, b)
    assert len(set(m.tolist())) >= 2  # the check is not trivial
    g = torch.Generator().manual_seed(0)
    for k in sorted(set(m.tolist())):
        sel = torch.as_tensor(m <= k)
        if attack == "sparse-rs":
            xa = sparse_rs(model, x, y, k, "l0", g, queries=400)
        else:
            # from the clean point: PGD-l0 keeps the pixel it started on while that one
            # saves most distance, so a random start on a poor pixel needs restarts
            xa = pgd(model, x, y, k, "l0", g, steps=30, loss="cw", random_init=False)
        assert (lp_norm(xa - x, "l0") <= k).all()
        fooled = model(xa).argmax(1) != y
        # found where the exact minimum is <= k, impossible (and not found) where it is > k
        assert fooled[sel].all(), (attack, k)
        assert not fooled[~sel].any(), (attack, k)


def test_project_l0_is_the_euclidean_projection_onto_k_pixels_in_the_box():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(20, 2, 1, 5, generator=g)  # 5 pixels of 2 channels
    z = x + 1.5 * torch.randn(x.shape, generator=g)
    for k in (1, 2, 3):
        p = project_l0(z, x, k)
        assert (lp_norm(p - x, "l0") <= k).all() and p.min() >= 0 and p.max() <= 1
        for n in range(len(x)):
            best = min(
                float((torch.where(_mask(s), z[n].clamp(0, 1), x[n]) - z[n]).square().sum())
                for s in itertools.combinations(range(5), k)
            )
            assert float((p[n] - z[n]).square().sum()) == pytest.approx(best, rel=1e-5, abs=1e-6)


def _mask(pixels) -> torch.Tensor:
    m = torch.zeros(2, 1, 5, dtype=torch.bool)
    m[:, :, list(pixels)] = True
    return m


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_universal_perturbation_of_a_linear_model_is_minus_w_with_the_closed_form_fooling_rate(
    norm,
):
    g = torch.Generator().manual_seed(4)
    w = torch.randn(D, generator=g)
    eps = 0.1 if norm == "linf" else 0.5
    # inputs far enough from the box's faces that x + delta is never clipped
    x = 0.3 + 0.4 * torch.rand(400, 1, SIDE, SIDE, generator=g)
    reach = eps * (w.abs().sum() if norm == "linf" else w.norm())
    b = float(reach - (x.flatten(1) @ w).median())  # about half the points within reach
    model = _binary_linear(w, b)
    y = torch.ones(len(x), dtype=torch.long)
    held, test = slice(0, 200), slice(200, 400)
    # steps of eps / 5: the l2 iterate's component off -w shrinks geometrically
    delta = universal_perturbation(model, x[held], y[held], eps, norm, g, 100, eps / 5)
    direction = -w.sign() if norm == "linf" else -w / w.norm()
    cos = torch.nn.functional.cosine_similarity(delta.flatten(), direction, dim=0)
    assert cos > 0.999 and float(lp_norm(delta, norm)) <= eps + 1e-6
    # fooling rate on the other points: P(w.x + b > 0 and w.x + b - eps ||w||_q <= 0)
    z = x[test].flatten(1) @ w + b
    closed = float(((z > 0) & (z - reach < 0)).float().mean())
    xa = apply_universal(x[test], delta)
    rate = float((model(xa).argmax(1) != model(x[test]).argmax(1)).float().mean())
    assert rate == pytest.approx(closed, abs=1 / 200)
    assert 0.2 < closed < 0.8


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_uap_transfers_to_a_linear_model_of_the_same_direction_as_its_closed_form(norm):
    """The UAP of w.x + b is -eps w/||w||_q; on v.x + c with v = 2w it leaves
    P(v.x + c - eps ||v||_q > 0) of the label-1 points correct."""
    from dltbench.tasks.robust.transfer import transfer_accuracy

    g = torch.Generator().manual_seed(6)
    w = torch.randn(D, generator=g)
    eps = 0.1 if norm == "linf" else 0.5
    x = 0.3 + 0.4 * torch.rand(400, 1, SIDE, SIDE, generator=g)  # x + delta never clipped
    q = w.abs().sum() if norm == "linf" else w.norm()
    source = _binary_linear(w, float(eps * q - (x.flatten(1) @ w).median()))
    c = float(2 * eps * q - (2 * x.flatten(1) @ w).quantile(0.4))  # another bias: other points
    target = _binary_linear(2 * w, c)
    y = torch.ones(len(x), dtype=torch.long)
    held, test = slice(0, 200), slice(200, 400)
    delta = universal_perturbation(source, x[held], y[held], eps, norm, g, 100, eps / 5)
    z = x[test].flatten(1) @ (2 * w) + c
    closed = float((z - eps * 2 * q > 0).float().mean())
    acc = transfer_accuracy(target, x[test], y[test], {"source": delta})["source"]
    assert acc == pytest.approx(closed, abs=1 / 200)
    assert 0.2 < closed < 0.8


def test_top1_robustness_is_ordinary_robustness():
    g = torch.Generator().manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, 10)).eval()
    x = torch.rand(100, 1, SIDE, SIDE, generator=g)
    y = model(x).argmax(1)
    logits = model(x + 0.3 * torch.randn(x.shape, generator=g))
    # rank 0 exactly where argmax is the label, ties included
    tied = torch.zeros(4, 5)
    assert (label_rank(logits, y) == 0).equal(logits.argmax(1) == y)
    assert label_rank(tied, torch.tensor([0, 1, 2, 4])).tolist() == [0, 1, 2, 4]
    # the top-1 loss and success criterion are the margin's: the same attack, bit for bit
    a = apgd(model, x, y, 0.05, "linf", torch.Generator().manual_seed(0), steps=10, loss="top1")
    c = apgd(model, x, y, 0.05, "linf", torch.Generator().manual_seed(0), steps=10, loss="cw")
    assert torch.equal(a, c)


def test_topk_attack_pushes_the_label_out_of_the_top_k():
    g = torch.Generator().manual_seed(6)
    torch.manual_seed(6)  # the layer's initial weights
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, 10)).eval()
    x = 0.3 + 0.4 * torch.rand(60, 1, SIDE, SIDE, generator=g)
    y = model(x).argmax(1)
    k, eps = 3, 0.12

    def ranks(loss):
        xa = apgd(model, x, y, eps, "linf", torch.Generator().manual_seed(0), steps=30, loss=loss)
        return label_rank(model(xa), y)

    ranks, plain = ranks(f"top{k}"), ranks("ce")
    # the top-k margin pushes more labels out of the top k than cross-entropy does
    assert (ranks >= k).float().mean() > (plain >= k).float().mean() + 0.05


@pytest.mark.slow  # trains a small CNN: about 15 s idle, a minute on a loaded 2-core machine
def test_eot_against_a_transformation_averaging_model_beats_plain_pgd():
    from dltbench.api import Context
    from dltbench.data import digits
    from dltbench.models import SmallCNN, fit_classifier
    from dltbench.tasks.robust import standard_loss
    from dltbench.tasks.robust.physical import (
        TransformAveraged,
        TransformFamily,
        eot_pgd,
        expected_accuracy,
    )

    torch.manual_seed(0)
    data = digits()
    family = TransformFamily()
    base = fit_classifier(
        SmallCNN(1, 10), data.train, standard_loss(), Context(0, torch.device("cpu")), 3
    )
    # a randomized defense: logits averaged over 4 fresh draws of the family per call
    defended = TransformAveraged(
        base, family, samples=4, generator=torch.Generator().manual_seed(1)
    )
    x, y = data.test.x[:100], data.test.y[:100]
    eps = 0.1
    plain = pgd(defended, x, y, eps, "linf", torch.Generator().manual_seed(2), steps=10)
    eot = eot_pgd(
        defended, x, y, eps, "linf", torch.Generator().manual_seed(2), steps=10, samples=4
    )
    assert (lp_norm(eot - x, "linf") <= eps + 1e-6).all()

    def score(xa):  # the defense's expected accuracy, many draws from a fixed stream
        return expected_accuracy(defended, xa, y, TransformFamily(0, 1, 1, 0, 0), 16,
                                 torch.Generator().manual_seed(3))  # fmt: skip

    assert score(eot) <= score(plain)
    assert score(eot) < score(x) - 0.1  # and it is an attack at all
