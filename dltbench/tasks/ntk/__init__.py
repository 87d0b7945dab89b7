"""``ntk``: finite-width networks against their neural tangent kernel, across widths.

Library use, no CLI needed::

    from dltbench.tasks.ntk import empirical_ntk, mlp_kernels, kernel_predictor
    theta = empirical_ntk(lambda th, x: f(th, x), theta0, x1, x2)   # (N1*K, N2*K)
    theta = empirical_ntk_layers(module, None, x1, x2)   # nn.Linear layers in closed form
    nngp, ntk = mlp_kernels(x1, x2, depth=2, activation="relu", sigma_w=2**0.5)
"""

from . import methods  # noqa: F401  (registers the built-in methods)
from .family import WidthFamily
from .kernels import (
    CATALOGUE,
    analytic_ntk,
    check_spec,
    cntk_gap,
    empirical_ntk,
    kernel_predictor,
    loglog_slope,
    mlp_kernels,
    ntk_jacobian,
    ntk_vector_products,
)
from .layered import empirical_ntk_layers
from .task import IOSpec, NtkConfig, NtkMethod, NtkTask, audit_kernel

__all__ = [
    "CATALOGUE",
    "IOSpec",
    "NtkConfig",
    "NtkMethod",
    "NtkTask",
    "WidthFamily",
    "analytic_ntk",
    "audit_kernel",
    "check_spec",
    "cntk_gap",
    "empirical_ntk",
    "empirical_ntk_layers",
    "kernel_predictor",
    "loglog_slope",
    "mlp_kernels",
    "ntk_jacobian",
    "ntk_vector_products",
]
