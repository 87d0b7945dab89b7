"""Where the harness keeps work it can share between the cells of a run, and its code version.

Some tasks train a harness-owned model once per run instead of once per cell (robust's
reference defenses, diffusion's guidance classifier, certified's shared base classifiers).
They keep it under :func:`cache_dir` keyed by a content hash that includes
:func:`code_version`, so a changed line of dltbench is a new key and nothing is shared
across code versions. Only results of the harness's own code are cached, never a record.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import tempfile
from collections.abc import Iterator
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


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, then drop the folder's entries of other code versions.

    Entries are named ``<code_version()>-...``; a concurrent reader sees the old file or
    the new one, never half of one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for old in path.parent.glob(f"*{path.suffix}"):  # other code versions can never hit again
        if not old.name.startswith(code_version()):
            old.unlink(missing_ok=True)
            old.with_suffix(".lock").unlink(missing_ok=True)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``.lock: cells of one run that need the same entry wait
    for the first to make it instead of making it twice; released when the holder exits or dies.

    Where the cache folder cannot be written, nothing is locked: each cell makes its own
    entry (time, not correctness), as the write that follows cannot share it either.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path.with_suffix(".lock"), "a+b")  # noqa: SIM115 - closed below
    except OSError:
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
