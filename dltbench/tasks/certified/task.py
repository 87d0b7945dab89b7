"""The ``certified`` task: certified accuracy vs radius, by randomized smoothing (l2, l1, l-inf,
and brightness, contrast and translation by smoothing over the transformation) or by a
Lipschitz-margin
certificate."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ... import data as datasets
from ...api import Context, Evaluation, InvalidArtifact, Method, MetricSpec, Task, profile_entry
from ...models import accuracy, check_classifier
from ...registry import register_task
from . import shared
from .lipschitz import CERTIFICATE as LIPSCHITZ
from .lipschitz import lipschitz_bound, margin_certify, rebuild
from .smoothing import (
    ABSTAIN,
    CERTIFICATES,
    TRANSFORMS,
    certified_accuracy,
    certify_batch,
    perturb,
    predict_batch,
    radius_from_pa,
    translation_speed,
)

#: Radii reported as leaderboard columns (in the row's norm, pixels in [0, 1]), per profile
#: and norm: the quick digits grid, the MNIST radii of the smoothing literature, and Cohen
#: et al.'s CIFAR-10 table (their Table 1 reads certified accuracy at 0.25..1.5). The
#: "norms" brightness and contrast are the transformation's parameter: the shift |b| in
#: pixel units, |ln c| of the contrast factor c, and the l2 norm of a shift (dx, dy) in pixels.
_SEMANTIC_RADII = {"brightness": (0.0, 0.1, 0.2, 0.3, 0.4), "contrast": (0.0, 0.25, 0.5, 0.75),
                   "translation": (0.0, 0.25, 0.5, 0.75, 1.0)}  # fmt: skip
PROFILE_RADII: dict[str, dict[str, tuple[float, ...]]] = {
    "quick": {"l2": (0.0, 0.25, 0.5, 0.75, 1.0), "l1": (0.0, 0.25, 0.5, 0.75, 1.0),
              "linf": (0.0, 0.01, 0.02, 0.03, 0.05), **_SEMANTIC_RADII},
    "standard": {"l2": (0.0, 0.5, 1.0, 1.5, 2.0, 2.5), "l1": (0.0, 0.5, 1.0, 2.0, 3.0),
                 "linf": (0.0, 0.01, 0.02, 0.03), **_SEMANTIC_RADII},
    "paper": {"l2": (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5), "l1": (0.0, 0.5, 1.0, 1.5, 2.0),
              "linf": (0.0, 1 / 255, 2 / 255, 4 / 255), **_SEMANTIC_RADII},
}  # fmt: skip
#: Every radius that is a column of some profile (the metrics a record may carry).
LEADERBOARD_RADII: tuple[float, ...] = tuple(
    sorted({r for v in PROFILE_RADII.values() for radii in v.values() for r in radii})
)
#: l-inf radii are about sqrt(d) times smaller than l2 ones: the stored curve's grid is the
#: profile's (radius_max, radius_step) divided by these.
LINF_GRID_DIVISORS = (10.0, 20.0)
#: The same for the transformation rows brightness |b| and contrast |ln c| (a translation
#: row's radii are pixels: the profile's grid).
SEMANTIC_GRID_DIVISORS = (2.0, 2.0)


def noise_scale(noise: str, sigma: float) -> float:
    """The natural scale parameter of ``noise`` with standard deviation ``sigma`` per pixel:
    the Gaussian's sigma, the Laplace scale b = sigma / sqrt(2), the uniform half-width
    lam = sigma * sqrt(3). Rows of one sigma then add noise of the same energy. A
    transformation's parameter (brightness, contrast, each coordinate of a translation) is
    drawn from N(0, sigma^2)."""
    factor = {"gaussian": 1.0, "laplace": 1 / math.sqrt(2.0), "uniform": math.sqrt(3.0),
              "brightness": 1.0, "contrast": 1.0, "translation": 1.0}  # fmt: skip
    if noise not in factor:
        raise ValueError(f"unknown noise {noise!r}; use {', '.join(factor)}")
    return sigma * factor[noise]


def radius_ceiling(
    sigma: float, n: int, alpha: float, noise: str = "gaussian", norm: str = "l2", dim: int = 1
) -> float:
    """The largest radius CERTIFY can certify with n samples: the radius at pA = alpha^(1/n).

    With all n noisy samples on one class the Clopper-Pearson lower bound on p_A is
    alpha^(1/n); every radius and the ACR are below this, whatever the classifier. For
    Gaussian l2 it is sigma * Phi^-1(alpha^(1/n)).
    """
    p_max = alpha ** (1.0 / n)
    return float(radius_from_pa(p_max, noise, noise_scale(noise, sigma), norm, dim))


@dataclass(frozen=True)
class CertifiedConfig:
    """Everything one cell's numbers depend on besides the method and the seed.

    Radii are distances in ``norm`` in the [0, 1] pixel scale.
    """

    dataset: str
    sigma: float  # smoothing noise std per pixel; methods are told it and may train for it
    n0: int  # selection samples
    n: int  # estimation samples
    alpha: float  # failure probability of each certificate
    n_predict: int  # samples for PREDICT (the smoothed classifier's clean accuracy)
    test_stride: int  # certify every test_stride-th test point
    max_test_points: int  # cap on certified points (after striding)
    batch_size: int  # noisy inputs per forward pass
    epochs: int  # training budget, in passes over the training split
    radius_max: float  # the stored curve covers radii 0..radius_max
    radius_step: float
    radii: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # leaderboard columns (PROFILE_RADII)
    #: the smoothing distribution: gaussian, laplace or uniform pixel noise, or a Gaussian
    #: over a transformation's parameter: brightness, contrast or translation
    #: (smoothing.TRANSFORMS)
    noise: str = "gaussian"
    #: the certified norm: l2, l1 or linf; brightness (|b|), contrast (|ln c|) or translation
    #: (||(dx, dy)||_2 in pixels) for the transformation rows (see smoothing.CERTIFICATES)
    norm: str = "l2"
    #: Upsampling factors of the curse-of-dimensionality curve (l-inf rows): the same
    #: classifier certified on k x k nearest-neighbour upsampled inputs, k in this tuple.
    resolutions: tuple[int, ...] = ()
    resolution_points: int = 60  # test points of that curve
    resolution_n: int = 500  # CERTIFY samples per point on that curve

    @property
    def scale(self) -> float:
        """The noise's own scale parameter (see :func:`noise_scale`)."""
        return noise_scale(self.noise, self.sigma)


#: Semantic rows: a Gaussian of std 0.2 over the brightness shift b (TSS's brightness
#: smoothing on CIFAR-10 uses 0.2 too) and of std 0.4 over ln of the contrast factor (at 0.2
#: every built-in smoothing method certifies nearly every point at the radius ceiling), and
#: of std 0.5 pixel over each coordinate of a cyclic band-limited shift (dx, dy).
_SEMANTIC = (("brightness", 0.2, "brightness"), ("contrast", 0.4, "contrast"),
             ("translation", 0.5, "translation"))  # fmt: skip
#: (noise, sigma, norm) settings of each profile, besides the Gaussian l2 sigmas.
_THREATS = {
    "quick": (("gaussian", 0.25, "linf"), ("laplace", 0.25, "l1"), ("uniform", 0.25, "l1"),
              *_SEMANTIC),
    "standard": (("gaussian", 0.25, "linf"), ("laplace", 0.5, "l1"), ("uniform", 0.5, "l1"),
                 *_SEMANTIC),
    "paper": (("gaussian", 0.25, "linf"), ("laplace", 0.5, "l1"), ("uniform", 0.5, "l1"),
              *_SEMANTIC),
}  # fmt: skip
_PROFILES = {
    # n = 1000 (was 2000 before task version 4, for the quick suite's time, issue 19): the
    # radius ceiling sigma * Phi^-1(alpha^(1/n)) falls from 0.675 to 0.616 at sigma = 0.25.
    # n_predict = 200 (was 500 before task version 5, to pay for the translation row): only
    # PREDICT's smoothed_clean_acc reads it, and it abstains more often on close calls.
    "quick": dict(dataset="digits", sigmas=(0.25, 0.5), n0=100, n=1000, alpha=0.001,
                  n_predict=200, test_stride=3, max_test_points=180, batch_size=4000,
                  epochs=30, radius_max=2.0, radius_step=0.05, resolution_n=300),
    "standard": dict(dataset="mnist", sigmas=(0.25, 0.5, 1.0), n0=100, n=10_000, alpha=0.001,
                     n_predict=10_000, test_stride=10, max_test_points=1000, batch_size=4000,
                     epochs=20, radius_max=4.0, radius_step=0.05),
    # Cohen et al. 2019, CIFAR-10: n0=100, n=100000, alpha=0.001, every 20th test image.
    "paper": dict(dataset="cifar10", sigmas=(0.12, 0.25, 0.5, 1.0), n0=100, n=100_000,
                  alpha=0.001, n_predict=100_000, test_stride=20, max_test_points=500,
                  batch_size=1000, epochs=90, radius_max=4.0, radius_step=0.05),
}  # fmt: skip


class CertifiedMethod(Method):
    """Protocol of a ``certified`` method: train a base classifier for a noise and a norm."""

    @abstractmethod
    def train(
        self, data: datasets.ImageDataset, config: CertifiedConfig, ctx: Context
    ) -> nn.Module:
        """Return a base classifier: an nn.Module mapping (N, C, H, W) in [0, 1] to logits (N, K).

        ``data`` holds only the training split (``data.test`` is None); ``config.noise``
        and ``config.sigma`` (its std; ``config.scale`` its own parameter) are what the
        harness will smooth with, ``config.norm`` the certified norm; ``config.epochs`` the
        budget; ``ctx`` gives the device and this cell's random generators. A model that is
        a :class:`dltbench.tasks.certified.LipschitzMLP` is certified by its Lipschitz margin
        instead of by smoothing. A built-in class that declares ``trains_on`` (the fields its
        training reads besides dataset and epochs) gets every other field as None, and its
        model is shared by the rows with the same training config (see :mod:`.shared`).
        """


@register_task
class CertifiedTask(Task):
    """Certified robustness: randomized smoothing (Cohen et al. 2019) in l2, l1 and l-inf, over
    brightness, contrast and translation (Fischer et al. 2020; Li et al. 2021), and
    Lipschitz-margin
    certificates, on the same test points."""

    name = "certified"
    version = "5"
    description = ("certified accuracy vs radius (l2, l1, l-inf, brightness, contrast, "
                   "translation): "
                   "randomized smoothing (Gaussian, Laplace, uniform; over the transformation) "
                   "and Lipschitz-margin certificates")  # fmt: skip
    method_type = CertifiedMethod
    protocol = "train"
    primary_metric = "acr"
    setting_keys = ("dataset", "noise", "sigma", "norm")
    #: Read once after training: a LipschitzMLP declares its certificate and its layers.
    artifact_attributes = ("certificate", "lipschitz_layers")
    metrics = (
        MetricSpec("acr", True, "radius (row's norm)",
                   "average certified radius (0 if wrong or abstain)"),
        *(
            MetricSpec(f"certified_acc@{r:g}", True, "fraction",
                       f"approximate certified accuracy at radius {r:g} in the row's norm")
            for r in LEADERBOARD_RADII
        ),
        MetricSpec("abstain_rate", False, "fraction", "CERTIFY abstained (pA lower bound < 1/2)"),
        MetricSpec("smoothed_clean_acc", True, "fraction",
                   "PREDICT accuracy (abstain counts as wrong) on the certified points"),
        MetricSpec("base_clean_acc", True, "fraction", "base classifier accuracy, all test points"),
        MetricSpec("throughput", True, "noisy forwards/s", "certification speed on this device"),
        MetricSpec("radius_ceiling", True, "radius (row's norm)",
                   "largest radius CERTIFY can give with n samples (at pA = alpha^(1/n)); "
                   "columns above it are unreachable"),
        MetricSpec("linf_dim_exponent", None, "log-log slope",
                   "l-inf rows: slope of log ACR against log input dimension on upsampled "
                   "inputs (the curse of dimensionality: -0.5 for smoothing)"),
    )  # fmt: skip

    def configs(self, profile: str) -> list[CertifiedConfig]:
        """One config per (noise, sigma, norm) of ``profile``: Gaussian l2 at each sigma, then
        Gaussian l-inf (with the resolution curve), Laplace l1, uniform l1, and Gaussian
        smoothing over brightness, over contrast and over translations."""
        p = dict(profile_entry(_PROFILES, profile))
        sigmas = p.pop("sigmas")
        threats = [("gaussian", s, "l2") for s in sigmas] + list(_THREATS[profile])
        out = []
        for noise, sigma, norm in threats:
            top, step = p["radius_max"], p["radius_step"]
            if norm == "linf":
                top, step = top / LINF_GRID_DIVISORS[0], step / LINF_GRID_DIVISORS[1]
            if norm in ("brightness", "contrast"):
                top, step = top / SEMANTIC_GRID_DIVISORS[0], step / SEMANTIC_GRID_DIVISORS[1]
            out.append(CertifiedConfig(
                sigma=sigma, noise=noise, norm=norm, radii=PROFILE_RADII[profile][norm],
                resolutions=(1, 2, 4) if norm == "linf" else (),
                **{**p, "radius_max": top, "radius_step": step},
            ))  # fmt: skip
        return out

    def smoke(self, config: CertifiedConfig) -> CertifiedConfig:
        """A seconds-long version: few points, few samples, one epoch."""
        return dataclasses.replace(
            config, n0=20, n=200, n_predict=100, max_test_points=10, epochs=1, batch_size=500,
            resolution_points=4, resolution_n=100,
        )  # fmt: skip

    def check_data(self, config: CertifiedConfig, data_dir) -> None:
        """Fail early, with what to put where, if the dataset is missing."""
        datasets.load(config.dataset, data_dir)

    def prepare(self, config: CertifiedConfig, ctx: Context) -> datasets.ImageDataset:
        """The dataset with its fixed split."""
        ctx.progress("load data", 0, 1)
        return datasets.load(config.dataset, ctx.data_dir)

    def train_view(self, data: datasets.ImageDataset, config: CertifiedConfig):
        """The training split only."""
        return dataclasses.replace(data, test=None)

    def fit(
        self, method: CertifiedMethod, data, config: CertifiedConfig, ctx: Context
    ) -> nn.Module:
        """Train the base classifier (in the plugin process, on the training view)."""
        return method.train(data, config, ctx)

    def run_plugin(self, plugin, data, config: CertifiedConfig, ctx: Context):
        """Fit in the plugin process; a built-in that declares ``trains_on`` gets only those
        config fields, and its model is trained once per training config and seed and then
        restored from the cache in the other cells (see :mod:`.shared`)."""
        info = getattr(plugin, "method_info", None) or {}
        identity, seed = info.get("identity"), info.get("method_seed")
        fields = shared.declared_fields(self.name, str(info.get("method")))
        if fields is None or identity is None or seed is None or not hasattr(plugin, "endpoint"):
            return super().run_plugin(plugin, data, config, ctx)
        from ...oracle import PluginError, RemoteModule  # the oracle imports the api module

        train_config = shared.training_config(config, fields)
        identity = {**identity, "method": info.get("method")}
        key = shared.training_key(identity, seed, train_config, data.train, ctx.device)
        path = shared.cache_dir() / f"{shared.code_version()}-{info['method']}-{key}.pt"
        with shared.locked(path):
            blob = shared.load(path) if path.exists() else None
            if blob is not None:
                reply = plugin.request("restore", blob)
            else:
                reply = plugin.request("fit", self.train_view(data, config), train_config)
            artifact = RemoteModule.from_reply(plugin.endpoint, reply, ctx.device)
            if blob is None and getattr(artifact, "is_module", False):
                # A full cache costs time, not correctness; an unsavable model is the audit's
                # to report (the runner snapshots it again).
                with contextlib.suppress(OSError, PluginError):
                    shared.store(path, plugin.request("snapshot", artifact._oid))
        artifact.shared_training = {
            "shared": "trained once per (method, seed, training config) and cached by content "
                      "hash; the other settings' cells restore the same weights",
            "config_fields_seen": sorted({*shared.ALWAYS_VISIBLE, *fields}),
            "key": key, "cache_hit": blob is not None,
        }  # fmt: skip
        return artifact

    def evaluate(self, artifact, data, config: CertifiedConfig, ctx: Context) -> Evaluation:
        """Certify the fixed test points: CERTIFY and PREDICT of the smoothed classifier, or the
        Lipschitz margin of a declared LipschitzMLP."""
        evaluation = self._evaluate(artifact, data, config, ctx)
        training = getattr(artifact, "shared_training", None)
        evaluation.estimator["training"] = training or {"shared": "trained in this cell"}
        return evaluation

    def _evaluate(self, artifact, data, config: CertifiedConfig, ctx: Context) -> Evaluation:
        idx = np.arange(0, len(data.test), config.test_stride)[: config.max_test_points]
        x = data.test.x[idx].to(ctx.device)
        y = data.test.y[idx].numpy()
        dim = int(np.prod(data.shape))
        declared = _attributes(artifact).get("certificate")
        if declared == LIPSCHITZ:
            return self._evaluate_lipschitz(artifact, data, config, ctx, idx, x, y)
        model = check_base_classifier(artifact, data, config, ctx)
        gen = ctx.device_generator()
        labels = np.empty(0, dtype=np.int64)
        radii = np.empty(0)
        chunk = max(1, config.batch_size // 50)  # points per progress update
        start = time.perf_counter()
        for i in range(0, len(idx), chunk):
            lab, rad, _ = certify_batch(
                model, x[i : i + chunk], config.scale, config.n0, config.n, config.alpha,
                config.batch_size, gen, config.noise, config.norm,
            )  # fmt: skip
            labels, radii = np.concatenate([labels, lab]), np.concatenate([radii, rad])
            ctx.progress("certify", min(i + chunk, len(idx)), len(idx))
        seconds = time.perf_counter() - start
        pred = predict_batch(
            model, x, config.scale, config.n_predict, config.alpha, config.batch_size, gen,
            config.noise,
        )  # fmt: skip

        def certify_at(k: int) -> tuple[np.ndarray, np.ndarray]:
            m = min(config.resolution_points, len(idx))
            lab, rad, _ = certify_batch(
                Subsampled(model, k), upsample(x[:m], k), config.scale, config.n0,
                config.resolution_n, config.alpha, config.batch_size, gen, config.noise, "linf",
            )  # fmt: skip
            return lab, rad

        extra = {
            "smoothed_clean_acc": float(np.mean(pred == y)),
            "abstain_rate": float(np.mean(labels == ABSTAIN)),
            "throughput": len(idx) * (config.n0 + config.n) / seconds,
            "radius_ceiling": radius_ceiling(
                config.sigma, config.n, config.alpha, config.noise, config.norm, dim
            ),
        }
        estimator = {
            "certificate": "randomized smoothing: CERTIFY and PREDICT of Cohen et al. 2019",
            "confidence_bound": "one-sided Clopper-Pearson lower bound at level 1 - alpha",
            "noise": config.noise, "noise_std": config.sigma, "noise_scale": config.scale,
            "radius_formula": CERTIFICATES[(config.noise, config.norm)],
            "sigma": config.sigma, "n0": config.n0, "n": config.n, "alpha": config.alpha,
            "n_predict": config.n_predict,
        }  # fmt: skip
        if config.noise in TRANSFORMS:
            estimator["smoothing"] = (
                f"one N(0, sigma^2) draw of the {config.noise} parameter per noisy input "
                "(brightness: x + b; contrast: m + exp(k) (x - m), m the image's mean pixel; "
                "translation: cyclic shift by (dx, dy) pixels with band-limited interpolation, "
                "each coordinate drawn, the Nyquist row and column kept in place), no clipping"
            )
        return self._score(model, data, config, ctx, idx, y, labels, radii, extra, estimator,
                           certify_at)  # fmt: skip

    def _evaluate_lipschitz(self, artifact, data, config, ctx, idx, x, y) -> Evaluation:
        """The deterministic margin certificate of a LipschitzMLP, computed on the harness's
        own rebuild of its declared layers (which must answer as the plugin's model does)."""
        remote = check_base_classifier(artifact, data, config, ctx)
        dim = int(np.prod(data.shape))
        net = rebuild(_attributes(artifact).get("lipschitz_layers"), dim, data.num_classes)
        net = net.to(ctx.device)
        with torch.no_grad():
            mine, theirs = net(x), remote(x)
        if not torch.allclose(mine, theirs.to(mine), rtol=1e-4, atol=1e-4):
            raise InvalidArtifact(
                "the model's declared lipschitz_layers do not compute its answers: the "
                "certificate must be of the model that is scored"
            )
        bound = lipschitz_bound(net)
        start = time.perf_counter()
        labels, radii_l2 = margin_certify(mine, bound)
        seconds = time.perf_counter() - start
        radii = lipschitz_radii(radii_l2, x, config.norm)

        def certify_at(k: int) -> tuple[np.ndarray, np.ndarray]:
            m = min(config.resolution_points, len(idx))
            return labels[:m], radii_l2[:m] / math.sqrt(dim * k * k)

        extra = {"smoothed_clean_acc": None, "abstain_rate": 0.0, "radius_ceiling": None,
                 "throughput": len(idx) / max(seconds, 1e-9)}  # fmt: skip
        estimator = {
            "certificate": "Lipschitz margin (Tsuzuku et al. 2018): margin / (sqrt(2) L)",
            "lipschitz_bound": bound,
            "lipschitz_bound_method": "product of exact spectral norms of the harness's rebuild",
            "radius_formula": (
                "l2: r = margin / (sqrt(2) L); l1: r; linf and brightness: r / sqrt(d); "
                "contrast: ln(1 + r / ||x - mean(x)||_2); translation: r / G(x), G(x) = "
                "2 pi ||f X_f||_2 / sqrt(H W) bounding ||T(t) x - x||_2 / ||t||_2"
            ),
        }
        return self._score(net, data, config, ctx, idx, y, labels, radii, extra, estimator,
                           certify_at)  # fmt: skip

    def _score(self, model, data, config, ctx, idx, y, labels, radii, extra, estimator,
               certify_at) -> Evaluation:  # fmt: skip
        """The metrics, curves and estimator shared by both certificates."""
        grid = np.round(np.arange(0.0, config.radius_max + 1e-9, config.radius_step), 6)
        correct = labels == y
        metrics = {
            "acr": float(np.mean(np.where(correct, radii, 0.0))),
            **{
                f"certified_acc@{r:g}": certified_accuracy(labels, radii, y, r)
                for r in config.radii
            },
            "base_clean_acc": accuracy(model, data.test, ctx.device),
            **extra,
        }
        curves = {
            "radius": grid.tolist(),
            "certified_accuracy": [certified_accuracy(labels, radii, y, r) for r in grid],
            "per_point": {"index": idx.tolist(), "label": y.tolist(),
                          "predicted": labels.tolist(), "radius": radii.tolist()},
        }  # fmt: skip
        if config.resolutions:
            dims, acrs = [], []
            for k in config.resolutions:
                ctx.progress("resolution curve", len(dims), len(config.resolutions))
                lab, rad = certify_at(k)
                dims.append(int(np.prod(data.shape)) * k * k)
                acrs.append(float(np.mean(np.where(lab == y[: len(lab)], rad, 0.0))))
            curves["linf_by_dimension"] = {"factor": list(config.resolutions), "dim": dims,
                                           "acr": acrs}  # fmt: skip
            ok = [(d, a) for d, a in zip(dims, acrs, strict=True) if a > 0]
            metrics["linf_dim_exponent"] = (
                float(np.polyfit(np.log([d for d, _ in ok]), np.log([a for _, a in ok]), 1)[0])
                if len(ok) >= 2 else None
            )  # fmt: skip
        estimator.update({
            "norm": config.norm, "input_dim": int(np.prod(data.shape)), "test_points": len(idx),
            "test_selection": f"every {config.test_stride}th test point, first {config.max_test_points}",
            "radius_norm": f"{config.norm}, pixels in [0, 1]",
        })  # fmt: skip
        if config.resolutions:
            estimator["resolution_curve"] = {
                "upsampling": "nearest neighbour by k; the classifier reads every k-th pixel, so "
                "it is the same classifier at every resolution",
                "points": min(config.resolution_points, len(idx)), "n": config.resolution_n,
            }  # fmt: skip
        return Evaluation(metrics, curves, estimator)

    def adjust_leaderboard(self, df, records, load):
        """Radii a row cannot reach (above its radius ceiling) read as unreachable, not as 0;
        radius columns no row of these profiles reports are dropped."""
        if df.empty:
            return df
        df = df.copy()
        unreachable, shown = [], set()
        for i, row in df.iterrows():
            profile = str(row["profile"]).split("-")[0]  # quick-smoke, quick-limit50: quick
            norm = row.get("norm") if isinstance(row.get("norm"), str) else "l2"
            own = PROFILE_RADII.get(profile, {}).get(norm, LEADERBOARD_RADII)
            shown |= set(own)
            ceiling = row.get("radius_ceiling_mean")
            cut = [r for r in own if ceiling == ceiling and ceiling is not None and r > ceiling]
            for r in cut:
                df.loc[i, [f"certified_acc@{r:g}_mean", f"certified_acc@{r:g}_std"]] = float("nan")
            unreachable.append(" ".join(f"{r:g}" for r in cut))
        df["unreachable_radii"] = unreachable
        drop = [f"certified_acc@{r:g}_{k}" for r in LEADERBOARD_RADII if r not in shown
                for k in ("mean", "std")]  # fmt: skip
        return df.drop(columns=[c for c in drop if c in df.columns])

    def check_record(self, record) -> str | None:
        """The generic checks, and no radius above what CERTIFY can certify with n samples.

        With all n noisy samples on one class the Clopper-Pearson lower bound is
        alpha**(1/n), so no radius can exceed the radius at pA = alpha**(1/n) (for Gaussian
        l2: sigma * Phi^-1(alpha**(1/n)); noise, sigma, norm, input dimension, n and alpha
        read from ``record.estimator``); neither can the ACR. A Lipschitz-margin certificate
        has no such ceiling.
        """
        reason = super().check_record(record)
        if reason is not None:
            return reason
        est = record.estimator if isinstance(record.estimator, dict) else {}
        if str(est.get("certificate", "")).startswith("Lipschitz margin"):
            return None
        try:
            sigma, n, alpha = float(est["sigma"]), int(est["n"]), float(est["alpha"])
            noise, norm = str(est.get("noise", "gaussian")), str(est.get("norm", "l2"))
            ceiling = radius_ceiling(sigma, n, alpha, noise, norm, int(est.get("input_dim", 1)))
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return "estimator lacks a valid noise, sigma, norm, input_dim, n and alpha"
        limit = ceiling * (1 + 1e-6) + 1e-9  # float slack, not statistical slack
        if (record.metrics.get("acr") or 0.0) > limit:
            return "acr above the estimator's radius ceiling (the radius at pA = alpha^(1/n))"
        for r in LEADERBOARD_RADII:
            if r > limit and (record.metrics.get(f"certified_acc@{r:g}") or 0.0) > 0:
                return f"certified_acc@{r:g} > 0 above the estimator's radius ceiling"
        curves = record.curves if isinstance(record.curves, dict) else {}
        radii = (curves.get("per_point") or {}).get("radius") or []
        if not isinstance(radii, list) or any(
            not isinstance(v, (int, float)) or isinstance(v, bool) or not v <= limit for v in radii
        ):
            return "a certified radius above the estimator's radius ceiling (or not a number)"
        return None


def check_base_classifier(artifact, data, config: CertifiedConfig, ctx: Context) -> nn.Module:
    """The shared classifier checks on clean and sigma-noisy test inputs."""
    x = data.test.x[:8]
    noisy = perturb(config.noise, x, config.scale, ctx.generator)
    return check_classifier(artifact, torch.cat([x, noisy]), data.num_classes, ctx.device)[0]


def lipschitz_radii(radii_l2: np.ndarray, x: torch.Tensor, norm: str) -> np.ndarray:
    """A certified l2 radius as a radius in ``norm`` at the inputs ``x`` (N, ...): a ball of
    ``norm`` whose every perturbation stays within l2 distance ``radii_l2`` (the largest one
    for l2, l-inf, brightness and contrast; for translation, from a bound on the shift's
    l2 speed)."""
    dim = int(np.prod(x.shape[1:]))
    if norm in ("l2", "l1"):  # ||d||_2 <= ||d||_1: the l2 ball holds the l1 ball
        return radii_l2
    if norm in ("linf", "brightness"):  # ||b 1||_2 = |b| sqrt(d) >= ||d||_2 for ||d||_inf <= |b|
        return radii_l2 / math.sqrt(dim)
    if norm == "contrast":  # the change (e^k - 1)(x - m) has l2 norm |e^k - 1| ||x - m||_2,
        # and |e^k - 1| <= e^|k| - 1
        flat = x.flatten(1).double()
        size = (flat - flat.mean(1, keepdim=True)).norm(dim=1).cpu().numpy()
        return np.log1p(radii_l2 / np.maximum(size, 1e-12))
    if norm == "translation":  # ||T(t) x - x||_2 <= G(x) ||t||_2 (smoothing.translation_speed)
        return radii_l2 / np.maximum(translation_speed(x).cpu().numpy(), 1e-12)
    raise ValueError(f"no Lipschitz certificate conversion for norm {norm!r}")


def _attributes(artifact) -> dict:
    """The plain attributes a remote artifact published (an in-process model's own)."""
    attrs = getattr(artifact, "attributes", None)
    if isinstance(attrs, dict):
        return attrs
    return {name: getattr(artifact, name, None) for name in CertifiedTask.artifact_attributes}


def upsample(x: torch.Tensor, k: int) -> torch.Tensor:
    """Nearest-neighbour upsampling of images (N, C, H, W) by an integer factor k."""
    return x.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1) if k > 1 else x


class Subsampled(nn.Module):
    """``model`` reading every k-th pixel of its input: on k-upsampled images, the same
    classifier, which sees k^2 times fewer of the noisy coordinates."""

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the model on x[..., ::k, ::k]."""
        return self.model(x[..., :: self.k, :: self.k]) if self.k > 1 else self.model(x)
