"""asv benchmarks of the robust and attack tasks: leaderboard numbers (track_) and evaluator speed (time_)."""

import torch

from dltbench import registry
from dltbench.models import SmallCNN
from dltbench.runner import RunOptions, execute_cell, plan, score_in_process
from dltbench.tasks.robust import AttackTask, RobustTask, default_ensemble, pgd, robust_accuracy
from dltbench.tasks.robust.sparse import sparse_rs

DEFENSES = ["standard", "fgsm-at", "pgd-at", "trades"]
NORMS = ["linf", "l2", "l0", "patch", "physical-linf"]
ATTACKS = ["fgsm", "pgd", "apgd-ce", "apgd-t", "cw", "square", "sparse-rs", "universal", "eot-pgd"]


def _run(task_name, methods):
    return {(c.method, c.config.norm): m for c, m in score_in_process(task_name, methods)}


def _run_attacks(methods):
    """Each attack on the threat models it declares (the others would end ``invalid``)."""
    registry.discover("attack")
    task = registry.get_task("attack")
    out = {}
    for cell in plan(task, methods, "quick", [0]):
        if cell.config.norm not in registry.get_method_class("attack", cell.method).norms:
            continue
        r = execute_cell(cell, RunOptions(device="cpu", in_process=True))
        if r.status != "ok":
            raise RuntimeError(f"{cell.label(task)}: {r.status}: {r.error}")
        out[(cell.method, cell.config.norm)] = r.metrics
    return out


class TrackRobust:
    """Built-in defenses on the quick profile, seed 0: what the defense leaderboard shows."""

    params = (DEFENSES, NORMS)
    param_names = ["method", "norm"]
    version = RobustTask.version  # a new task version starts a new history
    timeout = 1800

    def setup_cache(self):
        return _run("robust", DEFENSES)

    def track_robust_acc(self, cache, method, norm):
        return cache[(method, norm)]["robust_acc"]

    track_robust_acc.unit = "fraction"

    def track_clean_acc(self, cache, method, norm):
        return cache[(method, norm)]["clean_acc"]

    track_clean_acc.unit = "fraction"

    def track_robust_top3_acc(self, cache, method, norm):
        return cache[(method, norm)]["robust_top3_acc"]

    track_robust_top3_acc.unit = "fraction"

    def track_uap_fooling_rate(self, cache, method, norm):
        # NaN on physical rows: no universal perturbation there
        return cache[(method, norm)].get("uap_fooling_rate", float("nan"))

    track_uap_fooling_rate.unit = "fraction"

    def track_uap_transfer_acc(self, cache, method, norm):
        # NaN for the reference defenses at seed 0 (their sources are themselves) and on
        # physical rows
        return cache[(method, norm)].get("uap_transfer_acc", float("nan"))

    track_uap_transfer_acc.unit = "fraction"


class TrackAttack:
    """Built-in attacks on the quick profile, seed 0: robust accuracy left on the reference defenses."""

    params = (ATTACKS, NORMS)
    param_names = ["method", "norm"]
    version = AttackTask.version
    timeout = 3600

    def setup_cache(self):
        return _run_attacks(self.params[0])

    def track_robust_acc(self, cache, method, norm):
        # NaN where the attack does not define the threat model (asv shows no point)
        return cache.get((method, norm), {}).get("robust_acc", float("nan"))

    track_robust_acc.unit = "fraction"


class TimeEvaluator:
    """PGD (l_inf, 10 steps) and the quick ensemble on 50 digits-shaped points, CPU.

    Sized for 2 cores: the ensemble is seconds per call, so asv takes at most 3 samples.
    """

    timeout = 180
    repeat = (1, 3, 20.0)  # (min, max samples, seconds): asv's default 10 samples outran 60 s

    def setup(self):
        torch.manual_seed(0)
        self.model = SmallCNN(1, 10, side=8).eval()
        self.x = torch.rand(50, 1, 8, 8)
        with torch.no_grad():
            self.y = self.model(self.x).argmax(1)

    def time_pgd_linf_10(self):
        pgd(self.model, self.x, self.y, 0.1, "linf", torch.Generator().manual_seed(0), steps=10)

    def time_ensemble_patch_quick(self):
        robust_accuracy(
            self.model, self.x, self.y, 4, "patch", default_ensemble(25, norm="patch"),
            torch.Generator().manual_seed(0),
        )  # fmt: skip

    def time_sparse_rs_l0_300(self):
        sparse_rs(self.model, self.x, self.y, 2, "l0", torch.Generator().manual_seed(0), 300)

    def time_ensemble_quick(self):
        robust_accuracy(
            self.model, self.x, self.y, 0.1, "linf", default_ensemble(25, 3, 300, True),
            torch.Generator().manual_seed(0),
        )  # fmt: skip
