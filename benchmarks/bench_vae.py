"""asv benchmarks of the vae task: built-in methods' numbers (track_*) and evaluator speed (time_*).

track_*: the quick profile, seed 0, every built-in method run once in setup_cache; the
history resets (``.version``) when the task's version, and so the meaning of the numbers,
changes. time_*: the IWAE bound and the ELBO on binarized 8x8 test digits.
"""

from __future__ import annotations

import torch

from dltbench import registry
from dltbench.runner import score_in_process
from dltbench.tasks.vae import MLPVAE, elbo, iwae_bound, load_binary

TASK = registry.get_task("vae")
METHODS = ["vae", "beta-vae", "iwae", "cvae", "ae"]
LIKELIHOOD_METHODS = [m for m in METHODS if m != "ae"]


def _run_quick():
    return {c.method: m for c, m in score_in_process("vae", METHODS)}


class TrackQuick:
    """Leaderboard metrics of the built-in methods, quick profile, seed 0."""

    version = f"vae-task-{TASK.version}"
    timeout = 1800

    def setup_cache(self):
        return _run_quick()

    def track_iwae_nats(self, metrics, method):
        return metrics[method]["iwae"]

    track_iwae_nats.params = LIKELIHOOD_METHODS
    track_iwae_nats.param_names = ["method"]
    track_iwae_nats.unit = "nats/example"
    track_iwae_nats.version = version

    def track_nll_bits_per_dim(self, metrics, method):
        return metrics[method]["nll_bpd"]

    track_nll_bits_per_dim.params = LIKELIHOOD_METHODS
    track_nll_bits_per_dim.param_names = ["method"]
    track_nll_bits_per_dim.unit = "bits/dim"
    track_nll_bits_per_dim.version = version

    def track_active_units(self, metrics, method):
        return metrics[method]["active_units"]

    track_active_units.params = LIKELIHOOD_METHODS
    track_active_units.param_names = ["method"]
    track_active_units.unit = "count"
    track_active_units.version = version

    def track_recon_nll(self, metrics, method):
        return metrics[method]["recon_nll"]

    track_recon_nll.params = METHODS
    track_recon_nll.param_names = ["method"]
    track_recon_nll.unit = "nats/example"
    track_recon_nll.version = version


class TimeBounds:
    """The evaluator's hot path: IWAE with K importance samples on 135 test points.

    A quarter of the 540 test digits: at K=1000 the whole set took seconds per call on 2
    cores, and asv's repeats ran past its 60 s default.
    """

    params = ([100, 1000], [20, 200])
    param_names = ["k", "k_chunk"]
    timeout = 180
    repeat = (1, 5, 20.0)

    def setup(self, k, k_chunk):
        torch.manual_seed(0)
        self.model = MLPVAE(64, 8, (128,)).eval()
        self.x = load_binary("digits").test.x[:135]

    def time_iwae_bound(self, k, k_chunk):
        iwae_bound(self.model, self.x, k, generator=torch.Generator().manual_seed(0), k_chunk=k_chunk,
                   batch_size=len(self.x))  # fmt: skip


class TimeElbo:
    """The ELBO with 10 draws per point on the 540 test points."""

    timeout = 120

    def setup(self):
        torch.manual_seed(0)
        self.model = MLPVAE(64, 8, (128,)).eval()
        self.x = load_binary("digits").test.x

    def time_elbo_10_samples(self):
        elbo(self.model, self.x, n_samples=10, generator=torch.Generator().manual_seed(0))
