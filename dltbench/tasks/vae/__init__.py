"""``vae``: held-out log-likelihood of latent-variable models (ELBO and IWAE bounds, Burda et al. 2016).

Library use, no CLI needed::

    import torch
    from dltbench.tasks.vae import elbo, iwae_bound, bits_per_dim
    ll = iwae_bound(model, x, k=5000, generator=torch.Generator().manual_seed(0))  # (N,) nats
    terms = elbo(model, x, n_samples=10)            # .elbo, .reconstruction, .kl, nats
    print(bits_per_dim(ll.mean(), x.shape[1]))      # upper bound on NLL in bits/dim
"""

from . import methods  # noqa: F401  (registers the built-in methods)
from .bounds import (
    ElboTerms,
    active_units,
    bits_per_dim,
    draw,
    elbo,
    iwae_bound,
    iwae_bounds,
    log_weights,
    marginal_elbo,
    marginal_iwae_bound,
    nats_per_example,
    posterior_means,
)
from .checks import ModelInfo, check_model
from .methods import neg_elbo
from .nets import MLPVAE, MLPAutoencoder, PointMass, fit_model
from .task import (
    BINARIZE_SEED,
    BinaryData,
    VAEConfig,
    VAEMethod,
    VAETask,
    active_unit_points,
    binarize,
    binarize_batch,
    load_binary,
)

__all__ = [
    "BINARIZE_SEED",
    "BinaryData",
    "ElboTerms",
    "MLPAutoencoder",
    "MLPVAE",
    "ModelInfo",
    "PointMass",
    "VAEConfig",
    "VAEMethod",
    "VAETask",
    "active_unit_points",
    "active_units",
    "binarize",
    "binarize_batch",
    "bits_per_dim",
    "check_model",
    "draw",
    "elbo",
    "fit_model",
    "iwae_bound",
    "iwae_bounds",
    "log_weights",
    "load_binary",
    "marginal_elbo",
    "marginal_iwae_bound",
    "nats_per_example",
    "neg_elbo",
    "posterior_means",
]
