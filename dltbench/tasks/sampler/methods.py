"""Built-in ``sampler`` methods, registered exactly as a third-party plugin would be.

Each runs ``warmup_fraction * n_draws`` warm-up iterations (evaluated, counted, not
returned) before the kept draws; the step-size rules are in :mod:`.samplers`.
"""

from __future__ import annotations

import torch

from ...registry import register_method
from . import samplers
from .targets import TargetView
from .task import SamplerMethod


class _Builtin(SamplerMethod):
    version = "1"

    def __init__(self, warmup_fraction: float = 0.5):
        self.warmup_fraction = warmup_fraction

    def _warmup(self, n_draws: int) -> int:
        return int(round(self.warmup_fraction * n_draws))


@register_method(task="sampler", name="rwm")
class RandomWalkMetropolis(_Builtin):
    """Random-walk Metropolis, isotropic Gaussian proposal, step adapted to acceptance 0.234."""

    def sample(self, target: TargetView, n_draws, n_chains, init, generator) -> torch.Tensor:
        """Adaptive warm-up, then fixed-step RWM."""
        return samplers.rwm(target, init, n_draws, self._warmup(n_draws), generator)


@register_method(task="sampler", name="imh")
class IndependenceMH(_Builtin):
    """Independence Metropolis-Hastings, Gaussian proposal fitted to RWM warm-up draws (x1.5 sd)."""

    def __init__(self, warmup_fraction: float = 0.5, inflation: float = 1.5):
        super().__init__(warmup_fraction)
        self.inflation = inflation

    def sample(self, target: TargetView, n_draws, n_chains, init, generator) -> torch.Tensor:
        """RWM warm-up, fit N(m, inflation^2 S), then independence MH."""
        return samplers.independence_mh(
            target, init, n_draws, self._warmup(n_draws), generator, self.inflation
        )


@register_method(task="sampler", name="gibbs")
class Gibbs(_Builtin):
    """Systematic-scan Gibbs sampler from exact Gaussian full conditionals."""

    requires = ("conditionals",)

    def sample(self, target: TargetView, n_draws, n_chains, init, generator) -> torch.Tensor:
        """Burn-in sweeps, then one kept draw per sweep."""
        return samplers.gibbs(target, init, n_draws, self._warmup(n_draws), generator)


@register_method(task="sampler", name="ula")
class ULA(_Builtin):
    """Unadjusted Langevin algorithm, step = step_factor x the median MALA-adapted step (biased, no MH)."""

    # 2: one step for all chains, 0.1 x the median adapted step (was 0.25 x each chain's own,
    # which diverged in about half the quick banana-d2 cells).
    version = "2"

    def __init__(self, warmup_fraction: float = 0.5, step_factor: float = 0.1):
        super().__init__(warmup_fraction)
        self.step_factor = step_factor

    def sample(self, target: TargetView, n_draws, n_chains, init, generator) -> torch.Tensor:
        """MALA warm-up for the step, then unadjusted Langevin steps."""
        return samplers.ula(
            target, init, n_draws, self._warmup(n_draws), generator, self.step_factor
        )


@register_method(task="sampler", name="mala")
class MALA(_Builtin):
    """Metropolis-adjusted Langevin algorithm, step adapted to acceptance 0.574."""

    def sample(self, target: TargetView, n_draws, n_chains, init, generator) -> torch.Tensor:
        """Adaptive warm-up, then fixed-step MALA."""
        return samplers.mala(target, init, n_draws, self._warmup(n_draws), generator)


@register_method(task="sampler", name="hmc")
class HMC(_Builtin):
    """Hamiltonian Monte Carlo, fixed leapfrog steps, identity mass, step adapted to acceptance 0.65."""

    def __init__(self, warmup_fraction: float = 0.5, n_leapfrog: int = 10):
        super().__init__(warmup_fraction)
        self.n_leapfrog = n_leapfrog

    def sample(self, target: TargetView, n_draws, n_chains, init, generator) -> torch.Tensor:
        """Adaptive warm-up, then HMC with the step jittered +-10%."""
        return samplers.hmc(
            target, init, n_draws, self._warmup(n_draws), generator, self.n_leapfrog
        )


@register_method(task="sampler", name="sgld")
class SGLD(_Builtin):
    """Stochastic-gradient Langevin dynamics on minibatches (Welling & Teh 2011), constant step."""

    requires = ("minibatch",)

    # Minibatch noise inflates the variance by about h Var(grad)/2: batch 20 and a tenth of
    # MALA's step keep it near 15% on logreg-iris (larger steps mix faster but are worse).
    def __init__(
        self, warmup_fraction: float = 0.5, batch_size: int = 20, step_factor: float = 0.1
    ):
        super().__init__(warmup_fraction)
        self.batch_size = batch_size
        self.step_factor = step_factor

    def sample(self, target: TargetView, n_draws, n_chains, init, generator) -> torch.Tensor:
        """Full-gradient MALA warm-up for the step, then minibatch Langevin steps."""
        return samplers.sgld(
            target,
            init,
            n_draws,
            self._warmup(n_draws),
            generator,
            self.batch_size,
            self.step_factor,
        )
