"""``diffusion``: likelihood of diffusion models in bits/dim (VLB and probability-flow ODE NLL).

Library use, no CLI needed::

    from dltbench.tasks.diffusion import LinearSchedule, GaussianDenoiser, ode_nll, vlb_bits_per_dim
    model = GaussianDenoiser(mean, cov, LinearSchedule())        # any model(x, t) with
    nll = ode_nll(model, x).nll                                   # .schedule, .prediction
    bpd = vlb_bits_per_dim(model, x, levels=None)                 # levels=K for discrete data
"""

from . import methods  # noqa: F401  (registers the built-in methods)
from .data import DiffusionData, log_density_2d, sample_2d
from .gaussian import GaussianDenoiser, gaussian_entropy, gaussian_marginal_log_density
from .likelihood import (
    DECODER_VARIANCES,
    OdeNll,
    VlbTerms,
    bits_per_dim_to_nats,
    chi2_outliers,
    decoder_variance,
    dequantize,
    discretized_gaussian_log_likelihood,
    log_diff_ndtr,
    nats_to_bits_per_dim,
    ode_nll,
    to_grid,
    vlb_bits_per_dim,
    vlb_terms,
)
from .methods import MLPDenoiser
from .sampling import median_bandwidth, mmd2, sample
from .schedules import (
    PREDICTIONS,
    CosineSchedule,
    DiscreteSchedule,
    LinearSchedule,
    Schedule,
    convert,
    cosine_alphas_cumprod,
    linear_alphas_cumprod,
    to_eps,
    to_x0,
)
from .task import DiffusionConfig, DiffusionMethod, DiffusionTask

__all__ = [
    "DECODER_VARIANCES",
    "PREDICTIONS",
    "CosineSchedule",
    "DiffusionConfig",
    "DiffusionData",
    "DiffusionMethod",
    "DiffusionTask",
    "DiscreteSchedule",
    "GaussianDenoiser",
    "LinearSchedule",
    "MLPDenoiser",
    "OdeNll",
    "Schedule",
    "VlbTerms",
    "bits_per_dim_to_nats",
    "chi2_outliers",
    "convert",
    "cosine_alphas_cumprod",
    "decoder_variance",
    "dequantize",
    "discretized_gaussian_log_likelihood",
    "gaussian_entropy",
    "gaussian_marginal_log_density",
    "linear_alphas_cumprod",
    "log_density_2d",
    "log_diff_ndtr",
    "median_bandwidth",
    "mmd2",
    "nats_to_bits_per_dim",
    "ode_nll",
    "sample",
    "sample_2d",
    "to_eps",
    "to_grid",
    "to_x0",
    "vlb_bits_per_dim",
    "vlb_terms",
]
