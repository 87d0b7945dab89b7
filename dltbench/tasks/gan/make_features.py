"""Remake the shipped digits feature network: ``python -m dltbench.tasks.gan.make_features``.

Trains :class:`~dltbench.tasks.gan.features.ClassifierFeatures` on the digits training
split (the harness's fixed split; never the test split, whose features are the FID
reference) by the fixed :data:`~dltbench.tasks.gan.features.RECIPE` on CPU with one
thread, and writes ``digits_features.npz`` next to this file. Prints its sha256 and test
accuracy. A new file changes every digits FID: the records name the sha256 they used.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ...data import digits
from .features import DIGITS_WEIGHTS, RECIPE, save_npz, train_classifier_features


def main(argv: list[str] | None = None) -> int:
    """Train and write the digits feature network; print its sha256 and test accuracy."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DIGITS_WEIGHTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = digits()
    net = train_classifier_features(data.train, data.num_classes, torch.device("cpu"))
    with torch.no_grad():
        acc = float((net(data.test.x).argmax(1) == data.test.y).float().mean())
    meta = {"channels": 1, "side": 8, "num_classes": 10, "dataset": "digits", "recipe": RECIPE,
            "test_accuracy": round(acc, 4), "torch": torch.__version__}  # fmt: skip
    digest = save_npz(net, args.out, meta)
    print(f"wrote {args.out} sha256 {digest} test accuracy {acc:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
