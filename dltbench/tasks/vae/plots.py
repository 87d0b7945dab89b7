"""How ``dltbench report`` draws this task (presentation only: not part of its source hash)."""

from dltbench.report import Bars, Line

PLOTS = [
    Bars(
        metrics=("nll_bpd", "elbo_bpd"), labels=("NLL (IWAE bound)", "negative ELBO"),
        title="Bits per dimension per method", ylabel="bits/dim",
    ),
    Line(
        x="iwae_by_k.k", y="iwae_by_k.iwae", xlog=True,
        title="IWAE bound vs number of importance samples k",
        xlabel="k (log)", ylabel="IWAE bound (nats per image)",
    ),
    Line(
        y="unit_variance", ylog=True, title="Posterior variance per latent unit (activity)",
        xlabel="latent unit", ylabel="Var_x E_q[z|x] (log)",
    ),
]  # fmt: skip
