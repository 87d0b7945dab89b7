"""How ``dltbench report`` draws this task (presentation only: not part of its source hash)."""

from dltbench.report import Bars, ImageGrid, Points

PLOTS = [
    Bars(
        metrics=("ode_nll_bpd_trim10", "vlb_bpd", "true_nll_bpd"),
        labels=("ODE NLL (10% trimmed mean)", "VLB", "true NLL"),
        title="Bits per dimension per method", ylabel="bits/dim",
    ),
    Bars(metrics=("ddim_mmd2", "ddpm_mmd2"), labels=("DDIM", "DDPM"),
         title="Sample MMD² to the test set", ylabel="MMD²"),
    Points(key="samples.ddim", title="DDIM samples", where={"dataset": ("gmm8", "rings")}),
    ImageGrid(
        key="samples.ddim", shape=(8, 8), value_range=(0, 16), title="DDIM samples",
        where={"dataset": "digits"},
    ),
    ImageGrid(
        key="samples.ddpm", shape=(8, 8), value_range=(0, 16), title="DDPM samples",
        where={"dataset": "digits"},
    ),
]  # fmt: skip
