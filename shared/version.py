"""Which rbee a daemon runs, and whether two daemons can work together.

The version names the code; the protocol number names what the daemons say to one another (jobs,
events, heartbeats, handshakes). It changes only when a message changes in a way an older daemon would
misread, so a queen and a hive of different versions but a protocol both speak keep working, and the
difference is only shown (skew). Every daemon tells both in its start-up line, its /health and (workers)
its heartbeats; one from before versions were told counts as protocol 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared import __version__

PROTOCOL = 1  # bump when a message between daemons changes incompatibly
OLDEST_PROTOCOL = 0  # the oldest a daemon of this code still speaks to (0: from before versions were told)

VERSION = __version__


def version_fields() -> dict[str, Any]:
    """What a daemon adds to its /health, heartbeats and start-up line."""
    return {"version": VERSION, "protocol": PROTOCOL}


@dataclass(frozen=True)
class PeerVersion:
    """What another daemon said of itself."""

    version: str | None  # None: a daemon from before versions were told
    protocol: int

    @classmethod
    def of(cls, data: dict[str, Any] | None) -> PeerVersion:
        """From a /health body or a heartbeat (anything with `version` and `protocol`, or neither)."""
        data = data or {}
        version = data.get("version")
        protocol = data.get("protocol")
        return cls(version if isinstance(version, str) and version else None,
                   protocol if isinstance(protocol, int) and not isinstance(protocol, bool) else 0)

    @property
    def compatible(self) -> bool:
        return OLDEST_PROTOCOL <= self.protocol <= PROTOCOL

    @property
    def skewed(self) -> bool:
        """Another version than this daemon's (compatible or not)."""
        return self.version != VERSION

    @property
    def label(self) -> str:
        return f"rbee {self.version or 'older than 0.2.0'} (protocol {self.protocol})"

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "protocol": self.protocol, "skew": self.skewed,
                "compatible": self.compatible}


THIS = PeerVersion(VERSION, PROTOCOL)


def incompatibility(what: str, peer: PeerVersion, *, fix: str) -> str | None:
    """Why this daemon cannot work with `peer` ("hive gpu1", "worker worker-3"), and what to run; None
    when it can. `fix` is the command that brings an older peer up to date."""
    if peer.compatible:
        return None
    if peer.protocol < OLDEST_PROTOCOL:
        todo = f"run `{fix}`"
    else:
        todo = "upgrade this machine's rbee (`git pull && ./bootstrap.sh`, then `rbee queen restart`)"
    return (f"{what} runs {peer.label} and this queen runs {THIS.label}: they cannot work together, so nothing is "
            f"scheduled there; {todo}.")
