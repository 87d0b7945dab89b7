"""Print the versions of the stack under test; with a constraints file, fail unless they satisfy it.

tox runs it before pytest, so a matrix column's output says what it really tested.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement

SHOWN = ["torch", "numpy", "pandas", "scipy", "scikit-learn", "arviz"]


def main(argv: list[str]) -> int:
    """Print ``python`` and SHOWN versions; return 1 if a requirement in ``argv[0]`` does not hold."""
    print(f"python {sys.version.split()[0]}, " + ", ".join(f"{n} {version(n)}" for n in SHOWN))
    bad = []
    for path in argv:
        for line in Path(path).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                req = Requirement(line)
                try:
                    have = version(req.name)
                except PackageNotFoundError:  # a constraint never asks for an install
                    continue
                if not req.specifier.contains(have, prereleases=True):
                    bad.append(f"{req.name} {have} does not satisfy {req} ({path})")
    for b in bad:
        print(b, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
