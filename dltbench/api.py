"""The contracts: Task, Method, the run Context, Evaluation and the Result record.

A task owns its data and its evaluator; a method only sees the training view the
task hands it and returns an artifact (a model, a sampler's draws, ...). The harness
(:mod:`dltbench.runner`) calls, for one cell::

    data = task.prepare(config, data_ctx)             # harness-owned data and splits
    artifact = task.fit(method, data, config, method_ctx)   # the plug-in, train view only
    evaluation = task.evaluate(artifact, data, config, eval_ctx)  # standardized evaluator

``method_ctx`` and ``eval_ctx`` carry independent random streams derived from the
cell's seed, so the evaluation's randomness is fixed by the harness and never seen
by the method.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

PROFILES: tuple[str, ...] = ("quick", "standard", "paper")
STATUSES: tuple[str, ...] = ("ok", "failed", "timeout", "invalid")


class InvalidArtifact(Exception):
    """A method returned something the evaluator refuses to score (wrong shape, NaN, over budget)."""


class DataMissing(Exception):
    """A dataset the profile needs is not under --data-dir; the message says what to put where."""


@dataclass(frozen=True)
class MetricSpec:
    """One leaderboard metric: its name, direction, unit, meaning and the range it can take.

    ``higher_is_better`` None means the metric has no direction (descriptive only; it is
    never used for ranking). ``low``/``high`` bound the values a correct evaluator can
    produce; a ``fraction`` has [0, 1] implied. A record outside them is not counted.
    """

    name: str
    higher_is_better: bool | None
    unit: str
    description: str
    low: float | None = None
    high: float | None = None

    def bounds(self) -> tuple[float | None, float | None]:
        """The declared (low, high), with [0, 1] implied for the unit ``fraction``."""
        if self.unit == "fraction":
            return (0.0 if self.low is None else self.low, 1.0 if self.high is None else self.high)
        return self.low, self.high

    @property
    def direction(self) -> str:
        """``higher``, ``lower`` or ``no direction`` (for legends)."""
        if self.higher_is_better is None:
            return "no direction"
        return "higher" if self.higher_is_better else "lower"


@dataclass
class Context:
    """What a task step may use: device, its own random streams, data dir and progress."""

    seed: int
    device: torch.device
    data_dir: Path | None = None
    progress: Callable[[str, int, int], None] = field(default=lambda desc, done, total: None)

    def __post_init__(self) -> None:
        self.generator = torch.Generator(device="cpu").manual_seed(self.seed)
        self.rng = np.random.default_rng(self.seed)

    def device_generator(self) -> torch.Generator:
        """A torch generator on ``self.device`` seeded from this context (for noise drawn there)."""
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(self.rng.integers(2**62)))
        return gen


@dataclass
class Evaluation:
    """What an evaluator returns: scalar metrics, whole curves and the estimator's parameters."""

    metrics: dict[str, float]
    curves: dict[str, Any] = field(default_factory=dict)
    estimator: dict[str, Any] = field(default_factory=dict)


class Method(ABC):  # noqa: B024 (abstract through each task's protocol class)
    """Base of every method. Subclass the task's protocol class, not this one.

    Hyper-parameters are plain constructor arguments stored on attributes of the same
    name (scikit-learn's convention); the record stores them verbatim. ``name`` and
    ``task`` are set by :func:`dltbench.register_method`; ``version`` is yours to bump
    when the method's behaviour changes.
    """

    name: ClassVar[str] = ""
    task: ClassVar[str] = ""
    version: ClassVar[str] = "0"

    @classmethod
    def description(cls) -> str:
        """The first line of the class's own docstring ("" if the class has none).

        Not :func:`inspect.getdoc`: that falls back to the protocol's docstring, so a
        method without one would be described as its protocol.
        """
        doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
        return doc.splitlines()[0] if doc else ""

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments and their current values, JSON-ready."""
        params = {}
        for pname, p in inspect.signature(type(self).__init__).parameters.items():
            if pname == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            params[pname] = getattr(self, pname, p.default)
        return params


class Task(ABC):
    """Base of every task: its configs per profile, data, method protocol and evaluator."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "0"
    description: ClassVar[str] = ""
    method_type: ClassVar[type[Method]] = Method
    #: The protocol method a plug-in must implement, e.g. "train".
    protocol: ClassVar[str] = ""
    primary_metric: ClassVar[str] = ""
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()
    #: Config fields that split the leaderboard into rows besides method and profile.
    setting_keys: ClassVar[tuple[str, ...]] = ("dataset",)
    #: "remote": the artifact stays in the plugin process and the evaluator queries it
    #: through an oracle; "value": it is plain data (e.g. a sampler's draws) sent back.
    artifact_kind: ClassVar[str] = "remote"
    #: Plain attributes of a remote artifact read once after fit (an object with a
    #: ``to_state()`` is sent as that plain state), e.g. a diffusion model's schedule.
    artifact_attributes: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def configs(self, profile: str) -> list[Any]:
        """The configs (frozen dataclasses) of a profile: one per setting, e.g. per sigma."""

    def smoke(self, config: Any) -> Any:
        """A tiny version of ``config`` for ``dltbench validate`` and tests."""
        return config

    def applicable(self, method: Any, config: Any) -> bool:
        """Whether ``method`` (its registered class) is planned on ``config`` at all.

        By default a method that declares the threat models it defines (``norms``, e.g. an
        l0-only attack) is not planned on a setting of another ``norm``: such a cell could
        only end ``invalid``. A plugin method, known to the harness by its stub, is planned
        everywhere and says so itself.
        """
        norms = getattr(method, "norms", None)
        norm = getattr(config, "norm", None)
        return not isinstance(norms, tuple | list) or norm is None or norm in norms

    #: Config fields that count the scored test points, in the order they are looked for.
    test_size_fields: ClassVar[tuple[str, ...]] = ("max_test_points", "n_test")

    def limit(self, config: Any, n: int) -> Any:
        """``config`` scoring at most ``n`` test points (``run --limit``, a fast first look).

        Raises ValueError if the task has no test-point count (e.g. a sampler's targets).
        """
        for name in self.test_size_fields:
            current = getattr(config, name, None)
            if isinstance(current, int) and dataclasses.is_dataclass(config):
                # 0 means "all" for some tasks: a limit then sets the count outright.
                value = n if current <= 0 else min(current, n)
                return dataclasses.replace(config, **{name: value})
        raise ValueError(f"task {self.name!r} has no test points to limit (--limit)")

    def check_data(self, config: Any, data_dir: Path | None) -> None:
        """Raise DataMissing (saying what to put where) if ``config``'s data is not available."""
        return None

    @abstractmethod
    def prepare(self, config: Any, ctx: Context) -> Any:
        """Load or generate the data of ``config``; the method will see only its train view."""

    def train_view(self, data: Any, config: Any) -> Any:
        """What the method may see of ``data`` (no test split, no ground truth); runs in the
        harness and is sent to the plugin process. May contain :class:`dltbench.oracle.Exposed`
        objects (e.g. a counted target) that the plugin then calls through the oracle."""
        raise NotImplementedError(f"task {self.name!r} must define train_view()")

    @abstractmethod
    def fit(self, method: Method, data: Any, config: Any, ctx: Context) -> Any:
        """Call the method's protocol on the train view and return its artifact.

        Runs in the plugin process: ``data`` is what :meth:`train_view` returned.
        """

    def run_plugin(self, plugin: Any, data: Any, config: Any, ctx: Context) -> Any:
        """Harness side of fitting: send the train view, get the artifact (an oracle or data).

        ``plugin`` is a :class:`dltbench.sandbox.PluginProcess`. Override to add
        harness-side accounting around the plugin's run (e.g. a sampler's cost ledger).
        """
        reply = plugin.request("fit", self.train_view(data, config), config)
        if self.artifact_kind == "value" or not getattr(plugin, "remote", True):
            return reply
        from .oracle import RemoteModule  # the oracle imports this module

        return RemoteModule.from_reply(plugin.endpoint, reply, ctx.device)

    @abstractmethod
    def evaluate(self, artifact: Any, data: Any, config: Any, ctx: Context) -> Evaluation:
        """Verify the artifact (raise InvalidArtifact) and score it on the test data."""

    def adjust_leaderboard(
        self, df: Any, records: list[Result], load: Callable[[str], list[Result]]
    ) -> Any:
        """Hook: change the aggregated leaderboard (a DataFrame) before it is ranked.

        A task may add columns, lower a number with evidence from another task's
        records (``load(task_name)`` reads them from the same results dir), or add an
        ``eligible`` (bool) and ``excluded_reason`` column: only eligible rows are ranked.
        """
        return df

    def check_record(self, record: Result) -> str | None:
        """Why ``record``'s numbers are impossible for this task, or None if they are possible.

        Every declared metric must be None or NaN (not computed; NaN is stored as null)
        or a finite real number (not a bool or a string) within its spec's bounds.
        Reasons name the metric but no value, so a leaderboard can count them per reason.
        """
        metrics = record.metrics
        if not isinstance(metrics, Mapping):
            return "metrics is not a mapping"
        for spec in self.metrics:
            v = metrics.get(spec.name)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                return f"metric {spec.name} is not a finite number"
            low, high = spec.bounds()
            if (low is not None and v < low) or (high is not None and v > high):
                return f"metric {spec.name} is outside its range [{_fmt(low)}, {_fmt(high)}]"
        return None

    @property
    def higher_is_better(self) -> bool:
        """Direction of the primary metric (which must have one)."""
        up = self.metric(self.primary_metric).higher_is_better
        if up is None:
            raise ValueError(
                f"task {self.name!r}: primary metric {self.primary_metric!r} has no direction"
            )
        return up

    def metric(self, name: str) -> MetricSpec:
        """The spec of a metric by name."""
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"task {self.name!r} has no metric {name!r}")

    def setting_of(self, config: Any) -> dict[str, Any]:
        """The values of ``setting_keys`` in ``config``."""
        cfg = config_dict(config)
        return {k: cfg[k] for k in self.setting_keys}


def _fmt(bound: float | None) -> str:
    return "-inf" if bound is None else f"{bound:g}"


def profile_entry(table: Mapping[str, Any], profile: str) -> Any:
    """``table[profile]``, or a ValueError that names the known profiles."""
    if profile not in table:
        raise ValueError(f"unknown profile {profile!r}; use one of {', '.join(table)}")
    return table[profile]


def config_dict(config: Any) -> dict[str, Any]:
    """A config dataclass (or mapping) as a plain JSON-ready dict."""
    if dataclasses.is_dataclass(config):
        return jsonable(dataclasses.asdict(config))
    if isinstance(config, Mapping):
        return jsonable(dict(config))
    raise TypeError(f"a config must be a dataclass or a mapping, not {type(config).__name__}")


def jsonable(obj: Any) -> Any:
    """Turn tuples, numpy and torch scalars and paths into JSON types; NaN/inf become None."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray | torch.Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return repr(obj)


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short sha256 of the canonical JSON of ``obj``."""
    blob = json.dumps(jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@dataclass
class Result:
    """One cell's record: everything its numbers depend on. Written as one JSON line."""

    id: str
    task: str
    task_version: str
    method: str
    method_version: str
    method_source_hash: str
    method_params: dict[str, Any]
    method_origin: str
    profile: str
    setting: dict[str, Any]
    config: dict[str, Any]
    config_hash: str
    seed: int
    status: str
    #: sha256 of the task package's and shared model/data code's sources (the evaluator).
    task_source_hash: str = ""
    metrics: dict[str, float | None] = field(default_factory=dict)
    curves: dict[str, Any] = field(default_factory=dict)
    estimator: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    wall_time_s: float = 0.0
    peak_memory_mb: float | None = None
    device: str = ""
    dltbench_version: str = ""
    git_commit: str | None = None
    python_version: str = ""
    torch_version: str = ""
    hostname: str = ""
    timestamp: str = ""
    #: How the plugin process was confined (e.g. {"sandbox": "none"}); filled by the runner.
    isolation: dict[str, Any] = field(default_factory=dict)
    #: The secret entropy the evaluation's random streams came from, revealed after the fact.
    eval_entropy: str = ""
    #: HMAC-SHA256 of the stored record by the results folder's key (see dltbench.store).
    mac: str = ""

    def to_json(self) -> str:
        """One line of JSON."""
        return json.dumps(jsonable(dataclasses.asdict(self)), sort_keys=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Result:
        """Rebuild from a parsed JSON line, ignoring unknown keys (newer writers).

        Raises TypeError naming the field when ``d`` is not a mapping, lacks a required
        field or holds a field of the wrong JSON type (``seed: "x"``, ``metrics: []``).
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"a record is a JSON object, not {type(d).__name__}")
        kept = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise TypeError(f"field {f.name!r} is missing")
                continue
            value, ok = d[f.name], _FIELD_TYPES[f.name]
            if not ok(value):
                raise TypeError(f"field {f.name!r} has the wrong type ({type(value).__name__})")
            kept[f.name] = value
        return cls(**kept)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_FIELD_TYPES: dict[str, Callable[[Any], bool]] = {
    **{name: _is_str for name in (
        "id", "task", "task_version", "method", "method_version", "method_source_hash",
        "method_origin", "profile", "config_hash", "status", "task_source_hash", "device",
        "dltbench_version", "python_version", "torch_version", "hostname", "timestamp",
        "eval_entropy", "mac",
    )},
    **{name: lambda v: isinstance(v, dict) for name in (
        "method_params", "setting", "config", "metrics", "curves", "estimator", "isolation",
    )},
    "seed": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "error": lambda v: v is None or isinstance(v, str),
    "git_commit": lambda v: v is None or isinstance(v, str),
    "wall_time_s": _is_number,
    "peak_memory_mb": lambda v: v is None or _is_number(v),
}  # fmt: skip
