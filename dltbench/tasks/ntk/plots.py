"""How ``dltbench report`` draws this task (presentation only: not part of its source hash)."""

from dltbench.report import Bars, Line

PLOTS = [
    Line(x="width", y="drift", xlog=True, ylog=True, title="Kernel drift against width",
         xlabel="width", ylabel="||K_T - K_0||_F / ||K_0||_F"),
    Line(x="width", y="gap_ntk0", xlog=True, ylog=True,
         title="Output gap to the K_0 kernel predictor against width", xlabel="width",
         ylabel="RMS gap on test points"),
    Line(x="width", y="net_test_acc", xlog=True, title="Trained network test accuracy",
         xlabel="width", ylabel="accuracy"),
    Bars(metrics=("drift_exponent", "gap_ntk0_exponent"), labels=("drift", "gap to K_0"),
         title="Fitted exponents against width", ylabel="log-log slope"),
]  # fmt: skip
