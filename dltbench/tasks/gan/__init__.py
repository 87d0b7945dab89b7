"""``gan``: generators scored by FID, KID, precision/recall, coverage and mode counts.

Library use, no CLI needed (features are (N, d) arrays from any network)::

    from dltbench.tasks.gan import feature_statistics, frechet_distance, kid
    fid = frechet_distance(*feature_statistics(fake), *feature_statistics(real))
    kid_mean, kid_std = kid(fake, real, np.random.default_rng(0))
"""

from . import methods  # noqa: F401  (registers the built-in methods)
from .features import ClassifierFeatures, FeatureNet, digits_features, inception_features
from .metrics import (
    density_coverage,
    feature_statistics,
    fid_from_features,
    fid_infinity,
    frechet_distance,
    kid,
    kl_to_uniform,
    knn_radii,
    memorisation_rate,
    modes_covered,
    nearest_distances,
    polynomial_mmd2,
    precision_recall,
    trace_sqrt_product,
    wasserstein2,
)
from .nets import Generator
from .targets import MIXTURES, Mixture
from .task import GanConfig, GanData, GanMethod, GanTask

__all__ = [
    "MIXTURES",
    "ClassifierFeatures",
    "FeatureNet",
    "GanConfig",
    "GanData",
    "GanMethod",
    "GanTask",
    "Generator",
    "Mixture",
    "density_coverage",
    "digits_features",
    "feature_statistics",
    "fid_from_features",
    "fid_infinity",
    "frechet_distance",
    "inception_features",
    "kid",
    "kl_to_uniform",
    "knn_radii",
    "memorisation_rate",
    "modes_covered",
    "nearest_distances",
    "polynomial_mmd2",
    "precision_recall",
    "trace_sqrt_product",
    "wasserstein2",
]
