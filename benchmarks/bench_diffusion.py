"""asv benchmarks of the diffusion task: the built-in methods' quick-profile numbers
(``track_*``, seed 0) and the evaluators' speed (``time_*``)."""

from __future__ import annotations

import torch

from dltbench.runner import RunOptions, execute_cell, plan
from dltbench.tasks.diffusion import CosineSchedule, DiffusionTask, MLPDenoiser, ode_nll, vlb_terms

_VERSION = DiffusionTask.version
_CACHE: dict = {}


def _record(method: str, dataset: str):
    key = (method, dataset)
    if key not in _CACHE:
        task = DiffusionTask()
        cell = next(c for c in plan(task, [method], "quick", [0]) if c.config.dataset == dataset)
        _CACHE[key] = execute_cell(cell, RunOptions(device="cpu", in_process=True))
    return _CACHE[key]


class TrackDiffusion:
    """ODE NLL (median: ranked; mean), prior outliers, VLB and each cell's wall time of the
    built-in methods on the quick profile, seed 0 (the nine cells' wall times sum to the run's)."""

    params = (["ddpm", "ddpm-cosine", "v-pred"], ["gmm8", "rings", "digits"])
    param_names = ["method", "dataset"]
    version = _VERSION
    timeout = 600

    def track_ode_nll_bpd(self, method, dataset):
        return _record(method, dataset).metrics["ode_nll_bpd"]

    track_ode_nll_bpd.unit = "bits/dim"

    def track_ode_nll_bpd_median(self, method, dataset):
        return _record(method, dataset).metrics["ode_nll_bpd_median"]

    track_ode_nll_bpd_median.unit = "bits/dim"

    def track_ode_prior_outliers(self, method, dataset):
        return _record(method, dataset).metrics["ode_prior_outliers"]

    track_ode_prior_outliers.unit = "points"

    def track_cell_wall_s(self, method, dataset):
        return _record(method, dataset).wall_time_s

    track_cell_wall_s.unit = "seconds"

    def track_vlb_bpd(self, method, dataset):
        return _record(method, dataset).metrics["vlb_bpd"]

    track_vlb_bpd.unit = "bits/dim"


class TimeEvaluators:
    """ode_nll (exact trace, 2-D) and the VLB (200 steps) on 256 points of an untrained MLP."""

    version = _VERSION

    def setup(self):
        torch.manual_seed(0)
        self.model = MLPDenoiser(2, 128, 3, CosineSchedule(), "v").eval()
        self.x = torch.randn(256, 2, dtype=torch.float64)

    def time_ode_nll_256_points(self):
        ode_nll(self.model, self.x, 1e-4, 1e-4)

    def time_vlb_256_points_200_steps(self):
        vlb_terms(self.model, self.x, None, 200)
