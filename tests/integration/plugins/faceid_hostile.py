"""faceid plugins that try to reach the test pairs, or return embeddings the harness must refuse."""

from __future__ import annotations

import dataclasses
import gc

import torch
from torch import nn

import dltbench
from dltbench.tasks.faceid.methods import Contrastive


def _find_test_split(view) -> list[str]:
    """Every way this process could see test images or pairs; what it found."""
    found = []
    fields = {f.name for f in dataclasses.fields(view)}
    if fields - {"name", "x", "y", "num_identities"}:
        found.append(f"view fields {sorted(fields)}")
    for obj in gc.get_objects():
        kind = type(obj).__name__
        if kind in ("Pairs", "FaceData") and not isinstance(obj, type):
            found.append(f"a {kind} object in memory")
    try:  # regenerate the synthetic data with the package's own generator
        from dltbench.tasks.faceid.data import make_synthetic

        make_synthetic()
        found.append("make_synthetic() ran")
    except Exception:  # noqa: BLE001 - the sandbox hides its test seed
        pass
    return found


@dltbench.register_method(task="faceid", name="test-hostile-pairs")
class HostilePairs(Contrastive):
    """Looks for the test pairs (view, memory, regenerating the data) before training honestly."""

    def train(self, data, config, ctx):
        """Fail loudly if anything was found; else train as the contrastive built-in."""
        found = _find_test_split(data)
        if found:
            raise RuntimeError("reached the test split: " + "; ".join(found))
        return super().train(data, config, ctx)


class _NaN(nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 8), float("nan"))


@dltbench.register_method(task="faceid", name="test-nan-embedding")
class NaNEmbedding(Contrastive):
    """Returns NaN embeddings."""

    def train(self, data, config, ctx):
        """No training."""
        return _NaN()


class _BatchMean(nn.Module):
    """Embeds each image as itself minus the batch mean: answers depend on the batch."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 8)

    def forward(self, x):
        flat = x.flatten(1)[:, :8]
        return flat - flat.mean(0, keepdim=True) + 1e-3 * self.lin.weight.t().sum()


@dltbench.register_method(task="faceid", name="test-batch-dependent")
class BatchDependent(Contrastive):
    """Returns a model whose embeddings depend on the rest of the batch (the audit catches it)."""

    def train(self, data, config, ctx):
        """No training."""
        return _BatchMean()
