"""The ``faceid`` task: open-set face verification of a learned embedding on held-out identities."""

from __future__ import annotations

import dataclasses
import math
import time
from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...api import Context, Evaluation, InvalidArtifact, Method, MetricSpec, Task, profile_entry
from ...models import check_classifier, logits_check
from ...registry import register_task
from . import data as faceid_data
from .attacks import attack_pairs, eyeglass_mask
from .neural_collapse import neural_collapse
from .verification import auc, eer, roc, roc_summary, tar_at_far, ten_fold_accuracy

#: The attacks every cell runs: name -> (norm, config field of eps or a fixed eps, masked).
ATTACKS: tuple[str, ...] = ("linf", "l2", "glasses")
#: TAR@FAR columns: metric suffix -> false accept rate.
FARS: dict[str, float] = {"1e-3": 1e-3, "1e-4": 1e-4}
NC_METRICS: tuple[str, ...] = (
    "nc1", "nc2_equinorm", "nc2_equiangular", "nc2_max_angle", "nc2_w_equinorm",
    "nc2_w_equiangular", "nc3_self_duality", "nc4_ncc_mismatch", "ncc_train_acc",
)  # fmt: skip


@dataclass(frozen=True)
class FaceIDConfig:
    """Everything one cell's numbers depend on besides the method and the seed.

    eps are in the [0, 1] pixel scale; the eyeglass attack may set masked pixels anywhere
    in [0, 1] (l_inf budget 1 inside the mask, 0 outside).
    """

    dataset: str  # synthetic | lfw | casia-lfw
    arch: str  # the shared backbone the built-ins train (small-cnn[-width] or a timm name)
    embedding_dim: int
    epochs: int  # training budget, in passes over the training images
    batch_size: int
    attack_pairs: int  # pairs attacked, half matched and half mismatched, spread over folds
    attack_steps: int
    linf_eps: float
    l2_eps: float
    nc_images_per_identity: int  # training images per identity embedded for neural collapse


_PROFILES = {
    "quick": dict(dataset="synthetic", arch="small-cnn-16", embedding_dim=64, epochs=8,
                  batch_size=128, attack_pairs=100, attack_steps=5, linf_eps=0.01, l2_eps=0.25,
                  nc_images_per_identity=12),
    "standard": dict(dataset="lfw", arch="small-cnn", embedding_dim=128, epochs=30,
                     batch_size=128, attack_pairs=600, attack_steps=20, linf_eps=2 / 255,
                     l2_eps=0.5, nc_images_per_identity=10),
    "paper": dict(dataset="casia-lfw", arch="resnet18", embedding_dim=512, epochs=30,
                  batch_size=256, attack_pairs=1000, attack_steps=20, linf_eps=2 / 255,
                  l2_eps=0.5, nc_images_per_identity=5),
}  # fmt: skip


class FaceIDMethod(Method):
    """Protocol of a ``faceid`` method: learn an embedding network from training identities."""

    @abstractmethod
    def train(self, data: faceid_data.TrainView, config: FaceIDConfig, ctx: Context) -> nn.Module:
        """Return an nn.Module mapping images (N, C, H, W) in [0, 1] to embeddings (N, d),
        d = ``config.embedding_dim`` (one width for every method, so that methods differ
        by what they learn, not by the embedding's size).

        ``data`` holds the training identities' images ``x`` and labels ``y`` (0..C-1)
        only: no test image, no test identity, no pair. The harness L2-normalises the
        embeddings and scores cosine similarity. A module with a ``classifier_weight()``
        method returning (C, d) rows (prediction argmax_c <w_c, h>) gets the classifier
        neural-collapse metrics too. The forward must be deterministic in eval mode and
        answer each row on its own.
        """


def embedding_check(dim: int):
    """A per-answer check: a finite float (N, dim) tensor for a batch of N
    (``classifier_weight()`` answers are checked by :func:`classifier_rows`)."""
    rows = logits_check(dim)

    def check(method: str, args: tuple, out: object) -> None:
        if method == "classifier_weight":
            return
        try:
            rows(method, args, out)
        except InvalidArtifact as exc:
            raise InvalidArtifact(_as_embeddings(exc)) from exc

    return check


def _as_embeddings(exc: InvalidArtifact) -> str:
    """The shared classifier check's message, worded for embeddings."""
    return str(exc).replace("logits", "embeddings")


def check_embedder(artifact, probe: torch.Tensor, device: torch.device, dim: int) -> nn.Module:
    """The shared model checks of :func:`dltbench.models.check_classifier` with (N, dim)
    embeddings in place of logits, then: deterministic in eval mode, not all zero."""
    from ...oracle import RemoteModule

    try:
        model, out = check_classifier(artifact, probe, dim, device)
    except InvalidArtifact as exc:
        raise InvalidArtifact(_as_embeddings(exc)) from exc
    if isinstance(artifact, RemoteModule):
        artifact._check = embedding_check(dim)  # lets classifier_weight() through
    with torch.no_grad():
        again = model(probe.to(device))
    if not torch.equal(out.cpu(), again.cpu()):
        raise InvalidArtifact("the model's eval-mode forward is not deterministic")
    if float(F.normalize(out, dim=1).norm(dim=1).min()) < 0.5:
        raise InvalidArtifact("the model returned all-zero embeddings (cosine undefined)")
    return model


def classifier_rows(artifact, num_classes: int, dim: int) -> np.ndarray | None:
    """The method's classifier rows (C, d) if it exposes ``classifier_weight()``, else None."""
    from ...oracle import RemoteModule

    if isinstance(artifact, RemoteModule):
        if "classifier_weight" not in artifact.methods:
            return None
        w = artifact.call("classifier_weight")
    else:
        fn = getattr(artifact, "classifier_weight", None)
        if not callable(fn):
            return None
        with torch.no_grad():
            w = fn()
    if not isinstance(w, torch.Tensor) or tuple(w.shape) != (num_classes, dim):
        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise InvalidArtifact(f"classifier_weight() must be ({num_classes}, {dim}), got {shape}")
    if not torch.isfinite(w).all():
        raise InvalidArtifact("classifier_weight() has non-finite entries")
    return w.detach().double().cpu().numpy()


@torch.no_grad()
def embed(
    model: nn.Module, x: torch.Tensor, device: torch.device, batch: int = 1000
) -> torch.Tensor:
    """Unit embeddings (N, d) of images x, in batches (on the CPU)."""
    out = [F.normalize(model(x[i : i + batch].to(device)).float(), dim=1).cpu()
           for i in range(0, len(x), batch)]  # fmt: skip
    return torch.cat(out)


def attacked_pairs(pairs: faceid_data.Pairs, n: int) -> np.ndarray:
    """A fixed subset of pair indices: per fold the first n/(2k) matched and mismatched pairs."""
    k = int(pairs.fold.max()) + 1
    per = max(1, n // (2 * k))
    idx = [np.flatnonzero((pairs.fold == f) & (pairs.same == s))[:per]
           for f in range(k) for s in (True, False)]  # fmt: skip
    return np.concatenate(idx)


@register_task
class FaceIDTask(Task):
    """Open-set face verification: 10-fold LFW-protocol accuracy of cosine scores on unseen identities."""

    name = "faceid"
    version = "3"
    description = (
        "face verification on held-out identities (LFW 10-fold), neural collapse, attacks"
    )
    method_type = FaceIDMethod
    protocol = "train"
    primary_metric = "verification_acc"
    setting_keys = ("dataset",)
    test_size_fields = ("attack_pairs",)
    metrics = (
        MetricSpec("verification_acc", True, "fraction",
                   "10-fold verification accuracy (threshold chosen on 9 folds), mean over folds"),
        MetricSpec("verification_acc_stderr", None, "fraction",
                   "standard error of the 10-fold mean (sample std / sqrt(10))"),
        MetricSpec("roc_auc", True, "fraction", "area under the pooled ROC"),
        MetricSpec("eer", False, "fraction", "equal error rate of the pooled ROC"),
        MetricSpec("tar@far=1e-3", True, "fraction", "true accept rate at false accept rate <= 1e-3"),
        MetricSpec("tar@far=1e-4", True, "fraction",
                   "true accept rate at FAR <= 1e-4 (None: fewer than 10^4 mismatched pairs)"),
        MetricSpec("nc1", None, "ratio", "Tr(Sigma_W Sigma_B^+)/C on training identities (0 = collapse)",
                   low=0.0),
        MetricSpec("nc2_equinorm", None, "ratio", "CV of centred class-mean norms", low=0.0),
        MetricSpec("nc2_equiangular", None, "cosine", "std of cosines between centred class means",
                   low=0.0),
        MetricSpec("nc2_max_angle", None, "cosine", "mean |cos + 1/(C-1)| of centred class means",
                   low=0.0, high=2.0),
        MetricSpec("nc2_w_equinorm", None, "ratio", "CV of classifier row norms (None: no classifier)",
                   low=0.0),
        MetricSpec("nc2_w_equiangular", None, "cosine",
                   "std of cosines between classifier rows (None: no classifier)", low=0.0),
        MetricSpec("nc3_self_duality", None, "squared Frobenius",
                   "||W/||W|| - M/||M|| ||_F^2 (None: no classifier)", low=0.0, high=4.0),
        MetricSpec("nc4_ncc_mismatch", None, "fraction",
                   "classifier vs nearest-class-centre disagreement, training images (None: no classifier)"),
        MetricSpec("ncc_train_acc", None, "fraction", "nearest-class-centre accuracy, training images"),
        MetricSpec("attack_clean_acc", True, "fraction", "accuracy on the attacked pairs, no attack"),
        *(m for a in ATTACKS for m in (
            MetricSpec(f"adv_acc_{a}", True, "fraction", f"accuracy on the attacked pairs under {a}"),
            MetricSpec(f"dodge_success_{a}", False, "fraction",
                       f"{a}: matched pairs accepted clean, rejected after the attack"),
            MetricSpec(f"impersonate_success_{a}", False, "fraction",
                       f"{a}: mismatched pairs rejected clean, accepted after the attack"),
        )),
        MetricSpec("embedding_dim", None, "count", "width d of the returned embeddings", low=1),
        MetricSpec("eval_seconds", False, "s", "evaluation time on this device", low=0.0),
    )  # fmt: skip

    def configs(self, profile: str) -> list[FaceIDConfig]:
        """One config per profile (one dataset)."""
        return [FaceIDConfig(**profile_entry(_PROFILES, profile))]

    def smoke(self, config: FaceIDConfig) -> FaceIDConfig:
        """A seconds-long version: the small synthetic set, one epoch, few attacked pairs."""
        return dataclasses.replace(
            config, dataset="synthetic-small", epochs=1, attack_pairs=20, attack_steps=2,
            nc_images_per_identity=4,
        )  # fmt: skip

    def check_data(self, config: FaceIDConfig, data_dir) -> None:
        """Fail early, with what to put where, if the dataset is missing."""
        if not config.dataset.startswith("synthetic"):
            faceid_data.lfw_home(data_dir)
            if config.dataset == "casia-lfw" and not (data_dir / "casia-webface").is_dir():
                faceid_data.load_casia_lfw(data_dir)  # raises DataMissing with the layout

    def prepare(self, config: FaceIDConfig, ctx: Context) -> faceid_data.FaceData:
        """The dataset with its fixed identity split and pairs (identity sets checked disjoint)."""
        ctx.progress("data", 0, 1)
        return faceid_data.load(config.dataset, ctx.data_dir)

    def train_view(
        self, data: faceid_data.FaceData, config: FaceIDConfig
    ) -> faceid_data.TrainView:
        """Training identities' images and labels only."""
        return faceid_data.TrainView(data.name, data.train_x, data.train_y, data.num_identities)

    def fit(self, method: FaceIDMethod, data, config: FaceIDConfig, ctx: Context) -> nn.Module:
        """Train the embedding (in the plugin process, on the training view)."""
        return method.train(data, config, ctx)

    def evaluate(self, artifact, data, config: FaceIDConfig, ctx: Context) -> Evaluation:
        """Verification on the test pairs, neural collapse on training images, attacks on pairs."""
        return evaluate_embedder(artifact, data, config, ctx)

    def check_record(self, record) -> str | None:
        """The generic checks, and no attacked accuracy above the clean one on the same pairs."""
        reason = super().check_record(record)
        if reason is not None:
            return reason
        m = record.metrics
        clean = m.get("attack_clean_acc")
        for a in ATTACKS:
            v = m.get(f"adv_acc_{a}")
            if v is not None and clean is not None and v > clean + 1e-12:
                return f"adv_acc_{a} above attack_clean_acc"
        return None


def evaluate_embedder(artifact, data, config: FaceIDConfig, ctx: Context) -> Evaluation:
    """The whole evaluator (see :class:`FaceIDTask`); raises InvalidArtifact on a bad model."""
    start = time.perf_counter()
    dev = ctx.device
    dim = config.embedding_dim
    model = check_embedder(artifact, data.test_x[:16], dev, dim)
    pairs = data.pairs
    used = np.unique(np.r_[pairs.i, pairs.j])
    ctx.progress("embed test", 0, 1)
    e = torch.zeros(len(data.test_x), dim)
    e[used] = embed(model, data.test_x[used], dev)
    scores = (e[pairs.i] * e[pairs.j]).sum(1).double().numpy()
    folds = ten_fold_accuracy(scores, pairs.same, pairs.fold)
    curve = roc(scores, pairs.same)
    metrics: dict[str, float | None] = {
        "verification_acc": folds.mean,
        "verification_acc_stderr": folds.stderr,
        "roc_auc": auc(curve),
        "eer": eer(curve),
        "embedding_dim": float(dim),
    }
    not_estimable = {}
    for label, f in FARS.items():
        v, why = tar_at_far(curve, f)
        metrics[f"tar@far={label}"] = v
        if why:
            not_estimable[f"tar@far={label}"] = why
    # neural collapse on (a fixed subset of) the training images the harness holds
    ctx.progress("neural collapse", 0, 1)
    y = data.train_y.numpy()
    keep = np.concatenate([np.flatnonzero(y == c)[: config.nc_images_per_identity]
                           for c in range(data.num_identities)])  # fmt: skip
    h = embed(model, data.train_x[keep], dev).double().numpy()
    w = classifier_rows(artifact, data.num_identities, dim)
    metrics.update(neural_collapse(h, y[keep], data.num_identities, w))
    # attacks at each pair's own fold threshold
    idx = attacked_pairs(pairs, config.attack_pairs)
    x1, x2 = data.test_x[pairs.i[idx]].to(dev), data.test_x[pairs.j[idx]].to(dev)
    same, thr = pairs.same[idx], folds.pair_threshold()[idx]
    gen = ctx.device_generator()
    mask = eyeglass_mask(*x1.shape[-2:]).to(dev)
    budgets = {"linf": ("linf", config.linf_eps, None), "l2": ("l2", config.l2_eps, None),
               "glasses": ("linf", 1.0, mask)}  # fmt: skip
    attack_seconds = {}
    for name in ATTACKS:
        ctx.progress(f"attack {name}", 0, 1)
        t0 = time.perf_counter()
        norm, eps, m = budgets[name]
        out = attack_pairs(model, x1, x2, same, thr, eps, norm, config.attack_steps, gen, mask=m)
        attack_seconds[name] = time.perf_counter() - t0
        metrics["attack_clean_acc"] = float(out.clean_correct.mean())
        metrics.update({f"{k}_{name}": v for k, v in out.summary().items()})
    metrics["eval_seconds"] = time.perf_counter() - start
    metrics = {
        k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()
    }
    curves = {
        "roc": roc_summary(curve),
        "fold_accuracy": folds.accuracy.tolist(),
        "fold_threshold": folds.threshold.tolist(),
        "attack_seconds": attack_seconds,
    }
    estimator = {
        "protocol": "10-fold (insightface calculate_roc): threshold best on 9 folds over the grid "
                    "cos > 1 - t/2, t in arange(0, 4, 0.01), applied to the held-out fold",
        "score": "cosine of L2-normalised embeddings", "pairs": len(pairs),
        "matched_pairs": int(pairs.same.sum()), "mismatched_pairs": int((~pairs.same).sum()),
        "folds": "contiguous blocks in pairs.txt order, identity-disjoint",
        "fold_std": folds.std, "stderr": "sample std over folds / sqrt(10)",
        "roc": "pooled over all pairs; TAR@FAR = max TAR with FAR <= f; EER interpolated",
        "not_estimable": not_estimable,
        "train_identities": data.num_identities, "train_images": len(data.train_x),
        "test_identities": len(set(data.test_ids)), "identity_sets": "disjoint (checked)",
        "neural_collapse": {"features": "L2-normalised embeddings",
                            "images": len(keep), "per_identity": config.nc_images_per_identity,
                            "classifier": "classifier_weight() rows" if w is not None
                            else "not applicable (no classifier)"},
        "attacks": {"pairs": len(idx), "steps": config.attack_steps,
                    "selection": "per fold the first matched and mismatched pairs",
                    "linf_eps": config.linf_eps, "l2_eps": config.l2_eps,
                    "glasses": f"mask of {int(mask.sum())} of {mask.numel()} pixels, any value in [0, 1]",
                    "threshold": "each pair's fold threshold from the 10-fold protocol",
                    "objective": "PGD on cosine: dodge matched (-cos), impersonate mismatched (+cos)",
                    "robust_definition": "per pair: right clean and right after the attack"},
        "data": data.info,
    }  # fmt: skip
    return Evaluation(metrics, curves, estimator)
