"""The ``sampler`` task: MCMC samplers scored by ESS, R-hat and moment errors on known targets."""

from __future__ import annotations

import dataclasses
import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ...api import Context, Evaluation, InvalidArtifact, Method, MetricSpec, Task, profile_entry
from ...oracle import Exposed
from ...registry import register_task
from .catalog import make_target
from .diagnostics import RHAT_MAX, TAIL_PROB, diagnose
from .ranking import eligibility
from .targets import DTYPE, LEDGER, Reparameterized, Target, TargetView, evaluation_cost


@dataclass(frozen=True)
class SamplerConfig:
    """One cell's setting: the target (its name fixes family and dimension) and the run size."""

    target: str
    n_chains: int
    n_draws: int  # kept draws per chain; warm-up is the method's own and is counted


_PROFILES = {
    "quick": dict(targets=("gaussian-d10", "ill-gaussian-d10", "funnel-d10", "banana-d2",
                           "mixture-d2", "logreg-iris"), n_chains=32, n_draws=1000),
    "standard": dict(targets=("gaussian-d100", "ill-gaussian-d100", "funnel-d10", "banana-d10",
                              "mixture-d10", "logreg-cancer"), n_chains=4, n_draws=10_000),
    "paper": dict(targets=("gaussian-d1000", "ill-gaussian-d1000", "funnel-d100", "banana-d100",
                           "mixture-d100", "logreg-cancer"), n_chains=4, n_draws=50_000),
}  # fmt: skip
# quick: 32 chains x 1000 draws (version 3; version 2 had 16 x 1000, version 1 4 x 2000).
# A cell's time is its sequential steps, one oracle round trip each whatever the number of
# chains in the batch, so the chain length sets the time (HMC and Gibbs: 15,000 round trips
# per cell) and the chains are nearly free. The ranking gate (split R-hat < 1.01, ESS > 100
# per chain) needs roughly 50 effective draws per half chain: more draws per chain would rank
# more rows but cost time; more chains shrink the seed spread of ESS and of the gate's
# statistics, so rows near the threshold pass on every seed (docs/tasks/sampler.md).


class SamplerMethod(Method):
    """Protocol of a ``sampler`` method: draw from a target given only its counted view."""

    #: Target capabilities the sampler needs ("conditionals", "minibatch"); others are not applicable.
    requires: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def sample(
        self,
        target: TargetView,
        n_draws: int,
        n_chains: int,
        init: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Return draws of shape (n_chains, n_draws, target.dim) starting from ``init`` (n_chains, dim).

        ``target`` gives ``log_prob``, ``grad_log_prob``, ``log_prob_and_grad`` (batched
        over rows) and, where its ``capabilities`` say so, ``conditional`` and
        ``minibatch_grad``; every call is counted by the harness. Warm-up and tuning
        are yours and count too. ``generator`` lives on ``target.device``.
        """


@dataclass
class SamplerRun:
    """What ``fit`` hands the evaluator: the draws and the harness's own cost accounting."""

    draws: Any
    counts: dict[str, float]
    seconds: float
    not_applicable: str | None = None


@dataclass
class SamplerData:
    """The harness-owned target and the init it drew for this cell."""

    target: Target
    init: torch.Tensor


def _metric(name, up, unit, text):
    return MetricSpec(name, up, unit, text)


@register_task
class SamplerTask(Task):
    """MCMC samplers on targets with known moments: bulk/tail ESS, split R-hat, cost, moment errors."""

    name = "sampler"
    version = "3"
    description = (
        "MCMC samplers scored by ESS per evaluation, R-hat and moment errors (Vehtari et al. 2021)"
    )
    method_type = SamplerMethod
    protocol = "sample"
    primary_metric = "ess_bulk_per_1k_evals"
    setting_keys = ("target",)
    artifact_kind = "value"
    metrics = (
        _metric("ess_bulk_per_1k_evals", True, "draws / 1000 evaluations",
                "min over coordinates of bulk-ESS per 1000 target evaluations (warm-up counted)"),
        _metric("ess_bulk_min", True, "draws", "min over coordinates of bulk-ESS (arviz, rank-normalized)"),
        _metric("ess_tail_min", True, "draws", "min over coordinates of tail-ESS at the 5%/95% quantiles"),
        _metric("ess_bulk_per_s", True, "draws / s", "min bulk-ESS per second of sampler wall time"),
        _metric("rhat_max", False, "ratio", "max over coordinates of rank-normalized split R-hat"),
        _metric("mean_z_max", False, "MCSE", "max |mean error| over coordinates, in MCSE units"),
        _metric("var_z_max", False, "MCSE", "max |variance error| over coordinates, in MCSE units"),
        _metric("acceptance_rate", None, "fraction",
                "fraction of transitions that moved (the MH acceptance rate; 1 if rejection-free)"),
        _metric("evals", False, "evaluations", "density or gradient evaluations, all chains, warm-up included"),
        _metric("seconds", False, "s", "sampler wall time"),
    )  # fmt: skip

    def configs(self, profile: str) -> list[SamplerConfig]:
        """One config per target of ``profile``."""
        p = profile_entry(_PROFILES, profile)
        return [SamplerConfig(t, p["n_chains"], p["n_draws"]) for t in p["targets"]]

    def smoke(self, config: SamplerConfig) -> SamplerConfig:
        """A seconds-long version: 200 draws per chain."""
        return dataclasses.replace(config, n_draws=200)

    def prepare(self, config: SamplerConfig, ctx: Context) -> SamplerData:
        """Build the target on the device and draw the chains' inits from the harness's stream."""
        target = make_target(config.target, ctx.device)
        return SamplerData(target, target.init(config.n_chains, ctx.generator))

    def run_plugin(self, plugin, data: SamplerData, config: SamplerConfig, ctx: Context):
        """Hide the target behind a secret reparameterization, expose it counted, time the run.

        The ledger, the clock and the exact moments stay here; the sampler in the plugin
        process calls the target through the oracle, one counted call per request.
        """
        missing = [c for c in self.method_requires(plugin) if c not in data.target.capabilities]
        if missing:
            why = f"the method needs {', '.join(missing)}, which {config.target} does not provide"
            return SamplerRun(None, {}, 0.0, not_applicable=why)
        data.target = Reparameterized(data.target, ctx.generator)
        data.init = data.target.forward_map(data.init)
        ctx.progress("sample", 0, 1)
        LEDGER.clear()
        threads = torch.get_num_threads()
        # Each step works on (chains, dim) tensors: intra-op threads cost more than they
        # save there, and under CPU contention they make the timings erratic.
        torch.set_num_threads(1)
        try:
            _sync(ctx.device)
            start = time.perf_counter()
            draws = plugin.request("fit", self.train_view(data, config), config)
            _sync(ctx.device)
            seconds = time.perf_counter() - start
        finally:
            torch.set_num_threads(threads)
        counts = dict(LEDGER)  # read before anything else of ours evaluates the target
        ctx.progress("sample", 1, 1)
        return SamplerRun(draws, counts, seconds)

    @staticmethod
    def method_requires(plugin) -> tuple[str, ...]:
        """The capabilities the cell's method declared (read by the worker at init)."""
        return tuple(getattr(plugin, "method_info", {}).get("requires", ()))

    def train_view(self, data: SamplerData, config: SamplerConfig) -> dict:
        """The counted target (an oracle: no moments, no exact sampler) and the inits."""
        t = data.target
        exposed = Exposed(
            TargetView(t),
            frozenset({"log_prob", "grad_log_prob", "log_prob_and_grad", "conditional",
                       "minibatch_grad"}),
            kind="object",
            # No name: a sampler works from the density it queries, not from a catalogue
            # entry it could special-case.
            attributes={"dim": t.dim, "device": t.device, "dtype": DTYPE,
                        "capabilities": t.capabilities, "n_data": t.n_data},
        )  # fmt: skip
        return {"target": exposed, "init": data.init.clone()}

    def fit(self, method: SamplerMethod, data: dict, config: SamplerConfig, ctx: Context):
        """Run the sampler (in the plugin process) on the target oracle; return its draws."""
        torch.set_num_threads(1)
        gen = ctx.device_generator()
        return method.sample(data["target"], config.n_draws, config.n_chains, data["init"], gen)

    def evaluate(
        self, artifact: SamplerRun, data: SamplerData, config: SamplerConfig, ctx: Context
    ) -> Evaluation:
        """Verify the draws and the accounting, then compute the diagnostics with ArviZ."""
        target = data.target
        estimator = {
            "chains": config.n_chains, "draws_per_chain": config.n_draws, "dim": target.dim,
            "ess": "arviz.ess(method='bulk'); arviz.ess(method='tail', prob=(0.05, 0.95)); per coordinate",
            "tail_prob": list(TAIL_PROB), "torch_threads_while_sampling": 1, "rhat": "arviz.rhat(method='rank'), per coordinate",
            "rhat_threshold": RHAT_MAX,
            "moment_errors": "z = (estimate - truth) / MCSE, MCSE by arviz.mcse(method='mean'); "
            "variance estimated as the mean of (x - true mean)^2",
            "moments": "exact" if target.exact else "stored reference (make_reference.py), SE added",
            "cost_unit": "one density, gradient or joint call per chain-row = 1; a Gibbs coordinate "
            "update = 1/dim; one data point of a minibatch gradient = 1/n_data",
        }  # fmt: skip
        if artifact.not_applicable:
            estimator["not_applicable"] = artifact.not_applicable
            return Evaluation({m.name: float("nan") for m in self.metrics}, {}, estimator)
        draws = check_draws(artifact, config, target.dim)
        cost = evaluation_cost(artifact.counts, target.dim, target.n_data)
        ctx.progress("diagnostics", 0, 1)
        d = diagnose(
            draws,
            target.mean.numpy(),
            target.var.numpy(),
            target.mean_se.numpy(),
            target.var_se.numpy(),
        )
        ess_min = float(d.ess_bulk.min())
        metrics = {
            "ess_bulk_per_1k_evals": 1000.0 * ess_min / cost,
            "ess_bulk_min": ess_min,
            "ess_tail_min": float(d.ess_tail.min()),
            "ess_bulk_per_s": ess_min / max(artifact.seconds, 1e-9),
            "rhat_max": float(d.rhat.max()),
            "mean_z_max": float(np.abs(d.moments["z_mean"]).max()),
            "var_z_max": float(np.abs(d.moments["z_var"]).max()),
            "acceptance_rate": d.move_rate,
            "evals": cost,
            "seconds": artifact.seconds,
        }
        curves = {
            "ess_bulk": d.ess_bulk, "ess_tail": d.ess_tail, "rhat": d.rhat,
            **{k: v for k, v in d.moments.items()},
            "true_mean": target.mean.numpy(), "true_var": target.var.numpy(),
        }  # fmt: skip
        estimator.update(moment_threshold=d.threshold, ess_threshold=d.ess_threshold,
                         passes=d.passes, counts=artifact.counts)  # fmt: skip
        return Evaluation(metrics, curves, estimator)

    def adjust_leaderboard(self, df, records, load):
        """Rank only rows whose every seed has R-hat < 1.01 and moments within the threshold."""
        return eligibility(df, records)


def check_draws(run: Any, config: SamplerConfig, dim: int) -> np.ndarray:
    """The harness's checks of a sampler's output and accounting; raises InvalidArtifact with the reason."""
    if not isinstance(run, SamplerRun):
        raise InvalidArtifact(f"fit must return a SamplerRun, got {type(run).__name__}")
    draws = run.draws
    if isinstance(draws, torch.Tensor):
        draws = draws.detach().to("cpu", torch.float64).numpy()
    if not isinstance(draws, np.ndarray):
        raise InvalidArtifact(
            f"sample() must return a tensor or array, got {type(run.draws).__name__}"
        )
    want = (config.n_chains, config.n_draws, dim)
    if draws.shape != want:
        raise InvalidArtifact(
            f"sample() must return draws of shape {want} (chains, draws, dim), got {draws.shape}"
        )
    draws = draws.astype(np.float64)
    if not np.isfinite(draws).all():
        bad = int((~np.isfinite(draws).all(axis=(1, 2))).sum())
        raise InvalidArtifact(
            f"non-finite draws (NaN or inf) in {bad} of {want[0]} chains: the sampler diverged"
        )
    if run.counts.get("iid", 0):
        raise InvalidArtifact(
            "the sampler drew exact samples from the target (sample_iid is harness-only)"
        )
    if (run.counts.get("density", 0) + run.counts.get("grad", 0) + run.counts.get("conditional", 0)
            + run.counts.get("data_grad", 0)) == 0:  # fmt: skip
        raise InvalidArtifact(
            "the sampler never evaluated the target: its draws cannot come from MCMC on it"
        )
    return draws


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
