"""Reference image classifiers and a training loop shared by the classification tasks.

Methods may use these (most built-ins do) or bring their own ``nn.Module``; the
evaluators only need a module mapping a batch (N, C, H, W) in [0, 1] to logits (N, K).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .api import Context, InvalidArtifact
from .data import Split

#: ``loss_fn(model, x, y, generator) -> scalar loss`` for one minibatch.
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


class MLP(nn.Module):
    """A two-hidden-layer ReLU perceptron on flattened pixels; the 8x8 digits reference."""

    def __init__(self, in_features: int = 64, num_classes: int = 10, width: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) of images (N, C, H, W) in [0, 1]."""
        return self.net(x)


class SmallCNN(nn.Module):
    """Two 3x3 conv layers and a two-layer head; the 28x28 MNIST reference."""

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, side: int = 8, width: int = 32
    ):
        super().__init__()
        pooled = side // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * pooled * pooled, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) of images (N, C, H, W) in [0, 1]."""
        return self.head(self.features(x))


def default_classifier(shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The reference architecture for a dataset's image shape (C, H, W)."""
    c, h, w = shape
    if h <= 8:  # tiny inputs: an MLP certifies ~15x faster than a CNN at equal accuracy
        return MLP(c * h * w, num_classes)
    if h <= 28:
        return SmallCNN(c, num_classes, side=h)
    try:  # paper scale: a ResNet-18 with a CIFAR stem, from timm
        import timm
    except ImportError as exc:
        raise RuntimeError(
            "32x32 and larger images use timm's resnet18: pip install 'dltbench[data]'"
        ) from exc
    model = timm.create_model("resnet18", pretrained=False, num_classes=num_classes, in_chans=c)
    model.conv1 = nn.Conv2d(c, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def fit_classifier(
    model: nn.Module,
    data: Split,
    loss_fn: LossFn,
    ctx: Context,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
) -> nn.Module:
    """Train ``model`` with Adam for ``epochs`` passes over ``data``; returns it in eval mode.

    Shuffling and any noise the loss draws come from ``ctx``'s generators, so a fixed
    seed gives the same model (on the same device and library versions).
    """
    model = model.to(ctx.device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    x_all, y_all = data.x.to(ctx.device), data.y.to(ctx.device)
    noise_gen = ctx.device_generator()
    n = len(y_all)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=ctx.generator).to(ctx.device)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            loss = loss_fn(model, x_all[idx], y_all[idx], noise_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        ctx.progress("train", epoch + 1, epochs)
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, data: Split, device: torch.device, batch_size: int = 1000) -> float:
    """Fraction of ``data`` that ``model`` classifies correctly (clean inputs)."""
    model.eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        x = data.x[i : i + batch_size].to(device)
        correct += (model(x).argmax(1).cpu() == data.y[i : i + batch_size]).sum().item()
    return correct / max(1, len(data))


def check_classifier(
    artifact: object, probe: torch.Tensor, num_classes: int, device: torch.device
) -> tuple[nn.Module, torch.Tensor]:
    """The harness's checks of a returned classifier: from now on every batch it answers
    must be logits of shape (len(x), num_classes), finite; then a first answer on ``probe``.

    ``artifact`` is the oracle of a model in the plugin process
    (:class:`dltbench.oracle.RemoteModule`) or, for harness-owned reference models, an
    ``nn.Module``. Returns the model and its logits on ``probe``; raises InvalidArtifact.
    """
    from .oracle import RemoteModule

    if isinstance(artifact, RemoteModule):
        if not getattr(artifact, "is_module", True):
            raise InvalidArtifact(
                f"train() must return a torch.nn.Module, got {artifact.type_name or 'something else'}"
            )
        artifact._check = logits_check(num_classes)
        model = artifact.to(device)
    elif isinstance(artifact, nn.Module):
        model = artifact.to(device).eval()
    else:
        raise InvalidArtifact(
            f"train() must return a torch.nn.Module, got {type(artifact).__name__}"
        )
    probe = probe.to(device)
    try:
        with torch.no_grad():
            out = model(probe)
    except InvalidArtifact:
        raise
    except Exception as exc:
        raise InvalidArtifact(
            f"the model failed on a batch of shape {tuple(probe.shape)}: {exc}"
        ) from exc
    logits_check(num_classes)("forward", (probe,), out)
    return model, out


def logits_check(num_classes: int):
    """A per-answer check: logits (N, num_classes) for an input batch of N, all finite."""

    def check(method: str, args: tuple, out: object) -> None:
        n = len(args[0]) if args and isinstance(args[0], torch.Tensor) else None
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape != (n, num_classes):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InvalidArtifact(
                f"the model must return logits of shape ({n}, {num_classes}), got {shape}"
            )
        if not out.is_floating_point() or not torch.isfinite(out).all():
            raise InvalidArtifact("the model returned non-finite logits (NaN or inf)")

    return check
