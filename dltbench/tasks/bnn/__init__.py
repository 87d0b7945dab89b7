"""``bnn``: approximate Bayesian neural-network posteriors scored against a long-run HMC reference.

Library use, no CLI needed::

    import torch
    from dltbench.tasks.bnn import SETTINGS, BNNPosterior, BNNView, load_data, metrics
    s = SETTINGS["moons-gap"]
    d = load_data(s.dataset)
    post = BNNPosterior(s.net, d.x_train, d.y_train, s.prior_sd)
    lp, g = BNNView(post).log_prob_and_grad(torch.zeros(2, post.dim, dtype=torch.float64))
    p = s.net.predictive(torch.zeros(1, post.dim, dtype=torch.float64), d.x_test)
    metrics.total_variation(p.numpy(), p.numpy())
"""

from . import (
    methods,  # noqa: F401  (registers the built-in methods)
    metrics,
)
from .data import BNNData
from .data import load as load_data
from .make_reference import load_reference
from .network import MLP
from .posterior import BNNPosterior, BNNView
from .settings import SETTINGS, Setting
from .task import BNNConfig, BNNMethod, BNNRun, BNNTask, check_samples

__all__ = [
    "SETTINGS",
    "MLP",
    "BNNConfig",
    "BNNData",
    "BNNMethod",
    "BNNPosterior",
    "BNNRun",
    "BNNTask",
    "BNNView",
    "Setting",
    "check_samples",
    "load_data",
    "load_reference",
    "metrics",
]
