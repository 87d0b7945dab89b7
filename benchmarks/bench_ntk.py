"""asv benchmarks of the ntk task: the built-ins' exponents (track_) and NTK speed (time_)."""

import torch
from torch import nn
from torch.func import functional_call

from dltbench.runner import score_in_process
from dltbench.tasks.ntk import NtkTask, empirical_ntk, empirical_ntk_layers

METHODS = ["relu-ntk-d1", "relu-ntk-d2", "relu-ntk-d3", "relu-standard", "erf-ntk", "cnn-gap",
           "mup-mlp"]  # fmt: skip
DATASETS = ["digits-sphere", "synthetic-sphere"]


class TrackNtk:
    """Built-in methods on the quick profile, seed 0: what the leaderboard shows, over commits."""

    params = (METHODS, DATASETS)
    param_names = ["method", "dataset"]
    version = NtkTask.version
    timeout = 3600

    def setup_cache(self):
        return {(c.method, c.config.dataset): m for c, m in score_in_process("ntk", METHODS)}

    def track_drift_exponent(self, cache, method, dataset):
        return cache[(method, dataset)]["drift_exponent"]

    track_drift_exponent.unit = "log-log slope"

    def track_gap_lin_exponent(self, cache, method, dataset):
        return cache[(method, dataset)]["gap_lin_exponent"]

    track_gap_lin_exponent.unit = "log-log slope"

    def track_drift_at_max_width(self, cache, method, dataset):
        return cache[(method, dataset)]["drift_at_max_width"]

    track_drift_at_max_width.unit = "relative Frobenius"


class TimeEmpiricalNtk:
    """Empirical NTK of a 64-256-256-1 MLP on 128 points (float64), Jacobian contraction."""

    timeout = 300

    def setup(self):
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                                 nn.Linear(256, 1)).double()  # fmt: skip
        self.names = [n for n, _ in self.net.named_parameters()]
        self.params = tuple(p.detach() for p in self.net.parameters())
        self.x = torch.randn(128, 64, dtype=torch.float64)

    def f(self, ps, x):
        return functional_call(self.net, dict(zip(self.names, ps, strict=True)), (x,))

    def time_empirical_ntk(self):
        empirical_ntk(self.f, self.params, self.x, impl="jacobian")

    def time_empirical_ntk_layers(self):
        """The same kernel, nn.Linear layers in closed form (the task's path)."""
        empirical_ntk_layers(self.net, None, self.x)
