"""Built-in ``diffusion`` methods, registered exactly as a third-party plugin would be.

All three train a small MLP denoiser with the "simple" mean-squared loss on its declared
target; they differ in schedule and parameterization.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...api import Context
from ...registry import register_method
from .data import DiffusionData
from .schedules import (
    CosineSchedule,
    DiscreteSchedule,
    Schedule,
    convert,
    cosine_alphas_cumprod,
    linear_alphas_cumprod,
)
from .task import DiffusionConfig, DiffusionMethod


class MLPDenoiser(nn.Module):
    """An MLP ``(x, t) -> prediction`` with Fourier features of t, carrying its schedule.

    With ``num_classes`` = K > 0 it also takes a class: a one-hot of K + 1 entries (the
    last one "no class") is part of the input; ``forward`` is the unconditional model and
    ``conditional(x, t, y)`` the class-conditional one (y = -1: unconditional).
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        layers: int,
        schedule: Schedule,
        prediction: str,
        n_freq: int = 8,
        num_classes: int = 0,
    ):
        super().__init__()
        self.schedule, self.prediction, self.num_classes = schedule, prediction, num_classes
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_freq, dtype=torch.float32))
        widths = [
            dim + 2 * n_freq + 1 + (num_classes + 1 if num_classes else 0),
            *[hidden] * layers,
        ]
        mods: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            mods += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*mods, nn.Linear(hidden, dim))
        # At low SNR the optimal eps-hat is ~x_t; an MLP's error there is multiplied by
        # |d lambda| / 2 along the ODE, so eps-nets learn only the residual eps-hat - x_t.
        self.residual = prediction == "eps"

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The unconditional prediction (N, D)."""
        y = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
        return self.conditional(x, t, y) if self.num_classes else self._run(x, t, [])

    def conditional(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The prediction (N, D) given classes y (N,) in 0..K-1, or -1 for none."""
        if not self.num_classes:
            raise ValueError("this denoiser was trained without classes")
        y = y.long().to(x.device)
        y = torch.where((y >= 0) & (y < self.num_classes), y, self.num_classes)
        onehot = torch.nn.functional.one_hot(y, self.num_classes + 1).to(x.dtype)
        return self._run(x, t, [onehot])

    def _run(self, x: torch.Tensor, t: torch.Tensor, extra: list[torch.Tensor]) -> torch.Tensor:
        ft = t[:, None] * self.freqs
        out = self.net(torch.cat([x, t[:, None], torch.sin(ft), torch.cos(ft), *extra], 1))
        return out + x if self.residual else out


class _MLPDiffusion(DiffusionMethod):
    """Shared training loop; subclasses choose the schedule and the prediction."""

    prediction = "eps"

    def __init__(
        self,
        hidden: int = 0,
        layers: int = 3,
        lr: float = 2e-3,
        timesteps: int = 1000,
        p_uncond: float = 0.2,
    ):
        self.hidden = hidden  # 0: 128 for 2-D data, 256 above
        self.layers = layers
        self.lr = lr
        self.timesteps = timesteps
        # Labelled data (digits): classifier-free guidance's label dropout (Ho & Salimans 2022
        # found 0.1-0.2 best); one network is both the conditional and the unconditional model.
        self.p_uncond = p_uncond

    def schedule(self) -> Schedule:
        """The noise schedule the model is trained with and declares."""
        raise NotImplementedError

    def train(self, data: DiffusionData, config: DiffusionConfig, ctx: Context) -> nn.Module:
        """Minimise E ||target - net(x_t, t)||^2 over t, noise and minibatches for ``config.train_steps`` steps."""
        sched, dev = self.schedule(), ctx.device
        hidden = self.hidden or (128 if data.dim <= 2 else 256)
        classes = data.num_classes if data.labels is not None else 0
        model = MLPDenoiser(
            data.dim, hidden, self.layers, sched, self.prediction, num_classes=classes
        ).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.train_steps)
        g = ctx.device_generator()
        x_all = data.train.to(dev, torch.float32)
        y_all = data.labels.to(dev) if classes else None
        # Discrete data is trained on with the same uniform dequantization the ODE NLL uses.
        width = 0.0 if data.levels is None else 2.0 / (data.levels - 1)
        for step in range(config.train_steps):
            idx = torch.randint(0, len(x_all), (config.batch_size,), generator=g, device=dev)
            x0 = x_all[idx] + width * (torch.rand(x_all[idx].shape, generator=g, device=dev) - 0.5)
            if isinstance(sched, DiscreteSchedule):
                t = (
                    torch.randint(1, sched.steps + 1, (len(x0),), generator=g, device=dev)
                    / sched.steps
                )
            else:
                t = sched.t_min + (1 - sched.t_min) * torch.rand(len(x0), generator=g, device=dev)
            alpha, sigma = (v.float()[:, None] for v in sched.alpha_sigma(t))
            eps = torch.randn(x0.shape, generator=g, device=dev)
            x_t = alpha * x0 + sigma * eps
            target = convert(eps, "eps", self.prediction, x_t, alpha, sigma)
            if classes:
                drop = torch.rand(len(x0), generator=g, device=dev) < self.p_uncond
                pred = model.conditional(x_t, t.float(), torch.where(drop, -1, y_all[idx]))
            else:
                pred = model(x_t, t.float())
            loss = ((pred - target) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            decay.step()
            if step % 200 == 0:
                ctx.progress("train", step, config.train_steps)
        return model.eval()


@register_method(task="diffusion", name="ddpm")
class DDPM(_MLPDiffusion):
    """Ho et al. 2020: epsilon-prediction, linear betas 1e-4..0.02 over T discrete steps."""

    version = "2"

    def schedule(self) -> Schedule:
        return DiscreteSchedule(linear_alphas_cumprod(self.timesteps))


@register_method(task="diffusion", name="ddpm-cosine")
class DDPMCosine(_MLPDiffusion):
    """Nichol & Dhariwal 2021: epsilon-prediction, cosine alphas-cumprod over T discrete steps."""

    version = "2"

    def schedule(self) -> Schedule:
        return DiscreteSchedule(cosine_alphas_cumprod(self.timesteps))


@register_method(task="diffusion", name="v-pred")
class VPrediction(_MLPDiffusion):
    """Salimans & Ho 2022: v-prediction, continuous-time cosine log-SNR schedule."""

    version = "2"
    prediction = "v"

    def schedule(self) -> Schedule:
        return CosineSchedule()
