"""Image datasets: scikit-learn's digits (embedded) and MNIST / CIFAR-10 from ``--data-dir``.

Every loader returns pixels as float32 in [0, 1], shape (N, C, H, W), and int64 labels,
with a fixed train/test split that does not depend on the run's seed, so that every
seed and every method is scored on the same test points. Nothing is ever downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..api import DataMissing

#: Fixed seed of the digits train/test split (harness-owned, never the run's seed).
DIGITS_SPLIT_SEED = 20190208
DIGITS_TEST_FRACTION = 0.3


@dataclass(frozen=True)
class Split:
    """Images in [0, 1] of shape (N, C, H, W) and their labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray | torch.Tensor | slice) -> Split:
        """The points at ``index``."""
        return Split(self.x[index], self.y[index])


@dataclass(frozen=True)
class ImageDataset:
    """A dataset with its fixed train/test split."""

    name: str
    train: Split
    test: Split | None  # None in the view a method gets
    num_classes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """(C, H, W) of one image."""
        return tuple(self.train.x.shape[1:])


def digits() -> ImageDataset:
    """scikit-learn's 8x8 digits (1797 images, ships with scikit-learn), 70/30 stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]  # 0..16 grey levels -> [0, 1]
    y = bunch.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=y
    )
    return ImageDataset(
        "digits",
        Split(torch.from_numpy(xtr), torch.from_numpy(ytr)),
        Split(torch.from_numpy(xte), torch.from_numpy(yte)),
        10,
    )


def _torchvision_dataset(cls_name: str, data_dir: Path | None, where: str, files: str):
    if data_dir is None:
        raise DataMissing(
            f"this profile reads {cls_name} from --data-dir: pass --data-dir D with {files} in {where}"
        )
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:
        raise DataMissing(
            f"{cls_name} is read with torchvision: pip install 'dltbench[data]'"
        ) from exc
    cls = getattr(tvd, cls_name)
    try:
        return cls(str(data_dir), train=True, download=False), cls(
            str(data_dir), train=False, download=False
        )
    except RuntimeError as exc:
        raise DataMissing(
            f"{cls_name} not found under {data_dir}: put {files} in "
            f"{Path(data_dir) / where} (the layout torchvision.datasets.{cls_name} uses; "
            "dltbench never downloads)"
        ) from exc


def mnist(data_dir: Path | None) -> ImageDataset:
    """MNIST 28x28 from ``data_dir/MNIST/raw`` (torchvision layout), the official split."""
    tr, te = _torchvision_dataset(
        "MNIST",
        data_dir,
        "MNIST/raw/",
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
        "t10k-labels-idx1-ubyte (.gz accepted)",
    )

    def split(ds) -> Split:
        return Split((ds.data.float() / 255.0)[:, None].contiguous(), ds.targets.long())

    return ImageDataset("mnist", split(tr), split(te), 10)


def cifar10(data_dir: Path | None) -> ImageDataset:
    """CIFAR-10 32x32 RGB from ``data_dir/cifar-10-batches-py`` (torchvision layout)."""
    tr, te = _torchvision_dataset(
        "CIFAR10",
        data_dir,
        "cifar-10-batches-py/",
        "the python version of CIFAR-10 (data_batch_1..5, test_batch, batches.meta)",
    )

    def split(ds) -> Split:
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float() / 255.0
        return Split(x.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long))

    return ImageDataset("cifar10", split(tr), split(te), 10)


def load(name: str, data_dir: Path | None = None) -> ImageDataset:
    """Load ``digits``, ``mnist`` or ``cifar10``."""
    loaders = {
        "digits": lambda: digits(),
        "mnist": lambda: mnist(data_dir),
        "cifar10": lambda: cifar10(data_dir),
    }
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(loaders)}")
    return loaders[name]()
