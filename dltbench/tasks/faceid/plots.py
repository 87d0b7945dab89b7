"""How ``dltbench report`` draws this task (presentation only: not part of its source hash)."""

from dltbench.report import Bars, Line

PLOTS = [
    Line(
        x="roc.far", y="roc.tar", xlog=True, title="ROC on unseen identities",
        xlabel="false accept rate", ylabel="true accept rate",
    ),
    Bars(metrics=("verification_acc",), title="10-fold verification accuracy",
         ylabel="accuracy"),
    Bars(metrics=("adv_acc_linf", "adv_acc_l2", "adv_acc_glasses"),
         labels=("l-inf", "l2", "eyeglass mask"), title="Verification accuracy under attack",
         ylabel="accuracy"),
    Bars(metrics=("nc1",), title="Neural collapse NC1 (training identities)", ylabel="NC1"),
]  # fmt: skip
