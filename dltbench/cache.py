"""Where the harness keeps work it can share between the cells of a run, and its code version.

Some tasks train a harness-owned model once per run instead of once per cell (robust's
reference defenses, diffusion's guidance classifier, certified's shared base classifiers).
They keep it under :func:`cache_dir` keyed by a content hash that includes
:func:`code_version`, so a changed line of dltbench is a new key and nothing is shared
across code versions. Only results of the harness's own code are cached, never a record.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The folder for ``kind`` (``$DLTBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/dltbench``
    or ``~/.cache/dltbench``)."""
    root = os.environ.get("DLTBENCH_CACHE_DIR")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dltbench"
    return Path(root) / kind


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """sha256 (16 hex digits) of every .py file of the dltbench package: the harness's code version."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]
