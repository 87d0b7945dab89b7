"""Unit tests of the diffusion task's pieces: schedules, conversions, data, samplers, checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dltbench.api import Context, InvalidArtifact
from dltbench.tasks.diffusion import (
    PREDICTIONS,
    CosineSchedule,
    DiffusionTask,
    DiscreteSchedule,
    GaussianDenoiser,
    LinearSchedule,
    convert,
    cosine_alphas_cumprod,
    linear_alphas_cumprod,
    log_density_2d,
    median_bandwidth,
    mmd2,
    sample,
    sample_2d,
)
from dltbench.tasks.diffusion.schedules import LOG_SNR_END, t_max
from dltbench.tasks.diffusion.task import check_model


def test_discrete_schedule_hits_alphas_cumprod_at_its_steps():
    abar = linear_alphas_cumprod(1000)
    sched = DiscreteSchedule(abar)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    a, s = sched.alpha_sigma(t)
    torch.testing.assert_close(a**2, abar, rtol=1e-12, atol=0)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(a), rtol=1e-12, atol=0)
    assert abar[0] == pytest.approx(1 - 1e-4) and 1 - abar[1] / abar[0] == pytest.approx(
        1e-4 + 0.0199 / 999
    )


def test_linear_schedule_is_the_continuous_limit_of_ddpm():
    """lambda of the VP-SDE at t = i/1000 is close to DDPM's discrete linear schedule."""
    t = torch.tensor([0.001, 0.1, 0.5, 1.0], dtype=torch.float64)
    cont = LinearSchedule().log_snr(t)
    disc = DiscreteSchedule(linear_alphas_cumprod(1000)).log_snr(t)
    assert (cont - disc).abs().max() < 0.1


@pytest.mark.parametrize(
    "sched", [LinearSchedule(), CosineSchedule(), DiscreteSchedule(cosine_alphas_cumprod(100))]
)
def test_log_snr_derivative_matches_finite_differences(sched):
    t = torch.tensor([0.0123, 0.3017, 0.7771], dtype=torch.float64)
    _, d = sched.log_snr_and_derivative(t)
    h = 1e-7
    fd = (sched.log_snr(t + h) - sched.log_snr(t - h)) / (2 * h)
    torch.testing.assert_close(d, fd, rtol=1e-5, atol=1e-5)
    assert (d < 0).all()


def test_cosine_schedule_matches_its_definition():
    s = 0.008
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    f = lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    abar = f(t) / f(torch.zeros(1, dtype=torch.float64))
    a, _ = CosineSchedule(s).alpha_sigma(t)
    torch.testing.assert_close(a**2, abar, rtol=1e-10, atol=0)


def test_t_max_is_where_log_snr_reaches_the_end():
    assert t_max(LinearSchedule()) == 1.0
    sched = CosineSchedule()
    tm = t_max(sched)
    assert 0.99 < tm < 1.0
    assert float(sched.log_snr(torch.tensor([tm], dtype=torch.float64))[0]) == pytest.approx(
        LOG_SNR_END, abs=1e-6
    )


@pytest.mark.parametrize("src", PREDICTIONS)
@pytest.mark.parametrize("dst", PREDICTIONS)
def test_prediction_conversions_are_consistent(src, dst):
    g = torch.Generator().manual_seed(0)
    x0, eps = (
        torch.randn(5, 3, generator=g, dtype=torch.float64),
        torch.randn(5, 3, generator=g, dtype=torch.float64),
    )
    alpha, sigma = 0.6, 0.8
    x_t = alpha * x0 + sigma * eps
    truth = {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0, "score": -eps / sigma}
    torch.testing.assert_close(convert(truth[src], src, dst, x_t, alpha, sigma), truth[dst])


@pytest.mark.parametrize("name", ["gmm8", "rings"])
def test_2d_log_density_integrates_to_one(name):
    # Cell midpoints: the rings' density is integrably infinite at the origin (p_r(0) / 2 pi r).
    grid = -3 + 0.01 * (torch.arange(600, dtype=torch.float64) + 0.5)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    mass = log_density_2d(name, pts).exp().sum() * (grid[1] - grid[0]) ** 2
    assert float(mass) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("name", ["gmm8", "rings"])
def test_2d_samples_follow_the_density(name):
    """The mean log-density of samples matches a Monte-Carlo estimate of -entropy from a fresh draw."""
    x = torch.from_numpy(sample_2d(name, 20000, np.random.default_rng(0)))
    assert x.shape == (20000, 2)
    assert 0.5 < float(x.var(0).mean()) < 1.3  # about unit variance per coordinate
    lp = log_density_2d(name, x)
    y = torch.from_numpy(sample_2d(name, 20000, np.random.default_rng(1)))
    assert float(lp.mean()) == pytest.approx(float(log_density_2d(name, y).mean()), abs=0.05)


def test_samplers_reproduce_gaussian_data():
    """DDPM and DDIM with the exact denoiser give samples with the data's mean and covariance."""
    mean = torch.tensor([0.5, -0.3], dtype=torch.float64)
    cov = torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=torch.float64)
    model = GaussianDenoiser(mean, cov, CosineSchedule())
    for eta, steps in ((0.0, 50), (1.0, 200)):
        s = sample(model, 4000, 2, steps, eta, torch.Generator().manual_seed(0))
        assert (s.mean(0) - mean).abs().max() < 0.05
        assert (torch.cov(s.T) - cov).abs().max() < 0.05


def test_mmd_is_zero_in_expectation_and_positive_for_different_laws():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 2, generator=g), torch.randn(400, 2, generator=g)
    h = median_bandwidth(x)
    assert abs(mmd2(x, y, h)) < 0.01
    assert mmd2(x, y + 1.0, h) > 0.1


class _Bad(nn.Module):
    def __init__(self, schedule=None, prediction="eps", out=None):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.schedule, self.prediction, self.out = schedule or LinearSchedule(), prediction, out

    def forward(self, x, t):
        return self.out(x) if self.out else self.lin(x)


@pytest.mark.parametrize(
    "artifact, reason",
    [
        (object(), "nn.Module"),
        (_Bad(prediction="noise"), "prediction"),
        (_Bad(out=lambda x: x[:, :1]), "shape"),
        (_Bad(out=lambda x: x * float("nan")), "non-finite"),
    ],
)
def test_check_model_rejects_bad_artifacts(artifact, reason):
    task = DiffusionTask()
    cfg = task.smoke(task.configs("quick")[0])
    ctx = Context(0, torch.device("cpu"))
    data = task.prepare(cfg, ctx)
    with pytest.raises(InvalidArtifact, match=reason):
        check_model(artifact, data, ctx)
    bad_sched = _Bad()
    bad_sched.schedule = "linear"
    with pytest.raises(InvalidArtifact, match="schedule"):
        check_model(bad_sched, data, ctx)


def test_configs_and_smoke():
    task = DiffusionTask()
    quick = task.configs("quick")
    assert [c.dataset for c in quick] == ["gmm8", "rings", "digits"]
    assert all(c.ode_rtol == c.ode_atol == 1e-4 for c in quick)
    assert task.configs("paper")[0].dataset == "cifar10"
    # Published ODE bits/dim (Song et al. 2021, score_sde) use K bins on [-1, 1] and +7 for 8 bits.
    assert task.configs("paper")[0].dequantization == "song"
    assert all(c.dequantization == "centered" for c in quick + task.configs("standard"))
    assert task.primary_metric == "ode_nll_bpd_trim10" and task.version == "3"
    with pytest.raises(ValueError, match="profile"):
        task.configs("huge")
    smoke = task.smoke(quick[0])
    assert smoke.n_test < quick[0].n_test and smoke.train_steps < quick[0].train_steps


@pytest.mark.parametrize("n", [1, 9, 10, 11, 300, 301])
def test_trimmed_mean_matches_scipy_and_ignores_divergent_points(n):
    """int(0.1 n) dropped at each end, as scipy.stats.trim_mean; 10% of points at 1e6 move it not at all."""
    from scipy.stats import trim_mean

    from dltbench.tasks.diffusion.task import trimmed_mean

    v = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    assert trimmed_mean(v, 0.1) == pytest.approx(trim_mean(v.numpy(), 0.1), rel=1e-12, abs=1e-12)
    if n >= 10:  # the k largest replaced by divergent values: exactly the same trimmed mean
        k = int(0.1 * n)
        bad = torch.sort(v).values
        bad[n - k :] = 1e6
        assert trimmed_mean(bad, 0.1) == pytest.approx(trimmed_mean(v, 0.1), rel=1e-12)


def test_prepare_fixes_the_test_set_and_hides_it_from_methods():
    task = DiffusionTask()
    cfg = task.smoke(task.configs("quick")[1])
    a = task.prepare(cfg, Context(0, torch.device("cpu")))
    b = task.prepare(cfg, Context(1, torch.device("cpu")))
    torch.testing.assert_close(a.test, b.test)
    assert not torch.equal(a.train, b.train)
    assert a.train_view().test is None
    digits = task.prepare(task.smoke(task.configs("quick")[2]), Context(0, torch.device("cpu")))
    assert digits.levels == 17 and digits.dim == 64
    k = (digits.train + 1) * 16 / 2
    torch.testing.assert_close(k, k.round())  # on the grid -1 + 2k/16


def test_paper_profile_needs_data_dir():
    from dltbench.api import DataMissing

    task = DiffusionTask()
    with pytest.raises(DataMissing, match="data-dir"):
        task.check_data(task.configs("paper")[0], None)


def test_conditional_denoiser_forward_is_its_unconditional_half():
    from dltbench.tasks.diffusion import MLPDenoiser
    from dltbench.tasks.diffusion.task import conditional_classes

    m = MLPDenoiser(4, 16, 2, CosineSchedule(), "eps", num_classes=3)
    x, t = torch.randn(5, 4), torch.rand(5)
    torch.testing.assert_close(m(x, t), m.conditional(x, t, torch.full((5,), -1)))
    assert not torch.allclose(m.conditional(x, t, torch.zeros(5)), m(x, t))
    assert conditional_classes(m) == 3
    assert conditional_classes(MLPDenoiser(4, 16, 2, CosineSchedule(), "eps")) == 0


class _Conditional(nn.Module):
    """A digits denoiser (untrained MLP) whose conditional answers may be poisoned."""

    prediction, num_classes = "eps", 10

    def __init__(self, poison: bool):
        super().__init__()
        from dltbench.tasks.diffusion import MLPDenoiser

        self.inner = MLPDenoiser(64, 32, 2, CosineSchedule(), "eps", num_classes=10)
        self.schedule, self.poison = self.inner.schedule, poison

    def forward(self, x, t):
        return self.inner(x, t)

    def conditional(self, x, t, y):
        out = self.inner.conditional(x, t, y)
        return out * float("nan") if self.poison else out


@pytest.fixture
def digits_smoke(monkeypatch, tmp_path):
    from dltbench.tasks.diffusion.guidance import CLASSIFIER_RECIPE

    monkeypatch.setitem(CLASSIFIER_RECIPE, "steps", 20)  # the harness classifier, briefly
    monkeypatch.setenv("DLTBENCH_CACHE_DIR", str(tmp_path))
    task = DiffusionTask()
    cfg = task.smoke(task.configs("quick")[2])
    return task, cfg, task.prepare(cfg, Context(0, torch.device("cpu")))


def test_digits_records_fid_kid_and_guidance_curves(digits_smoke):
    from dltbench.tasks.gan.features import DIGITS_WEIGHTS, sha256_file

    task, cfg, data = digits_smoke
    view = data.train_view()
    assert view.test is None and view.reference is None and view.labels is not None
    ev = task.evaluate(_Conditional(False), data, cfg, Context(1, torch.device("cpu")))
    m, g = ev.metrics, ev.curves["guidance"]
    for k in ("ddim_fid", "ddim_kid", "ddpm_fid", "fid_real", "cg_fid", "cfg_fid"):
        assert math.isfinite(m[k]), k
    assert 0 <= m["cg_class_acc"] <= 1 and 0 <= m["cfg_class_acc"] <= 1
    assert g["w"] == list(cfg.guidance_scales)
    assert len(g["cfg_fid"]) == len(g["cg_fid"]) == len(g["w"])
    assert g["cfg_fid"][0] == g["cg_fid"][0]  # w = 0 is the same unguided sample set
    q = ev.estimator["sample_quality"]
    assert q["feature_net"] == "digits-cnn64" and q["feature_net_sha256"] == sha256_file(
        DIGITS_WEIGHTS
    )
    assert q["n"] == cfg.n_samples and q["guidance"]["n_per_scale"] == cfg.guidance_samples
    assert q["reference_images"] == 540


def test_poisoned_conditional_answers_are_invalid(digits_smoke):
    task, cfg, data = digits_smoke
    with pytest.raises(InvalidArtifact, match="non-finite"):
        task.evaluate(_Conditional(True), data, cfg, Context(1, torch.device("cpu")))
