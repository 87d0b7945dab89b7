"""How ``dltbench report`` draws this task (presentation only: not part of its source hash)."""

from dltbench.report import Bars, Scatter

PLOTS = [
    Bars(metrics=("tv_to_reference", "ood_tv_to_reference"), labels=("test", "shifted"),
         title="Total variation to the HMC reference predictive", ylabel="TV (lower is better)"),
    Scatter(x="evals", y="tv_to_reference", xlog=True, title="Agreement against cost",
            xlabel="gradient evaluations (data-point units)", ylabel="TV to reference"),
    Bars(metrics=("ece", "brier"), title="Calibration", ylabel="ECE, Brier"),
]  # fmt: skip
