"""Conformance checks of a method against its task's protocol (``dltbench validate``).

Use from pytest in a plugin's own tests::

    from dltbench.testing import assert_conforms
    def test_my_method():
        assert_conforms("certified", "my-noise")
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import registry
from .api import PROFILES
from .runner import RunOptions, plan, run_cells


@dataclass
class Check:
    """One conformance check: what was checked, whether it passed, and why not."""

    name: str
    ok: bool
    detail: str = ""


def check_method(
    task_name: str, method_name: str, data_dir: Path | None = None, timeout_s: float = 600.0
) -> list[Check]:
    """Run every conformance check of ``method_name`` for ``task_name``; stops at the first failure.

    The tiny run happens in its own process with a timeout, like any cell.
    """
    checks: list[Check] = []
    task = registry.get_task(task_name)
    try:
        cls = registry.get_method_class(task_name, method_name)
    except registry.RegistryError as exc:
        return [Check("follows the task's protocol", False, str(exc))]
    proto = f"subclasses {task.method_type.__name__} and implements `{task.protocol}`"
    checks.append(Check(proto, True))
    try:
        params = cls().get_params()
        json.dumps(params)
        checks.append(Check("constructs with defaults; params are JSON-ready", True, str(params)))
    except Exception as exc:
        checks.append(
            Check(
                "constructs with defaults; params are JSON-ready",
                False,
                f"{type(exc).__name__}: {exc}",
            )
        )
        return checks
    checks.append(Check("has a one-line description (class docstring)", bool(cls.description()),
                        "" if cls.description() else "add a docstring to the class"))  # fmt: skip
    cell = plan(task, [method_name], PROFILES[0], [0], smoke=True)[0]
    with tempfile.TemporaryDirectory() as tmp:  # isolated: a hang or a crash cannot take us down
        opts = RunOptions(
            device="cpu", data_dir=data_dir, timeout_s=timeout_s, results_dir=Path(tmp)
        )
        result = run_cells(task, [cell], opts)[0]
    detail = (result.error or "").strip().splitlines()
    checks.append(Check(
        f"runs `{task.protocol}` and is scored on a tiny `{PROFILES[0]}` configuration",
        result.status == "ok",
        f"status {result.status}: " + (detail[0] if detail else "") if result.status != "ok"
        else ", ".join(f"{k}={v:.4g}" for k, v in list(result.metrics.items())[:3] if v is not None),
    ))  # fmt: skip
    return checks


class InProcessPlugin:
    """Stands in for :class:`dltbench.sandbox.PluginProcess` when the method is trusted code
    in this process (unit tests, notebooks, debugging): ``task.run_plugin`` then calls the
    method here, on the same training view, with the same harness-side accounting.

    It gives no isolation at all: never use it for code you did not write.
    """

    remote = False

    def __init__(self, task: Any, method: Any, ctx: Any):
        self.task, self.method, self.ctx = task, method, ctx
        self.method_info = {"requires": tuple(getattr(method, "requires", ()))}

    def request(self, op: str, view: Any, config: Any) -> Any:
        """Only ``fit``: the method on ``view``, with exposed objects handed over as they are."""
        if op != "fit":
            raise ValueError(f"an in-process plugin only fits, not {op!r}")
        return self.task.fit(self.method, _unwrap(view), config, self.ctx)


def _unwrap(v: Any) -> Any:
    from .oracle import Exposed, map_leaves

    return map_leaves(v, lambda x: x.obj if isinstance(x, Exposed) else x)


def fit_in_process(task: Any, method: Any, data: Any, config: Any, method_ctx: Any,
                   eval_ctx: Any) -> Any:  # fmt: skip
    """The artifact ``task.evaluate`` expects, from a trusted ``method`` run in this process."""
    return task.run_plugin(InProcessPlugin(task, method, method_ctx), data, config, eval_ctx)


def assert_conforms(task_name: str, method_name: str) -> None:
    """Raise AssertionError listing every failed check (for plugin authors' pytest suites)."""
    failed = [c for c in check_method(task_name, method_name) if not c.ok]
    assert not failed, "; ".join(f"{c.name}: {c.detail}" for c in failed)
