"""Command line of llm-worker-rbee."""

from __future__ import annotations

import sys

from shared.not_yet import not_yet_implemented


def main() -> None:
    sys.exit(not_yet_implemented("llm-worker-rbee", 3))


if __name__ == "__main__":
    main()
