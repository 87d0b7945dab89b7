"""Guided sampling: classifier guidance (Dhariwal & Nichol 2021) and classifier-free
guidance (Ho & Salimans 2022), on one scale w.

Both sample (with the DDIM/DDPM walk of :func:`~.sampling.sample`) from the score

    grad log p_t(x) + w grad log p_t(y | x)
      = grad log p_t(x) + w (grad log p_t(x | y) - grad log p_t(x)),

so w = 0 is unguided (unconditional) sampling, w = 1 the class-conditional distribution
(exactly, for exact models) and w > 1 sharpens p(y | x) (the quality/diversity trade-off).
In noise space (eps = -sigma * score):

* classifier guidance: eps_w = eps(x, t) - w sigma_t grad_x log p(y | x_t, lambda_t), with
  a noise-conditional classifier p(y | x_t, lambda) (here the harness's own, see
  :class:`NoisyClassifier`);
* classifier-free: eps_w = eps(x, t) + w (eps(x, t | y) - eps(x, t)), with the model's
  conditional and unconditional predictions (one network trained with label dropout).

Ho & Salimans write the same as (1 + w') eps(x|y) - w' eps(x) with w' = w - 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...cache import cache_dir, code_version
from ...oracle import RemoteModule
from .schedules import LOG_SNR_END, to_eps

#: The log-SNR range the harness classifier is trained on: from below the samplers' start
#: (lambda = LOG_SNR_END) to above every built-in schedule's t_min (continuous cosine: 12.9).
LOG_SNR_RANGE = (LOG_SNR_END - 0.5, 13.0)

#: The harness classifier's fixed training recipe (every method's classifier guidance uses it).
CLASSIFIER_RECIPE = {"hidden": 256, "layers": 3, "n_freq": 8, "steps": 400, "batch_size": 256,
                     "lr": 2e-3, "schedule": "cosine decay", "optimizer": "Adam", "seed": 20220726,
                     "log_snr": "uniform on [{:g}, {:g}]".format(*LOG_SNR_RANGE),
                     "x0": "training split, uniformly dequantized in its bin (as the denoisers)"}  # fmt: skip


class NoisyClassifier(nn.Module):
    """p(y | x_t, lambda): an MLP on x_t and Fourier features of the log-SNR lambda (not t,
    so that one classifier serves every schedule)."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 256, layers: int = 3,
                 n_freq: int = 8):  # fmt: skip
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_freq, dtype=torch.float32))
        widths = [dim + 2 * n_freq + 1, *[hidden] * layers]
        mods: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            mods += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*mods, nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor, log_snr: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) of x_t (N, D) at log-SNR ``log_snr`` (N,)."""
        lo, hi = LOG_SNR_RANGE
        u = ((log_snr.to(x.dtype) - lo) / (hi - lo)).clamp(0, 1)[:, None]
        fu = u * self.freqs.to(x.dtype)
        return self.net(torch.cat([x, u, torch.sin(fu), torch.cos(fu)], 1))


def train_noisy_classifier(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, levels: int | None
) -> NoisyClassifier:
    """Train :class:`NoisyClassifier` by :data:`CLASSIFIER_RECIPE` on points x (N, D) (on the
    grid -1 + 2k/(K-1) when ``levels`` = K) with labels y (N,); CPU, deterministic."""
    r = CLASSIFIER_RECIPE
    gen = torch.Generator().manual_seed(r["seed"])
    with _seeded(r["seed"]):
        net = NoisyClassifier(x.shape[1], num_classes, r["hidden"], r["layers"], r["n_freq"])
    opt = torch.optim.Adam(net.parameters(), lr=r["lr"])
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, r["steps"])
    x, y = x.to(torch.float32).cpu(), y.long().cpu()
    width = 0.0 if levels is None else 2.0 / (levels - 1)
    lo, hi = LOG_SNR_RANGE
    for _ in range(r["steps"]):
        idx = torch.randint(0, len(x), (r["batch_size"],), generator=gen)
        x0 = x[idx] + width * (torch.rand(x[idx].shape, generator=gen) - 0.5)
        lam = lo + (hi - lo) * torch.rand(len(x0), generator=gen)
        alpha, sigma = torch.sigmoid(lam).sqrt()[:, None], torch.sigmoid(-lam).sqrt()[:, None]
        x_t = alpha * x0 + sigma * torch.randn(x0.shape, generator=gen)
        loss = F.cross_entropy(net(x_t, lam), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay.step()
    return net.eval()


@contextlib.contextmanager
def _seeded(seed: int):
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


_MEMO: dict[str, tuple[NoisyClassifier, str]] = {}


def harness_classifier(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, levels: int | None
) -> tuple[NoisyClassifier, str]:
    """The harness's noise-conditional classifier of the training split, and its sha256.

    Trained once per content (data, labels, recipe, dltbench code version) and kept in
    memory and in ``$DLTBENCH_CACHE_DIR/diffusion-classifiers`` (else ~/.cache/dltbench),
    so the cells of one run share it; a change of any input retrains it.
    """
    h = hashlib.sha256()
    for t in (x.to(torch.float64), y.long()):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps([CLASSIFIER_RECIPE, num_classes, levels, code_version()]).encode())
    key = h.hexdigest()[:24]
    if key in _MEMO:
        return _MEMO[key]
    path = cache_dir("diffusion-classifiers") / f"{key}.pt"
    net = NoisyClassifier(x.shape[1], num_classes, CLASSIFIER_RECIPE["hidden"],
                          CLASSIFIER_RECIPE["layers"], CLASSIFIER_RECIPE["n_freq"])  # fmt: skip
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        net.eval()
    except (OSError, RuntimeError, ValueError):
        net = train_noisy_classifier(x, y, num_classes, levels)
        with contextlib.suppress(OSError):  # a read-only cache costs time, not correctness
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(net.state_dict(), tmp)
            tmp.replace(path)
    digest = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        digest.update(k.encode())
        digest.update(v.detach().cpu().contiguous().numpy().tobytes())
    _MEMO[key] = (net, digest.hexdigest())
    return _MEMO[key]


EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _model_dtype(model) -> torch.dtype:
    return (
        next(iter(model.parameters()), torch.empty(0)).dtype
        if hasattr(model, "parameters")
        else torch.float32
    )


def cfg_eps(model, y: torch.Tensor, w: torch.Tensor) -> EpsFn:
    """Classifier-free guided eps-hat: eps(x) + w (eps(x | y) - eps(x)), per row's y and w.

    One call of ``model.conditional`` per step with the unconditional rows (label -1) and
    the conditional ones stacked, so a step is one round trip to a remote model.
    """
    dtype = _model_dtype(model)
    null = torch.full_like(y, -1)

    def eps_fn(x, t, alpha, sigma):
        n = len(x)
        xx, tt = torch.cat([x, x]).to(dtype), torch.cat([t, t]).to(dtype)
        out = _conditional(model, xx, tt, torch.cat([null, y])).to(torch.float64)
        e = to_eps(out, model.prediction, torch.cat([x, x]), alpha, sigma)
        e_u, e_c = e[:n], e[n:]
        return e_u + w.to(e.dtype)[:, None] * (e_c - e_u)

    return eps_fn


def _conditional(model, x, t, y):
    if isinstance(model, RemoteModule):  # one checked, audited call of the plugin's model
        return model.method("conditional", x, t, y)
    return model.conditional(x, t, y)


def classifier_eps(model, classifier: nn.Module, y: torch.Tensor, w: torch.Tensor) -> EpsFn:
    """Classifier-guided eps-hat: eps(x) - w sigma_t grad_x log p(y | x_t, lambda_t), per row."""
    dtype = _model_dtype(model)
    lam_of = model.schedule.log_snr

    def eps_fn(x, t, alpha, sigma):
        out = model(x.to(dtype), t.to(dtype)).to(torch.float64)
        eps = to_eps(out, model.prediction, x, alpha, sigma)
        return eps - w.to(eps.dtype)[:, None] * sigma * classifier_grad(
            classifier, x, lam_of(t), y
        )

    return eps_fn


def classifier_grad(
    classifier: nn.Module, x: torch.Tensor, log_snr: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """grad_x log p(y | x, lambda) per row (N, D), float64."""
    pdtype = next(iter(classifier.parameters()), torch.empty(0, dtype=x.dtype)).dtype
    with torch.enable_grad():
        xg = x.detach().to(pdtype).requires_grad_(True)
        logp = torch.log_softmax(classifier(xg, log_snr.to(pdtype)), 1)
        sel = logp.gather(1, y.long()[:, None]).sum()
        (grad,) = torch.autograd.grad(sel, xg)
    return grad.to(torch.float64)


def guidance_labels(n: int, num_classes: int) -> torch.Tensor:
    """The classes asked for: n labels cycling 0, 1, ..., K-1 (balanced; n/K per class)."""
    return torch.arange(n) % num_classes


def stack_scales(
    scales: Sequence[float], n: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and scales for one batched walk: n rows per scale, the same labels at each scale."""
    y = guidance_labels(n, num_classes).repeat(len(scales))
    w = torch.tensor([float(s) for s in scales], dtype=torch.float64).repeat_interleave(n)
    return y, w
