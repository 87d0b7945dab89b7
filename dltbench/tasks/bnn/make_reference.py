"""Recompute the reference posterior predictive of the quick settings (long full-batch HMC).

    python -m dltbench.tasks.bnn.make_reference [--chains 8] [--warmup 500] [--draws 2000]

How (stored with the numbers): the sampler task's HMC (identity mass, fixed leapfrog
steps, step adapted to acceptance 0.65 during warm-up, jittered +-10%) on the task's own
posterior, ``chains`` independent chains from N(0, 0.1^2) inits, every ``thin``-th kept draw
used. What is stored is the posterior predictive (mean of softmax over all kept draws of
all chains) on the test and OOD inputs -- not weights -- with its convergence diagnostics:
ArviZ rank-normalized split R-hat and bulk ESS of every predicted probability, and the
"noise floor", the total variation between the predictives of two disjoint halves of the
chains. Writes ``reference_predictive.json`` next to this file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import arviz as az
import numpy as np
import torch

from ... import __version__
from ..sampler.samplers import hmc
from .data import load
from .posterior import BNNPosterior, BNNView
from .settings import SETTINGS

REFERENCE_FILE = Path(__file__).with_name("reference_predictive.json")
QUICK_SETTINGS: tuple[str, ...] = ("moons-gap", "digits")
INIT_SD = 0.1


def hmc_predictive(
    name: str, chains: int, warmup: int, draws: int, thin: int, n_leapfrog: int, seed: int
) -> dict:
    """Run HMC on setting ``name``; per-chain softmax draws on test and OOD inputs, and the run's facts."""
    s = SETTINGS[name]
    d = load(s.dataset, None, s.n_train, s.n_test)
    post = BNNPosterior(s.net, d.x_train, d.y_train, s.prior_sd, name=name)
    gen = torch.Generator().manual_seed(seed)
    init = INIT_SD * torch.randn(chains, post.dim, generator=gen, dtype=torch.float64)
    start = time.perf_counter()
    w = hmc(BNNView(post), init, draws, warmup, gen, n_leapfrog)[:, ::thin]
    seconds = time.perf_counter() - start
    with torch.no_grad():
        flat = w.reshape(-1, post.dim)
        probs = {
            k: torch.cat([torch.softmax(s.net.logits(flat[i : i + 64], x), -1)
                          for i in range(0, len(flat), 64)]).reshape(chains, w.shape[1], len(x), -1)
            for k, x in (("test", d.x_test), ("ood", d.x_ood))
        }  # fmt: skip
    return {"probs": {k: v.numpy() for k, v in probs.items()}, "seconds": seconds, "data": d}


def summarize(probs: np.ndarray) -> dict:
    """Predictive, R-hat/ESS of each probability and the between-halves TV of (chains, draws, n, C) draws."""
    c = probs.shape[0]
    flat = probs.reshape(c, probs.shape[1], -1)
    ds = az.convert_to_dataset({"p": flat})
    rhat = az.rhat(ds, method="rank")["p"].values
    ess = az.ess(ds, method="bulk")["p"].values
    halves = probs[: c // 2].mean((0, 1)), probs[c // 2 :].mean((0, 1))
    return {
        "predictive": probs.mean((0, 1)),
        "rhat_max": float(np.nanmax(rhat)),
        "rhat_frac_below_1.1": float(np.mean(rhat[np.isfinite(rhat)] < 1.1)),
        "rhat_median": float(np.nanmedian(rhat)),
        "ess_bulk_min": float(np.nanmin(ess)),
        "ess_bulk_median": float(np.nanmedian(ess)),
        "tv_between_chain_halves": float(0.5 * np.abs(halves[0] - halves[1]).sum(-1).mean()),
    }


def reference(name: str, chains: int, warmup: int, draws: int, thin: int, n_leapfrog: int,
              seed: int) -> dict:  # fmt: skip
    """The stored entry of setting ``name``: predictives (rounded to 1e-6) and diagnostics."""
    run = hmc_predictive(name, chains, warmup, draws, thin, n_leapfrog, seed)
    entry: dict = {"diagnostics": {}}
    for k, p in run["probs"].items():
        s = summarize(p)
        entry[f"predictive_{k}"] = np.round(s.pop("predictive"), 6).tolist()
        entry["diagnostics"][k] = s
    setting = SETTINGS[name]
    entry["how"] = {
        "sampler": f"dltbench.tasks.sampler.samplers.hmc (identity mass, {n_leapfrog} leapfrog "
        "steps, step adapted to acceptance 0.65 in warm-up, jittered +-10%), full batch",
        "chains": chains, "warmup": warmup, "draws_per_chain": draws, "thin": thin,
        "kept_per_chain": draws // thin if draws % thin == 0 else len(range(0, draws, thin)),
        "init": f"N(0, {INIT_SD}^2) per weight", "seed": seed,
        "network": list(setting.sizes), "prior_sd": setting.prior_sd,
        "n_train": len(run["data"].y_train), "n_test": len(run["data"].y_test),
        "n_ood": len(run["data"].x_ood), "seconds": round(run["seconds"], 1),
        "diagnostics": "arviz rhat(method='rank') and ess(method='bulk') of every predicted "
        "probability (point x class); tv_between_chain_halves: TV of the predictives of "
        "chains [0, c/2) and [c/2, c) (the reference's own Monte Carlo noise, roughly)",
    }  # fmt: skip
    return entry


def load_reference(name: str) -> dict | None:
    """The stored reference of setting ``name`` (predictive_test, predictive_ood, diagnostics), or None."""
    if not REFERENCE_FILE.exists():
        return None
    return json.loads(REFERENCE_FILE.read_text()).get("settings", {}).get(name)


def main(argv: list[str] | None = None) -> None:
    """Recompute the reference of each quick setting and write it next to this file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=list(QUICK_SETTINGS))
    ap.add_argument("--chains", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--thin", type=int, default=10)
    ap.add_argument("--leapfrog", type=int, default=10)
    ap.add_argument("--seed", type=int, default=12345)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    old = json.loads(REFERENCE_FILE.read_text()) if REFERENCE_FILE.exists() else {}
    out = {
        "made": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "dltbench_version": __version__,
        "torch_version": torch.__version__,
        "settings": old.get("settings", {}),
    }
    for name in a.settings:
        out["settings"][name] = reference(
            name, a.chains, a.warmup, a.draws, a.thin, a.leapfrog, a.seed
        )
        print(name, json.dumps(out["settings"][name]["diagnostics"]), flush=True)
    REFERENCE_FILE.write_text(json.dumps(out, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
