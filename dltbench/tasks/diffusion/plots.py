"""How ``dltbench report`` draws this task (presentation only: not part of its source hash)."""

from dltbench.report import Bars, ImageGrid, Line, Points

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
    Bars(metrics=("ddim_fid", "ddpm_fid", "fid_real"), labels=("DDIM", "DDPM", "training images"),
         title="FID to the test split (digits-cnn64 features)", ylabel="FID",
         where={"dataset": "digits"}),
    Line(y="guidance.cfg_fid", x="guidance.w", title="Classifier-free guidance: FID against w",
         xlabel="guidance scale w (0 = unguided, 1 = conditional)", ylabel="FID",
         where={"dataset": "digits"}),
    Line(y="guidance.cfg_class_acc", x="guidance.w", title="Classifier-free guidance: class accuracy",
         xlabel="guidance scale w", ylabel="fraction classified as the asked class",
         where={"dataset": "digits"}),
    Line(y="guidance.cg_fid", x="guidance.w", title="Classifier guidance: FID against w",
         xlabel="guidance scale w (harness classifier)", ylabel="FID", where={"dataset": "digits"}),
    Line(y="guidance.cg_class_acc", x="guidance.w", title="Classifier guidance: class accuracy",
         xlabel="guidance scale w", ylabel="fraction classified as the asked class",
         where={"dataset": "digits"}),
    ImageGrid(key="guidance.cfg_samples", shape=(8, 8), value_range=(0, 16),
              title="Classifier-free guided samples (w = 2; rows cycle through the classes)",
              where={"dataset": "digits"}),
]  # fmt: skip
