"""asv benchmarks of the bnn task: leaderboard numbers (track_) and the harness's hot paths (time_)."""

import torch

from dltbench.runner import score_in_process
from dltbench.tasks.bnn import SETTINGS, BNNPosterior, BNNTask, load_data

METHODS = ["map", "ensemble", "mfvi", "mc-dropout", "laplace", "sgld", "hmc"]
DATASETS = [c.dataset for c in BNNTask().configs("quick")]


class TrackBNN:
    """Built-ins on the quick profile, seed 0: what the leaderboard shows, over commits."""

    params = (METHODS, DATASETS)
    param_names = ["method", "dataset"]
    # A new task version changes what the numbers mean: asv starts a new history.
    version = BNNTask.version
    timeout = 1800

    def setup_cache(self):
        return {(c.method, c.config.dataset): m for c, m in score_in_process("bnn", METHODS)}

    def track_tv_to_reference(self, cache, method, dataset):
        return cache[(method, dataset)]["tv_to_reference"]

    track_tv_to_reference.unit = "fraction"

    def track_test_lpd(self, cache, method, dataset):
        return cache[(method, dataset)]["test_lpd"]

    track_test_lpd.unit = "nats / point"


class TimePosterior:
    """One full-batch log-posterior gradient of 4 weight rows, and 100 samples' predictive."""

    params = DATASETS
    param_names = ["dataset"]
    timeout = 120

    def setup(self, dataset):
        s = SETTINGS[dataset]
        d = load_data(s.dataset)
        self.post = BNNPosterior(s.net, d.x_train, d.y_train, s.prior_sd)
        self.w = 0.1 * torch.randn(4, self.post.dim, dtype=torch.float64)
        self.samples = 0.1 * torch.randn(100, self.post.dim, dtype=torch.float64)
        self.x, self.net = d.x_test, s.net

    def time_grad(self, dataset):
        self.post.log_prob_and_grad(self.w)

    def time_predictive(self, dataset):
        self.net.predictive(self.samples, self.x)
