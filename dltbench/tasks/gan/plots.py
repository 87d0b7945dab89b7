"""How ``dltbench report`` draws this task (presentation only: not part of its source hash)."""

from dltbench.report import Bars, Line

PLOTS = [
    Line(
        x="fid_by_n.n", y="fid_by_n.fid", xlog=True, title="FID against sample size N",
        xlabel="samples N", ylabel="Frechet distance (the row's feature net)",
    ),
    Bars(metrics=("distance",), title="Primary distance (W2 on 2-D, FID on images)",
         ylabel="distance (lower is better)"),
    Bars(metrics=("precision", "recall", "coverage"), title="Precision, recall, coverage",
         ylabel="fraction"),
    Bars(metrics=("modes",), title="Modes covered", ylabel="modes"),
]  # fmt: skip
