"""Live workers, as their heartbeats tell the queen (the one source of truth), plus leases: a worker
runs one generation at a time, and a lease says whose it is."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.errors import InvalidRequest


@dataclass
class WorkerInfo:
    worker_id: str
    hive_id: str
    url: str
    model: str
    state: str  # loading | ready | busy | lost | crashed | stopped
    pid: int | None = None
    queue_depth: int = 0
    device: str = "cpu"
    last_seen: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    leased_by: str | None = None  # the queen job generating on it right now

    @property
    def schedulable(self) -> bool:
        return self.state in ("ready", "busy") and self.leased_by is None

    @property
    def alive(self) -> bool:
        return self.state in ("loading", "ready", "busy")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        now = time.monotonic()
        d["seen_s_ago"] = round(now - d.pop("last_seen"), 2)
        d["idle_s"] = round(now - d.pop("last_used"), 2) if self.leased_by is None else 0.0
        return d


class WorkerRegistry:
    def __init__(self, heartbeat_timeout_s: float) -> None:
        self._workers: dict[str, WorkerInfo] = {}
        self._timeout = heartbeat_timeout_s
        self._changed = asyncio.Event()

    def heartbeat(self, payload: Any) -> WorkerInfo:
        if not isinstance(payload, dict):
            raise InvalidRequest("A heartbeat is a JSON object.")
        try:
            worker_id, url, model, state = (str(payload[k]) for k in ("worker_id", "url", "model", "state"))
        except KeyError as exc:
            raise InvalidRequest(f"Heartbeat is missing field {exc}.") from None
        hive_id = str(payload.get("hive_id") or "localhost")
        worker = self._workers.get(worker_id)
        if worker is None:
            worker = self._workers[worker_id] = WorkerInfo(worker_id, hive_id, url, model, state)
        worker.url, worker.model, worker.hive_id = url, model, hive_id
        if worker.state not in ("crashed", "stopped") or state == "ready":
            worker.state = state
        worker.pid = payload.get("pid")
        worker.queue_depth = int(payload.get("queue_depth") or 0)
        worker.device = str(payload.get("device") or "cpu")
        worker.last_seen = time.monotonic()
        self.notify()
        return worker

    def add(self, worker: WorkerInfo) -> WorkerInfo:
        """Register a worker the queen just had spawned (before its first heartbeat arrives)."""
        existing = self._workers.get(worker.worker_id)
        if existing is not None:
            return existing
        self._workers[worker.worker_id] = worker
        self.notify()
        return worker

    def get(self, worker_id: str) -> WorkerInfo | None:
        return self._workers.get(worker_id)

    def all(self) -> list[WorkerInfo]:
        self.mark_lost()
        return list(self._workers.values())

    def mark(self, worker_id: str, state: str) -> None:
        if (worker := self._workers.get(worker_id)) is not None:
            worker.state = state
            worker.leased_by = None
            self.notify()

    def forget(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)
        self.notify()

    def mark_lost(self) -> None:
        now = time.monotonic()
        for worker in self._workers.values():
            if worker.alive and now - worker.last_seen > self._timeout:
                worker.state = "lost"
                worker.leased_by = None

    def idle(self, model: str, hive_id: str | None) -> WorkerInfo | None:
        """An idle ready worker for the model, the least recently used first (keeps others warm)."""
        self.mark_lost()
        candidates = [w for w in self._workers.values()
                      if w.model == model and w.schedulable and (hive_id is None or w.hive_id == hive_id)]
        return min(candidates, key=lambda w: w.last_used) if candidates else None

    def count_alive(self, model: str, hive_id: str) -> int:
        self.mark_lost()
        return sum(1 for w in self._workers.values() if w.model == model and w.hive_id == hive_id and w.alive)

    def lease(self, worker: WorkerInfo, job_id: str) -> None:
        worker.leased_by = job_id

    def release(self, worker: WorkerInfo) -> None:
        worker.leased_by = None
        worker.last_used = time.monotonic()
        self.notify()

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for_change(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass
