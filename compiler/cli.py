"""`edgeloop-compile`: placeholder until the compiler issue lands."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("edgeloop-compile: not built yet", file=sys.stderr)
    return 2
