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


def _linear_problem(seed: int):
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
