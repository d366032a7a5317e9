"""Entry point of a program whose issue has not landed yet: one honest line and a non-zero exit."""

from __future__ import annotations

import sys


def not_yet_implemented(program: str, issue: int) -> int:
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(f"usage: {program}\n\n{program} is not yet implemented (tracked in issue #{issue}).")
        return 0
    print(f"{program}: not yet implemented (tracked in issue #{issue}).", file=sys.stderr)
    return 2
