"""asv benchmarks of the certified task: leaderboard numbers (track_) and CERTIFY speed (time_)."""

import dataclasses

import torch

from dltbench.models import MLP
from dltbench.runner import score_in_process
from dltbench.tasks.certified import CertifiedTask, certify_batch

METHODS = ["standard", "gaussian-aug", "consistency", "lipschitz-margin"]
#: The quick profile's settings, as (noise, sigma, norm).
SETTINGS = ["gaussian-0.25-l2", "gaussian-0.5-l2", "gaussian-0.25-linf", "laplace-0.25-l1",
            "uniform-0.25-l1", "brightness-0.2-brightness", "contrast-0.4-contrast",
            "translation-0.5-translation"]  # fmt: skip


class TrackCertified:
    """Built-in methods on the quick profile, seed 0: what the leaderboard shows, over commits."""

    params = (METHODS, SETTINGS)
    param_names = ["method", "setting"]
    # A new task version changes what the numbers mean: asv starts a new history.
    version = CertifiedTask.version
    timeout = 1800

    def setup_cache(self):
        return {
            (c.method, f"{c.config.noise}-{c.config.sigma:g}-{c.config.norm}"): m
            for c, m in score_in_process("certified", METHODS)
        }

    def track_acr(self, cache, method, setting):
        return cache[(method, setting)]["acr"]

    track_acr.unit = "radius (the setting's norm)"

    def track_linf_dim_exponent(self, cache, method, setting):
        return cache[(method, setting)].get("linf_dim_exponent", float("nan"))

    track_linf_dim_exponent.unit = "log-log slope"


class TimeCertify:
    """CERTIFY of 100 digits-shaped points, n0=100, n=1000, with the quick profile's MLP."""

    timeout = 120

    def setup(self):
        torch.manual_seed(0)
        self.model = MLP(64, 10).eval()
        self.x = torch.rand(100, 1, 8, 8)
        self.config = dataclasses.replace(CertifiedTask().configs("quick")[0], n=1000)

    def time_certify_batch(self):
        c = self.config
        certify_batch(
            self.model,
            self.x,
            c.sigma,
            c.n0,
            c.n,
            c.alpha,
            c.batch_size,
            torch.Generator().manual_seed(0),
        )
