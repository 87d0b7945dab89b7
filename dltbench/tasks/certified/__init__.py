"""``certified``: certified accuracy vs l2 radius by randomized smoothing (Cohen et al. 2019).

Library use, no CLI needed::

    from dltbench.tasks.certified import certify, predict
    label, radius = certify(model, x, sigma=0.25, n0=100, n=100_000, alpha=0.001, batch_size=1000)
"""

from . import methods  # noqa: F401  (registers the built-in methods)
from .lipschitz import LipschitzMLP
from .smoothing import (
    ABSTAIN,
    CERTIFICATES,
    certified_accuracy,
    certify,
    certify_batch,
    draw_noise,
    lower_confidence_bound,
    noisy_counts,
    predict,
    predict_batch,
    radius_from_pa,
)
from .task import LEADERBOARD_RADII, CertifiedConfig, CertifiedMethod, CertifiedTask

__all__ = [
    "ABSTAIN",
    "CERTIFICATES",
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
    "predict",
    "predict_batch",
    "radius_from_pa",
]
