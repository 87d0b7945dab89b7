"""Reference tests: exact robust accuracy of linear classifiers, and torchattacks on the same inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dltbench.api import Context
from dltbench.data import digits
from dltbench.models import SmallCNN, fit_classifier
from dltbench.tasks.robust import (
    default_ensemble,
    fgsm,
    pgd,
    robust_accuracy,
    standard_loss,
)  # fmt: skip

K, SIDE = 10, 4  # K >= 10 classes so that the targeted attacks run on 9 targets


def _linear_problem(seed: int, K: int = K):  # noqa: N803 (the class count, as in the papers)
    g = torch.Generator().manual_seed(seed)
    d = SIDE * SIDE
    w = torch.randn(K, d, generator=g, dtype=torch.float64)
    b = 0.5 * torch.randn(K, generator=g, dtype=torch.float64)
    # inputs in [0.3, 0.7]: every attack of budget <= 0.3 per coordinate stays inside the box
    x = 0.3 + 0.4 * torch.rand(300, 1, SIDE, SIDE, generator=g, dtype=torch.float64)
    z = x.flatten(1) @ w.T + b
    y = z.argmax(1)
    flip = torch.rand(300, generator=g) < 0.1  # some points misclassified on purpose
    y = torch.where(flip, (y + 1) % K, y)
    lin = nn.Linear(d, K).double()
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    model = nn.Sequential(nn.Flatten(), lin).float().eval()
    return model, x.float(), y, w, b


def _minimal_perturbation(x, y, w, b, norm: str) -> torch.Tensor:
    """min_{j != y} (z_y - z_j) / ||w_y - w_j||_q, q the dual norm; -inf if misclassified."""
    z = x.double().flatten(1) @ w.T + b
    q = 1 if norm == "linf" else 2
    diff = w[y][:, None, :] - w[None, :, :]  # (N, K, d)
    dist = (z.gather(1, y[:, None]) - z) / diff.norm(p=q, dim=2).clamp_min(1e-300)
    dist.scatter_(1, y[:, None], float("inf"))
    d = dist.min(1).values
    return torch.where(z.argmax(1) == y, d, torch.full_like(d, float("-inf")))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_ensemble_reaches_the_exact_robust_accuracy_of_a_linear_classifier(norm):
    model, x, y, w, b = _linear_problem(seed=1 if norm == "linf" else 2)
    dstar = _minimal_perturbation(x, y, w, b, norm)
    eps = float(dstar[torch.isfinite(dstar)].median())
    assert eps < 0.3  # keeps the minimal perturbation inside the box
    exact = (dstar > eps).numpy()
    res = robust_accuracy(
        model, x, y, eps, norm, default_ensemble(apgd_steps=50, n_targets=9, square_queries=200),
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    clear = (torch.abs(dstar - eps) > 1e-3 * eps).numpy()  # float32 cannot decide the rest
    # nothing goes below the exact value: every attack respects the budget
    for name, mask in res.per_attack.items():
        assert (mask[clear] >= exact[clear]).all(), name
    # the ensemble reaches it: every point with a smaller minimal perturbation is broken
    assert (res.robust[clear] == exact[clear]).all()
    assert abs(res.robust_accuracy - exact.mean()) <= (~clear).mean() + 1e-12
    assert 0.2 < exact.mean() < 0.8  # the check is not trivial


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_binary_linear_classifier_gets_its_exact_robust_accuracy(norm):
    """K = 2: APGD-T is undefined and skipped; the rest reach |w.x + b| / ||w||_q exactly."""
    model, x, y, w, b = _linear_problem(seed=3 if norm == "linf" else 4, K=2)
    dstar = _minimal_perturbation(x, y, w, b, norm)
    # the binary closed form: one boundary, w = w_0 - w_1, distance |w.x + b| / ||w||_q
    wd, bd = w[0] - w[1], b[0] - b[1]
    q = 1 if norm == "linf" else 2
    closed = (x.double().flatten(1) @ wd + bd).abs() / wd.norm(p=q)
    finite = torch.isfinite(dstar)
    assert torch.allclose(dstar[finite], closed[finite])
    eps = float(dstar[finite].median())
    assert eps < 0.3  # inputs are in [0.3, 0.7]: the optimal perturbation stays in the box
    exact = (dstar > eps).numpy()
    res = robust_accuracy(
        model, x, y, eps, norm, default_ensemble(apgd_steps=50, n_targets=9, square_queries=200),
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert set(res.per_attack) == {"apgd-ce", "square"}
    assert "2 classes" in res.skipped["apgd-t"]
    clear = (torch.abs(dstar - eps) > 1e-3 * eps).numpy()
    for name, mask in res.per_attack.items():
        assert (mask[clear] >= exact[clear]).all(), name
    assert (res.robust[clear] == exact[clear]).all()
    assert abs(res.robust_accuracy - exact.mean()) <= (~clear).mean() + 1e-12
    assert 0.2 < exact.mean() < 0.8


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_three_class_linear_classifier_is_evaluated_soundly(norm):
    """K = 3: APGD-CE and Square run (APGD-T skipped); no point goes below the exact answer."""
    model, x, y, w, b = _linear_problem(seed=5, K=3)
    dstar = _minimal_perturbation(x, y, w, b, norm)
    eps = float(dstar[torch.isfinite(dstar)].median())
    assert eps < 0.3
    exact = (dstar > eps).numpy()
    res = robust_accuracy(
        model, x, y, eps, norm, default_ensemble(apgd_steps=50, n_targets=9, square_queries=200),
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert set(res.skipped) == {"apgd-t"}
    clear = (torch.abs(dstar - eps) > 1e-3 * eps).numpy()
    assert (res.robust[clear] >= exact[clear]).all()
    assert res.robust_accuracy - exact.mean() <= 0.02  # untargeted CE gets (nearly) all of it


@pytest.fixture(scope="module")
def trained():
    data = digits()
    torch.manual_seed(0)
    model = fit_classifier(
        SmallCNN(1, 10, 8, 16), data.train, standard_loss(), Context(0, torch.device("cpu")), 3
    )
    return model.eval(), data.test.x[:200], data.test.y[:200]


def test_fgsm_matches_torchattacks(trained):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = trained
    ours = fgsm(model, x, y, 0.1, "linf")
    theirs = torchattacks.FGSM(model, eps=0.1)(x, y)
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_pgd_at_least_as_strong_as_torchattacks(trained, eps):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = trained
    steps, alpha = 10, 2.5 * eps / 10
    accs_ours, accs_theirs = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(
            x, y
        )
        ours = pgd(
            model,
            x,
            y,
            eps,
            "linf",
            torch.Generator().manual_seed(seed),
            steps=steps,
            step_size=alpha,
        )
        with torch.no_grad():
            accs_theirs.append((model(theirs).argmax(1) == y).float().mean().item())
            accs_ours.append((model(ours).argmax(1) == y).float().mean().item())
    assert sum(accs_ours) / 3 <= sum(accs_theirs) / 3 + 0.005


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_matches_torchattacks_square(trained, norm):
    """Same model, points, eps and AutoAttack's settings (p_init 0.8, no rescaling): same strength."""
    torchattacks = pytest.importorskip("torchattacks")
    from dltbench.tasks.robust import square

    model, x, y = trained
    eps, queries = (0.1, 300) if norm == "linf" else (0.5, 300)
    accs_ours, accs_theirs = [], []
    for seed in range(3):
        # theirs makes n_queries proposals after the initial query; ours counts that query
        atk = torchattacks.Square(
            model, norm="Linf" if norm == "linf" else "L2", eps=eps, n_queries=queries - 1,
            p_init=0.8, loss="margin", resc_schedule=False, seed=seed,
        )  # fmt: skip
        theirs = atk(x, y)
        ours = square(model, x, y, eps, norm, torch.Generator().manual_seed(seed), queries=queries)
        with torch.no_grad():
            accs_theirs.append((model(theirs).argmax(1) == y).float().mean().item())
            accs_ours.append((model(ours).argmax(1) == y).float().mean().item())
    # 200 points, 3 seeds: a random-search attack's seed spread is about 0.01
    assert abs(sum(accs_ours) / 3 - sum(accs_theirs) / 3) <= 0.02, (accs_ours, accs_theirs)
