"""asv benchmarks of the faceid task: leaderboard numbers (track_) and evaluator speed (time_)."""

import numpy as np

from dltbench.runner import score_in_process
from dltbench.tasks.faceid import FaceIDTask, roc, ten_fold_accuracy

METHODS = ["softmax", "center-loss", "sphereface", "cosface", "arcface", "contrastive", "triplet"]


class TrackFaceID:
    """Built-in methods on the quick profile, seed 0: what the leaderboard shows, over commits."""

    params = (METHODS,)
    param_names = ["method"]
    # A new task version changes what the numbers mean: asv starts a new history.
    version = FaceIDTask.version
    timeout = 1800

    def setup_cache(self):
        return {c.method: m for c, m in score_in_process("faceid", METHODS)}

    def track_verification_acc(self, cache, method):
        return cache[method]["verification_acc"]

    track_verification_acc.unit = "fraction"

    def track_tar_at_far_1e3(self, cache, method):
        return cache[method]["tar@far=1e-3"]

    track_tar_at_far_1e3.unit = "fraction"

    def track_adv_acc_linf(self, cache, method):
        return cache[method]["adv_acc_linf"]

    track_adv_acc_linf.unit = "fraction"


class TimeVerification:
    """The 10-fold protocol and the pooled ROC on LFW-sized scores (6000 pairs)."""

    timeout = 120

    def setup(self):
        rng = np.random.default_rng(0)
        self.same = np.tile(np.r_[np.ones(300, bool), np.zeros(300, bool)], 10)
        self.cos = np.clip(rng.normal(np.where(self.same, 0.6, 0.1), 0.2), -1, 1)

    def time_ten_fold_accuracy(self):
        ten_fold_accuracy(self.cos, self.same)

    def time_roc(self):
        roc(self.cos, self.same)
