"""The task's datasets: fixed train / test / out-of-distribution inputs, the same for every seed.

The split is part of the setting (not of the seed) because the reference posterior is
computed once per setting. Inputs are flattened to (n, d) float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ... import data as shared_data
from ..sampler.targets import DTYPE

TOY_SEED = 20250117  # part of the toy dataset's definition


@dataclass(frozen=True)
class BNNData:
    """Train, test and OOD inputs (n, d) with train/test labels; ``ood_what`` says how OOD was made."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_ood: torch.Tensor
    n_classes: int
    ood_what: str


def _moon(t: np.ndarray, label: np.ndarray) -> np.ndarray:
    upper = np.stack([np.cos(t), np.sin(t)], 1)
    lower = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], 1)
    return np.where(label[:, None] == 0, upper, lower)


def moons_gap(n_train: int = 200, n_test: int = 500, n_ood: int = 200) -> BNNData:
    """Two moons (noise sd 0.1) whose train points leave out each arc's middle third (the gap).

    Test points cover the whole arcs, gap included; OOD points lie on a circle of radius 4
    around the moons' centre (0.5, 0.25), far from every train point.
    """
    rng = np.random.default_rng(TOY_SEED)

    def draw(n, gap):
        label = np.arange(n) % 2
        if gap:  # t uniform on [0, pi/3] U [2 pi/3, pi]
            u = rng.uniform(0.0, 2.0 * math.pi / 3.0, n)
            t = np.where(u < math.pi / 3.0, u, u + math.pi / 3.0)
        else:
            t = rng.uniform(0.0, math.pi, n)
        return _moon(t, label) + 0.1 * rng.standard_normal((n, 2)), label

    xtr, ytr = draw(n_train, True)
    xte, yte = draw(n_test, False)
    ang = rng.uniform(0.0, 2.0 * math.pi, n_ood)
    xood = np.array([0.5, 0.25]) + 4.0 * np.stack([np.cos(ang), np.sin(ang)], 1)
    t = lambda a: torch.as_tensor(a, dtype=DTYPE)  # noqa: E731
    return BNNData(
        "moons-gap", t(xtr), torch.as_tensor(ytr), t(xte), torch.as_tensor(yte), t(xood), 2,
        "points on a circle of radius 4 around (0.5, 0.25)",
    )  # fmt: skip


def _images(name: str, data_dir: Path | None, n_train: int, n_test: int) -> BNNData:
    ds = shared_data.load(name, data_dir)
    tr, te = ds.train, ds.test
    if n_train:
        tr = tr.subset(slice(0, n_train))
    if n_test:
        te = te.subset(slice(0, n_test))
    # Rotation by 90 degrees is exact on the pixel grid (no interpolation to define).
    ood = torch.rot90(te.x, 1, dims=(-2, -1))
    flat = lambda a: a.reshape(len(a), -1).to(DTYPE)  # noqa: E731
    return BNNData(
        name, flat(tr.x), tr.y.long(), flat(te.x), te.y.long(), flat(ood), ds.num_classes,
        "the test images rotated by 90 degrees (torch.rot90, exact on the pixel grid)",
    )  # fmt: skip


def load(name: str, data_dir: Path | None = None, n_train: int = 0, n_test: int = 0) -> BNNData:
    """``moons-gap``, ``digits``, ``mnist`` or ``cifar10`` (the last two from ``data_dir``).

    ``n_train``/``n_test`` > 0 keep the first points of the fixed splits.
    """
    if name == "moons-gap":
        return moons_gap()
    return _images(name, data_dir, n_train, n_test)
