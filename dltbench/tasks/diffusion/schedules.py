"""Variance-preserving noise schedules and conversions between network parameterizations.

Every schedule is described by its log signal-to-noise ratio lambda(t) on t in [0, 1]
(decreasing), with x_t = alpha_t x_0 + sigma_t eps, alpha_t^2 = sigmoid(lambda),
sigma_t^2 = sigmoid(-lambda). A discrete schedule (DDPM's alphas-cumprod a_1..a_T) puts
step i at t = i / T and interpolates lambda linearly in t between steps, which is what
the probability-flow ODE needs. Schedule arithmetic runs in float64: 1 - alpha_bar near
t = 0 is ~1e-4 and float32 would keep only three digits of it.
"""

from __future__ import annotations

import math

import torch

PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v", "score")


class Schedule:
    """A VP noise schedule: ``log_snr(t)`` for t in [0, 1], and the smallest time ``t_min`` used."""

    t_min: float = 1e-3

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = log(alpha_t^2 / sigma_t^2), float64, same shape as ``t``."""
        raise NotImplementedError

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t), float64."""
        lam = self.log_snr(t)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()

    def log_snr_and_derivative(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lambda(t), d lambda / dt), float64, by automatic differentiation of ``log_snr``."""
        with torch.enable_grad():
            tt = t.detach().to(torch.float64).requires_grad_(True)
            lam = self.log_snr(tt)
            (dlam,) = torch.autograd.grad(lam.sum(), tt)
        return lam.detach(), dlam

    def timesteps(self, steps: int) -> torch.Tensor:
        """``steps`` increasing times in [t_min, 1] for the VLB and samplers (float64)."""
        return torch.linspace(self.t_min, 1.0, steps, dtype=torch.float64)

    def describe(self) -> dict:
        """A JSON-ready description for records."""
        return {"type": type(self).__name__, "t_min": self.t_min}

    def to_state(self) -> dict:
        """Everything that rebuilds the schedule (plain data; crosses the plugin boundary)."""
        return self.describe()


class LinearSchedule(Schedule):
    """The continuous-time limit of DDPM's linear betas (Song et al. 2021's VP SDE).

    log alpha_bar(t) = -(beta_min t + (beta_max - beta_min) t^2 / 2); with beta_min=0.1,
    beta_max=20 this is DDPM's 1e-4..0.02 over T=1000 steps.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        self.beta_min, self.beta_max, self.t_min = beta_min, beta_max, t_min

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float64)
        log_abar = -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)
        return log_abar - torch.log(-torch.expm1(log_abar))

    def describe(self) -> dict:
        return {**super().describe(), "beta_min": self.beta_min, "beta_max": self.beta_max}


class CosineSchedule(Schedule):
    """Nichol & Dhariwal 2021: alpha_bar(t) = cos^2(pi/2 (t+s)/(1+s)) / cos^2(pi/2 s/(1+s)).

    lambda is clipped below at ``log_snr_min`` (alpha_bar(1) = 0 exactly), which plays the
    role of their clipping of betas at 0.999.
    """

    def __init__(self, s: float = 0.008, log_snr_min: float = -20.0, t_min: float = 1e-3):
        self.s, self.log_snr_min, self.t_min = s, log_snr_min, t_min

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float64)
        u = (t + self.s) / (1 + self.s) * (math.pi / 2)
        u0 = self.s / (1 + self.s) * (math.pi / 2)
        # cos^2 u0 - cos^2 u = sin(u - u0) sin(u + u0): no cancellation near t = 0.
        lam = 2 * torch.log(torch.cos(u).clamp_min(1e-300)) - torch.log(
            torch.sin(u - u0) * torch.sin(u + u0)
        )
        return lam.clamp_min(self.log_snr_min)

    def describe(self) -> dict:
        return {**super().describe(), "s": self.s, "log_snr_min": self.log_snr_min}


class DiscreteSchedule(Schedule):
    """DDPM's discrete alphas-cumprod a_1..a_T: step i sits at t = i/T; lambda is linear between steps."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        a = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if len(a) < 2 or not bool(((a > 0) & (a < 1)).all()) or not bool((a[1:] <= a[:-1]).all()):
            raise ValueError("alphas_cumprod must be decreasing, in (0, 1), with at least 2 steps")
        self.alphas_cumprod = a
        self.steps = len(a)
        self.t_min = 1.0 / len(a)
        self._lam = torch.log(a) - torch.log1p(-a)

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float64)
        lam = self._lam.to(t.device)
        pos = t * self.steps - 1  # 0-based step index as a real number
        i = pos.detach().floor().clamp(0, self.steps - 2).long()
        w = pos - i
        return lam[i] * (1 - w) + lam[i + 1] * w

    def timesteps(self, steps: int | None = None) -> torch.Tensor:
        """The schedule's own steps i/T (``steps`` evenly spaced ones of them if given)."""
        n = self.steps if steps is None or steps >= self.steps else steps
        idx = torch.linspace(1, self.steps, n, dtype=torch.float64).round()
        return idx / self.steps

    def describe(self) -> dict:
        return {**super().describe(), "steps": self.steps}

    def to_state(self) -> dict:
        return {"type": "DiscreteSchedule", "alphas_cumprod": self.alphas_cumprod.tolist()}


def schedule_from_state(state: object) -> Schedule:
    """Rebuild one of the built-in schedule families from :meth:`Schedule.to_state` (harness
    side: a plugin's schedule is data, never code); raises ValueError for anything else."""
    if not isinstance(state, dict) or not isinstance(state.get("type"), str):
        raise ValueError("the model's schedule must be a dltbench diffusion Schedule")
    kind, args = state["type"], {k: v for k, v in state.items() if k != "type"}
    families = {"LinearSchedule": LinearSchedule, "CosineSchedule": CosineSchedule,
                "DiscreteSchedule": DiscreteSchedule}  # fmt: skip
    if kind not in families:
        raise ValueError(f"schedule {kind!r} is not one of {', '.join(families)}")
    if kind == "DiscreteSchedule":
        sched: Schedule = DiscreteSchedule(
            torch.tensor(args.get("alphas_cumprod"), dtype=torch.float64)
        )
    else:
        allowed = {"LinearSchedule": ("beta_min", "beta_max", "t_min"),
                   "CosineSchedule": ("s", "log_snr_min", "t_min")}[kind]  # fmt: skip
        if set(args) - set(allowed) or not all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in args.values()
        ):
            raise ValueError(f"bad {kind} parameters: {args}")
        sched = families[kind](**args)
    # A forward process adds noise: log-SNR must fall with t (else the VLB's KL terms go
    # negative and a model can make the bound as low as it likes).
    if not 0 < float(sched.t_min) < 1:
        raise ValueError(f"t_min must be in (0, 1), got {sched.t_min}")
    lam = sched.log_snr(torch.linspace(float(sched.t_min), 1.0, 1001, dtype=torch.float64))
    steps = lam[1:] - lam[:-1]
    if not bool(torch.isfinite(lam).all()) or bool((steps > 0).any()) or not lam[-1] < lam[0]:
        raise ValueError(f"the {kind}'s log-SNR must be finite and decreasing on [t_min, 1]")
    return sched


#: Where the ODE and the samplers start from N(0, I): lambda = -10.5, alpha^2 = 2.8e-5 (the linear
#: VP schedule ends at -10.05, so t = 1 for it). The cosine schedules go on to -20 in their last
#: steps (Nichol & Dhariwal clip beta at 0.999 there); any error in eps-hat moves x by
#: |d lambda| / 2 times that error along the ODE, and those few steps add nothing to the prior fit.
LOG_SNR_END = -10.5


def t_max(schedule: Schedule, log_snr_end: float | None = LOG_SNR_END) -> float:
    """The time in (t_min, 1] where lambda first reaches ``log_snr_end`` (1 if it never does)."""
    if (
        log_snr_end is None
        or float(schedule.log_snr(torch.ones(1, dtype=torch.float64))[0]) >= log_snr_end
    ):
        return 1.0
    lo, hi = float(schedule.t_min), 1.0
    for _ in range(60):  # lambda is decreasing: bisection to float64 resolution
        mid = 0.5 * (lo + hi)
        lo, hi = (
            (mid, hi)
            if float(schedule.log_snr(torch.tensor([mid], dtype=torch.float64))[0]) > log_snr_end
            else (lo, mid)
        )
    return hi


def linear_alphas_cumprod(steps: int = 1000) -> torch.Tensor:
    """Ho et al. 2020's linear betas (1e-4 to 0.02 at T=1000, scaled by 1000/T) as alphas-cumprod."""
    scale = 1000 / steps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def cosine_alphas_cumprod(
    steps: int = 1000, s: float = 0.008, max_beta: float = 0.999
) -> torch.Tensor:
    """Nichol & Dhariwal 2021's cosine schedule as alphas-cumprod (betas clipped at ``max_beta``)."""
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1 - betas, 0)


def to_eps(pred: torch.Tensor, kind: str, x_t: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """The noise prediction eps-hat implied by a network output of type ``kind`` at x_t."""
    if kind == "eps":
        return pred
    if kind == "x0":
        return (x_t - alpha * pred) / sigma
    if kind == "v":  # v = alpha eps - sigma x0 (Salimans & Ho 2022)
        return sigma * x_t + alpha * pred
    if kind == "score":  # grad log p_t(x_t) = -eps / sigma
        return -sigma * pred
    raise ValueError(f"unknown prediction {kind!r}; use one of {PREDICTIONS}")


def to_x0(pred: torch.Tensor, kind: str, x_t: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """The data prediction x0-hat implied by a network output of type ``kind`` at x_t."""
    if kind == "x0":
        return pred
    if kind == "v":
        return alpha * x_t - sigma * pred
    return (x_t - sigma * to_eps(pred, kind, x_t, alpha, sigma)) / alpha


def convert(
    pred: torch.Tensor, src: str, dst: str, x_t: torch.Tensor, alpha, sigma
) -> torch.Tensor:
    """A prediction of type ``src`` re-expressed as type ``dst`` (eps, x0, v or score)."""
    eps = to_eps(pred, src, x_t, alpha, sigma)
    x0 = to_x0(pred, src, x_t, alpha, sigma)
    if dst == "eps":
        return eps
    if dst == "x0":
        return x0
    if dst == "v":
        return alpha * eps - sigma * x0
    if dst == "score":
        return -eps / sigma
    raise ValueError(f"unknown prediction {dst!r}; use one of {PREDICTIONS}")
