"""Expectation over transformation (Athalye, Engstrom, Ilyas & Kwok, ICML 2018) for physical-world attacks.

A physical adversarial example must survive the camera: it is scored through a random
transformation t drawn from a stated family, and the attack maximises the expected loss
E_t L(f(t(x_adv)), y) by averaging input gradients over draws of t (EOT). The family
here, :class:`TransformFamily`, applied in this order to a batch (N, C, H, W) in [0, 1]:

1. rotation by an angle uniform in [-max_rotation, max_rotation] degrees and scaling by a
   factor uniform in [scale_low, scale_high], both about the image centre (bilinear,
   zero padding: the background of the digits);
2. a brightness shift uniform in [-brightness, brightness], the same for every pixel;
3. Gaussian pixel noise of standard deviation ``noise``;
4. clipping to [0, 1].

Every step is differentiable in x.

A **physical threat model** (``WORLDS``, e.g. ``"physical-linf"``) is a digital budget (an
l_inf ball) plus a stated family: the attacker may move x within the budget, then the
world applies t ~ family, drawn by the harness after the attack returned. A candidate
x' is scored by its expected accuracy E_t 1[f(t(x')) = y] (:func:`world_scores`).

    from dltbench.tasks.robust.physical import TransformFamily, eot_pgd, world_scores
    x_adv = eot_pgd(model, x, y, eps=0.1, norm="linf", samples=8)
    res = world_scores(model, y, {"clean": x, "eot-pgd": x_adv}, TransformFamily(), gen)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .attacks import _summed
from .square import square
from .threat import _bcast, ascent_direction, check_norm, label_rank, project, random_start


@dataclass(frozen=True)
class TransformFamily:
    """The random transformations a physical example must survive (angles in degrees, pixel scale [0, 1])."""

    max_rotation: float = 15.0
    scale_low: float = 0.9
    scale_high: float = 1.1
    brightness: float = 0.1
    noise: float = 0.02

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One independent draw of t per image of ``x``; differentiable in ``x``."""
        n = len(x)

        def uniform(lo: float, hi: float) -> torch.Tensor:
            u = torch.rand(n, generator=generator, device=x.device, dtype=x.dtype)
            return lo + (hi - lo) * u

        angle = uniform(-self.max_rotation, self.max_rotation) * (math.pi / 180)
        scale = uniform(self.scale_low, self.scale_high)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        zero = torch.zeros_like(cos)
        # affine_grid maps output to input coordinates: the inverse of "rotate, then scale"
        theta = torch.stack(
            [torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out = out + _bcast(uniform(-self.brightness, self.brightness), out)
        if self.noise > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            out = out + self.noise * noise
        return out.clamp(0.0, 1.0)


class TransformAveraged(nn.Module):
    """A randomized classifier: the mean of ``model``'s logits over ``samples`` fresh draws of ``family``."""

    def __init__(
        self,
        model: nn.Module,
        family: TransformFamily,
        samples: int = 8,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.model, self.family, self.samples, self.generator = model, family, samples, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean logits (N, K) over the draws (a new draw at every call)."""
        rep = x.repeat(self.samples, *([1] * (x.dim() - 1)))
        out = self.model(self.family(rep, self.generator))
        return out.view(self.samples, len(x), -1).mean(0)


def eot_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    generator: torch.Generator | None = None,
    steps: int = 20,
    samples: int = 8,
    family: TransformFamily | None = None,
    loss: str = "ce",
    step_size: float | None = None,
) -> torch.Tensor:
    """PGD on the expected loss E_t L(model(t(x_adv)), y), t ~ ``family`` (EOT, Athalye et al. 2018).

    Each step averages the input gradient over ``samples`` independent draws of t per
    point (one batched forward of samples x N images); step 2.5 eps / steps (linf, l2)
    from a random start, projection as in :func:`~dltbench.tasks.robust.attacks.pgd`.
    All ``steps`` are taken (the model may be randomized, so one draw fooling it proves
    nothing); the last iterate is returned.
    """
    check_norm(norm, ("linf", "l2"), who="EOT-PGD")
    family = family or TransformFamily()
    step = 2.5 * eps / steps if step_size is None else step_size
    loss_fn = _summed(loss)
    x = x.detach()
    xa = random_start(x, eps, norm, generator)
    for _ in range(steps):
        xa.requires_grad_(True)
        rep = xa.repeat(samples, *([1] * (x.dim() - 1)))
        logits = model(family(rep, generator))
        (grad,) = torch.autograd.grad(loss_fn(logits, y.repeat(samples)) / samples, xa)
        with torch.no_grad():
            xa = project(xa.detach() + step * ascent_direction(grad, norm), x, eps, norm)
    return xa.detach()


def expected_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    family: TransformFamily,
    draws: int = 64,
    generator: torch.Generator | None = None,
) -> float:
    """The fraction of (point, draw) pairs classified correctly through t ~ ``family``."""
    with torch.no_grad():
        rep = x.repeat(draws, *([1] * (x.dim() - 1)))
        pred = model(family(rep, generator)).argmax(1)
    return float((pred == y.repeat(draws)).float().mean())


#: Physical threat models: name -> (the norm of the digital budget, the world's family).
#: An attack is told the name; it finds the family here (plain parameters, so it can run
#: its own EOT), but never the draws that score it.
WORLDS: dict[str, tuple[str, TransformFamily]] = {"physical-linf": ("linf", TransformFamily())}
#: Transformations per candidate that pick each point's worst candidate, and the
#: independent ones that then score it (see :func:`world_scores`).
SELECT_DRAWS = 64
SCORE_DRAWS = 64


def digital_norm(norm: str) -> str:
    """The norm of ``norm``'s budget: itself for a digital threat model, the ball's norm for a physical one."""
    return WORLDS[norm][0] if norm in WORLDS else norm


@dataclass
class WorldResult:
    """Expected accuracies through the world, per point (arrays of shape (N,), in [0, 1])."""

    clean: np.ndarray  # E_t 1[f(t(x)) = y] (scoring draws)
    robust: np.ndarray  # the same for the worst candidate (picked on the selection draws)
    per_attack: dict[str, np.ndarray]  # the worst of {x, that attack's x_adv}, scored alike
    topk: dict[int, np.ndarray]  # E_t 1[rank of y in f(t(x*)) < k] for the worst candidate x*
    worst: np.ndarray  # index into the candidates' order of each point's worst candidate
    subsets: dict[str, np.ndarray]  # the same as ``robust`` for each named subset of candidates


def _ranks(model, x: torch.Tensor, y: torch.Tensor, family, seed: int, draws: int) -> torch.Tensor:
    """(draws, N) label ranks of ``model`` on t(x), t drawn from a generator seeded with ``seed``.

    The rows are asked in an order drawn from the same generator, so a model cannot find a
    point's draws by their place in the batch (the auditor catches pooling by content).
    """
    gen = torch.Generator(device=x.device).manual_seed(seed)
    rep = family(x.repeat(draws, *([1] * (x.dim() - 1))), gen)
    order = torch.randperm(len(rep), generator=gen, device=x.device)
    with torch.no_grad():
        asked = model(rep[order])
        logits = torch.empty_like(asked)
        logits[order] = asked
    return label_rank(logits, y.repeat(draws)).view(draws, len(x))


def world_scores(
    model: nn.Module,
    y: torch.Tensor,
    candidates: Mapping[str, torch.Tensor],
    family: TransformFamily,
    generator: torch.Generator | None = None,
    ks: tuple[int, ...] = (1, 3, 5),
    select_draws: int = SELECT_DRAWS,
    score_draws: int = SCORE_DRAWS,
    batch_size: int = 500,
    subsets: Mapping[str, list[str]] | None = None,
) -> WorldResult:
    """Each point's expected accuracy through ``family`` at its worst candidate input.

    ``candidates`` maps names to inputs of y's length, the first being the clean x. Two
    seeds are drawn from ``generator`` (the harness's stream, after every candidate
    exists); every candidate meets the same transformations (common random numbers).
    Each point's worst candidate is the one with the lowest accuracy on the
    ``select_draws`` selection draws; its score is its accuracy on ``score_draws``
    independent draws. That is an unbiased estimate of what a concrete adversary gets: one
    that prints the candidate its own ``select_draws`` simulations call worst. Like every
    attack's number it is an upper bound on the worst case (a wrong pick scores higher).
    The minimum of the candidates' scoring estimates would instead peek at the draws that
    score it, and is biased low (two equal candidates at p = 0.5 lose 0.035 on 64 draws).
    Top-k scores are those of the same (top-1 worst) candidate, so they grow with k.
    ``subsets`` names groups of candidates (each with the clean x) scored the same way.
    """
    names = list(candidates)
    device = y.device
    on = generator.device if generator is not None else torch.device("cpu")
    seeds = torch.randint(2**62, (2,), generator=generator, device=on).tolist()
    n = len(y)
    sel = torch.zeros(len(names), n, dtype=torch.float64, device=device)
    ranks = torch.zeros(len(names), score_draws, n, dtype=torch.long, device=device)
    for i in range(0, n, batch_size):
        b = slice(i, i + batch_size)
        for c, name in enumerate(names):
            xc = candidates[name][b].to(device)
            # per-batch seeds, the same for every candidate: each point meets the same t's
            right = _ranks(model, xc, y[b], family, seeds[0] + i, select_draws) == 0
            sel[c, b] = right.double().mean(0)
            ranks[c, :, b] = _ranks(model, xc, y[b], family, seeds[1] + i, score_draws)
    correct = (ranks == 0).double().mean(1)  # (candidates, N), on the scoring draws
    cols = torch.arange(n, device=device)

    def scored(rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        pick = torch.tensor(rows, device=device)[sel[rows].argmin(0)]  # ties: earliest candidate
        return correct[pick, cols], pick

    robust, worst = scored(list(range(len(names))))
    per_attack = {name: scored([0, c])[0].cpu().numpy() for c, name in enumerate(names) if c}
    groups = {
        key: scored([0, *(names.index(m) for m in members)])[0].cpu().numpy()
        for key, members in (subsets or {}).items()
    }  # fmt: skip
    topk = {k: (ranks[worst, :, cols] < k).double().mean(1).cpu().numpy() for k in ks}
    return WorldResult(
        correct[0].cpu().numpy(), robust.cpu().numpy(), per_attack, topk, worst.cpu().numpy(),
        groups,
    )  # fmt: skip


def draw_error(scores) -> float:
    """Standard error (fraction) of a mean of per-point world scores from the scoring draws alone.

    Each score is a mean of SCORE_DRAWS Bernoulli draws: variance p (1 - p) / SCORE_DRAWS
    per point, estimated at p = the score. The points are the same in every cell of a row,
    so this is the noise that separates two cells' estimates of the same quantity.
    """
    p = np.asarray(scores, dtype=float)
    if not len(p):
        return float("nan")
    return float(np.sqrt(np.sum(p * (1 - p)) / SCORE_DRAWS) / len(p))


def eot_square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    generator: torch.Generator | None = None,
    queries: int = 300,
    samples: int = 8,
    family: TransformFamily | None = None,
    rescale: bool = True,
) -> torch.Tensor:
    """Square Attack (gradient-free) on the logits averaged over ``samples`` fresh draws of t per query.

    The gradient-free member of the physical ensemble: a model whose input gradient lies
    (a decoy) stops EOT-PGD but not random search on its answers.
    """
    averaged = TransformAveraged(model, family or TransformFamily(), samples, generator)
    return square(averaged, x, y, eps, norm, generator, queries=queries, rescale=rescale)


#: Draws of t per point and step (query) of the ensemble's attacks, from the attack's
#: generator (the harness's ensemble: a stream of the evaluation that is not the world's).
EOT_SAMPLES = 8


def physical_ensemble(steps: int, queries: int, samples: int = EOT_SAMPLES) -> dict:
    """The harness's ensemble for a physical threat model: EOT-PGD on cross-entropy and on the
    margin, and Square on the draw-averaged logits (``queries`` queries)."""
    return {
        "eot-pgd": partial(eot_pgd, steps=steps, samples=samples, loss="ce"),
        "eot-pgd-cw": partial(eot_pgd, steps=steps, samples=samples, loss="cw"),
        "eot-square": partial(eot_square, queries=queries, samples=samples),
    }
