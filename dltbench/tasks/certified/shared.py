"""One base classifier per (method, seed, training config), shared by the settings that train it.

Several rows of a profile train the same classifier: a method that ignores the smoothing noise
(``standard``, ``lipschitz-margin``) trains the same network for every row, and a noise-trained
method the same one for the l2 and the l-inf rows of one sigma. A method class may declare
``trains_on``: the config fields its training reads besides ``dataset`` and ``epochs``. The
harness then sends it a *training config* in which every other field is None, so the
declaration is enforced (a method that reads a hidden field fails), and the cells whose
training configs are equal really do train the same model: the method's seed depends only on
the cell seed (``runner.cell_contexts``).

The harness trains such a model once, keeps the plugin's ``torch.save`` bytes of it (never
unpickled here: only a sandboxed plugin process of the same method restores them) in a cache
folder (``$DLTBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/dltbench`` or ``~/.cache/dltbench``),
under a content hash of the method's name, version, source, parameters and attachments, the
method seed, the training config, the training data, the device type, the torch version, the
thread count and the harness's own source code (``dltbench.cache.code_version``): a changed line of
dltbench is a new key, so models are never shared across code versions. Only methods whose
class the harness itself holds (built-ins) are shared; plugin methods train in every cell.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import registry
from ...cache import cache_dir as _cache_root
from ...cache import code_version, locked, write_atomic

__all__ = ["ALWAYS_VISIBLE", "cache_dir", "declared_fields", "load", "locked", "store",
           "training_config", "training_key"]  # fmt: skip

#: Config fields every method's training may read.
ALWAYS_VISIBLE = ("dataset", "epochs")


def cache_dir() -> Path:
    """Folder of shared base classifiers (see the module docstring for the variables read)."""
    return _cache_root("certified-models")


def declared_fields(task_name: str, method: str) -> tuple[str, ...] | None:
    """The config fields built-in ``method`` declares its training reads, or None (a plugin,
    or a method that declares nothing: it sees the whole config and is never shared)."""
    try:
        cls = registry.get_method_class(task_name, method)
    except registry.RegistryError:
        return None
    fields = getattr(cls, "trains_on", None) if isinstance(cls, type) else None
    if fields is None or registry.method_origin(task_name, method) != "builtin":
        return None
    return tuple(fields)


def training_config(config: Any, fields: tuple[str, ...]) -> Any:
    """``config`` with every field but ``dataset``, ``epochs`` and ``fields`` set to None."""
    keep = set(ALWAYS_VISIBLE) | set(fields)
    return dataclasses.replace(
        config, **{f.name: None for f in dataclasses.fields(config) if f.name not in keep}
    )


def training_key(identity: dict[str, Any], seed: int, config: Any, train, device) -> str:
    """Content hash (24 hex digits) of everything a shared model's weights depend on."""
    h = hashlib.sha256()
    for t in (train.x, train.y):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    payload = {
        "method": identity.get("method"), "version": identity.get("method_version"),
        "source": identity.get("method_source_hash"), "params": identity.get("method_params"),
        "seed": int(seed), "config": dataclasses.asdict(config), "data": h.hexdigest(),
        "code": code_version(), "torch": torch.__version__, "device": torch.device(device).type,
        # the intra-op thread count changes float reduction order, hence the trained weights
        "threads": torch.get_num_threads(),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[
        :24
    ]


def load(path: Path) -> np.ndarray | None:
    """The stored snapshot bytes (as uint8, what the worker's ``restore`` takes), or None."""
    try:
        return np.frombuffer(path.read_bytes(), dtype=np.uint8)
    except OSError:
        return None


def store(path: Path, blob: Any) -> None:
    """Write a snapshot (uint8 array) atomically and drop entries of other code versions
    (:func:`dltbench.cache.write_atomic`)."""
    if not (isinstance(blob, np.ndarray) and blob.dtype == np.uint8 and blob.ndim == 1):
        raise OSError("a snapshot must be a 1-D uint8 array")  # not cached; the cell goes on
    write_atomic(path, blob.tobytes())
