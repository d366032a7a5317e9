"""The heartbeat a worker sends the queen (POST /v1/workers/heartbeat): who it is, where it listens, what
it serves and how it is doing. The queen's worker registry is built from nothing else, so a malformed one
is refused whole (400) rather than half-registered."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from shared.wire import WireEnum, WireMessage, bounds, parse_message

HEARTBEAT_PATH = "/v1/workers/heartbeat"


class EngineState(WireEnum):
    """A worker's own state, as its /health and heartbeats report it."""

    LOADING = "loading"
    READY = "ready"
    BUSY = "busy"  # every slot taken
    FAILED = "failed"  # the model did not load
    STOPPING = "stopping"  # its last heartbeat: it is shutting down, its requests end now
    EXITED = "exited"  # said by its hive: the process is gone (crashed, killed)


@dataclass(frozen=True, kw_only=True)
class Heartbeat(WireMessage):
    name: ClassVar[str] = "heartbeat"
    worker_id: str = field(metadata={"nonempty": True})
    hive_id: str = field(metadata={"nonempty": True})
    url: str = field(metadata={"nonempty": True})  # where the queen reaches the worker's inference API
    model: str = field(metadata={"nonempty": True})  # the canonical model reference
    state: EngineState
    pid: int | None = field(default=None, metadata=bounds(1))
    queue_depth: int = field(default=0, metadata=bounds(0))  # requests waiting for a slot
    slots: int = field(default=1, metadata=bounds(1))  # requests it generates at once
    slots_busy: int = field(default=0, metadata=bounds(0))
    device: str = field(default="cpu", metadata={"nonempty": True})
    embedding: bool = False  # an embedding worker: it computes embeddings and is never sent a generation
    # Which rbee it runs (shared/version.py); absent from workers from before versions were told.
    version: str | None = None
    protocol: int = field(default=0, metadata=bounds(0))


def parse_heartbeat(data: Any) -> Heartbeat:
    """Fields this code does not know are left out, not refused: a newer worker may tell more (as these
    versions' `version` and `protocol` once were), and its heartbeats must still register it."""
    if isinstance(data, Mapping):
        data = {key: value for key, value in data.items() if key in _FIELDS}
    return parse_message(Heartbeat, data)


_FIELDS = frozenset(f.name for f in dataclasses.fields(Heartbeat))
