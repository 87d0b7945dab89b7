"""The ``bnn`` task: approximate posteriors over a network's weights, scored by what they predict.

A method gets the task's log posterior over the flat weights as a counted oracle (the
``sampler`` task's target protocol, plus per-example gradients), returns weight samples
(optionally weighted), and the harness predicts with its own network on the test and OOD
inputs, against a long-run HMC reference predictive (Izmailov et al. 2021).
"""

from __future__ import annotations

import dataclasses
import json
import time
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...api import Context, Evaluation, InvalidArtifact, Method, MetricSpec, Task, profile_entry
from ...oracle import Exposed
from ...registry import register_task
from ..sampler.targets import DTYPE, LEDGER, evaluation_cost
from . import metrics as M
from .data import BNNData, load
from .make_reference import INIT_SD, load_reference
from .posterior import BNNPosterior, BNNView
from .settings import SETTINGS


@dataclass(frozen=True)
class BNNConfig:
    """One cell: the setting (data, network, prior), the sample cap and the evaluation budget."""

    dataset: str
    n_samples: int  # at most this many weight samples may be returned
    budget_evals: float  # cap on the ledger's cost (full-batch gradient equivalents, all rows)
    n_init: int = 8  # init rows the harness draws from N(0, INIT_SD^2)


_PROFILES = {
    "quick": dict(datasets=("moons-gap", "digits"), n_samples=100, budget_evals=10_000),
    "standard": dict(datasets=("mnist",), n_samples=100, budget_evals=20_000),
    "paper": dict(datasets=("mnist", "cifar10"), n_samples=200, budget_evals=100_000),
}

_REF_HELP = "bnn-reference/<dataset>.json (made by make_reference.py with --settings <dataset>)"


class BNNMethod(Method):
    """Protocol of a ``bnn`` method: approximate the weight posterior through its counted oracle."""

    @abstractmethod
    def posterior(
        self, target: BNNView, problem: dict, init: torch.Tensor, generator: torch.Generator
    ) -> Any:
        """Return weight samples (S, P), or a dict {"samples": (S, P), "weights": (S,)}.

        ``target`` is the counted log posterior over flat weights (``log_prob``,
        ``grad_log_prob``, ``log_prob_and_grad``, ``minibatch_grad``, ``per_example_grad``;
        rows are weight vectors). ``problem`` holds the network ``sizes``, ``prior_sd``,
        ``n_train``, ``n_classes``, ``n_samples`` (the cap on S), ``budget_evals`` (the cap
        on the ledger's cost) and ``layout`` (how the flat vector is laid out). ``init``
        is (n_init, P) drawn by the harness. Weights, if given, are non-negative (an
        ensemble's or importance weights); uniform otherwise.
        """


@dataclass
class BNNRun:
    """What the harness has after the plugin's fit: its reply and the harness's own accounting."""

    reply: Any
    counts: dict[str, float]
    seconds: float


@dataclass
class BNNHarnessData:
    """The harness-owned data of a cell: splits, the posterior and the init it drew."""

    data: BNNData
    posterior: BNNPosterior
    init: torch.Tensor


def _metric(name, up, unit, text, low=None, high=None):
    return MetricSpec(name, up, unit, text, low, high)


@register_task
class BNNTask(Task):
    """Approximate BNN posteriors scored by their predictive against a long-run HMC reference."""

    name = "bnn"
    version = "1"
    description = (
        "Bayesian neural networks: weight samples scored by TV/agreement with an HMC reference "
        "predictive, log predictive density, ECE, Brier, OOD entropy (Izmailov et al. 2021)"
    )
    method_type = BNNMethod
    protocol = "posterior"
    primary_metric = "tv_to_reference"
    setting_keys = ("dataset",)
    artifact_kind = "value"
    metrics = (
        _metric("tv_to_reference", False, "fraction",
                "mean over test points of the total variation to the HMC reference predictive"),
        _metric("agreement", True, "fraction",
                "fraction of test points whose top-1 class matches the HMC reference predictive's"),
        _metric("test_lpd", True, "nats / point", "mean log predictive density of the test labels",
                high=0.0),
        _metric("accuracy", True, "fraction", "test accuracy of the predictive's top-1 class"),
        _metric("ece", False, "fraction", f"top-label expected calibration error, {M.ECE_BINS} equal-width bins"),
        _metric("brier", False, "score", "mean over test points of sum_c (p_c - 1[y=c])^2", 0.0, 2.0),
        _metric("ood_entropy", None, "nats / point", "mean predictive entropy on the OOD inputs",
                low=0.0),
        _metric("ood_tv_to_reference", False, "fraction",
                "mean total variation to the HMC reference predictive on the OOD inputs"),
        _metric("evals", False, "evaluations",
                "ledger cost: full-batch density/gradient evaluations per weight row, minibatch "
                "points counted as |B|/N", low=0.0),
        _metric("seconds", False, "s", "wall time of the method's fit", low=0.0),
        _metric("n_samples", None, "samples", "weight samples returned", low=1.0),
    )  # fmt: skip

    def configs(self, profile: str) -> list[BNNConfig]:
        """One config per dataset of ``profile``."""
        p = profile_entry(_PROFILES, profile)
        return [BNNConfig(d, p["n_samples"], float(p["budget_evals"])) for d in p["datasets"]]

    def smoke(self, config: BNNConfig) -> BNNConfig:
        """A seconds-long version: a budget of 10 evaluations and at most 10 samples."""
        return dataclasses.replace(config, n_samples=10, budget_evals=10.0)

    def check_data(self, config: BNNConfig, data_dir: Path | None) -> None:
        """MNIST / CIFAR-10 must be under --data-dir (the quick settings ship with the code)."""
        s = SETTINGS[config.dataset]
        if config.dataset not in ("moons-gap", "digits"):
            load(s.dataset, data_dir, 1, 1)

    def prepare(self, config: BNNConfig, ctx: Context) -> BNNHarnessData:
        """Load the fixed splits, build the posterior and draw the methods' init rows."""
        s = SETTINGS[config.dataset]
        d = load(s.dataset, ctx.data_dir, s.n_train, s.n_test)
        post = BNNPosterior(s.net, d.x_train, d.y_train, s.prior_sd, ctx.device, config.dataset)
        init = INIT_SD * torch.randn(config.n_init, post.dim, generator=ctx.generator, dtype=DTYPE)
        return BNNHarnessData(d, post, init.to(ctx.device))

    def train_view(self, data: BNNHarnessData, config: BNNConfig) -> dict:
        """The counted posterior oracle, the problem's declared facts and the init; no data points."""
        post, s = data.posterior, SETTINGS[config.dataset]
        exposed = Exposed(
            BNNView(post),
            frozenset({"log_prob", "grad_log_prob", "log_prob_and_grad", "minibatch_grad",
                       "per_example_grad"}),
            kind="object",
            attributes={"dim": post.dim, "device": post.device, "dtype": DTYPE,
                        "capabilities": post.capabilities, "n_data": post.n_data},
        )  # fmt: skip
        problem = {
            "sizes": list(s.sizes), "activation": "relu", "prior_sd": s.prior_sd,
            "likelihood": "categorical (softmax of the last layer)", "n_train": post.n_data,
            "n_classes": data.data.n_classes, "n_samples": config.n_samples,
            "budget_evals": config.budget_evals,
            "layout": "per layer: W (fan_in, fan_out) row-major, then b (fan_out); "
            "see dltbench.tasks.bnn.network.MLP",
        }  # fmt: skip
        return {"target": exposed, "problem": problem, "init": data.init.clone()}

    def run_plugin(self, plugin, data: BNNHarnessData, config: BNNConfig, ctx: Context) -> BNNRun:
        """Expose the posterior counted, time the fit; the ledger and the clock stay here."""
        ctx.progress("fit", 0, 1)
        LEDGER.clear()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small batched matmuls: threads cost more than they save
        try:
            start = time.perf_counter()
            reply = plugin.request("fit", self.train_view(data, config), config)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            seconds = time.perf_counter() - start
        finally:
            torch.set_num_threads(threads)
        counts = dict(LEDGER)  # read before the evaluator's own forward passes
        ctx.progress("fit", 1, 1)
        return BNNRun(reply, counts, seconds)

    def fit(self, method: BNNMethod, data: dict, config: BNNConfig, ctx: Context) -> Any:
        """Run the method (in the plugin process) on the oracle; return its samples as plain data."""
        torch.set_num_threads(1)
        out = method.posterior(
            data["target"], data["problem"], data["init"], ctx.device_generator()
        )
        if isinstance(out, dict):
            return {k: out.get(k) for k in ("samples", "weights")}
        return {"samples": out, "weights": None}

    def evaluate(
        self, artifact: BNNRun, data: BNNHarnessData, config: BNNConfig, ctx: Context
    ) -> Evaluation:
        """Check the samples and the cost, predict with the harness's network, score."""
        post, d = data.posterior, data.data
        samples, weights = check_samples(artifact, config, post.dim)
        cost = evaluation_cost(artifact.counts, post.dim, post.n_data)
        if cost > config.budget_evals * (1 + 1e-9):
            raise InvalidArtifact(
                f"the method spent {cost:.6g} evaluations, over the budget of {config.budget_evals:g}"
            )
        net = SETTINGS[config.dataset].net
        with torch.no_grad():
            p_test = net.predictive(samples, d.x_test.cpu(), weights).numpy()
            p_ood = net.predictive(samples, d.x_ood.cpu(), weights).numpy()
        y = d.y_test.cpu().numpy()
        ref, ref_source = reference_for(config.dataset, ctx.data_dir)
        nan = float("nan")
        metrics = {
            "tv_to_reference": M.total_variation(p_test, ref["test"]) if ref else nan,
            "agreement": M.agreement(p_test, ref["test"]) if ref else nan,
            "test_lpd": M.log_predictive_density(p_test, y),
            "accuracy": M.accuracy(p_test, y),
            "ece": M.expected_calibration_error(p_test, y),
            "brier": M.brier(p_test, y),
            "ood_entropy": M.entropy(p_ood),
            "ood_tv_to_reference": M.total_variation(p_ood, ref["ood"]) if ref else nan,
            "evals": cost,
            "seconds": artifact.seconds,
            "n_samples": float(len(samples)),
        }
        s = SETTINGS[config.dataset]
        estimator = {
            "network": list(s.sizes), "activation": "relu", "prior": f"N(0, {s.prior_sd}^2) per weight",
            "likelihood": "categorical", "n_train": post.n_data, "n_test": len(y),
            "n_ood": len(d.x_ood), "ood": d.ood_what,
            "predictive": "weighted mean over samples of softmax(f_w(x)), float64, harness network",
            "ece_bins": M.ECE_BINS, "reference": ref_source,
            "reference_noise_tv": ref["noise"] if ref else None,
            "cost_unit": "one full-batch density or gradient at one weight row = 1; one point of a "
            "minibatch or per-example gradient = 1/n_train", "counts": artifact.counts,
            "init": f"{config.n_init} rows from N(0, {INIT_SD}^2), eval-side stream",
        }  # fmt: skip
        curves = {
            "predictive_entropy_test": (-(p_test * np.log(np.maximum(p_test, 1e-300))).sum(1))
        }
        return Evaluation(metrics, curves, estimator)


def reference_for(dataset: str, data_dir: Path | None) -> tuple[dict | None, str]:
    """The reference predictives (test, ood, noise TV) of ``dataset`` and where they came from."""
    entry, source = load_reference(dataset), "shipped reference_predictive.json"
    if entry is None and data_dir is not None:
        path = Path(data_dir) / "bnn-reference" / f"{dataset}.json"
        if path.exists():
            entry, source = json.loads(path.read_text())["settings"][dataset], str(path)
    if entry is None:
        return None, f"none: put {_REF_HELP} under --data-dir for agreement/TV"
    ref = {k: np.asarray(entry[f"predictive_{k}"], dtype=np.float64) for k in ("test", "ood")}
    ref["noise"] = entry["diagnostics"]["test"]["tv_between_chain_halves"]
    return ref, source


def check_samples(
    run: Any, config: BNNConfig, dim: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The harness's checks of the returned samples and weights; raises InvalidArtifact with the reason."""
    reply = run.reply if isinstance(run, BNNRun) else None
    if not isinstance(reply, dict):
        raise InvalidArtifact("fit must return weight samples (S, P) or {'samples', 'weights'}")
    s = reply.get("samples")
    if isinstance(s, np.ndarray):
        s = torch.from_numpy(s)
    if not isinstance(s, torch.Tensor):
        raise InvalidArtifact(f"samples must be a tensor (S, {dim}), got {type(s).__name__}")
    if s.dim() != 2 or s.shape[1] != dim or s.shape[0] < 1:
        raise InvalidArtifact(
            f"samples must have shape (S, {dim}) with S >= 1, got {tuple(s.shape)}"
        )
    if s.shape[0] > config.n_samples:
        raise InvalidArtifact(f"{s.shape[0]} samples returned, over the cap of {config.n_samples}")
    s = s.detach().to("cpu", DTYPE)
    if not torch.isfinite(s).all():
        bad = int((~torch.isfinite(s).all(1)).sum())
        raise InvalidArtifact(f"non-finite weights (NaN or inf) in {bad} of {len(s)} samples")
    w = reply.get("weights")
    if w is None:
        return s, None
    w = torch.as_tensor(w).detach().to("cpu", DTYPE)
    if w.shape != (len(s),) or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise InvalidArtifact(
            f"weights must be {len(s)} finite non-negative numbers with a positive sum"
        )
    return s, w / w.sum()
