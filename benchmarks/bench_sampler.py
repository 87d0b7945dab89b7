"""asv benchmarks of the sampler task: leaderboard numbers (track_) and diagnostics/sampler speed (time_)."""

import numpy as np
import torch

from dltbench.oracle import decode, encode
from dltbench.runner import score_in_process
from dltbench.tasks.sampler import SamplerTask, TargetView, diagnose, make_target, samplers
from dltbench.tasks.sampler.targets import Reparameterized

METHODS = ["rwm", "imh", "gibbs", "ula", "mala", "hmc", "sgld"]
TARGETS = [c.target for c in SamplerTask().configs("quick")]


class TrackSampler:
    """Built-in samplers on the quick profile, seed 0: what the leaderboard shows, over commits."""

    params = (METHODS, TARGETS)
    param_names = ["method", "target"]
    # A new task version changes what the numbers mean: asv starts a new history.
    version = SamplerTask.version
    timeout = 1800

    def setup_cache(self):
        return {(c.method, c.config.target): m for c, m in score_in_process("sampler", METHODS)}

    def track_ess_bulk_per_1k_evals(self, cache, method, target):
        return cache[(method, target)]["ess_bulk_per_1k_evals"]

    track_ess_bulk_per_1k_evals.unit = "draws / 1000 evaluations"

    def track_rhat_max(self, cache, method, target):
        return cache[(method, target)]["rhat_max"]

    track_rhat_max.unit = "ratio"


class TimeDiagnostics:
    """ArviZ bulk/tail ESS, R-hat and moment MCSEs of 16 chains x 1000 draws x 10 coordinates."""

    timeout = 120

    def setup(self):
        self.x = np.random.default_rng(0).standard_normal((16, 1000, 10))

    def time_diagnose(self):
        diagnose(self.x, np.zeros(10), np.ones(10))


class TimeSamplers:
    """1000 vectorized iterations, 4 chains, on the 10-d ill-conditioned Gaussian."""

    params = ["rwm", "mala", "hmc"]
    param_names = ["sampler"]
    timeout = 120

    def setup(self, name):
        self.target = TargetView(make_target("ill-gaussian-d10"))
        self.init = torch.zeros(4, 10, dtype=torch.float64)

    def time_sample(self, name):
        getattr(samplers, name)(self.target, self.init, 1000, 0, torch.Generator().manual_seed(0))


class TimeOracleCall:
    """One oracle call as a quick cell pays it, 16 chains' rows: the harness-side joint density
    and gradient of the (reparameterized) target, and the same call's frames through the codec.

    A quick cell makes 1,500 (most samplers) to 15,000 (HMC, Gibbs) such calls in sequence.
    """

    params = TARGETS
    param_names = ["target"]
    timeout = 120

    def setup(self, target):
        t = Reparameterized(make_target(target), torch.Generator().manual_seed(0))
        self.view = TargetView(t)
        self.x = t.init(16, torch.Generator().manual_seed(1))

    def time_log_prob_and_grad(self, target):
        self.view.log_prob_and_grad(self.x)

    def time_codec_round_trip(self, target):
        request = decode(encode(["req", "call", 1, "log_prob_and_grad", [self.x], {}, False]))
        decode(encode(["rep", self.view.log_prob_and_grad(request[4][0])]), refs=True)
