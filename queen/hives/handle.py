"""A hive as the queen's callers see it: its alias, its backend (LocalHive or RemoteHive, which does
the work) and the capabilities it last reported."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from queen.hives.backend import HiveBackend, HiveState


@dataclass(eq=False)
class HiveHandle:
    alias: str
    backend: HiveBackend
    capabilities: dict[str, Any] | None = None
    draining: bool = False  # being taken out of service (queen/drain.py): nothing new is placed on it

    @property
    def url(self) -> str | None:
        return self.backend.url

    @property
    def state(self) -> HiveState:
        return self.backend.state

    def to_dict(self) -> dict[str, Any]:
        peer = self.backend.peer
        said = peer.to_dict() if peer is not None else {"version": None, "protocol": None, "skew": False,
                                                         "compatible": True}
        state = "draining" if self.draining else self.state.value
        return {"alias": self.alias, "local": self.backend.local, "url": self.url, "state": state,
                **said, **self.backend.describe(), "capabilities": self.capabilities, **self.backend.supervision()}
