"""Feature networks of the ``gan`` task: a small CNN classifier per image dataset, and
pytorch-fid's Inception-v3 (pool3) for the paper profile.

A FID is only comparable with FIDs from the same network, input transform and sample
size, so every record names the network (:attr:`FeatureNet.ident`) and the sha256 of its
weights. The digits network ships with the package (``digits_features.npz``, remade by
``python -m dltbench.tasks.gan.make_features``); the MNIST one is trained by the same
recipe from ``--data-dir`` at prepare time; Inception weights are read from
``--data-dir`` (never downloaded).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...api import Context, DataMissing
from ...data import Split

#: The shipped digits feature network (weights and recipe metadata, numpy arrays only).
DIGITS_WEIGHTS = Path(__file__).with_name("digits_features.npz")
#: pytorch-fid's port of the TF Inception weights (FID_WEIGHTS_URL's file name).
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"

#: The fixed training recipe of the classifier feature networks (make_features.py).
RECIPE = {"optimizer": "Adam", "lr": 1e-3, "epochs": 40, "batch_size": 64, "seed": 0,
          "weight_decay": 0.0, "split": "train"}  # fmt: skip


class ClassifierFeatures(nn.Module):
    """Two 3x3 conv layers, a 2x2 max-pool and a 64-unit ReLU layer (the features) before
    a linear classifier; inputs (N, C, side, side) in [0, 1], no other transform."""

    feature_dim = 64

    def __init__(self, channels: int = 1, side: int = 8, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(32 * (side // 2) ** 2, self.feature_dim), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (N, 64)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes)."""
        return self.head(self.body(x))


def train_classifier_features(train: Split, num_classes: int, device: torch.device) -> nn.Module:
    """Train :class:`ClassifierFeatures` on ``train`` by :data:`RECIPE` (deterministic on CPU)."""
    torch.manual_seed(RECIPE["seed"])
    c, side = train.x.shape[1], train.x.shape[-1]
    net = ClassifierFeatures(c, side, num_classes).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    gen = torch.Generator().manual_seed(RECIPE["seed"])
    x, y = train.x.to(device), train.y.to(device)
    for _ in range(RECIPE["epochs"]):
        order = torch.randperm(len(y), generator=gen).to(device)
        for i in range(0, len(y), RECIPE["batch_size"]):
            idx = order[i : i + RECIPE["batch_size"]]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval()


def save_npz(net: nn.Module, path: Path, meta: dict) -> str:
    """Write ``net``'s state as plain arrays plus JSON metadata; returns the file's sha256."""
    arrays = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    np.savez(path, __meta__=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8),
             **arrays)  # fmt: skip
    return sha256_file(path)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def sha256_state(net: nn.Module) -> str:
    """Hex sha256 of a module's parameters and buffers (names, shapes, float32 bytes)."""
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class FeatureNet:
    """A feature extractor with its identity: what every FID in a record was computed with."""

    ident: str  # e.g. "digits-cnn64"
    net: nn.Module | None  # None: identity features (2-D points)
    sha256: str  # of the weights file, or of the state for networks trained at prepare
    transform: str  # the input transform, in words
    classifier: bool  # whether ``net`` also gives class logits (mode histograms)

    def to(self, device: torch.device) -> FeatureNet:
        """Move the network to ``device``; returns self."""
        if self.net is not None:
            self.net = self.net.to(device).eval()
        return self

    @torch.no_grad()
    def features_and_logits(
        self, x: torch.Tensor, batch_size: int = 1000
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Features (N, d) as float64 numpy, and logits (N, K) when a classifier, batched on
        the network's device."""
        if self.net is None:
            return x.detach().double().cpu().numpy().reshape(len(x), -1), None
        device = next(self.net.parameters()).device
        feats, logits = [], []
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(device)
            if self.classifier:
                f = self.net.features(xb)
                logits.append(self.net.head(f).double().cpu())
            else:
                f = self.net(xb)
            feats.append(f.double().cpu())
        return torch.cat(feats).numpy(), (torch.cat(logits).numpy() if logits else None)


def identity_features() -> FeatureNet:
    """2-D targets: the features are the points themselves."""
    return FeatureNet("identity", None, "", "none (the 2-D points)", classifier=False)


def digits_features() -> FeatureNet:
    """The shipped digits classifier (its weights file's sha256 is its identity)."""
    if not DIGITS_WEIGHTS.exists():
        raise FileNotFoundError(
            f"{DIGITS_WEIGHTS} is missing: remake it with python -m dltbench.tasks.gan.make_features"
        )
    net = load_npz(DIGITS_WEIGHTS)
    return FeatureNet("digits-cnn64", net, sha256_file(DIGITS_WEIGHTS),
                      "none (8x8 pixels in [0, 1])", classifier=True)  # fmt: skip


def load_npz(path: Path) -> ClassifierFeatures:
    """A :class:`ClassifierFeatures` from a file written by :func:`save_npz` (no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(bytes(z["__meta__"]).decode())
        state = {k: torch.from_numpy(z[k].copy()) for k in z.files if k != "__meta__"}
    net = ClassifierFeatures(meta["channels"], meta["side"], meta["num_classes"])
    net.load_state_dict(state)
    return net.eval()


def mnist_features(train: Split, ctx: Context) -> FeatureNet:
    """The MNIST classifier, trained at prepare by :data:`RECIPE` on MNIST's training split."""
    net = train_classifier_features(train, 10, ctx.device)
    return FeatureNet("mnist-cnn64", net, sha256_state(net), "none (28x28 pixels in [0, 1])",
                      classifier=True)  # fmt: skip


@contextlib.contextmanager
def _local_weights(path: Path) -> Iterator[None]:
    """Make pytorch-fid's weight loader read ``path`` instead of its URL."""
    import pytorch_fid.inception as pfi

    original = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda url, **kw: torch.load(
        path, map_location="cpu", weights_only=True
    )
    try:
        yield
    finally:
        pfi.load_state_dict_from_url = original


def inception_features(data_dir: Path | None) -> FeatureNet:
    """pytorch-fid's FID Inception-v3 (pool3, 2048-d), weights from ``data_dir`` only.

    The network is pytorch-fid's own ``InceptionV3([3])`` (bilinear resize to 299 and
    scaling of [0, 1] inputs to [-1, 1] included), with its weight loader pointed at the
    local file, so it matches pytorch-fid's FIDs by construction.
    """
    path = Path(data_dir or ".") / INCEPTION_FILE
    if data_dir is None or not path.exists():
        raise DataMissing(
            f"the paper profile's FID needs pytorch-fid's Inception weights: put {INCEPTION_FILE} "
            f"(from pytorch-fid's FID_WEIGHTS_URL release) in {Path(data_dir or '<--data-dir>')}; "
            "dltbench never downloads"
        )
    try:
        from pytorch_fid.inception import InceptionV3
    except ImportError as exc:
        raise DataMissing(
            "the paper profile's Inception network: pip install pytorch-fid"
        ) from exc

    class Pool3(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            with _local_weights(path):
                self.inner = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)[0].flatten(1)

    return FeatureNet("inception-v3-pool3-pytorch-fid", Pool3().eval(), sha256_file(path),
                      "bilinear resize to 299x299, [0, 1] -> [-1, 1] (pytorch-fid)",
                      classifier=False)  # fmt: skip
