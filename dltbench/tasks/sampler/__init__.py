"""``sampler``: MCMC samplers scored by bulk/tail ESS, split R-hat and moment errors on known targets.

Library use, no CLI needed::

    import torch
    from dltbench.tasks.sampler import make_target, TargetView, samplers, diagnose
    t = make_target("funnel-d10")
    g = torch.Generator().manual_seed(0)
    draws = samplers.hmc(TargetView(t), t.init(4, g), n_draws=2000, n_warmup=1000, gen=g)
    d = diagnose(draws.numpy(), t.mean.numpy(), t.var.numpy())
    d.ess_bulk.min(), d.rhat.max(), d.passes
"""

from . import (
    methods,  # noqa: F401  (registers the built-in methods)
    samplers,
)
from .catalog import TARGET_FAMILIES, make_target
from .diagnostics import (
    MOMENT_ALPHA,
    RHAT_MAX,
    TAIL_PROB,
    Diagnostics,
    diagnose,
    ess_bulk,
    ess_tail,
    mcse_mean,
    moment_threshold,
    moment_z,
    move_rate,
    rhat,
)
from .targets import LEDGER, Target, TargetView, evaluation_cost
from .task import SamplerConfig, SamplerMethod, SamplerRun, SamplerTask, check_draws

__all__ = [
    "LEDGER",
    "MOMENT_ALPHA",
    "RHAT_MAX",
    "TAIL_PROB",
    "TARGET_FAMILIES",
    "Diagnostics",
    "SamplerConfig",
    "SamplerMethod",
    "SamplerRun",
    "SamplerTask",
    "Target",
    "TargetView",
    "check_draws",
    "diagnose",
    "ess_bulk",
    "ess_tail",
    "evaluation_cost",
    "make_target",
    "mcse_mean",
    "moment_threshold",
    "moment_z",
    "move_rate",
    "rhat",
    "samplers",
]
