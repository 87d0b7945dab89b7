"""Plugins written by someone who wants to top the leaderboard (the threat model's tests).

Each hostile method tries one way to reach what the harness keeps (test labels, the
evaluation's noise, the cost ledger, the results files, the harness's checks). Where
the attempt fails, it falls back to exactly what its honest twin does, so a test can
require "scores no better than the honest twin" with the same evaluation randomness.
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import torch
from torch import nn

import dltbench
from dltbench.tasks.certified.methods import Standard
from dltbench.tasks.robust.attack_task import AttackMethod
from dltbench.tasks.sampler.task import SamplerMethod

STOLEN: dict[str, object] = {}


def _steal_test_labels() -> torch.Tensor | None:
    """Walk every object this process holds, looking for a dataset with its test split."""
    for obj in gc.get_objects():
        test = getattr(obj, "test", None) if not isinstance(obj, type) else None
        y = getattr(test, "y", None)
        if isinstance(y, torch.Tensor):
            return y
    return None


class _Cheater(nn.Module):
    """Answers with memorised labels when it has them, else as the honest model."""

    def __init__(self, honest: nn.Module, labels: torch.Tensor | None, k: int):
        super().__init__()
        self.honest, self.labels, self.k, self.calls = honest, labels, k, 0

    def forward(self, x):
        self.calls += 1
        labels = self.labels if self.labels is not None else _steal_test_labels()
        if labels is not None and len(labels) >= len(x):
            return 100.0 * nn.functional.one_hot(labels[: len(x)].long(), self.k).float()
        return self.honest(x)


@dltbench.register_method(task="certified", name="honest-twin")
class HonestTwin(Standard):
    """The honest twin: the built-in standard training, unchanged."""


@dltbench.register_method(task="certified", name="hostile-gc")
class HostileGC(Standard):
    """Walks the garbage collector for the test split during training and inference."""

    def train(self, data, config, ctx):
        """Train honestly, then wrap the model in a label-memorising cheat."""
        model = super().train(data, config, ctx)
        return _Cheater(model, _steal_test_labels(), data.num_classes)


@dltbench.register_method(task="certified", name="hostile-data")
class HostileData(Standard):
    """Loads the test split itself (from dltbench's loader or scikit-learn's files)."""

    def train(self, data, config, ctx):
        """Train honestly; cheat with loaded labels if the data files can be read."""
        model = super().train(data, config, ctx)
        labels = None
        for load in (
            lambda: dltbench.data.load(config.dataset, None).test.y,
            lambda: torch.as_tensor(__import__("sklearn.datasets").datasets.load_digits().target),
        ):
            try:
                labels = load()
                break
            except Exception:  # noqa: BLE001 - the sandbox is expected to refuse
                continue
        return _Cheater(model, labels, data.num_classes) if labels is not None else model


@dltbench.register_method(task="certified", name="hostile-patch")
class HostilePatch(Standard):
    """Monkey-patches the harness's certifier, checks and record writer before training."""

    def train(self, data, config, ctx):
        """Patch what it can reach, then train honestly."""
        import dltbench.models as models
        import dltbench.store as store
        import dltbench.tasks.certified.smoothing as smoothing

        smoothing.certify_batch = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("patched"))
        models.check_classifier = lambda artifact, *a, **k: (artifact, None)
        store.append_result = lambda *a, **k: None
        return super().train(data, config, ctx)


@dltbench.register_method(task="certified", name="hostile-forge")
class HostileForge(Standard):
    """Appends a forged record to every results file it can find, then trains honestly."""

    def train(self, data, config, ctx):
        """Write a first-place record wherever a results folder might be."""
        forged = {"task": "certified", "method": "forged", "status": "ok", "metrics": {"acr": 9.9}}
        roots = {Path.cwd(), Path(dltbench.__file__).resolve().parents[1],
                 Path(os.environ.get("DLTBENCH_RESULTS", "/nonexistent"))}  # fmt: skip
        for root in roots:
            for target in (root / "results" / "certified.jsonl", root / "certified.jsonl"):
                try:
                    with open(target, "a") as fh:
                        fh.write(json.dumps(forged) + "\n")
                    STOLEN["wrote"] = str(target)
                except OSError:
                    pass
        return super().train(data, config, ctx)


class _LateNaN(nn.Module):
    def __init__(self, honest: nn.Module):
        super().__init__()
        self.honest, self.calls = honest, 0

    def forward(self, x):
        self.calls += 1
        out = self.honest(x)
        return out if self.calls <= 2 else out * float("nan")


@dltbench.register_method(task="certified", name="hostile-late-nan")
class HostileLateNaN(Standard):
    """Answers the harness's probe batches well, then NaN."""

    def train(self, data, config, ctx):
        """Honest model, poisoned after the first two answers."""
        return _LateNaN(super().train(data, config, ctx))


@dltbench.register_method(task="sampler", name="hostile-iid")
class HostileIID(SamplerMethod):
    """Ignores the oracle: draws exactly from its own copy of the public target definition."""

    def sample(self, target, n_draws, n_chains, init, generator):
        """Exact draws of the named target, plus one counted call to look like MCMC."""
        from dltbench.tasks.sampler.catalog import make_target

        target.log_prob(init)
        own = make_target(f"gaussian-d{target.dim}")  # the target's name is not shown: guess
        return own.sample_iid(n_chains * n_draws, generator).reshape(n_chains, n_draws, -1)


@dltbench.register_method(task="sampler", name="hostile-ledger")
class HostileLedger(SamplerMethod):
    """Tries the target's private methods and clears the ledger before returning."""

    def sample(self, target, n_draws, n_chains, init, generator):
        """Exact draws through the harness's object if reachable, else a plain random walk."""
        from dltbench.tasks.sampler import targets

        try:
            draws = target.call("sample_iid", n_chains * n_draws)
            return draws.reshape(n_chains, n_draws, -1)
        except Exception:  # noqa: BLE001 - the oracle is expected to refuse
            pass
        x, out = init.clone(), []
        lp = target.log_prob(x)
        for _ in range(n_draws):
            y = x + 0.5 * torch.randn(x.shape, generator=generator, dtype=x.dtype)
            lp_y = target.log_prob(y)
            accept = torch.rand(len(x), generator=generator, dtype=x.dtype).log() < lp_y - lp
            x, lp = torch.where(accept[:, None], y, x), torch.where(accept, lp_y, lp)
            out.append(x)
        targets.LEDGER.clear()
        return torch.stack(out, 1)


@dltbench.register_method(task="attack", name="hostile-attack")
class HostileAttack(AttackMethod):
    """Looks for the scored model's weights to zero them, patches the budget check, and
    returns a perturbation far outside the budget."""

    def perturb(self, model, x, y, eps, norm, generator):
        """Sabotage what is reachable, then leave the budget."""
        import dltbench.tasks.robust.evaluate as ev

        ev.verify_perturbation = lambda xa, *a, **k: xa
        for obj in gc.get_objects():
            if isinstance(obj, nn.Module):
                with torch.no_grad():
                    for p in obj.parameters():
                        p.zero_()
        return (x + 10 * eps).clamp(0, 1)
