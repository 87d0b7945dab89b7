"""Sample quality of image samples in the ``gan`` task's feature space: FID, KID, class accuracy.

One implementation for two tasks: the feature network (``digits-cnn64``, shipped with the
``gan`` task, sha256 in every record) and the metric functions are imported from
:mod:`dltbench.tasks.gan`. FID at small N is biased upward (about tr(Sigma)/N plus a
covariance term; the ``gan`` task's docs); KID's estimator is unbiased, so KID is reported
beside it, and so is the FID of N real training images against the same reference (the
floor a perfect sampler would score at that N).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..gan import features as gan_features
from ..gan import metrics as gan_metrics
from .data import levels_of

#: KID's subsets (torch-fidelity's and clean-fid's default count); subset size min(N, N_ref, 1000).
KID_SUBSETS = 100


@dataclass
class Reference:
    """The feature network and the reference set's features and statistics."""

    net: gan_features.FeatureNet
    feats: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    n: int

    def describe(self) -> dict:
        """The record's description of what every FID/KID was computed with."""
        return {"feature_net": self.net.ident, "feature_net_sha256": self.net.sha256,
                "input_transform": self.net.transform, "reference_images": self.n}  # fmt: skip


def to_pixels(x: torch.Tensor, levels: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Points on the grid -1 + 2k/(K-1) (N, D) -> quantized images in [0, 1] (N, *shape), float32."""
    return (levels_of(x, levels).to(torch.float32) / (levels - 1)).reshape(len(x), *shape)


def reference(images: torch.Tensor, net: gan_features.FeatureNet | None = None) -> Reference:
    """Reference statistics of ``images`` (N, C, H, W) in [0, 1] (default net: the digits one)."""
    net = net or gan_features.digits_features()
    feats, _ = net.features_and_logits(images)
    mu, sigma = gan_metrics.feature_statistics(feats)
    return Reference(net, feats, mu, sigma, len(images))


def quality(
    images: torch.Tensor,
    ref: Reference,
    rng: np.random.Generator,
    labels: torch.Tensor | None = None,
    kid: bool = True,
) -> dict[str, float]:
    """FID (feature units^2), KID (mean, std over subsets; unless ``kid`` is False) of
    ``images`` (N, C, H, W) in [0, 1] against ``ref``, and, given the asked-for ``labels``,
    the fraction the feature network's classifier assigns to them."""
    feats, logits = ref.net.features_and_logits(images)
    fid = gan_metrics.frechet_distance(*gan_metrics.feature_statistics(feats), ref.mu, ref.sigma)
    out = {"fid": fid}
    if kid:
        out["kid"], out["kid_std"] = gan_metrics.kid(feats, ref.feats, rng, KID_SUBSETS)
    if labels is not None and logits is not None:
        out["class_acc"] = float(np.mean(logits.argmax(1) == labels.cpu().numpy()))
    return out
