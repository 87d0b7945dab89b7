"""How ``dltbench report`` draws this task (presentation only: not part of its source hash)."""

from dltbench.report import Bars, Line

PLOTS = [
    Line(
        x="radius", y="certified_accuracy", title="Certified accuracy vs l2 radius",
        xlabel="l2 radius", ylabel="certified accuracy (fraction)",
    ),
    Bars(
        metrics=("acr",), title="Average certified radius", ylabel="ACR (l2 radius)",
    ),
]  # fmt: skip
