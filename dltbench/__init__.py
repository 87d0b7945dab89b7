"""dltbench: benchmark suite and leaderboard harness for the theory of deep learning."""

__version__ = "0.1.0"

from .api import (  # noqa: E402
    Context,
    DataMissing,
    Evaluation,
    InvalidArtifact,
    Method,
    MetricSpec,
    Result,
    Task,
)
from .registry import register_method, register_task  # noqa: E402

__all__ = [
    "Context",
    "DataMissing",
    "Evaluation",
    "InvalidArtifact",
    "Method",
    "MetricSpec",
    "Result",
    "Task",
    "__version__",
    "register_method",
    "register_task",
]
