"""Built-in defenses (``robust`` task) and attacks (``attack`` task), registered as plugins are."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ...api import Context
from ...data import ImageDataset
from ...models import default_classifier, fit_classifier
from ...registry import register_method
from .apgd import apgd, apgd_targeted
from .attack_task import AttackMethod
from .attacks import fgsm, pgd, universal
from .defenses import fgsm_at_loss, pgd_at_loss, standard_loss, trades_loss
from .physical import WORLDS, digital_norm, eot_pgd
from .sparse import sparse_rs
from .square import square
from .task import DefenseMethod, RobustConfig

#: Threat models of the gradient attacks that have a pixel-budget form (PGD-l0 steps and the
#: exact l0 or patch projection), and the physical ones, which they attack digitally (in the
#: ball, ignoring the world: the baseline EOT is measured against).
ALL_NORMS = ("linf", "l2", "l0", "patch", *WORLDS)


class _Trained(DefenseMethod):
    """Shared constructor and training loop of the built-in defenses."""

    def __init__(self, lr: float = 1e-3, batch_size: int = 64):
        self.lr = lr
        self.batch_size = batch_size

    def loss(self, config: RobustConfig):
        """The per-minibatch loss for ``config``'s threat model."""
        raise NotImplementedError

    def train(self, data: ImageDataset, config: RobustConfig, ctx: Context) -> nn.Module:
        """Train the reference classifier for ``config.epochs`` with this defense's loss."""
        # a physical row's budget is its digital ball; the built-ins train for the ball alone
        config = dataclasses.replace(config, norm=digital_norm(config.norm))
        model = default_classifier(data.shape, data.num_classes)
        return fit_classifier(
            model, data.train, self.loss(config), ctx, config.epochs, self.batch_size, self.lr
        )


@register_method(task="robust", name="standard")
class Standard(_Trained):
    """Cross-entropy on clean inputs: the undefended baseline."""

    version = "1"

    def loss(self, config: RobustConfig):
        """Plain cross-entropy."""
        return standard_loss()


@register_method(task="robust", name="fgsm-at")
class FGSMAT(_Trained):
    """Fast adversarial training (Wong et al. 2020): FGSM from a random start, step 1.25 eps."""

    version = "1"

    def __init__(self, alpha: float = 1.25, lr: float = 1e-3, batch_size: int = 64):
        super().__init__(lr, batch_size)
        self.alpha = alpha

    def loss(self, config: RobustConfig):
        """Cross-entropy at the random-start FGSM point."""
        return fgsm_at_loss(config.eps, config.norm, self.alpha)


@register_method(task="robust", name="pgd-at")
class PGDAT(_Trained):
    """PGD adversarial training (Madry et al. 2018): cross-entropy at a PGD point of the threat model."""

    version = "1"

    def loss(self, config: RobustConfig):
        """Cross-entropy at a random-start PGD point with config.at_steps steps."""
        return pgd_at_loss(config.eps, config.norm, config.at_steps)


@register_method(task="robust", name="trades")
class TRADES(_Trained):
    """TRADES (Zhang et al. 2019): clean cross-entropy + beta * KL(f(x) || f(x')) at a worst x'."""

    version = "1"

    def __init__(self, beta: float = 6.0, lr: float = 1e-3, batch_size: int = 64):
        super().__init__(lr, batch_size)
        self.beta = beta

    def loss(self, config: RobustConfig):
        """The TRADES loss with config.at_steps inner steps."""
        return trades_loss(config.eps, config.norm, config.at_steps, self.beta)


@register_method(task="attack", name="fgsm")
class FGSM(AttackMethod):
    """FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps (l2: normalised gradient; l0: one PGD-l0 step)."""

    version = "2"
    norms = ALL_NORMS

    def perturb(self, model, x, y, eps, norm, generator) -> torch.Tensor:
        """One step on the cross-entropy."""
        return fgsm(model, x, y, eps, digital_norm(norm), generator)


@register_method(task="attack", name="pgd")
class PGD(AttackMethod):
    """PGD (Madry et al. 2018) on cross-entropy: random start, step 2.5 eps / steps, restarts; on l0, PGD-l0 (Croce & Hein 2019)."""

    version = "2"
    norms = ALL_NORMS

    def __init__(self, steps: int = 20, restarts: int = 1):
        self.steps = steps
        self.restarts = restarts

    def perturb(self, model, x, y, eps, norm, generator) -> torch.Tensor:
        """Projected gradient ascent."""
        return pgd(
            model,
            x,
            y,
            eps,
            digital_norm(norm),
            generator,
            steps=self.steps,
            restarts=self.restarts,
        )


@register_method(task="attack", name="cw")
class CW(AttackMethod):
    """PGD on the Carlini-Wagner margin loss max_{j!=y} z_j - z_y (the CW-l2/linf-style PGD; PGD-l0 on l0)."""

    version = "2"
    norms = ALL_NORMS

    def __init__(self, steps: int = 50, restarts: int = 1):
        self.steps = steps
        self.restarts = restarts

    def perturb(self, model, x, y, eps, norm, generator) -> torch.Tensor:
        """Projected gradient ascent on the margin."""
        return pgd(
            model, x, y, eps, digital_norm(norm), generator, steps=self.steps,
            restarts=self.restarts, loss="cw",
        )  # fmt: skip


@register_method(task="attack", name="apgd-ce")
class APGDCE(AttackMethod):
    """APGD-CE (Croce & Hein 2020): momentum and automatic step size on cross-entropy."""

    version = "1"

    def __init__(self, steps: int = 100, restarts: int = 1):
        self.steps = steps
        self.restarts = restarts

    def perturb(self, model, x, y, eps, norm, generator) -> torch.Tensor:
        """APGD on the cross-entropy."""
        return apgd(
            model, x, y, eps, norm, generator, steps=self.steps, loss="ce", restarts=self.restarts
        )


@register_method(task="attack", name="apgd-t")
class APGDT(AttackMethod):
    """APGD-T (Croce & Hein 2020): APGD on the targeted DLR loss towards the top classes in turn."""

    version = "1"

    def __init__(self, steps: int = 100, n_targets: int = 9):
        self.steps = steps
        self.n_targets = n_targets

    def perturb(self, model, x, y, eps, norm, generator) -> torch.Tensor:
        """Targeted APGD-DLR over n_targets target classes."""
        return apgd_targeted(
            model, x, y, eps, norm, generator, steps=self.steps, n_targets=self.n_targets
        )


@register_method(task="attack", name="square")
class Square(AttackMethod):
    """Square Attack (Andriushchenko et al. 2020): gradient-free random search with square updates."""

    version = "2"

    def __init__(self, queries: int = 1000):
        self.queries = queries

    def perturb(self, model, x, y, eps, norm, generator) -> torch.Tensor:
        """Random search on the margin loss, at most ``queries`` forward passes per point."""
        return square(model, x, y, eps, norm, generator, queries=self.queries)


@register_method(task="attack", name="universal")
class Universal(AttackMethod):
    """Universal perturbation: one delta for the whole batch, by projected gradient ascent."""

    version = "2"
    norms = ALL_NORMS

    def __init__(self, steps: int = 40):
        self.steps = steps

    def perturb(self, model, x, y, eps, norm, generator) -> torch.Tensor:
        """A single input-agnostic perturbation for all points of the batch."""
        return universal(model, x, y, eps, digital_norm(norm), generator, steps=self.steps)


@register_method(task="attack", name="sparse-rs")
class SparseRS(AttackMethod):
    """Sparse-RS (Croce et al. 2022): random search over k corner-coloured pixels, l0 only."""

    version = "1"
    norms = ("l0",)

    def __init__(self, queries: int = 500, alpha_init: float = 0.3):
        self.queries = queries
        self.alpha_init = alpha_init

    def perturb(self, model, x, y, eps, norm, generator) -> torch.Tensor:
        """Random search on the margin loss, at most ``queries`` forward passes per point."""
        return sparse_rs(
            model, x, y, eps, norm, generator, queries=self.queries, alpha_init=self.alpha_init
        )


@register_method(task="attack", name="eot-pgd")
class EOTPGD(AttackMethod):
    """EOT-PGD (Athalye et al. 2018): PGD on the loss averaged over draws of the world's transformations."""

    version = "1"
    norms = tuple(WORLDS)

    def __init__(self, steps: int = 20, samples: int = 8):
        self.steps = steps
        self.samples = samples

    def perturb(self, model, x, y, eps, norm, generator) -> torch.Tensor:
        """Signed-gradient ascent on E_t CE(model(t(x_adv)), y), ``samples`` draws of t per step."""
        budget, family = WORLDS[norm]
        return eot_pgd(
            model, x, y, eps, budget, generator, steps=self.steps, samples=self.samples,
            family=family,
        )  # fmt: skip
