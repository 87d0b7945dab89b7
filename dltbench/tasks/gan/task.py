"""The ``gan`` task: generators scored by FID, KID, precision/recall, coverage and mode counts
on a declared feature network, from samples the harness draws."""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ... import data as datasets
from ...api import (
    Context,
    DataMissing,
    Evaluation,
    InvalidArtifact,
    Method,
    MetricSpec,
    Task,
    profile_entry,
)
from ...data import Split
from ...registry import register_task
from . import metrics as M
from .features import (
    FeatureNet,
    digits_features,
    identity_features,
    inception_features,
    mnist_features,
)
from .targets import MIXTURES, Mixture

#: Fixed seeds of the 2-D targets' training and reference draws (harness-owned, never the
#: run's seed): every seed and method is scored against the same reference points.
TARGET_TRAIN_SEED = 20140610  # Goodfellow et al.'s arXiv date
TARGET_REF_SEED = 20170126
#: Largest latent dimension the harness draws for (bounds its memory).
MAX_LATENT_DIM = 4096


@dataclass(frozen=True)
class GanConfig:
    """Everything one cell's numbers depend on besides the method and the seed."""

    dataset: str  # ring8, grid25 (2-D mixtures), digits, mnist, cifar10
    feature_net: str  # identity (2-D), digits-cnn64, mnist-cnn64, inception-v3-pool3
    n_samples: int  # N: generated samples the harness draws and scores
    reference: str  # split the FID/KID/precision-recall reference comes from: test or train
    steps: int  # training budget: generator updates
    batch_size: int  # training minibatch (the built-ins use it)
    n_train: int = 0  # 2-D: training draws (fixed seed); images: 0 = the whole split
    n_ref: int = 0  # 2-D: reference draws (fixed seed); images: first n_ref of the split, 0 = all
    std: float = 0.05  # 2-D: std of each mixture component
    fid_inf_points: int = 8  # FID-infinity: FID_n at this many n in [N/5, N]
    kid_subsets: int = 100  # torch-fidelity's and clean-fid's defaults
    kid_subset_size: int = 1000
    pr_k: int = 3  # Kynkaanniemi et al. 2019
    dc_k: int = 5  # Naeem et al. 2020
    memorisation_quantile: float = 0.05  # threshold: this quantile of test->train NN distances
    memorised_flag: float = 0.25  # a row whose memorised fraction exceeds this is not ranked
    query_batch: int = 500  # latents per generator query


# Quick budgets (issue 19): the whole quick run is ~60 s on an idle 2-core machine. Training
# is nearly all of a cell's compute; N (and so every estimator's error) is kept. Digits has
# 400 generator steps again since task version 2 (200 in version 1 left four of its six
# methods within seed noise of each other): ~+12 s of the whole run, ~4 s of it paid back
# by KID's precomputed kernels (docs/tasks/gan.md).
_2D = dict(feature_net="identity", n_samples=1000, reference="test", n_train=2000, n_ref=1000,
           std=0.1, batch_size=64)  # fmt: skip
_PROFILES = {
    "quick": [
        dict(dataset="ring8", steps=300, **_2D),
        dict(dataset="grid25", steps=300, **_2D),
        dict(dataset="digits", feature_net="digits-cnn64", n_samples=1000, reference="test",
             steps=400, batch_size=64),
    ],
    "standard": [
        dict(dataset="mnist", feature_net="mnist-cnn64", n_samples=10_000, reference="test",
             steps=20_000, batch_size=64),
    ],
    # CIFAR-10 against its 50k training images, N = 50k (the protocol of the WGAN-GP and
    # SN-GAN papers' FIDs); memorisation threshold from the 10k test images.
    "paper": [
        dict(dataset="cifar10", feature_net="inception-v3-pool3", n_samples=50_000,
             reference="train", steps=100_000, batch_size=64),
    ],
}  # fmt: skip


@dataclass(frozen=True)
class GanData:
    """A dataset with its fixed split: images (N, C, H, W) in [0, 1] or 2-D points (N, 2).

    ``test`` and ``mixture`` are None in the view a method gets.
    """

    name: str
    train: Split
    test: Split | None
    num_classes: int  # image classes, or mixture components (the 2-D labels)
    mixture: Mixture | None = None  # 2-D targets: the exact distribution (harness only)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample: (C, H, W) or (2,)."""
        return tuple(self.train.x.shape[1:])

    @property
    def is_image(self) -> bool:
        """Whether samples are images (else 2-D points)."""
        return len(self.shape) == 3


class GanMethod(Method):
    """Protocol of a ``gan`` method: train on the training split, return a generator."""

    @abstractmethod
    def train(self, data: GanData, config: GanConfig, ctx: Context) -> nn.Module:
        """Return a generator: an nn.Module with ``latent_dim`` (int) and ``conditional``
        (bool) attributes mapping z (N, latent_dim) -- or (z, y) with labels y (N,) when
        conditional -- to samples of ``data.shape`` ((N, C, H, W) in [0, 1], or (N, 2)).

        Subclass :class:`dltbench.tasks.gan.Generator` for these attributes. The harness
        draws z ~ N(0, I) itself; each sample must depend on its own row only.
        ``data.test`` is None; ``config.steps`` is the budget in generator updates.
        """


@register_task
class GanTask(Task):
    """Generative models scored from harness-drawn latents: FID, KID, precision/recall, modes."""

    name = "gan"
    version = "2"
    description = "GAN generators scored by FID/KID, precision/recall, coverage, modes and W2"
    method_type = GanMethod
    protocol = "train"
    primary_metric = "distance"
    setting_keys = ("dataset", "feature_net", "n_samples")
    artifact_kind = "remote"
    artifact_attributes = ("latent_dim", "conditional")
    test_size_fields = ("n_samples",)
    metrics = (
        MetricSpec("distance", False, "setting's distance",
                   "primary: FID_N on images (the setting's feature net), exact W2 on 2-D targets",
                   low=0.0),
        MetricSpec("fid", False, "feature units^2",
                   "Frechet distance of N samples to the reference split in feature space "
                   "(points themselves on 2-D)", low=0.0),
        MetricSpec("fid_inf", False, "feature units^2",
                   "FID-infinity (Chong & Forsyth 2020): intercept of FID_n vs 1/n"),
        MetricSpec("kid", False, "feature units^0", "KID: unbiased cubic-kernel MMD^2, subset mean"),
        MetricSpec("kid_std", None, "feature units^0", "KID's std over subsets (ddof 0)", low=0.0),
        MetricSpec("precision", True, "fraction", "improved precision, k=3 (Kynkaanniemi 2019)"),
        MetricSpec("recall", True, "fraction", "improved recall, k=3 (Kynkaanniemi 2019)"),
        MetricSpec("density", None, "ratio", "density, k=5 (Naeem 2020); ~1 for real data",
                   low=0.0),
        MetricSpec("coverage", True, "fraction", "coverage, k=5 (Naeem 2020)"),
        MetricSpec("w2", False, "points' units",
                   "2-D: exact W2 between the N samples and N reference draws (optimal transport)", low=0.0),
        MetricSpec("hq_fraction", True, "fraction", "2-D: samples within 3 std of a mode"),
        MetricSpec("modes", True, "modes",
                   "modes (2-D components / image classes under the feature classifier) with at "
                   "least a quarter of their fair share of samples", low=0.0),
        MetricSpec("kl_uniform", False, "nats", "KL(mode histogram || uniform)", low=0.0),
        MetricSpec("class_accuracy", True, "fraction",
                   "conditional methods: samples whose mode/class is the asked label y"),
        MetricSpec("class_fid", False, "feature units^2",
                   "conditional methods: mean over classes of FID(class-y samples, class-y "
                   "reference)", low=0.0),
        MetricSpec("memorised_fraction", None, "fraction",
                   "samples whose nearest training point is closer than the 5% quantile of "
                   "test-to-train distances (~0.05 for fresh data); above 0.25: not ranked"),
    )  # fmt: skip

    def configs(self, profile: str) -> list[GanConfig]:
        """One config per setting of ``profile``."""
        return [GanConfig(**p) for p in profile_entry(_PROFILES, profile)]

    def smoke(self, config: GanConfig) -> GanConfig:
        """A seconds-long version: a few training steps, few samples and subsets."""
        return dataclasses.replace(
            config, steps=20, n_samples=min(config.n_samples, 200), kid_subsets=5,
            n_train=min(config.n_train, 500) if config.n_train else 0, fid_inf_points=3,
        )  # fmt: skip

    def check_data(self, config: GanConfig, data_dir) -> None:
        """Fail early, with what to put where, if the dataset or feature weights are missing."""
        if config.dataset not in MIXTURES:
            datasets.load(config.dataset, data_dir)
        if config.feature_net == "inception-v3-pool3":
            inception_features(data_dir)

    def prepare(self, config: GanConfig, ctx: Context) -> tuple[GanData, FeatureNet]:
        """The data with its fixed split, and the feature network (harness-side only)."""
        ctx.progress("load data", 0, 1)
        if config.dataset in MIXTURES:
            mix = MIXTURES[config.dataset](config.std)
            train = Split(*mix.sample(config.n_train, np.random.default_rng(TARGET_TRAIN_SEED)))
            ref = Split(*mix.sample(config.n_ref, np.random.default_rng(TARGET_REF_SEED)))
            data = GanData(config.dataset, train, ref, mix.num_modes, mix)
        else:
            img = datasets.load(config.dataset, ctx.data_dir)
            train = img.train if not config.n_train else img.train.subset(slice(config.n_train))
            data = GanData(img.name, train, img.test, img.num_classes)
        return data, self._feature_net(config, data, ctx).to(ctx.device)

    def _feature_net(self, config: GanConfig, data: GanData, ctx: Context) -> FeatureNet:
        makers = {
            "identity": identity_features,
            "digits-cnn64": digits_features,
            "mnist-cnn64": lambda: mnist_features(data.train, ctx),
            "inception-v3-pool3": lambda: inception_features(ctx.data_dir),
        }
        if config.feature_net not in makers:
            raise DataMissing(f"unknown feature network {config.feature_net!r}")
        return makers[config.feature_net]()

    def train_view(self, data: tuple[GanData, FeatureNet], config: GanConfig) -> GanData:
        """The training split (samples and labels) only: no test split, no exact mixture,
        no feature network."""
        return dataclasses.replace(data[0], test=None, mixture=None)

    def fit(self, method: GanMethod, data: GanData, config: GanConfig, ctx: Context) -> nn.Module:
        """Train the generator (in the plugin process, on the training view)."""
        return method.train(data, config, ctx)

    def evaluate(self, artifact, data, config: GanConfig, ctx: Context) -> Evaluation:
        """Draw N latents from the evaluation stream, query the generator, score its samples."""
        gan_data, fnet = data
        latent_dim, conditional = check_generator(artifact, gan_data, config)
        n = config.n_samples
        z = torch.randn(n, latent_dim, generator=ctx.generator)
        y = None
        if conditional:  # balanced labels in a random order, chosen by the harness
            y = (torch.arange(n) % gan_data.num_classes)[
                torch.randperm(n, generator=ctx.generator)
            ]
        x = draw_samples(artifact, z, y, config.query_batch, ctx)
        return score(x, y, gan_data, fnet, config, ctx)

    def adjust_leaderboard(self, df, records, load):
        """Rows with a seed whose samples replay the training set (memorised fraction above the
        config's flag) are listed but not ranked, with the reason."""
        if df.empty:
            return df
        flagged = {r.id for r in records if _memorised(r)}
        excluded = [any(i in flagged for i in str(ids).split()) for ids in df["records"]]
        df = df.copy()
        df["eligible"] = [not e for e in excluded]
        df["excluded_reason"] = [
            "memorisation: most samples are closer to a training point than held-out data is"
            if e else "" for e in excluded
        ]  # fmt: skip
        return df

    def check_record(self, record) -> str | None:
        """The generic checks, and no more modes than the target has."""
        reason = super().check_record(record)
        if reason is not None:
            return reason
        est = record.estimator if isinstance(record.estimator, dict) else {}
        modes, k = record.metrics.get("modes"), est.get("num_modes")
        if isinstance(modes, (int, float)) and isinstance(k, int) and modes > k:
            return "modes above the estimator's number of modes"
        return None


def _memorised(record) -> bool:
    frac = record.metrics.get("memorised_fraction")
    flag = (record.estimator.get("memorisation") or {}).get("flag_above", 0.25)
    return isinstance(frac, (int, float)) and frac > flag


def check_generator(artifact: Any, data: GanData, config: GanConfig) -> tuple[int, bool]:
    """The artifact's declared ``latent_dim`` and ``conditional``; from now on every answer it
    gives must be a finite float tensor of shape (rows asked, *data.shape), in [0, 1] for
    images. Raises InvalidArtifact."""
    from ...oracle import RemoteModule

    if isinstance(artifact, RemoteModule) and not getattr(artifact, "is_module", True):
        raise InvalidArtifact(
            f"train() must return a torch.nn.Module, got {artifact.type_name or 'something else'}"
        )
    if not isinstance(artifact, (RemoteModule, nn.Module)):
        raise InvalidArtifact(
            f"train() must return a torch.nn.Module, got {type(artifact).__name__}"
        )
    attrs = getattr(artifact, "attributes", None)
    attrs = attrs if isinstance(attrs, dict) else vars(artifact)
    latent_dim, conditional = attrs.get("latent_dim"), attrs.get("conditional", False)
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int):
        raise InvalidArtifact("the generator must declare an int attribute latent_dim")
    if not 1 <= latent_dim <= MAX_LATENT_DIM:
        raise InvalidArtifact(f"latent_dim must be in [1, {MAX_LATENT_DIM}], got {latent_dim}")
    if not isinstance(conditional, bool):
        raise InvalidArtifact("the generator's attribute conditional must be a bool")
    if isinstance(artifact, RemoteModule):
        artifact._check = sample_check(data.shape, data.is_image)
    return latent_dim, conditional


def sample_check(shape: tuple[int, ...], image: bool):
    """A per-answer check: samples (N, *shape) for N latents, finite, in [0, 1] for images."""

    def check(method: str, args: tuple, out: object) -> None:
        n = len(args[0]) if args and isinstance(args[0], torch.Tensor) else None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, *shape):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InvalidArtifact(
                f"the generator must return samples of shape {(n, *shape)}, got {got}"
            )
        if not out.is_floating_point() or not torch.isfinite(out).all():
            raise InvalidArtifact("the generator returned non-finite samples (NaN or inf)")
        if image and (out.min() < 0 or out.max() > 1):
            raise InvalidArtifact("the generator returned images outside [0, 1]")

    return check


@torch.no_grad()
def draw_samples(
    generator: Any, z: torch.Tensor, y: torch.Tensor | None, batch: int, ctx: Context
) -> torch.Tensor:
    """The generator's samples at latents ``z`` (and labels ``y``), ``batch`` rows per query."""
    out = []
    for i in range(0, len(z), batch):
        args = (z[i : i + batch],) if y is None else (z[i : i + batch], y[i : i + batch])
        try:
            out.append(generator(*[a.to(ctx.device) for a in args]).detach().float().cpu())
        except InvalidArtifact:
            raise
        except Exception as exc:
            raise InvalidArtifact(
                f"the generator failed on a batch of {len(args[0])}: {exc}"
            ) from exc
        ctx.progress("sample", min(i + batch, len(z)), len(z))
    return torch.cat(out)


def score(
    x: torch.Tensor, y: torch.Tensor | None, data: GanData, fnet: FeatureNet, config: GanConfig,
    ctx: Context,
) -> Evaluation:  # fmt: skip
    """Every metric of samples ``x`` (asked labels ``y`` or None) against the fixed splits."""
    ref_split = data.test if config.reference == "test" else data.train
    if config.n_ref and not data.mixture:
        ref_split = ref_split.subset(slice(config.n_ref))
    ctx.progress("features", 0, 3)
    fx, logits = fnet.features_and_logits(x)
    fref, _ = fnet.features_and_logits(ref_split.x)
    ftrain, _ = fnet.features_and_logits(data.train.x)
    ftest = fref if config.reference == "test" else fnet.features_and_logits(data.test.x)[0]
    ctx.progress("features", 3, 3)
    mu_ref, s_ref = M.feature_statistics(fref)
    fid = M.frechet_distance(*M.feature_statistics(fx), mu_ref, s_ref)
    n = len(fx)
    sizes = np.unique(np.linspace(max(2, n // 5), n, config.fid_inf_points).astype(int))
    fid_inf, fid_ns = M.fid_infinity(fx, mu_ref, s_ref, sizes, ctx.rng)
    kid_mean, kid_std = M.kid(fx, fref, ctx.rng, config.kid_subsets, config.kid_subset_size)
    precision, recall = M.precision_recall(fref, fx, config.pr_k)
    density, coverage = M.density_coverage(fref, fx, config.dc_k)
    memorised, mem_threshold = M.memorisation_rate(fx, ftrain, ftest, config.memorisation_quantile)
    metrics: dict[str, float] = {
        "fid": fid, "fid_inf": fid_inf, "kid": kid_mean, "kid_std": kid_std,
        "precision": precision, "recall": recall, "density": density, "coverage": coverage,
        "memorised_fraction": memorised,
        "w2": float("nan"), "hq_fraction": float("nan"),
        "class_accuracy": float("nan"), "class_fid": float("nan"),
    }  # fmt: skip
    floor = M.fid_from_features(ftrain, fref)
    estimator: dict[str, Any] = {
        "n_samples": n, "latents": "z ~ N(0, I) drawn by the harness from the evaluation stream",
        "reference": {"split": config.reference, "size": len(fref)},
        "feature_net": {"name": fnet.ident, "sha256": fnet.sha256, "transform": fnet.transform,
                        "dim": int(fx.shape[1])},
        "fid": "Frechet distance, float64, covariances ddof 1, tr sqrt(S1 S2) from eigvalsh "
               "of L^T S2 L, S1 = L L^T (Cholesky; eigh of sqrt(S1) if S1, S2 are singular)",
        "fid_bias": f"FID_N is biased upward by O(1/N) at N = {n}: compare FIDs only at equal N "
                    "and feature net (both are setting keys); fid_inf removes the 1/N term",
        "fid_train_vs_reference": floor,
        "fid_inf": {"sizes": sizes.tolist(), "fit": "least squares FID_n = a + b/n, report a",
                    "subsets": "random, without replacement, of the N samples"},
        "kid": {"kernel": "(x.y/d + 1)^3", "estimator": "unbiased MMD^2", "subsets":
                config.kid_subsets, "subset_size": min(n, len(fref), config.kid_subset_size),
                "std": "ddof 0"},
        "precision_recall": {"k": config.pr_k, "real": "reference split"},
        "density_coverage": {"k": config.dc_k, "real": "reference split"},
        "memorisation": {"quantile": config.memorisation_quantile, "threshold": mem_threshold,
                         "flag_above": config.memorised_flag,
                         "rule": "nearest training point (feature space) closer than this "
                                 "quantile of the test split's nearest-training distances"},
        "conditional": y is not None,
    }  # fmt: skip
    curves: dict[str, Any] = {"fid_by_n": {"n": sizes.tolist(), "fid": fid_ns}}
    if data.mixture is not None:
        mix = data.mixture
        nearest, hq = mix.assign(x.numpy())
        counts = M.mode_histogram(np.where(hq, nearest, -1), mix.num_modes)
        w2 = M.wasserstein2(x, ref_split.x)
        metrics.update(w2=w2, hq_fraction=float(hq.mean()), modes=M.modes_covered(counts, n),
                       kl_uniform=M.kl_to_uniform(counts), distance=w2)  # fmt: skip
        estimator.update(num_modes=mix.num_modes, std=mix.std,
                         w2={"solver": "exact: optimal assignment (scipy linear_sum_assignment; "
                                       "equals POT ot.emd2 for equal sizes), squared "
                                       "Euclidean cost, uniform weights",
                             "reference_draws": len(ref_split), "reference_seed": TARGET_REF_SEED},
                         modes_rule="a mode counts when it has at least N/(4K) samples within "
                                    "3 std of it (high-quality samples)")  # fmt: skip
        labels_of_x = np.where(hq, nearest, -1)
        ref_labels = ref_split.y.numpy()
    else:
        assert logits is not None
        labels_of_x = logits.argmax(1)
        counts = M.mode_histogram(labels_of_x, data.num_classes)
        metrics.update(modes=M.modes_covered(counts, n), kl_uniform=M.kl_to_uniform(counts),
                       distance=fid)  # fmt: skip
        estimator.update(num_modes=data.num_classes,
                         modes_rule="a class counts when the feature classifier assigns it at "
                                    "least N/(4K) samples")  # fmt: skip
        ref_labels = ref_split.y.numpy()
    curves["mode_histogram"] = counts.tolist()
    if y is not None:
        yy = y.numpy()
        metrics["class_accuracy"] = float(np.mean(labels_of_x == yy))
        per_class = []
        for c in range(data.num_classes):
            a, b = fx[yy == c], fref[ref_labels == c]
            per_class.append(
                M.fid_from_features(a, b) if min(len(a), len(b)) >= 2 else float("nan")
            )
        metrics["class_fid"] = float(np.nanmean(per_class))
        curves["class_fid"] = per_class
        estimator["labels"] = "balanced: N/K of each class, in a random order (harness-drawn)"
    return Evaluation(metrics, curves, estimator)
