"""How ``dltbench report`` draws this task (presentation only: not part of its source hash)."""

from dltbench.report import Bars, Line

PLOTS = [
    Bars(
        metrics=("ess_bulk_per_1k_evals",), ylog=True,
        title="Bulk ESS per 1000 density/gradient evaluations (worst coordinate)",
        ylabel="ESS per 1k evals (log)",
    ),
    Line(
        y="ess_bulk", ylog=True, title="Bulk ESS per coordinate",
        xlabel="coordinate", ylabel="bulk ESS (draws, log)",
    ),
]  # fmt: skip
