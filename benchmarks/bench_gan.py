"""asv benchmarks of the gan task: leaderboard numbers (track_) and Frechet-distance speed (time_)."""

import numpy as np

from dltbench.runner import score_in_process
from dltbench.tasks.gan import GanTask, feature_statistics, frechet_distance

METHODS = ["gan", "dcgan", "wgan", "wgan-gp", "cgan", "sngan"]
DATASETS = ["ring8", "grid25", "digits"]


class TrackGan:
    """Built-in methods on the quick profile, seed 0: the primary distance and FID, over commits."""

    params = (METHODS, DATASETS)
    param_names = ["method", "dataset"]
    version = GanTask.version
    timeout = 1800

    def setup_cache(self):
        return {(c.method, c.config.dataset): m for c, m in score_in_process("gan", METHODS)}

    def track_distance(self, cache, method, dataset):
        return cache[(method, dataset)]["distance"]

    track_distance.unit = "FID (digits) / W2 (2-D)"

    def track_fid(self, cache, method, dataset):
        return cache[(method, dataset)]["fid"]

    track_fid.unit = "feature units^2"


class TimeFrechet:
    """Frechet distance of two 512-d statistics (float64, Cholesky-based)."""

    timeout = 120

    def setup(self):
        rng = np.random.default_rng(0)
        self.a = feature_statistics(rng.normal(size=(2000, 512)))
        self.b = feature_statistics(rng.normal(size=(2000, 512)) + 0.1)

    def time_frechet_distance(self):
        frechet_distance(*self.a, *self.b)
