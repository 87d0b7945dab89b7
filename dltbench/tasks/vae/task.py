"""The ``vae`` task: held-out likelihood of latent-variable models of binarized images."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ... import data as datasets
from ...api import Context, Evaluation, InvalidArtifact, Method, MetricSpec, Task, profile_entry
from ...data import Split
from ...registry import register_task
from .bounds import (
    active_units,
    bits_per_dim,
    elbo,
    iwae_bounds,
    marginal_elbo,
    marginal_iwae_bound,
    posterior_means,
)
from .checks import check_model

#: Fixed seed of the static binarization (harness-owned, never the run's seed).
BINARIZE_SEED = 20140101


@dataclass(frozen=True)
class VAEConfig:
    """Everything one cell's numbers depend on besides the method and the seed."""

    dataset: str  # digits (8x8, embedded) or mnist (28x28, from --data-dir)
    latent_dim: int  # reference architecture (the built-ins use it; plug-ins may not)
    hidden: tuple[int, ...]
    epochs: int  # training budget, in passes over the training split
    iwae_k: int  # importance samples K of the leaderboard's IWAE bound
    iwae_ks: tuple[int, ...]  # the curve of IWAE_k vs k (nested prefixes of the same draws)
    elbo_samples: int  # Monte Carlo draws of q(z|x) for the ELBO's reconstruction term
    k_chunk: int  # importance samples per pass (memory bound: k_chunk * batch_size)
    batch_size: int  # test points per pass
    max_test_points: int  # first points of the fixed test split; 0 = all
    active_threshold: float = 0.01  # Burda et al. 2016
    cpu_threads: int = 0  # torch threads on CPU during fit and evaluate; 0 keeps the runner's
    # static: one harness-seeded draw of each split; dynamic (Burda et al.): the method gets
    # the training grey levels and draws fresh bits every epoch; the test split stays one draw.
    binarization: str = "static"
    active_split: str = "test"  # where Cov_x(E_q[z|x]) is taken: test or train
    active_points: int = 0  # first points of active_split; 0 = all
    active_ddof: int = 1  # variance's delta degrees of freedom (Burda et al.'s np.var: 0)


_PROFILES = {
    # quick: K = 200 moves the digits models' bound by <= 0.003 nats from K = 500, a tenth
    # of a seed's std (docs/tasks/vae.md); k_chunk 100 makes 2 passes (oracle round trips).
    "quick": dict(dataset="digits", latent_dim=8, hidden=(128,), epochs=100, iwae_k=200,
                  iwae_ks=(1, 10, 100, 200), elbo_samples=10, k_chunk=100, batch_size=540,
                  max_test_points=0, cpu_threads=1),
    "standard": dict(dataset="mnist", latent_dim=50, hidden=(200, 200), epochs=100, iwae_k=1000,
                     iwae_ks=(1, 10, 100, 1000), elbo_samples=10, k_chunk=250, batch_size=500,
                     max_test_points=0),
    # Burda et al. 2016: one stochastic layer of 50 units, two tanh layers of 200, 3280
    # passes (sum of 3^i, i < 8), test log-likelihood by IWAE with k = 5000; their code
    # (yburda/iwae) binarizes training MNIST afresh at every minibatch and counts active
    # units on the first 500 training points with np.var (ddof 0).
    "paper": dict(dataset="mnist", latent_dim=50, hidden=(200, 200), epochs=3280, iwae_k=5000,
                  iwae_ks=(1, 5, 50, 500, 5000), elbo_samples=100, k_chunk=1000, batch_size=500,
                  max_test_points=0, binarization="dynamic", active_split="train",
                  active_points=500, active_ddof=0),
}  # fmt: skip


@dataclass(frozen=True)
class BinaryData:
    """Binarized images, flattened to (N, D) in {0, 1}, with a fixed split.

    With ``dynamic`` True, ``train.x`` holds the grey levels in [0, 1] instead: a method
    draws fresh bits from them (``binarize_batch``) at every pass, as Burda et al. did.
    """

    name: str
    train: Split
    test: Split | None  # None in the view a method gets
    num_classes: int
    image_shape: tuple[int, ...]  # (C, H, W) of one example before flattening
    label_prior: torch.Tensor | None = None  # training class frequencies (harness-side only)
    dynamic: bool = False  # train.x are grey levels, to be binarized afresh every epoch

    @property
    def x_dim(self) -> int:
        """D, the number of binary pixels of one example."""
        return int(np.prod(self.image_shape))


def binarize(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Static binarization: one Bernoulli draw per pixel with p = grey level, from ``seed``.

    (N, C, H, W) in [0, 1] -> (N, C*H*W) float in {0, 1}. Drawn once with a fixed seed,
    as Salakhutdinov & Murray (2008) did for MNIST, so every run sees the same bits.
    """
    probs = images.flatten(1).numpy().astype(np.float64)  # numpy: no torch thread pool here
    bits = np.random.default_rng(seed).random(probs.shape) < probs
    return torch.from_numpy(bits.astype(np.float32))


def binarize_batch(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Dynamic binarization: fresh Bernoulli bits at the grey levels ``probs`` (any shape).

    Drawn on ``generator``'s device, returned on ``probs``'s, same dtype; call it on every
    minibatch (Burda et al. 2016) so that each pass over the data sees new bits.
    """
    u = torch.rand(probs.shape, generator=generator, device=generator.device)
    return (u.to(probs.device) < probs).to(probs.dtype)


def load_binary(name: str, data_dir=None, dynamic: bool = False) -> BinaryData:
    """A dataset of :mod:`dltbench.data`, binarized (train with BINARIZE_SEED, test +1).

    ``dynamic``: the training split keeps its grey levels (flattened, float in [0, 1])
    for the method to binarize per epoch; the test split is one draw either way.
    """
    ds = datasets.load(name, data_dir)
    train_x = ds.train.x.flatten(1).float() if dynamic else binarize(ds.train.x, BINARIZE_SEED)
    train = Split(train_x, ds.train.y)
    test = Split(binarize(ds.test.x, BINARIZE_SEED + 1), ds.test.y)
    prior = torch.bincount(ds.train.y, minlength=ds.num_classes).double() / len(ds.train.y)
    return BinaryData(name, train, test, ds.num_classes, ds.shape, prior, dynamic)


def active_unit_points(data: BinaryData, config: VAEConfig) -> Split:
    """The binary points whose posterior means decide the active units (``active_split``).

    Dynamic training data are binarized once here, from the fixed ``BINARIZE_SEED``
    (harness-owned, like the test draw), so the count does not depend on the run's seed.
    """
    if config.active_split not in ("test", "train"):
        raise ValueError(f"active_split must be 'test' or 'train', got {config.active_split!r}")
    split = data.test if config.active_split == "test" else data.train
    if config.active_points:
        split = split.subset(slice(0, config.active_points))
    if config.active_split == "train" and data.dynamic:
        bits = np.random.default_rng(BINARIZE_SEED).random(tuple(split.x.shape)) < split.x.numpy()
        split = Split(torch.from_numpy(bits.astype(np.float32)), split.y)
    return split


class VAEMethod(Method):
    """Protocol of a ``vae`` method: train a latent-variable model of binary data."""

    @abstractmethod
    def train(self, data: BinaryData, config: VAEConfig, ctx: Context) -> Any:
        """Return a model with ``encode(x) -> q(z|x)``, ``decode(z) -> p(x|z)``, ``prior() -> p(z)``.

        All three return ``torch.distributions.Distribution`` objects: x is (N, D) in {0, 1}
        (``data.train.x``; when ``data.dynamic``, ``data.train.x`` holds grey levels and the
        method binarizes every minibatch afresh with :func:`binarize_batch`, as
        :func:`~dltbench.tasks.vae.fit_model` does), q has batch shape (N,) and event (L,), p(x|z) batch (N,) and
        event (D,), p(z) batch () or (N,) and event (L,). Set ``conditional = True`` on the
        model to be called with the labels as ``encode(x, y)``, ``decode(z, y)``,
        ``prior(y)``. ``prior()`` returning None declares a model without a likelihood (a
        plain autoencoder): it is scored by reconstruction only. ``data.test`` is None.
        """


def _nat(desc: str) -> str:
    return f"{desc}, nats per example"


@register_task
class VAETask(Task):
    """Test log-likelihood of VAEs by the IWAE bound (Burda et al. 2016), with ELBO, KL and active units."""

    name = "vae"
    version = "2"
    description = (
        "held-out log-likelihood bounds (ELBO, IWAE) of latent-variable models, nats and bits/dim"
    )
    method_type = VAEMethod
    protocol = "train"
    primary_metric = "iwae"
    artifact_attributes = ("conditional",)
    setting_keys = ("dataset",)
    metrics = (
        MetricSpec("iwae", True, "nats/example", _nat(
            "IWAE_K lower bound on test log p(x); conditional models: log sum_y p(y) p(x|y), "
            "p(y) the training class frequencies")),
        MetricSpec("nll_bpd", False, "bits/dim", "-iwae / (D ln 2): upper bound on test NLL"),
        MetricSpec("elbo", True, "nats/example", _nat(
            "test ELBO on log p(x); conditional models: log sum_y p(y) exp ELBO(x|y)")),
        MetricSpec("elbo_bpd", False, "bits/dim", "-elbo / (D ln 2)"),
        MetricSpec("reconstruction", True, "nats/example",
                   _nat("E_q[log p(x|z)], the ELBO's first term (conditional: at the test label)")),
        MetricSpec("kl", False, "nats/example",
                   _nat("KL(q(z|x) || p(z)), the rate, descriptive (conditional: at the test label)")),
        MetricSpec("cond_elbo", True, "nats/example",
                   _nat("ELBO on log p(x|y) at the test label (conditional models only)")),
        MetricSpec("cond_iwae", True, "nats/example",
                   _nat("IWAE_K bound on log p(x|y) at the test label (conditional models only)")),
        MetricSpec("active_units", True, "count",
                   "latents with Var_x(E_q[z|x]) > 0.01 over the profile's active-unit points "
                   "(Burda et al. 2016)"),
        MetricSpec("recon_nll", False, "nats/example",
                   _nat("-log p(x | z = E_q[z|x]), every model including autoencoders")),
        MetricSpec("recon_error_rate", False, "fraction", "pixels where round(E[x | z = E_q[z|x]]) != x"),
        MetricSpec("iwae_throughput", True, "samples/s", "importance samples per second in the IWAE bound"),
    )  # fmt: skip

    def configs(self, profile: str) -> list[VAEConfig]:
        """The one config of ``profile``."""
        return [VAEConfig(**profile_entry(_PROFILES, profile))]

    def smoke(self, config: VAEConfig) -> VAEConfig:
        """A seconds-long version: two epochs, K = 20, 64 test points."""
        return dataclasses.replace(
            config, epochs=2, iwae_k=20, iwae_ks=(1, 20), elbo_samples=2, k_chunk=8,
            batch_size=32, max_test_points=64,
        )  # fmt: skip

    def check_data(self, config: VAEConfig, data_dir) -> None:
        """Fail early, with what to put where, if the dataset is missing."""
        datasets.load(config.dataset, data_dir)

    def prepare(self, config: VAEConfig, ctx: Context) -> BinaryData:
        """The binarized dataset with its fixed split (first max_test_points tested); with
        dynamic binarization the training split keeps its grey levels."""
        if config.binarization not in ("static", "dynamic"):
            raise ValueError(
                f"binarization must be 'static' or 'dynamic', got {config.binarization!r}"
            )
        ctx.progress("load data", 0, 1)
        with cpu_threads(config.cpu_threads, ctx.device):
            data = load_binary(config.dataset, ctx.data_dir, config.binarization == "dynamic")
        if config.max_test_points:
            data = dataclasses.replace(
                data, test=data.test.subset(slice(0, config.max_test_points))
            )
        return data

    def train_view(self, data: BinaryData, config: VAEConfig) -> BinaryData:
        """The training split only (no test split, no class prior)."""
        return dataclasses.replace(data, test=None, label_prior=None)

    def fit(self, method: VAEMethod, data: BinaryData, config: VAEConfig, ctx: Context) -> Any:
        """Train (in the plugin process, on the training view)."""
        with cpu_threads(config.cpu_threads, ctx.device):
            return method.train(data, config, ctx)

    def evaluate(self, artifact, data: BinaryData, config: VAEConfig, ctx: Context) -> Evaluation:
        """Verify the model, then ELBO, IWAE_k, KL, active units and reconstruction on the test split."""
        with cpu_threads(config.cpu_threads, ctx.device):
            return self._evaluate(artifact, data, config, ctx)

    def _evaluate(self, artifact, data: BinaryData, config: VAEConfig, ctx: Context) -> Evaluation:
        gen = ctx.device_generator()
        info = check_model(artifact, data, ctx.device, gen)
        model, d = info.model, data.x_dim
        x, y = data.test.x.to(ctx.device), data.test.y.to(ctx.device)
        ycond = y if info.conditional else None
        bs, n = config.batch_size, len(x)
        with torch.no_grad():
            means = posterior_means(model, x, ycond, bs)
            rec = torch.cat([
                _recon(model.decode(means[i : i + bs], *(() if ycond is None else (ycond[i : i + bs],))),
                       x[i : i + bs])
                for i in range(0, n, bs)
            ])  # fmt: skip
        metrics = {s.name: math.nan for s in self.metrics}
        metrics["recon_nll"] = float(rec[:, 0].mean())
        metrics["recon_error_rate"] = float(rec[:, 1].mean())
        estimator: dict[str, Any] = {
            "has_likelihood": info.has_likelihood, "conditional": info.conditional,
            "test_points": n, "dims": d, "latent_dim": info.latent_dim,
            "units": "log-likelihoods in nats per example; *_bpd = -nats / (D ln 2) bits per dim",
            "data": _data_note(data),
            "recon": "decoder at the posterior mean z = E_q[z|x]; error rate thresholds E[x|z] at 0.5",
        }  # fmt: skip
        curves: dict[str, Any] = {}
        if info.has_likelihood:
            ctx.progress("elbo", 0, 3)
            terms = elbo(model, x, ycond, config.elbo_samples, gen, batch_size=bs)
            ctx.progress("iwae", 1, 3)
            start = time.perf_counter()
            by_k = iwae_bounds(
                model, x, config.iwae_ks + (config.iwae_k,), ycond, gen, config.k_chunk, bs
            )
            seconds = time.perf_counter() - start
            ll, lower = by_k[config.iwae_k], terms.elbo
            if info.conditional:
                lower = marginal_elbo(model, x, data.label_prior.to(x.device), config.elbo_samples,
                                      gen, batch_size=bs)  # fmt: skip
                metrics["cond_elbo"] = float(terms.elbo.mean())
                ctx.progress("marginal iwae", 2, 3)
                ll = marginal_iwae_bound(model, x, config.iwae_k, data.label_prior.to(x.device),
                                         gen, config.k_chunk, bs)  # fmt: skip
                metrics["cond_iwae"] = float(by_k[config.iwae_k].mean())
            if not (torch.isfinite(ll).all() and torch.isfinite(lower).all()):
                raise InvalidArtifact("the ELBO or IWAE bound is not finite on some test points")
            au = active_unit_points(data, config)
            if au is data.test:
                au_means = means  # the test split's posterior means, computed above
            else:
                au_y = au.y.to(ctx.device) if info.conditional else None
                with torch.no_grad():
                    au_means = posterior_means(model, au.x.to(ctx.device), au_y, bs)
            n_active, unit_var = active_units(
                au_means, config.active_threshold, ddof=config.active_ddof
            )
            metrics.update(
                iwae=float(ll.mean()), nll_bpd=float(bits_per_dim(ll.mean(), d)),
                elbo=float(lower.mean()), elbo_bpd=float(bits_per_dim(lower.mean(), d)),
                reconstruction=float(terms.reconstruction.mean()), kl=float(terms.kl.mean()),
                active_units=float(n_active), iwae_throughput=n * config.iwae_k / seconds,
            )  # fmt: skip
            curves = {  # conditional models: the bound on log p(x|y) at the test label
                "iwae_by_k": {
                    "k": sorted(by_k),
                    "iwae": [float(by_k[k].mean()) for k in sorted(by_k)],
                },
                "unit_variance": unit_var.tolist(),
            }
            estimator.update(
                iwae_k=config.iwae_k, iwae_k_chunk=config.k_chunk, elbo_samples=config.elbo_samples,
                iwae_sem=_sem(ll), elbo_sem=_sem(lower),
                iwae_estimator="log (1/K) sum_k p(x,z_k)/q(z_k|x), z_k ~ q(z|x) (Burda et al. 2016), "
                               "float64 running log-sum-exp over chunks of K",
                elbo_estimator="Monte Carlo E_q[log p(x|z)] minus "
                               + ("analytic KL" if terms.kl_analytic else "Monte Carlo KL"),
                active_units_rule=f"Var_x(E_q[z|x]) > {config.active_threshold} with ddof "
                                  f"{config.active_ddof}, over {len(au_means)} {config.active_split} "
                                  "points" + (f" (binarized once, seed {BINARIZE_SEED})"
                                              if au is not data.test and data.dynamic else ""),
                sem="standard error of the mean over test points (not over the estimator's noise)",
            )  # fmt: skip
            if info.conditional:
                estimator["label_prior"] = data.label_prior.tolist()
                estimator["marginal"] = (
                    "iwae: log sum_y p(y) mean_k w_k(y) (unbiased p_hat(x), so a lower bound); "
                    "elbo: log sum_y p(y) exp ELBO(x|y) (the ELBO with the best q(y|x)); "
                    "reconstruction, kl: at the test label"
                )
        return Evaluation(metrics, curves, estimator)

    def adjust_leaderboard(self, df, records, load):
        """Rows of models without a likelihood (no prior) are listed but not ranked, with the reason."""
        if df.empty:
            return df
        no_ll = {r.id for r in records if r.estimator.get("has_likelihood") is False}
        excluded = [any(i in no_ll for i in str(ids).split()) for ids in df["records"]]
        df = df.copy()
        df["eligible"] = [not e for e in excluded]
        df["excluded_reason"] = [
            "no likelihood: the model has no prior p(z) (plain autoencoder); reconstruction only"
            if e else "" for e in excluded
        ]  # fmt: skip
        return df


@contextlib.contextmanager
def cpu_threads(n: int, device: torch.device) -> Iterator[None]:
    """Run with ``n`` torch threads on CPU (then restore): for 8x8 MLPs intra-op threads cost
    more in synchronization than they save, and on a loaded machine far more."""
    if n <= 0 or device.type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _data_note(data: BinaryData) -> str:
    test = f"test: one Bernoulli draw per pixel at the grey level, seed {BINARIZE_SEED + 1}"
    if data.dynamic:
        return (f"{data.name}, dynamically binarized: the method draws fresh training bits "
                f"every epoch (Burda et al. 2016); {test}")  # fmt: skip
    return f"{data.name} statically binarized: train seed {BINARIZE_SEED}; {test}"


def _recon(px, x: torch.Tensor) -> torch.Tensor:
    """(N, 2): -log p(x|z) in nats and the fraction of pixels wrong after rounding E[x|z]."""
    wrong = ((px.mean > 0.5).to(x.dtype) != x).to(torch.float64).mean(1)
    return torch.stack([-px.log_prob(x).double(), wrong], dim=1)


def _sem(t: torch.Tensor) -> float:
    return float(t.double().std() / math.sqrt(len(t))) if len(t) > 1 else math.nan
