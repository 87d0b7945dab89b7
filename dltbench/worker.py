"""The plugin worker: ``python -m dltbench.worker FD THREADS``, started by the harness.

It holds the method and its artifact and nothing of the evaluation: it receives the
task's training view, runs ``task.fit`` (the method's protocol), keeps the artifact and
answers the harness's oracle queries on it (:mod:`dltbench.oracle`) until told to close.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import random
import sys
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch

from . import registry
from .api import Context
from .oracle import Endpoint, PluginDied


class Worker:
    """The state of one plugin process: its method, context and artifact."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.task = self.method = self.ctx = None

    def init(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Load the method's code and make its context (its own seed; no data dir)."""
        for module in spec.get("import_modules", ()):
            importlib.import_module(module)
        registry.discover(spec["task"], tuple(spec.get("plugin_files", ())))
        self.task = registry.get_task(spec["task"])
        self.method = registry.get_method_class(spec["task"], spec["method"])()
        device = torch.device(spec["device"])
        self.ctx = Context(int(spec["seed"]), device, None, self.endpoint.progress)
        self.endpoint.make_generator = self.ctx.device_generator
        seed = int(spec["seed"])
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        return {"ok": True}

    def fit(self, view: Any, config: Any) -> Any:
        """Run the method on the training view; keep a model here, or send back plain data."""
        view = self.endpoint._materialize(view)
        artifact = self.task.fit(self.method, view, config, self.ctx)
        if self.task.artifact_kind == "value":
            return artifact
        return self._describe(artifact)

    def _describe(self, artifact: Any) -> dict[str, Any]:
        """Keep ``artifact`` here and tell the harness its handle, type, dtype and attributes."""
        if isinstance(artifact, torch.nn.Module):
            artifact = artifact.eval()
            dtype = next((p.dtype for p in artifact.parameters()), torch.float32)
        else:
            dtype = torch.float32
        oid = self.endpoint.expose(artifact).oid
        attrs = {}
        for name in self.task.artifact_attributes:
            value = getattr(artifact, name, None)
            to_state = getattr(value, "to_state", None)
            attrs[name] = to_state() if callable(to_state) else value
        methods = sorted(
            n for n in dir(type(artifact))
            if not n.startswith("_") and callable(getattr(type(artifact), n, None))
        )  # fmt: skip
        return {
            "oid": oid,
            "methods": methods,
            "type": type(artifact).__name__,
            "is_module": isinstance(artifact, torch.nn.Module),
            "dtype": str(dtype).removeprefix("torch."),
            "attributes": attrs,
        }

    def snapshot(self, oid: int) -> np.ndarray:
        """The artifact as torch.save bytes, taken before any query (for the harness's audits)."""
        buf = io.BytesIO()
        torch.save(self.endpoint.objects[oid], buf)
        return np.frombuffer(buf.getvalue(), dtype=np.uint8)

    def restore(self, blob: Any) -> dict[str, Any]:
        """Load a snapshot of another worker's artifact (this process has seen no query)."""
        data = blob.tobytes() if isinstance(blob, np.ndarray) else bytes(blob)
        artifact = torch.load(io.BytesIO(data), map_location=self.ctx.device, weights_only=False)
        return self._describe(artifact)


def describe(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Import plugin files and method entry points here; report their methods' infos."""
    registry.discover(spec.get("task"), tuple(spec.get("plugin_files", ())))
    return registry.method_infos(spec.get("task"))


def main(argv: list[str] | None = None) -> int:
    """Serve one harness over the inherited socket ``FD``."""
    argv = sys.argv[1:] if argv is None else argv
    registry.IN_WORKER = True
    fd, threads = int(argv[0]), int(argv[1])
    torch.set_num_threads(max(1, threads))
    endpoint = Endpoint(Connection(fd), trusted_peer=True)
    worker = Worker(endpoint)
    with contextlib.suppress(PluginDied):  # the harness went away: nothing left to answer
        endpoint.serve_forever({
            "init": worker.init, "fit": worker.fit, "describe": describe,
            "snapshot": worker.snapshot, "restore": worker.restore,
        })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
