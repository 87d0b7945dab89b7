"""The ``attack`` task: an attack's robust accuracy against reference defenses (lower is stronger).

The harness trains each reference defense of the ``robust`` task with the contexts the
``robust`` cell of seed ``reference_seed`` uses, so that (on the same device and library
versions) the attacked weights are those that the ``robust`` leaderboard scored; the
attack's findings then count as counter-evidence there.

Every cell of a run attacks the same reference weights, so a built-in reference defense
is trained once and its weights kept in a cache folder (``$DLTBENCH_CACHE_DIR``, else
``$XDG_CACHE_HOME/dltbench`` or ``~/.cache/dltbench``), under a content hash of the
method's name, version and source, the config, the seed, the training data, the device
type, the torch version, the intra-op thread count and the harness's own source code: a changed line of dltbench
is a new key, so weights are never shared across code versions. A loaded entry must
reproduce the fingerprint it was stored with; anything else is retrained.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import pickle
import time
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ... import data as datasets
from ... import registry
from ...api import Context, Evaluation, InvalidArtifact, Method, MetricSpec, Task
from ...cache import cache_dir, code_version, locked, write_atomic
from ...oracle import Exposed, MethodGenerator, RemoteObject
from ...registry import register_task
from .evaluate import BUDGET_TOL, CountingModel, model_fingerprint, verify_perturbation
from .physical import SCORE_DRAWS, SELECT_DRAWS, WORLDS, world_scores
from .task import (
    RobustConfig,
    RobustTask,
    check_model,
    robust_configs,
    smoke_config,
    test_points,
    threat_text,
)
from .threat import COUNT_NORMS

#: Defenses of the ``robust`` task every attack is scored against.
REFERENCE_DEFENSES: tuple[str, ...] = ("standard", "pgd-at")
REFERENCE_SEED = 0
#: Folder of :func:`dltbench.cache.cache_dir` holding the trained reference defenses.
CACHE_KIND = "reference-defenses"


@dataclass(frozen=True)
class AttackConfig(RobustConfig):
    """A ``robust`` config (the reference defenses are trained with it) plus the references."""

    reference_defenses: tuple[str, ...] = REFERENCE_DEFENSES
    reference_seed: int = REFERENCE_SEED

    def defense_config(self) -> RobustConfig:
        """The ``robust`` task's config the reference defenses see."""
        return RobustConfig(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(RobustConfig)}
        )


class AttackMethod(Method):
    """Protocol of an ``attack`` method: perturb inputs within an l_p ball (or l0 pixel budget)."""

    #: The threat models the attack defines; on any other setting its cell is ``invalid``
    #: ("does not attack this threat model") before any reference defense is queried.
    norms: tuple[str, ...] = ("linf", "l2")

    @abstractmethod
    def perturb(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        norm: str,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Return x_adv (same shape and dtype as x) in [0, 1] with ||x_adv - x||_p <= eps per point.

        ``model`` (eval mode) maps (N, C, H, W) in [0, 1] to logits; ``y`` are the true
        labels; ``norm`` is one of the class's ``norms`` ("linf", "l2", "l0" with eps a
        count k of changed pixels, a pixel being all channels at one location, "patch"
        with eps the area of one square, side isqrt(eps), anywhere in the image, or a
        physical threat model such as "physical-linf": the ball of
        ``physical.WORLDS[norm][0]``, after which the world applies a transformation of the
        family ``physical.WORLDS[norm][1]`` drawn by the harness); draw randomness from
        ``generator`` (on x's device). The harness verifies every point (the l0 count
        exactly) and scores x_adv on its own copy (a physical one through its own draws).
        """


def reference_key(name: str, data, config: RobustConfig, device: torch.device) -> str:
    """Content hash (24 hex digits) of everything reference defense ``name``'s weights depend on."""
    cls = registry.get_method_class("robust", name)
    h = hashlib.sha256()
    for t in (data.train.x, data.train.y):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    payload = {
        "method": name, "version": str(cls.version), "source": registry.source_hash(cls),
        "config": dataclasses.asdict(config), "seed": REFERENCE_SEED, "data": h.hexdigest(),
        "code": code_version(), "torch": torch.__version__, "device": device.type,
        # the intra-op thread count changes float reduction order, hence the trained weights
        "threads": torch.get_num_threads(),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _skeleton(name: str, data) -> nn.Module | None:
    """An untrained copy of the architecture ``name`` trains, when the harness knows it (built-ins)."""
    from ...models import default_classifier
    from .methods import _Trained  # methods imports this module

    cls = registry.get_method_class("robust", name)
    if issubclass(cls, _Trained) and cls.__module__ == _Trained.__module__:
        return default_classifier(data.shape, data.num_classes)
    return None


def _load_cached(path: Path, skeleton: nn.Module) -> nn.Module | None:
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        skeleton.load_state_dict(entry["state_dict"], strict=True)
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.PickleError):
        return None  # unreadable or not this architecture: retrain and overwrite
    model = skeleton.eval()
    return model if _weights_hash(model) == entry.get("fingerprint") else None


def _weights_hash(model: nn.Module) -> str:
    """sha256 (16 hex digits) of a harness-owned model's parameters and buffers."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _store(path: Path, model: nn.Module) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"state_dict": state, "fingerprint": _weights_hash(model)}, buf)
    write_atomic(path, buf.getvalue())  # also drops entries of other code versions


def reference_model(
    name: str, data, config: RobustConfig, ctx: Context, use_cache: bool = True
) -> tuple[nn.Module, bool]:
    """Reference defense ``name`` as the ``robust`` cell of the reference seed trains it, and
    whether it came from the cache. The global torch RNG state is left as it was either way.
    """
    rng_state = torch.get_rng_state()  # a cache hit and a training leave the same state behind
    try:
        return _reference_model(name, data, config, ctx, use_cache)
    finally:
        torch.set_rng_state(rng_state)


def _reference_model(name, data, config, ctx, use_cache):
    skeleton = _skeleton(name, data) if use_cache else None
    if skeleton is None:
        return _train_reference(name, data, config, ctx), False
    key = reference_key(name, data, config, ctx.device)
    path = cache_dir(CACHE_KIND) / f"{code_version()}-{name}-{key}.pt"
    # cells of one run that need the same reference wait for the first to train it
    with locked(path):
        if path.exists():
            model = _load_cached(path, skeleton)
            if model is not None:
                return check_model(model.to(ctx.device), data, ctx), True
        model = _train_reference(name, data, config, ctx)
        with contextlib.suppress(OSError):  # a read-only or full cache costs time, not correctness
            _store(path, model)
    return model, False


def _train_reference(name, data, config, ctx) -> nn.Module:
    from ...runner import cell_contexts  # the runner imports the registry, which imports tasks

    cls = registry.get_method_class("robust", name)
    _, method_ctx, _ = cell_contexts(REFERENCE_SEED, ctx.device, ctx.data_dir, ctx.progress)
    torch.manual_seed(method_ctx.seed)  # as the runner does before fit()
    # A built-in defense, trained here in the harness (trusted code); the attack being
    # scored runs in its own process and only ever queries this model through an oracle.
    task = RobustTask()
    return check_model(
        task.fit(cls(), task.train_view(data, config), config, method_ctx), data, ctx
    )


def _perturber(artifact, counted: nn.Module, config: AttackConfig, ctx: Context):
    """``perturb(x, y)`` of the attack being scored, on the counted model.

    A plugin's attack (an oracle of an object in its process) calls the model back
    through an allow-listed handle and draws from its own stream; an attack object
    handed to :meth:`AttackTask.evaluate` directly (library use: trusted code in this
    process) is called as it is, with a generator of the evaluation's stream.
    """
    if isinstance(artifact, RemoteObject):
        ref = artifact.share(Exposed(counted, frozenset({"__call__"}), grad=True))
        return lambda x, y: artifact.call(
            "perturb", ref, x, y, config.eps, config.norm, MethodGenerator()
        )
    gen = ctx.device_generator()
    return lambda x, y: artifact.perturb(counted, x, y, config.eps, config.norm, gen)


@register_task
class AttackTask(Task):
    """Attacks: robust accuracy they leave on reference defenses at fixed (norm, eps), and their cost."""

    name = "attack"
    version = "3"  # 3: physical-linf rows (the world's draws score x_adv)
    description = "attacks scored by the robust accuracy they leave on reference defenses"
    method_type = AttackMethod
    protocol = "perturb"
    primary_metric = "robust_acc"
    setting_keys = ("dataset", "norm", "eps")
    artifact_attributes = ("norms",)
    metrics = (
        MetricSpec("robust_acc", False, "fraction",
                   "mean over reference defenses of: correct and the attack failed"),
        *(MetricSpec(f"robust_acc_{d}", False, "fraction", f"robust accuracy of reference defense {d}")
          for d in REFERENCE_DEFENSES),
        MetricSpec("forwards_per_point", False, "images", "forward passes per attacked point"),
        MetricSpec("backwards_per_point", False, "images", "backward passes per attacked point"),
        MetricSpec("ms_per_point", False, "ms", "attack wall time per attacked point on this device"),
    )  # fmt: skip

    def configs(self, profile: str) -> list[AttackConfig]:
        """The ``robust`` task's threat models of ``profile``."""
        return [AttackConfig(**dataclasses.asdict(c)) for c in robust_configs(profile)]

    def smoke(self, config: AttackConfig) -> AttackConfig:
        """A seconds-long config."""
        return AttackConfig(**dataclasses.asdict(smoke_config(config.defense_config())))

    def check_data(self, config: AttackConfig, data_dir) -> None:
        """Fail early, with what to put where, if the dataset is missing."""
        datasets.load(config.dataset, data_dir)

    def prepare(self, config: AttackConfig, ctx: Context) -> datasets.ImageDataset:
        """The dataset with its fixed split."""
        return datasets.load(config.dataset, ctx.data_dir)

    def train_view(self, data, config: AttackConfig) -> None:
        """An attack sees no data before it is run: nothing."""
        return None

    def fit(self, method: AttackMethod, data, config: AttackConfig, ctx: Context) -> AttackMethod:
        """An attack has nothing to train: the method itself is the artifact (in its process)."""
        return method

    def evaluate(
        self, artifact: AttackMethod, data, config: AttackConfig, ctx: Context
    ) -> Evaluation:
        """Attack each reference defense on the fixed test points; verify every x_adv; count passes."""
        norms = getattr(artifact, "norms", None) or AttackMethod.norms
        if config.norm not in tuple(norms):
            raise InvalidArtifact(
                f"the attack does not attack the {config.norm} threat model (it declares "
                f"norms {', '.join(map(str, norms))}); nothing was scored"
            )
        pts = test_points(data, config)
        x, y = pts.x.to(ctx.device), pts.y.to(ctx.device)
        world = WORLDS.get(config.norm)
        metrics: dict[str, float] = {}
        per_defense = {}
        forwards = backwards = attacked = 0
        seconds = 0.0
        for i, name in enumerate(config.reference_defenses):
            ctx.progress(f"train {name}", i, len(config.reference_defenses))
            model, cached = reference_model(name, data, config.defense_config(), ctx)
            with torch.no_grad():
                clean = model(x).argmax(1) == y
            robust = clean.clone()
            x_adv = x.clone()
            # The attack runs in the plugin process and reaches this model only through
            # the oracle: logits and input gradients, counted here.
            counted = CountingModel(copy.deepcopy(model)).eval()
            perturb = _perturber(artifact, counted, config, ctx)
            # through the world a digitally wrong point can be right: attack every point
            idx = torch.arange(len(y), device=x.device) if world else clean.nonzero().flatten()
            for s in range(0, len(idx), config.batch_size):
                b = idx[s : s + config.batch_size]
                ctx.progress(f"attack {name}", s, len(idx))
                start = time.perf_counter()
                xa = perturb(x[b].clone(), y[b].clone())
                seconds += time.perf_counter() - start
                x_adv[b] = verify_perturbation(
                    xa, x[b], config.eps, config.norm, who=f"the attack (on {name})"
                )
                if not world:  # a physical x_adv is scored through the world, below
                    with torch.no_grad():
                        robust[b] = model(x_adv[b]).argmax(1) == y[b]
            if world:  # the harness's draws, made after the attack returned
                res = world_scores(model, y, {"clean": x, "attack": x_adv}, world[1],
                                   ctx.device_generator(), (1,), batch_size=config.batch_size)  # fmt: skip
                clean, robust = torch.as_tensor(res.clean), torch.as_tensor(res.robust)
            forwards, backwards, attacked = (
                forwards + counted.forwards,
                backwards + counted.backwards,
                attacked + len(idx),
            )
            cls = registry.get_method_class("robust", name)
            metrics[f"robust_acc_{name}"] = float(robust.float().mean())
            per_defense[name] = {
                "version": str(cls.version), "source_hash": registry.source_hash(cls),
                "seed": REFERENCE_SEED, "fingerprint": model_fingerprint(model, tuple(x.shape[1:])),
                "cached": cached,
                "clean_acc": float(clean.float().mean()), "robust_acc": metrics[f"robust_acc_{name}"],
                # physical rows: each point's expected accuracy through the world (floats)
                "robust": robust.tolist() if world else robust.int().cpu().tolist(),
            }  # fmt: skip
        metrics["robust_acc"] = float(
            np.mean([metrics[f"robust_acc_{d}"] for d in config.reference_defenses])
        )
        metrics["forwards_per_point"] = forwards / max(1, attacked)
        metrics["backwards_per_point"] = backwards / max(1, attacked)
        metrics["ms_per_point"] = 1000 * seconds / max(1, attacked)
        estimator = {
            "test_points": len(y), "test_selection": f"first {config.n_test} points of the fixed test split",
            "attacked_points": ("every point (the world decides correctness)" if world else
                                "only points the defense classifies correctly")
                               + "; cost is per attacked point",
            "reference_defenses": list(config.reference_defenses),
            "reference_training": f"robust-task method with the contexts of cell seed {REFERENCE_SEED}; "
                                  "built-ins trained once per code version and cached by content hash",
            "threat_model": threat_text(config),
            "budget_tolerance": BUDGET_TOL if config.norm not in COUNT_NORMS
                                else "none: pixels counted exactly",
            "pass_counting": "images through the model forward / through a backward pass",
        }  # fmt: skip
        if world:
            estimator["world_scoring"] = (
                f"x and x_adv meet the same transformations, drawn from the evaluation's stream "
                f"after the attack returned; a point's worse candidate is picked on {SELECT_DRAWS} "
                f"draws and scored on {SCORE_DRAWS} independent ones (robust_acc: mean score)"
            )
        return Evaluation(metrics, {"per_defense": per_defense}, estimator)
