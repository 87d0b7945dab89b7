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
from ..gan.features import digits_features
from . import data as ddata
from . import quality as Q
from .guidance import (
    CLASSIFIER_RECIPE,
    cfg_eps,
    classifier_eps,
    guidance_labels,
    harness_classifier,
    stack_scales,
)
from .likelihood import LN2, dequantize, nats_to_bits_per_dim, ode_nll, resolve_backend, vlb_terms
from .sampling import median_bandwidth, mmd2, sample
from .schedules import LOG_SNR_END, PREDICTIONS, Schedule, schedule_from_state

#: Image datasets scored by FID/KID, and the ``gan`` task's feature network of each.
FEATURE_NETS = {"digits": digits_features}


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
    vlb_strata: int = 0  # >0: that many of the T-1 diffusion terms per point (unbiased), 0: all
    guidance_samples: int = 0  # per guidance scale, labelled data only (0: no guidance curve)
    guidance_scales: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)  # w; 0 = unguided
    guidance_steps: int = 20  # DDIM steps of the guided samplers
    guidance_report_w: float = 2.0  # the scale whose FID and accuracy are leaderboard columns


#: Terminal points outside the prior's central 1 - PRIOR_TAIL chi^2_D interval are flagged.
PRIOR_TAIL = 1e-6
#: The ranked summary drops this fraction of the per-point ODE NLLs at each end.
TRIM = 0.1

_COMMON = dict(vlb_steps=1000, exact_trace_max_dim=16, dequantization="centered",
               ddim_steps=50, ddpm_steps=1000)  # fmt: skip
# quick (version 3, issue 19): see docs/tasks/diffusion.md ("Speed") for the CPU profile and
# the seed separation before and after.
_QUICK_2D = dict(n_train=4000, n_test=500, train_steps=1000, batch_size=256, ode_rtol=1e-4,
                 ode_atol=1e-4, n_samples=500, stored_samples=250, ddpm_steps=250,
                 vlb_strata=100)  # fmt: skip
_PROFILES: dict[str, list[dict]] = {
    "quick": [
        dict(dataset="gmm8", **_QUICK_2D),
        dict(dataset="rings", **_QUICK_2D),
        dict(dataset="digits", n_train=0, n_test=300, train_steps=800, batch_size=128,
             ode_rtol=1e-4, ode_atol=1e-4, n_samples=300, stored_samples=128, ddpm_steps=250,
             vlb_strata=100, guidance_samples=150),
    ],
    "standard": [
        dict(dataset=d, n_train=20000, n_test=5000, train_steps=20000, batch_size=512,
             ode_rtol=1e-5, ode_atol=1e-5, n_samples=5000, stored_samples=1000)
        for d in ("gmm8", "rings")
    ] + [
        dict(dataset="digits", n_train=0, n_test=540, train_steps=20000, batch_size=128,
             ode_rtol=1e-5, ode_atol=1e-5, n_samples=540, stored_samples=540,
             guidance_samples=540, guidance_steps=50),
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
    version = "3"
    description = (
        "VLB and probability-flow ODE NLL (bits/dim) of diffusion models; DDPM/DDIM samples"
    )
    method_type = DiffusionMethod
    protocol = "train"
    # A trimmed mean, not the mean: a learned flow that diverges on a few points (1e2-1e6
    # bits/dim on 1-2% of digits) moves the mean by orders of magnitude; not the median either,
    # whose test-set error is 11x the mean's on bimodal per-point NLLs (rings). See the docs.
    primary_metric = "ode_nll_bpd_trim10"
    artifact_attributes = ("schedule", "prediction", "num_classes")
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
        MetricSpec("ddim_fid", False, "feature units^2",
                   "digits: FID (gan task's digits-cnn64 features) of n_samples DDIM samples vs the test split (biased up at small N; see fid_real)", low=0.0),
        MetricSpec("ddim_kid", False, "squared MMD", "digits: KID (unbiased, cubic kernel) of the DDIM samples vs the test split"),
        MetricSpec("ddpm_fid", False, "feature units^2", "digits: FID of n_samples DDPM samples vs the test split", low=0.0),
        MetricSpec("ddpm_kid", False, "squared MMD", "digits: KID of the DDPM samples vs the test split"),
        MetricSpec("fid_real", None, "feature units^2",
                   "digits: FID of n_samples training images vs the same reference: the floor at this N", low=0.0),
        MetricSpec("cg_fid", False, "feature units^2",
                   "digits: FID of classifier-guided DDIM samples at w = 2 (harness classifier; guidance_samples of them)", low=0.0),
        MetricSpec("cg_class_acc", True, "fraction", "digits: fraction of those samples the feature net classifies as the asked class"),
        MetricSpec("cfg_fid", False, "feature units^2",
                   "digits: FID of classifier-free-guided DDIM samples at w = 2 (class-conditional models only)", low=0.0),
        MetricSpec("cfg_class_acc", True, "fraction", "digits: fraction of those samples classified as the asked class"),
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
            vlb_strata=10 if config.vlb_strata else 0,
            guidance_samples=20 if config.guidance_samples else 0, guidance_scales=(0.0, 2.0),
            guidance_steps=5,
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
            terms = vlb_terms(model, x[i : i + chunk], data.levels, config.vlb_steps, None, gen,
                              strata=config.vlb_strata or None)  # fmt: skip
            vlb.append(terms.total)
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
        drawn: dict[str, torch.Tensor] = {}
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
            drawn[name] = s
        quality_est = None
        if config.dataset in FEATURE_NETS:
            ctx.progress("sample quality", 0, 1)
            ref = Q.reference(Q.to_pixels(data.reference, data.levels, data.shape),
                              FEATURE_NETS[config.dataset]())  # fmt: skip
            for name, s in drawn.items():
                q = Q.quality(Q.to_pixels(s, data.levels, data.shape), ref, ctx.rng)
                metrics[f"{name}_fid"], metrics[f"{name}_kid"] = q["fid"], q["kid"]
            real = Q.to_pixels(data.train[: config.n_samples], data.levels, data.shape)
            metrics["fid_real"] = Q.quality(real, ref, ctx.rng, kid=False)["fid"]
            quality_est = {**ref.describe(), "n": config.n_samples,
                           "reference": "the test split (all of it, not only the n_test scored)",
                           "fid": "gan task's frechet_distance (float64, covariances ddof 1)",
                           "kid": f"gan task's kid: unbiased cubic-kernel MMD^2, {Q.KID_SUBSETS} subsets of "
                                  f"min(n, reference, 1000), mean", "fid_real": "first n training images",
                           "bias": "FID_N is biased upward at small N (fid_real is the floor at this N); "
                                   "KID is unbiased"}  # fmt: skip
            if config.guidance_samples and data.labels is not None:
                g_metrics, g_curve, g_est = guidance_curve(model, data, config, ref, gen, ctx)
                metrics.update(g_metrics)
                curves["guidance"] = g_curve
                quality_est["guidance"] = g_est
        curves["per_point"] = {
            "ode_nll_bpd": [round(v, 5) for v in ode_bpd.cpu().tolist()],
            "vlb_bpd": [round(v, 5) for v in nats_to_bits_per_dim(vlb_nats, dim).cpu().tolist()],
            "ode_prior_outliers": torch.nonzero(outliers).flatten().cpu().tolist(),
        }
        estimator = estimator_dict(model, data, config, res, offset, bandwidth, len(x))
        if quality_est is not None:
            estimator["sample_quality"] = quality_est
        return Evaluation(metrics, curves, estimator)


def conditional_classes(model) -> int:
    """K if ``model`` is a class-conditional denoiser (``num_classes`` = K and a
    ``conditional(x, t, y)`` method), else 0."""
    k = (
        model.attributes.get("num_classes")
        if isinstance(model, RemoteModule)
        else getattr(model, "num_classes", 0)
    )
    has = (
        "conditional" in model.methods
        if isinstance(model, RemoteModule)
        else callable(getattr(model, "conditional", None))
    )
    return int(k) if isinstance(k, int) and k > 0 and has else 0


def guidance_curve(model, data, config: DiffusionConfig, ref: Q.Reference, gen, ctx: Context):
    """FID, KID and class accuracy of classifier-guided and classifier-free-guided DDIM samples
    over the guidance scales; returns (leaderboard metrics, curve, estimator)."""
    k, n, steps = data.num_classes, config.guidance_samples, config.guidance_steps
    clip = (-1.0, 1.0)
    scales = [float(w) for w in config.guidance_scales]
    pos = [w for w in scales if w > 0]
    ctx.progress("guidance", 0, 3)
    # Harness-owned noise-conditional classifier of the training split (see the docs: a
    # method must not choose the classifier that steers it).
    classifier, classifier_sha = harness_classifier(data.train, data.labels, k, data.levels)
    classifier = classifier.to(ctx.device)
    y0 = guidance_labels(n, k)
    base = sample(model, n, data.dim, steps, 0.0, gen, ctx.device, clip)
    y, w = stack_scales(pos, n, k)
    y, w = y.to(ctx.device), w.to(ctx.device)
    runs = {"cg": sample(model, len(y), data.dim, steps, 0.0, gen, ctx.device, clip,
                         eps_fn=classifier_eps(model, classifier, y, w))}  # fmt: skip
    ctx.progress("guidance", 1, 3)
    conditional = conditional_classes(model) == k
    if conditional:
        runs["cfg"] = sample(model, len(y), data.dim, steps, 0.0, gen, ctx.device, clip,
                             eps_fn=cfg_eps(model, y, w))  # fmt: skip
    ctx.progress("guidance", 2, 3)
    base_q = Q.quality(Q.to_pixels(base, data.levels, data.shape), ref, ctx.rng, y0)
    curve: dict = {"w": scales}
    metrics: dict[str, float] = {}
    for name in ("cg", "cfg"):
        rows = []
        for scale in scales:
            if scale == 0:
                rows.append(base_q)
            elif name in runs:
                s = runs[name][pos.index(scale) * n : (pos.index(scale) + 1) * n]
                if not torch.isfinite(s).all():
                    raise InvalidArtifact(f"{name}-guided sampling produced non-finite values")
                rows.append(Q.quality(Q.to_pixels(s, data.levels, data.shape), ref, ctx.rng, y0))
            else:
                rows.append(None)
        for key in ("fid", "kid", "class_acc"):
            curve[f"{name}_{key}"] = [None if r is None else r[key] for r in rows]
        if config.guidance_report_w in scales and rows[scales.index(config.guidance_report_w)]:
            r = rows[scales.index(config.guidance_report_w)]
            metrics[f"{name}_fid"], metrics[f"{name}_class_acc"] = r["fid"], r["class_acc"]
        if name in runs and config.guidance_report_w in pos:
            i = pos.index(config.guidance_report_w)
            kept = runs[name][i * n : i * n + min(n, config.stored_samples)]
            curve[f"{name}_samples"] = ddata.levels_of(kept, data.levels).cpu().tolist()
    real = Q.to_pixels(data.train[:n], data.levels, data.shape)
    curve["fid_real"] = Q.quality(real, ref, ctx.rng, kid=False)["fid"]
    est = {"n_per_scale": n, "scales": scales, "sampler": f"DDIM (eta 0), {steps} steps, x0-hat clipped to [-1, 1]",
           "labels": "asked classes cycle 0..K-1 (balanced); the same labels at every scale",
           "convention": "score + w grad log p(y|x): w = 0 unguided, w = 1 conditional, w > 1 sharpened",
           "classifier_guidance": {"classifier": "harness-owned noise-conditional MLP p(y | x_t, log-SNR) "
                                   "trained on the training split", "recipe": CLASSIFIER_RECIPE,
                                   "sha256": classifier_sha},
           "classifier_free": "model.conditional(x, t, y) with y = -1 for unconditional" if conditional
                              else "not scored: the model is not class-conditional",
           "class_accuracy": f"argmax of the feature net's ({ref.net.ident}) classifier == asked class",
           "reported_w": config.guidance_report_w}  # fmt: skip
    return metrics, curve, est


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
            "estimator": "all T KL terms, one draw of x_t per step and point"
            if not config.vlb_strata or config.vlb_strata >= vlb_steps - 1 else
            f"unbiased stratified estimate of the sum of the T-1 KL terms from {config.vlb_strata} per point: "
            f"the first {config.vlb_strata // 2} steps exactly, one uniform step from each of "
            f"{config.vlb_strata - config.vlb_strata // 2} contiguous groups of the rest, weighted by its "
            "group's size; one draw of x_t per step used; prior and decoder terms exact",
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
