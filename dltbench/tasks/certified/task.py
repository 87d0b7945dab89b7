"""The ``certified`` task: certified accuracy vs l2 radius under randomized smoothing."""

from __future__ import annotations

import dataclasses
import time
from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm
from torch import nn

from ... import data as datasets
from ...api import Context, Evaluation, Method, MetricSpec, Task, profile_entry
from ...models import accuracy, check_classifier
from ...registry import register_task
from .smoothing import ABSTAIN, certified_accuracy, certify_batch, predict_batch

#: Radii reported as leaderboard columns (l2, in the [0, 1] pixel scale), per profile: the
#: quick digits grid, the MNIST radii of the smoothing literature, and Cohen et al.'s CIFAR-10
#: table (their Table 1 reads certified accuracy at 0.25..1.5).
PROFILE_RADII: dict[str, tuple[float, ...]] = {
    "quick": (0.0, 0.25, 0.5, 0.75, 1.0),
    "standard": (0.0, 0.5, 1.0, 1.5, 2.0, 2.5),
    "paper": (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5),
}
#: Every radius that is a column of some profile (the metrics a record may carry).
LEADERBOARD_RADII: tuple[float, ...] = tuple(
    sorted({r for v in PROFILE_RADII.values() for r in v})
)


def radius_ceiling(sigma: float, n: int, alpha: float) -> float:
    """The largest l2 radius CERTIFY can certify with n samples: sigma * Phi^-1(alpha^(1/n)).

    With all n noisy samples on one class the Clopper-Pearson lower bound on p_A is
    alpha^(1/n); every radius and the ACR are below this, whatever the classifier.
    """
    return sigma * float(norm.ppf(alpha ** (1.0 / n)))


@dataclass(frozen=True)
class CertifiedConfig:
    """Everything one cell's numbers depend on besides the method and the seed.

    Radii are l2 distances in the [0, 1] pixel scale.
    """

    dataset: str
    sigma: float  # smoothing noise std; methods are told it and may train for it
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


_PROFILES = {
    "quick": dict(dataset="digits", sigmas=(0.25, 0.5), n0=100, n=2000, alpha=0.001,
                  n_predict=1000, test_stride=3, max_test_points=180, batch_size=4000,
                  epochs=30, radius_max=2.0, radius_step=0.05),
    "standard": dict(dataset="mnist", sigmas=(0.25, 0.5, 1.0), n0=100, n=10_000, alpha=0.001,
                     n_predict=10_000, test_stride=10, max_test_points=1000, batch_size=4000,
                     epochs=20, radius_max=4.0, radius_step=0.05),
    # Cohen et al. 2019, CIFAR-10: n0=100, n=100000, alpha=0.001, every 20th test image.
    "paper": dict(dataset="cifar10", sigmas=(0.12, 0.25, 0.5, 1.0), n0=100, n=100_000,
                  alpha=0.001, n_predict=100_000, test_stride=20, max_test_points=500,
                  batch_size=1000, epochs=90, radius_max=4.0, radius_step=0.05),
}  # fmt: skip


class CertifiedMethod(Method):
    """Protocol of a ``certified`` method: train a base classifier for noise level sigma."""

    @abstractmethod
    def train(
        self, data: datasets.ImageDataset, config: CertifiedConfig, ctx: Context
    ) -> nn.Module:
        """Return a base classifier: an nn.Module mapping (N, C, H, W) in [0, 1] to logits (N, K).

        ``data`` holds only the training split (``data.test`` is None); ``config.sigma``
        is the noise level the harness will smooth with; ``config.epochs`` the budget;
        ``ctx`` gives the device and this cell's random generators.
        """


@register_task
class CertifiedTask(Task):
    """Certified l2 robustness by randomized smoothing (Cohen et al. 2019): CERTIFY on test points."""

    name = "certified"
    version = "2"
    description = "certified accuracy vs l2 radius under randomized smoothing (Cohen et al. 2019)"
    method_type = CertifiedMethod
    protocol = "train"
    primary_metric = "acr"
    setting_keys = ("dataset", "sigma")
    metrics = (
        MetricSpec("acr", True, "l2 radius", "average certified radius (0 if wrong or abstain)"),
        *(
            MetricSpec(f"certified_acc@{r:g}", True, "fraction",
                       f"approximate certified accuracy at l2 radius {r:g}")
            for r in LEADERBOARD_RADII
        ),
        MetricSpec("abstain_rate", False, "fraction", "CERTIFY abstained (pA lower bound < 1/2)"),
        MetricSpec("smoothed_clean_acc", True, "fraction",
                   "PREDICT accuracy (abstain counts as wrong) on the certified points"),
        MetricSpec("base_clean_acc", True, "fraction", "base classifier accuracy, all test points"),
        MetricSpec("throughput", True, "noisy forwards/s", "certification speed on this device"),
        MetricSpec("radius_ceiling", True, "l2 radius",
                   "largest certifiable radius sigma*Phi^-1(alpha^(1/n)); columns above it are unreachable"),
    )  # fmt: skip

    def configs(self, profile: str) -> list[CertifiedConfig]:
        """One config per sigma of ``profile``."""
        p = dict(profile_entry(_PROFILES, profile))
        sigmas = p.pop("sigmas")
        return [CertifiedConfig(sigma=s, radii=PROFILE_RADII[profile], **p) for s in sigmas]

    def smoke(self, config: CertifiedConfig) -> CertifiedConfig:
        """A seconds-long version: few points, few samples, one epoch."""
        return dataclasses.replace(
            config, n0=20, n=200, n_predict=100, max_test_points=10, epochs=1, batch_size=500
        )

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

    def evaluate(self, artifact, data, config: CertifiedConfig, ctx: Context) -> Evaluation:
        """CERTIFY and PREDICT the smoothed classifier on the fixed test points."""
        model = check_base_classifier(artifact, data, config, ctx)
        idx = np.arange(0, len(data.test), config.test_stride)[: config.max_test_points]
        x = data.test.x[idx].to(ctx.device)
        y = data.test.y[idx].numpy()
        gen = ctx.device_generator()
        labels = np.empty(0, dtype=np.int64)
        radii = np.empty(0)
        chunk = max(1, config.batch_size // 50)  # points per progress update
        start = time.perf_counter()
        for i in range(0, len(idx), chunk):
            lab, rad, _ = certify_batch(
                model, x[i : i + chunk], config.sigma, config.n0, config.n, config.alpha,
                config.batch_size, gen,
            )  # fmt: skip
            labels, radii = np.concatenate([labels, lab]), np.concatenate([radii, rad])
            ctx.progress("certify", min(i + chunk, len(idx)), len(idx))
        seconds = time.perf_counter() - start
        pred = predict_batch(
            model, x, config.sigma, config.n_predict, config.alpha, config.batch_size, gen
        )
        grid = np.round(np.arange(0.0, config.radius_max + 1e-9, config.radius_step), 6)
        correct = labels == y
        metrics = {
            "acr": float(np.mean(np.where(correct, radii, 0.0))),
            **{
                f"certified_acc@{r:g}": certified_accuracy(labels, radii, y, r)
                for r in config.radii
            },
            "radius_ceiling": radius_ceiling(config.sigma, config.n, config.alpha),
            "abstain_rate": float(np.mean(labels == ABSTAIN)),
            "smoothed_clean_acc": float(np.mean(pred == y)),
            "base_clean_acc": accuracy(model, data.test, ctx.device),
            "throughput": len(idx) * (config.n0 + config.n) / seconds,
        }
        curves = {
            "radius": grid.tolist(),
            "certified_accuracy": [certified_accuracy(labels, radii, y, r) for r in grid],
            "per_point": {"index": idx.tolist(), "label": y.tolist(),
                          "predicted": labels.tolist(), "radius": radii.tolist()},
        }  # fmt: skip
        estimator = {
            "procedure": "CERTIFY and PREDICT of Cohen et al. 2019",
            "confidence_bound": "one-sided Clopper-Pearson lower bound at level 1 - alpha",
            "sigma": config.sigma, "n0": config.n0, "n": config.n, "alpha": config.alpha,
            "n_predict": config.n_predict, "test_points": len(idx),
            "test_selection": f"every {config.test_stride}th test point, first {config.max_test_points}",
            "radius_norm": "l2, pixels in [0, 1]",
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
            profile = str(row["profile"]).removesuffix("-smoke")
            own = PROFILE_RADII.get(profile, LEADERBOARD_RADII)
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
        alpha**(1/n), so no radius can exceed sigma * Phi^-1(alpha**(1/n)) (sigma, n,
        alpha read from ``record.estimator``); neither can the ACR.
        """
        reason = super().check_record(record)
        if reason is not None:
            return reason
        est = record.estimator if isinstance(record.estimator, dict) else {}
        try:
            sigma, n, alpha = float(est["sigma"]), int(est["n"]), float(est["alpha"])
            ceiling = radius_ceiling(sigma, n, alpha)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return "estimator lacks a valid sigma, n and alpha"
        limit = ceiling * (1 + 1e-6) + 1e-9  # float slack, not statistical slack
        if (record.metrics.get("acr") or 0.0) > limit:
            return "acr above the estimator's radius ceiling sigma * Phi^-1(alpha^(1/n))"
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
    probe = torch.cat([x, x + config.sigma * torch.randn(x.shape, generator=ctx.generator)])
    return check_classifier(artifact, probe, data.num_classes, ctx.device)[0]
