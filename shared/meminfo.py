"""The machine's memory as /proc/meminfo tells it: the hive reports it, a worker checks it before growing."""

from __future__ import annotations


def ram_bytes(field: str = "MemTotal") -> int | None:
    """A /proc/meminfo figure in bytes: MemTotal, or MemAvailable (what new processes can have without
    swapping: free memory plus reclaimable caches). None where there is no such file or figure."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None
