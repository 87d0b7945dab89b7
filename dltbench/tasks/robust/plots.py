"""How ``dltbench report`` draws the ``robust`` and ``attack`` tasks (presentation only: not
part of their source hash)."""

from dltbench.report import Bars, Line, Scatter

PLOTS = {
    "robust": [
        Line(
            x="eps_curve.eps", y="eps_curve.pgd_acc", title="PGD accuracy vs eps",
            xlabel="eps (attack radius)", ylabel="accuracy under PGD (fraction)",
        ),
        Bars(
            metrics=("clean_acc", "acc_apgd-ce", "acc_apgd-t", "acc_square", "robust_acc"),
            labels=("clean", "APGD-CE", "APGD-T", "Square", "ensemble"),
            title="Accuracy per attack", ylabel="accuracy (fraction)",
        ),
    ],
    "attack": [
        Bars(
            metrics=("robust_acc_standard", "robust_acc_pgd-at"),
            labels=("standard defense", "PGD-AT defense"),
            title="Robust accuracy left per reference defense (lower: stronger attack)",
            ylabel="robust accuracy (fraction)",
        ),
        Scatter(
            x="forwards_per_point", y="robust_acc", xlog=True,
            title="Strength vs cost", xlabel="forward passes per point (log)",
            ylabel="robust accuracy left (fraction)",
        ),
    ],
}  # fmt: skip
