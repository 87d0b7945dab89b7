"""asv benchmarks of the certified task: leaderboard numbers (track_) and CERTIFY speed (time_)."""

import dataclasses

import torch

from dltbench.models import MLP
from dltbench.runner import score_in_process
from dltbench.tasks.certified import CertifiedTask, certify_batch

METHODS = ["standard", "gaussian-aug", "consistency"]
SIGMAS = [0.25, 0.5]


class TrackCertified:
    """Built-in methods on the quick profile, seed 0: what the leaderboard shows, over commits."""

    params = (METHODS, SIGMAS)
    param_names = ["method", "sigma"]
    # A new task version changes what the numbers mean: asv starts a new history.
    version = CertifiedTask.version
    timeout = 1800

    def setup_cache(self):
        return {(c.method, c.config.sigma): m for c, m in score_in_process("certified", METHODS)}

    def track_acr(self, cache, method, sigma):
        return cache[(method, sigma)]["acr"]

    track_acr.unit = "l2 radius"

    def track_certified_acc_050(self, cache, method, sigma):
        return cache[(method, sigma)]["certified_acc@0.5"]

    track_certified_acc_050.unit = "fraction"


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
