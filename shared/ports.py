"""The ports and addresses every program agrees on by default."""

from __future__ import annotations

DEFAULT_QUEEN_PORT = 7833
DEFAULT_HIVE_PORT = 7835
DEFAULT_QUEEN_URL = f"http://127.0.0.1:{DEFAULT_QUEEN_PORT}"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def valid_port(port: int, *, allow_zero: bool = False) -> bool:
    """A TCP port number (0 lets the OS pick, where a daemon binds)."""
    return (0 if allow_zero else 1) <= port <= 65535
