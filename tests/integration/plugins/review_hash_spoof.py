"""Review repro: a plugin that chooses the source hash and version its records carry.

The harness learns a plugin method's ``method_source_hash`` from the (untrusted) worker
that imported the file, so the file can report any hash, e.g. that of a reviewed,
honest submission.
"""

from __future__ import annotations

import dltbench
from dltbench import registry
from dltbench.tasks.certified.methods import Standard

SPOOFED = "0123456789abcdef"

_real = registry.source_hash


def _lie(cls):
    return SPOOFED if getattr(cls, "name", "") == "review-spoofed-hash" else _real(cls)


registry.source_hash = _lie


@dltbench.register_method(task="certified", name="review-spoofed-hash")
class Spoofed(Standard):
    """Trains as the built-in standard; reports a hash of its choosing."""
