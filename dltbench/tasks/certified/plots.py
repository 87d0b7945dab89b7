"""How ``dltbench report`` draws this task (presentation only: not part of its source hash)."""

from dltbench.report import Bars, Line

PLOTS = [
    Line(
        x="radius", y="certified_accuracy", title="Certified accuracy vs radius",
        xlabel="radius (the row's norm, pixels in [0, 1])", ylabel="certified accuracy (fraction)",
    ),
    Line(
        x="linf_by_dimension.dim", y="linf_by_dimension.acr", xlog=True, ylog=True,
        title="Curse of dimensionality: l-inf ACR vs input dimension",
        xlabel="input dimension d (upsampled digits)", ylabel="l-inf ACR",
        where={"norm": "linf"},
    ),
    Bars(
        metrics=("acr",), title="Average certified radius", ylabel="ACR (the row's norm)",
    ),
]  # fmt: skip
