"""``certified``: certified accuracy vs radius by randomized smoothing (Cohen et al. 2019; l2, l1,
l-inf, and brightness and contrast by smoothing over the transformation) or a Lipschitz margin.

Library use, no CLI needed::

    from dltbench.tasks.certified import certify, predict
    label, radius = certify(model, x, sigma=0.25, n0=100, n=100_000, alpha=0.001, batch_size=1000)
"""

from . import methods, shared  # noqa: F401  (methods registers the built-in methods)
from .lipschitz import LipschitzMLP
from .smoothing import (
    ABSTAIN,
    CERTIFICATES,
    TRANSFORMS,
    certified_accuracy,
    certify,
    certify_batch,
    draw_noise,
    lower_confidence_bound,
    noisy_counts,
    perturb,
    predict,
    predict_batch,
    radius_from_pa,
    transform,
)
from .task import LEADERBOARD_RADII, CertifiedConfig, CertifiedMethod, CertifiedTask

__all__ = [
    "ABSTAIN",
    "CERTIFICATES",
    "TRANSFORMS",
    "LEADERBOARD_RADII",
    "CertifiedConfig",
    "CertifiedMethod",
    "CertifiedTask",
    "LipschitzMLP",
    "certified_accuracy",
    "certify",
    "certify_batch",
    "draw_noise",
    "lower_confidence_bound",
    "noisy_counts",
    "perturb",
    "predict",
    "predict_batch",
    "radius_from_pa",
    "transform",
]
