"""Result records on disk: ``results/<task>.jsonl``, appended atomically under a file lock."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

from filelock import FileLock

from .api import Result


def results_path(results_dir: str | Path, task: str) -> Path:
    """Where the records of ``task`` live."""
    return Path(results_dir) / f"{task}.jsonl"


def append_result(results_dir: str | Path, result: Result) -> None:
    """Append one record as one line, under a lock, flushed to disk before returning."""
    path = results_path(results_dir, result.task)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (result.to_json() + "\n").encode()
    with FileLock(str(path) + ".lock"):
        # One write() on an O_APPEND descriptor: a crash leaves at worst one torn last
        # line, which read_results skips, never a corrupted earlier or later record.
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # close a torn line so this record stays on its own
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def read_results(results_dir: str | Path, task: str) -> list[Result]:
    """All records of ``task`` in file order; a torn line (from a crash) is skipped with a warning."""
    path = results_path(results_dir, task)
    if not path.exists():
        return []
    out = []
    with FileLock(str(path) + ".lock"):
        lines = path.read_text().splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(Result.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError) as exc:
            warnings.warn(f"{path}:{i}: skipping an unreadable record ({exc})", stacklevel=2)
    return out


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so readers never see half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
