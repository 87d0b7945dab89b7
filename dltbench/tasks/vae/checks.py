"""The harness's checks of a returned model: protocol, distribution shapes, finite log-probs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution

from ...api import InvalidArtifact
from .bounds import draw

#: Test points the probe uses.
PROBE = 8


@dataclass
class ModelInfo:
    """A checked model and what the evaluator needs to know about it."""

    model: Any
    conditional: bool
    has_likelihood: bool
    latent_dim: int


def _call(what: str, fn, *args) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        raise InvalidArtifact(f"{what} raised {type(exc).__name__}: {exc}") from exc


def _dist(what: str, d: Any, batch: tuple[tuple[int, ...], ...], event: tuple[int, ...] | None):
    if not isinstance(d, Distribution):
        raise InvalidArtifact(
            f"{what} must return a torch.distributions.Distribution, got {type(d).__name__}"
        )
    if tuple(d.batch_shape) not in batch:
        raise InvalidArtifact(
            f"{what} has batch shape {tuple(d.batch_shape)}; expected one of {list(batch)}"
        )
    if event is None:
        if len(d.event_shape) != 1:
            raise InvalidArtifact(
                f"{what} must have a 1-d event shape (L,), got {tuple(d.event_shape)}"
            )
    elif tuple(d.event_shape) != event:
        raise InvalidArtifact(f"{what} has event shape {tuple(d.event_shape)}; expected {event}")
    return d


def _finite(what: str, d: Distribution, value: torch.Tensor, n: int) -> None:
    lp = _call(f"{what}.log_prob", d.log_prob, value)
    if not isinstance(lp, torch.Tensor) or lp.shape != (n,):
        shape = tuple(lp.shape) if isinstance(lp, torch.Tensor) else type(lp).__name__
        raise InvalidArtifact(f"{what}.log_prob must give shape ({n},), got {shape}")
    if not torch.isfinite(lp).all():
        raise InvalidArtifact(f"{what}.log_prob is not finite (NaN or inf) on test points")


def check_model(
    artifact: Any, data: Any, device: torch.device, generator: torch.Generator
) -> ModelInfo:
    """Probe ``artifact`` on a few test points; raise InvalidArtifact with the reason if it breaks
    the protocol (see :class:`dltbench.tasks.vae.VAEMethod`)."""
    for name in ("encode", "decode", "prior"):
        if not callable(getattr(artifact, name, None)):
            raise InvalidArtifact(
                f"the model must have encode(x), decode(z) and prior() methods; {name} is missing"
            )
    model = artifact.to(device).eval() if isinstance(artifact, nn.Module) else artifact
    conditional = bool(getattr(model, "conditional", False))
    x = data.test.x[:PROBE].to(device)
    n, d = x.shape
    extra = (data.test.y[:n].to(device),) if conditional else ()
    with torch.no_grad():
        q = _dist("encode(x)", _call("encode(x)", model.encode, x, *extra), ((n,),), None)
        latent = int(q.event_shape[0])
        z = _call("sampling q(z|x)", draw, q, (), generator)
        if (
            not isinstance(z, torch.Tensor)
            or z.shape != (n, latent)
            or not torch.isfinite(z).all()
        ):
            raise InvalidArtifact(f"samples of q(z|x) must be finite with shape ({n}, {latent})")
        px = _dist("decode(z)", _call("decode(z)", model.decode, z, *extra), ((n,),), (d,))
        _finite("decode(z)", px, x, n)
        prior = _call("prior()", model.prior, *extra)
        if prior is not None:
            _dist("prior()", prior, ((), (n,)), (latent,))
            _finite("prior()", prior, z, n)
            _finite("encode(x)", q, z, n)
    return ModelInfo(model, conditional, prior is not None, latent)
