"""asv benchmarks of the diffusion task: the built-in methods' quick-profile numbers
(``track_*``, seed 0) and the evaluators' speed (``time_*``)."""

from __future__ import annotations

import torch

from dltbench.runner import score_in_process
from dltbench.tasks.diffusion import CosineSchedule, DiffusionTask, MLPDenoiser, ode_nll, vlb_terms

_VERSION = DiffusionTask.version
METHODS = ["ddpm", "ddpm-cosine", "v-pred"]


class TrackDiffusion:
    """ODE NLL (mean; median), prior outliers, VLB, and on digits the DDIM samples' FID and the
    classifier-free-guided samples' class accuracy at w = 2, of the built-in methods on the
    quick profile, seed 0 (the run's wall time is tracked by bench_quick_runs)."""

    params = (METHODS, ["gmm8", "rings", "digits"])
    param_names = ["method", "dataset"]
    version = _VERSION
    # The 9 quick cells are minutes on 2 cores (the committed records: ~500 s for seed 0);
    # setup_cache runs them once for both track_ functions.
    timeout = 1800

    def setup_cache(self):
        return {(c.method, c.config.dataset): m for c, m in score_in_process("diffusion", METHODS)}

    def track_ode_nll_bpd(self, cache, method, dataset):
        return cache[(method, dataset)]["ode_nll_bpd"]

    track_ode_nll_bpd.unit = "bits/dim"

    def track_ode_nll_bpd_median(self, cache, method, dataset):
        return cache[(method, dataset)]["ode_nll_bpd_median"]

    track_ode_nll_bpd_median.unit = "bits/dim"

    def track_ode_prior_outliers(self, cache, method, dataset):
        return cache[(method, dataset)]["ode_prior_outliers"]

    track_ode_prior_outliers.unit = "points"

    def track_vlb_bpd(self, cache, method, dataset):
        return cache[(method, dataset)]["vlb_bpd"]

    track_vlb_bpd.unit = "bits/dim"

    def track_ddim_fid(self, cache, method, dataset):
        return cache[(method, dataset)].get("ddim_fid", float("nan"))  # digits only

    track_ddim_fid.unit = "FID (digits-cnn64, N = 300)"

    def track_cfg_class_acc(self, cache, method, dataset):
        return cache[(method, dataset)].get("cfg_class_acc", float("nan"))  # digits only

    track_cfg_class_acc.unit = "fraction"


class TimeEvaluators:
    """ode_nll (exact trace, 2-D) and the VLB (200 steps) on 256 points of an untrained MLP."""

    version = _VERSION
    timeout = 120

    def setup(self):
        torch.manual_seed(0)
        self.model = MLPDenoiser(2, 128, 3, CosineSchedule(), "v").eval()
        self.x = torch.randn(256, 2, dtype=torch.float64)

    def time_ode_nll_256_points(self):
        ode_nll(self.model, self.x, 1e-4, 1e-4)

    def time_vlb_256_points_200_steps(self):
        vlb_terms(self.model, self.x, None, 200)

    def time_vlb_256_points_1000_steps_100_strata(self):
        vlb_terms(self.model, self.x, None, 1000, strata=100)
