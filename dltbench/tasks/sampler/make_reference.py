"""Recompute the reference posterior moments of the logistic-regression targets.

    python -m dltbench.tasks.sampler.make_reference [--draws 20000] [--chains 16]

How (stored with the numbers, as posteriordb does): our HMC (identity mass, fixed
leapfrog steps, step adapted to acceptance 0.65 in warm-up), which the tests validate
against exact Gaussian moments, run long with many chains from Stan's inits; then an
independent MALA run of the same length cross-checks every moment (max |z| reported).
The reference's own Monte Carlo standard errors are stored and added in quadrature to
a sampler's MCSE when it is scored. Writes ``reference_moments.json`` next to this file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time

import numpy as np
import torch

from ... import __version__
from .catalog import make_target
from .diagnostics import ess_bulk, mcse_mean, moment_z, rhat
from .samplers import hmc, mala
from .targets import _REFERENCE_FILE, TargetView

LOGREG_TARGETS: tuple[str, ...] = ("logreg-iris", "logreg-cancer")


def reference_moments(
    name: str, draws: int, chains: int, warmup: int, n_leapfrog: int, seed: int
) -> dict:
    """Long-run HMC moments of target ``name`` with their MCSEs and a MALA cross-check."""
    target = make_target(name)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    x = hmc(TargetView(target), target.init(chains, gen), draws, warmup, gen, n_leapfrog).numpy()
    seconds = time.perf_counter() - start
    mean = x.mean(axis=(0, 1))
    sq = (x - mean) ** 2
    check = mala(TargetView(target), target.init(chains, gen), draws, warmup, gen).numpy()
    z = moment_z(check, mean, sq.mean(axis=(0, 1)), mcse_mean(x), mcse_mean(sq))
    return {
        "mean": mean.tolist(),
        "var": sq.mean(axis=(0, 1)).tolist(),
        "mean_mcse": mcse_mean(x).tolist(),
        "var_mcse": mcse_mean(sq).tolist(),
        "ess_bulk_min": float(ess_bulk(x).min()),
        "rhat_max": float(rhat(x).max()),
        "cross_check": {
            "sampler": "mala (step adapted to 0.574), same draws/chains/warm-up",
            "max_abs_z_mean": float(np.abs(z["z_mean"]).max()),
            "max_abs_z_var": float(np.abs(z["z_var"]).max()),
            "rhat_max": float(rhat(check).max()),
        },
        "how": {
            "sampler": f"dltbench.tasks.sampler.samplers.hmc (identity mass, {n_leapfrog} leapfrog "
            "steps, step adapted to acceptance 0.65, jittered +-10%)",
            "chains": chains, "draws_per_chain": draws, "warmup_per_chain": warmup, "seed": seed,
            "init": "uniform(-2, 2) per coordinate (Stan)", "seconds": round(seconds, 1),
            "variance": "mean over draws of (x - reference mean)^2",
            "mcse": "arviz.mcse(method='mean') of x and of (x - mean)^2",
            "dltbench_version": __version__,
            "created": dt.date.today().isoformat(),
        },
        "model": "logistic regression, z-scored features plus intercept, prior N(0, 1) on all",
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Recompute and write ``reference_moments.json``."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--targets", nargs="+", default=list(LOGREG_TARGETS))
    p.add_argument("--draws", type=int, default=20_000)
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2_000)
    p.add_argument("--n-leapfrog", type=int, default=10)
    p.add_argument("--seed", type=int, default=20240601)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    store = json.loads(_REFERENCE_FILE.read_text()) if _REFERENCE_FILE.exists() else {}
    store["about"] = (
        "Reference posterior moments of the sampler task's logistic regressions; see make_reference.py."
    )
    store.setdefault("targets", {})
    for name in args.targets:
        ref = reference_moments(
            name, args.draws, args.chains, args.warmup, args.n_leapfrog, args.seed
        )
        store["targets"][name] = ref
        print(f"{name}: rhat_max={ref['rhat_max']:.4f} ess_bulk_min={ref['ess_bulk_min']:.0f} "
              f"cross-check max|z| mean={ref['cross_check']['max_abs_z_mean']:.2f} "
              f"var={ref['cross_check']['max_abs_z_var']:.2f} ({ref['how']['seconds']}s)")  # fmt: skip
        _REFERENCE_FILE.write_text(json.dumps(store, indent=1) + "\n")


if __name__ == "__main__":
    main()
