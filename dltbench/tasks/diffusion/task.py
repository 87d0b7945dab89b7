"""The ``diffusion`` task: held-out likelihood of a diffusion model (VLB and ODE NLL) and samples."""

from __future__ import annotations

import dataclasses
import math
import time
from abc import abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from ...api import Context, Evaluation, InvalidArtifact, Method, MetricSpec, Task, profile_entry
from ...oracle import RemoteModule
from ...registry import register_task
from . import data as ddata
from .likelihood import LN2, dequantize, nats_to_bits_per_dim, ode_nll, resolve_backend, vlb_terms
from .sampling import median_bandwidth, mmd2, sample
from .schedules import LOG_SNR_END, PREDICTIONS, Schedule, schedule_from_state


@dataclass(frozen=True)
class DiffusionConfig:
    """Everything one cell's numbers depend on besides the method and the seed."""

    dataset: str  # gmm8 | rings (2-D, known density) | digits | mnist | cifar10
    n_train: int  # 2-D training points (images: the fixed split)
    n_test: int  # test points scored (the first n_test of the fixed test set)
    train_steps: int  # the methods' budget, in optimizer steps
    batch_size: int  # training minibatch
    vlb_steps: int  # T of the VLB (a discrete schedule with more steps is respaced evenly)
    ode_rtol: float
    ode_atol: float
    exact_trace_max_dim: int  # exact divergence up to this D, Hutchinson above
    dequantization: str  # centered (K-1 "255" bins) | song (K "256" bins), discrete data only
    n_samples: int  # samples drawn by each sampler for the MMD
    ddim_steps: int
    ddpm_steps: int  # (a discrete schedule with more steps is respaced evenly)
    stored_samples: int  # samples of each sampler kept in the record's curves
    ode_backend: str = "auto"  # torchdiffeq when installed, else scipy (recorded)


#: Terminal points outside the prior's central 1 - PRIOR_TAIL chi^2_D interval are flagged.
PRIOR_TAIL = 1e-6
#: The ranked summary drops this fraction of the per-point ODE NLLs at each end.
TRIM = 0.1

_COMMON = dict(vlb_steps=1000, exact_trace_max_dim=16, dequantization="centered",
               ddim_steps=50, ddpm_steps=1000)  # fmt: skip
# quick (version 2): 2000 steps, 500 2-D test points and 250 respaced DDPM steps take a 2-D
# cell from ~16 to ~8 CPU-seconds and a digits cell from ~27 to ~17; the leaderboard's
# seed-to-seed separation before and after is in docs/tasks/diffusion.md ("Speed").
_QUICK_2D = dict(n_train=4000, n_test=500, train_steps=2000, batch_size=256, ode_rtol=1e-4,
                 ode_atol=1e-4, n_samples=500, stored_samples=250, ddpm_steps=250)  # fmt: skip
_PROFILES: dict[str, list[dict]] = {
    "quick": [
        dict(dataset="gmm8", **_QUICK_2D),
        dict(dataset="rings", **_QUICK_2D),
        dict(dataset="digits", n_train=0, n_test=300, train_steps=2000, batch_size=128,
             ode_rtol=1e-4, ode_atol=1e-4, n_samples=300, stored_samples=128, ddpm_steps=250),
    ],
    "standard": [
        dict(dataset=d, n_train=20000, n_test=5000, train_steps=20000, batch_size=512,
             ode_rtol=1e-5, ode_atol=1e-5, n_samples=5000, stored_samples=1000)
        for d in ("gmm8", "rings")
    ] + [
        dict(dataset="digits", n_train=0, n_test=540, train_steps=20000, batch_size=128,
             ode_rtol=1e-5, ode_atol=1e-5, n_samples=540, stored_samples=540),
        dict(dataset="mnist", n_train=0, n_test=10000, train_steps=50000, batch_size=128,
             ode_rtol=1e-5, ode_atol=1e-5, n_samples=10000, stored_samples=1000),
    ],
    # Song et al. 2021 report bits/dim on the full CIFAR-10 test set with rtol=atol=1e-5,
    # dequantized into K = 256 bins on [-1, 1] with +7 bits/dim (score_sde's run_lib/likelihood).
    "paper": [
        dict(dataset="cifar10", n_train=0, n_test=10000, train_steps=200000, batch_size=128,
             ode_rtol=1e-5, ode_atol=1e-5, n_samples=10000, stored_samples=1000,
             dequantization="song"),
    ],
}  # fmt: skip


class DiffusionMethod(Method):
    """Protocol of a ``diffusion`` method: train a denoiser with a declared schedule and prediction."""

    @abstractmethod
    def train(self, data: ddata.DiffusionData, config: DiffusionConfig, ctx: Context) -> nn.Module:
        """Return an nn.Module ``model(x, t) -> prediction`` on flat points x (N, D) and times t (N,).

        It must carry ``model.schedule`` (a :class:`~.schedules.Schedule`: a continuous
        log-SNR, or :class:`~.schedules.DiscreteSchedule` of alphas-cumprod) and
        ``model.prediction``, one of ``"eps"``, ``"x0"``, ``"v"``, ``"score"``. ``data``
        holds the training split only (on the grid -1 + 2k/(K-1) when ``data.levels`` = K);
        ``config.train_steps`` is the budget.
        """


@register_task
class DiffusionTask(Task):
    """Diffusion models scored by their held-out likelihood: VLB and probability-flow ODE NLL."""

    name = "diffusion"
    version = "2"
    description = (
        "VLB and probability-flow ODE NLL (bits/dim) of diffusion models; DDPM/DDIM samples"
    )
    method_type = DiffusionMethod
    protocol = "train"
    # A trimmed mean, not the mean: a learned flow that diverges on a few points (1e2-1e6
    # bits/dim on 1-2% of digits) moves the mean by orders of magnitude; not the median either,
    # whose test-set error is 11x the mean's on bimodal per-point NLLs (rings). See the docs.
    primary_metric = "ode_nll_bpd_trim10"
    artifact_attributes = ("schedule", "prediction")
    setting_keys = ("dataset",)
    metrics = (
        MetricSpec("ode_nll_bpd_trim10", False, "bits/dim",
                   "10% trimmed mean over test points of the probability-flow ODE NLL of x at t_min (discrete data: dequantized bound)"),
        MetricSpec("ode_nll_bpd", False, "bits/dim",
                   "mean over test points of the same ODE NLL (a flow that diverges on a few points moves it)"),
        MetricSpec("ode_nll_bpd_median", False, "bits/dim", "median over test points of the same ODE NLL"),
        MetricSpec("ode_prior_outliers", False, "points",
                   "test points whose |x(t_max)|^2 is outside the prior's central 1-1e-6 chi^2_D interval"),
        MetricSpec("vlb_bpd", False, "bits/dim", "variational bound on -log p(x_0) (Ho et al. 2020)"),
        MetricSpec("ode_nll_nats", False, "nats/example", "ode_nll_bpd in nats per example"),
        MetricSpec("vlb_nats", False, "nats/example", "vlb_bpd in nats per example"),
        MetricSpec("true_nll_bpd", False, "bits/dim", "the data density's own NLL of the test points (2-D only)"),
        MetricSpec("ode_gap_bpd", False, "bits/dim", "ode_nll_bpd - true_nll_bpd: estimates KL(data || model) / D (2-D)"),
        MetricSpec("ddim_mmd2", False, "squared MMD", "unbiased MMD^2 (RBF, median bandwidth) of DDIM samples vs test"),
        MetricSpec("ddpm_mmd2", False, "squared MMD", "unbiased MMD^2 (RBF, median bandwidth) of DDPM samples vs test"),
        MetricSpec("ode_nfe", False, "evaluations", "drift evaluations of the ODE solves, summed over batches"),
        MetricSpec("ode_points_per_s", True, "points/s", "ODE NLL throughput on this device"),
        MetricSpec("vlb_points_per_s", True, "points/s", "VLB throughput on this device"),
    )  # fmt: skip

    def configs(self, profile: str) -> list[DiffusionConfig]:
        """One config per dataset of ``profile``."""
        return [DiffusionConfig(**{**_COMMON, **p}) for p in profile_entry(_PROFILES, profile)]

    def smoke(self, config: DiffusionConfig) -> DiffusionConfig:
        """A seconds-long version: few points, steps and samples, loose ODE tolerance."""
        return dataclasses.replace(
            config, n_train=min(config.n_train, 256), n_test=32, train_steps=20, vlb_steps=20,
            ode_rtol=1e-2, ode_atol=1e-2, n_samples=32, ddim_steps=5, ddpm_steps=20, stored_samples=8,
        )  # fmt: skip

    def check_data(self, config: DiffusionConfig, data_dir) -> None:
        """Fail early, with what to put where, if an image dataset is missing."""
        if config.dataset in ddata.IMAGES:
            from ... import data as image_data

            image_data.load(config.dataset, data_dir)

    def prepare(self, config: DiffusionConfig, ctx: Context) -> ddata.DiffusionData:
        """2-D points drawn from this cell's data stream (test set fixed), or the image split."""
        ctx.progress("load data", 0, 1)
        return ddata.load(config.dataset, config.n_train, config.n_test, ctx.rng, ctx.data_dir)

    def train_view(self, data: ddata.DiffusionData, config: DiffusionConfig):
        """The training split only."""
        return data.train_view()

    def fit(
        self, method: DiffusionMethod, data, config: DiffusionConfig, ctx: Context
    ) -> nn.Module:
        """Train (in the plugin process, on the training view)."""
        return method.train(data, config, ctx)

    def evaluate(
        self, artifact, data: ddata.DiffusionData, config: DiffusionConfig, ctx: Context
    ) -> Evaluation:
        """VLB and ODE NLL on the test points, then DDIM and DDPM samples and their MMD to the test set."""
        model = check_model(artifact, data, ctx)
        x = data.test.to(ctx.device)
        gen, dim = ctx.device_generator(), data.dim
        start = time.perf_counter()
        chunk = 256
        vlb = []
        for i in range(0, len(x), chunk):
            vlb.append(
                vlb_terms(model, x[i : i + chunk], data.levels, config.vlb_steps, None, gen).total
            )
            ctx.progress("vlb", min(i + chunk, len(x)), len(x))
        vlb_nats = torch.cat(vlb)
        vlb_s = time.perf_counter() - start
        if data.levels is None:
            z, offset = x, 0.0
        else:
            z, offset = dequantize(
                ddata.levels_of(x, data.levels), data.levels, config.dequantization, gen
            )
        ctx.progress("ode nll", 0, 1)
        start = time.perf_counter()
        res = ode_nll(
            model, z.to(x.dtype), config.ode_rtol, config.ode_atol, "auto", config.exact_trace_max_dim,
            config.ode_backend, generator=gen,
        )  # fmt: skip
        ode_s = time.perf_counter() - start
        ode_bpd = res.bits_per_dim() + offset
        outliers = res.prior_outliers(PRIOR_TAIL)
        metrics = {
            "ode_nll_bpd": float(ode_bpd.mean()),
            "ode_nll_bpd_trim10": trimmed_mean(ode_bpd, TRIM),
            "ode_nll_bpd_median": float(ode_bpd.median()),
            "ode_prior_outliers": float(outliers.sum()),
            "vlb_bpd": float(nats_to_bits_per_dim(vlb_nats, dim).mean()),
            "ode_nll_nats": float(ode_bpd.mean() * dim * LN2),
            "vlb_nats": float(vlb_nats.mean()),
            "ode_nfe": float(res.nfe),
            "ode_points_per_s": len(x) / ode_s,
            "vlb_points_per_s": len(x) / vlb_s,
        }
        if data.levels is None:
            true_bpd = nats_to_bits_per_dim(-ddata.log_density_2d(data.name, x), dim)
            metrics["true_nll_bpd"] = float(true_bpd.mean())
            metrics["ode_gap_bpd"] = metrics["ode_nll_bpd"] - metrics["true_nll_bpd"]
        ctx.progress("sample", 0, 2)
        bandwidth = median_bandwidth(x)
        curves: dict = {"samples": {}}
        for name, eta, steps in (
            ("ddim", 0.0, config.ddim_steps),
            ("ddpm", 1.0, config.ddpm_steps),
        ):
            clip = None if data.levels is None else (-1.0, 1.0)
            s = sample(model, config.n_samples, dim, steps, eta, gen, ctx.device, clip)
            if not torch.isfinite(s).all():
                raise InvalidArtifact(f"{name} sampling produced non-finite values")
            metrics[f"{name}_mmd2"] = mmd2(s, x, bandwidth)
            kept = s[: config.stored_samples]
            kept = (
                ddata.levels_of(kept, data.levels)
                if data.levels
                else torch.round(kept, decimals=4)
            )
            curves["samples"][name] = kept.cpu().tolist()
        curves["per_point"] = {
            "ode_nll_bpd": [round(v, 5) for v in ode_bpd.cpu().tolist()],
            "vlb_bpd": [round(v, 5) for v in nats_to_bits_per_dim(vlb_nats, dim).cpu().tolist()],
            "ode_prior_outliers": torch.nonzero(outliers).flatten().cpu().tolist(),
        }
        estimator = estimator_dict(model, data, config, res, offset, bandwidth, len(x))
        return Evaluation(metrics, curves, estimator)


def trimmed_mean(values: torch.Tensor, proportion: float) -> float:
    """Mean of ``values`` after dropping int(proportion * n) of the smallest and of the largest
    (scipy.stats.trim_mean's convention), in the values' unit."""
    v = torch.sort(values.flatten().to(torch.float64)).values
    cut = int(proportion * len(v))
    if 2 * cut >= len(v):
        raise ValueError(f"cannot trim {proportion} from each end of {len(v)} values")
    return float(v[cut : len(v) - cut].mean())


def estimator_dict(
    model, data, config: DiffusionConfig, res, offset: float, bandwidth: float, n: int
) -> dict:
    """The conventions every number of a record depends on."""
    discrete = data.levels is not None
    sched: Schedule = model.schedule
    # A discrete schedule with more steps than asked is respaced to evenly spaced ones of them.
    vlb_steps = len(sched.timesteps(config.vlb_steps))
    return {
        "test_points": n,
        "dim": data.dim,
        "levels": data.levels,
        "schedule": sched.describe(),
        "prediction": model.prediction,
        "vlb": {
            "steps": vlb_steps, "reverse_variance": "posterior (fixed small)",
            "estimator": "all T KL terms, one draw of x_t per step and point",
            "decoder": (f"discretized Gaussian on the grid -1+2k/{data.levels - 1} (bins of width 2/(K-1), "
                        "'255' convention for 8-bit data), exact normal CDF (log_ndtr)")
            if discrete else "Gaussian density",
            "decoder_variance": "posterior variance of q(x_1|x_2, x_0) (posterior_variance[1] of "
                                "Ho et al.'s and improved-diffusion's code)" if vlb_steps > 1 else "1 - alpha_bar_1",
            "of": "x_0 (the test point itself)",
        },
        "ode": {
            "of": f"x at t_min = {res.t_min:g} (not x_0)",
            "prior": f"N(0, I) at t_max = {res.t_max:.6g} (t = 1, or where log-SNR reaches {LOG_SNR_END})",
            "solver": "dopri5 (torchdiffeq)" if res.backend == "torchdiffeq" else "RK45 (scipy solve_ivp)",
            "rtol": config.ode_rtol, "atol": config.ode_atol, "trace": res.trace,
            "hutchinson_probes": 0 if res.trace == "exact" else 1,
            "summary": f"ranked by the {TRIM:.0%} trimmed mean over test points (int({TRIM} n) dropped at "
                       "each end, as scipy.stats.trim_mean); the mean and median are kept",
            "prior_outliers": f"|x(t_max)|^2 outside chi2_D's central 1-{PRIOR_TAIL:g} interval",
            "dequantization": (f"{config.dequantization} ("
                               + ("K-1 bins centred on the VLB grid, '255'" if config.dequantization == "centered"
                                  else "K bins on [-1, 1], '256', as score_sde")
                               + f"); bits/dim include +{offset:.6f} for the bin width")
            if discrete else "none (continuous data)",
        },
        "true_nll": "exact log-density of the data at x_0" if not discrete else None,
        "samples": {"n": config.n_samples, "ddim_steps": config.ddim_steps, "ddim_eta": 0.0,
                    "ddpm_steps": len(sched.timesteps(config.ddpm_steps)),
                    "ddpm_eta": 1.0, "output": "x0-prediction at t_min", "start": "N(0, I) at the last step <= t_max",
                    "x0_clip": None if not discrete else [-1.0, 1.0],
                    "stored": config.stored_samples,
                    "stored_as": "integer levels 0..K-1" if discrete else "float, 4 decimals",
                    "mmd_kernel": f"RBF, bandwidth {bandwidth:.6g} (median test distance)"},
        "ode_backend": resolve_backend(config.ode_backend),
    }  # fmt: skip


def check_model(artifact, data: ddata.DiffusionData, ctx: Context):
    """The harness's checks of a returned model; raises InvalidArtifact with the reason.

    ``artifact`` is the oracle of a model in the plugin process (its schedule is rebuilt
    here from plain parameters: a schedule is data, never plugin code) or, in library
    use, an ``nn.Module``. From here on every answer must be finite and shaped like x.
    """
    if isinstance(artifact, RemoteModule):
        if not getattr(artifact, "is_module", False):
            raise InvalidArtifact(
                f"train() must return a torch.nn.Module, got {artifact.type_name or 'something else'}"
            )
        try:
            artifact.attributes["schedule"] = schedule_from_state(
                artifact.attributes.get("schedule")
            )
        except (ValueError, TypeError) as exc:
            raise InvalidArtifact(
                f"the model must have a `schedule` attribute (a dltbench diffusion Schedule): {exc}"
            ) from exc
        artifact._check = _prediction_check
    elif not isinstance(artifact, nn.Module):
        raise InvalidArtifact(
            f"train() must return a torch.nn.Module, got {type(artifact).__name__}"
        )
    if not isinstance(getattr(artifact, "schedule", None), Schedule):
        raise InvalidArtifact(
            "the model must have a `schedule` attribute (a dltbench diffusion Schedule)"
        )
    if getattr(artifact, "prediction", None) not in PREDICTIONS:
        raise InvalidArtifact(
            f"model.prediction must be one of {PREDICTIONS}, got {getattr(artifact, 'prediction', None)!r}"
        )
    t_min = float(artifact.schedule.t_min)
    if not (0 < t_min < 1 and math.isfinite(t_min)):
        raise InvalidArtifact(f"schedule.t_min must be in (0, 1), got {t_min}")
    model = artifact.to(ctx.device).eval()
    probe = data.test[:8].to(ctx.device)
    dtype = next(iter(model.parameters()), probe).dtype
    t = torch.linspace(t_min, 1.0, len(probe), device=ctx.device)
    try:
        with torch.no_grad():
            out = model(probe.to(dtype), t.to(dtype))
    except InvalidArtifact:
        raise
    except Exception as exc:
        raise InvalidArtifact(
            f"the model failed on x of shape {tuple(probe.shape)} and t of shape {tuple(t.shape)}: {exc}"
        ) from exc
    _prediction_check("forward", (probe, t), out)
    return model


def _prediction_check(method: str, args: tuple, out: object) -> None:
    """Every answer of a denoiser: a finite tensor shaped like its input x."""
    x = args[0] if args else None
    if (
        not isinstance(out, torch.Tensor)
        or not isinstance(x, torch.Tensor)
        or out.shape != x.shape
    ):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        want = tuple(x.shape) if isinstance(x, torch.Tensor) else "?"
        raise InvalidArtifact(f"the model must return a prediction of shape {want}, got {shape}")
    if not torch.isfinite(out).all():
        raise InvalidArtifact("the model returned non-finite values (NaN or inf)")
