"""Live workers, as their heartbeats tell the queen (the one source of truth), plus leases: a worker
generates for as many requests at once as it has slots, and each lease says which queen job holds one.

Reading never changes anything: a worker silent past the heartbeat timeout reads as `lost` from then
on, computed from the time of its last heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from queen.prefix_index import MIN_ROUTED_TOKENS, PrefixIndex, RouteGuard
from shared.heartbeat import EngineState, Heartbeat
from shared.version import THIS, PeerVersion, incompatibility
from shared.wire import WireEnum


class WorkerStatus(WireEnum):
    LOADING = "loading"
    READY = "ready"
    BUSY = "busy"
    FAILED = "failed"  # its model did not load
    LOST = "lost"  # no heartbeat for too long
    CRASHED = "crashed"  # a request to it failed as only a dead worker fails
    STOPPED = "stopped"  # the queen stopped it, or its hive
    UNREACHABLE = "unreachable"  # the link to its hive's machine is down; it comes back with the link
    INCOMPATIBLE = "incompatible"  # it speaks a protocol this queen does not (shared/version.py)

    @property
    def alive(self) -> bool:
        return self in (WorkerStatus.LOADING, WorkerStatus.READY, WorkerStatus.BUSY)


GOING = {EngineState.STOPPING: WorkerStatus.STOPPED, EngineState.EXITED: WorkerStatus.CRASHED}


@dataclass
class WorkerInfo:
    worker_id: str
    hive_id: str
    url: str
    model: str
    reported: WorkerStatus  # what its last heartbeat said, or what the queen found out since
    heartbeat_timeout_s: float
    pid: int | None = None
    queue_depth: int = 0
    device: str = "cpu"
    slots: int = 1
    embedding: bool = False  # an embedding worker: Embed goes to it, generation never does
    last_seen: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    leases: set[str] = field(default_factory=set)  # the queen jobs generating on it right now
    prefixes: PrefixIndex = field(default_factory=PrefixIndex)  # the prompts its slots hold, approximately
    peer: PeerVersion = THIS  # the rbee it runs, as its heartbeats say (one the queen spawned: the hive's)
    draining: bool = False  # being taken out of service (queen/drain.py): no new requests
    move_out: asyncio.Event = field(default_factory=asyncio.Event)  # set: its answers continue elsewhere now

    @property
    def state(self) -> WorkerStatus:
        if self.reported.alive and time.monotonic() - self.last_seen > self.heartbeat_timeout_s:
            return WorkerStatus.LOST
        return self.reported

    @property
    def alive(self) -> bool:
        return self.state.alive

    @property
    def free_slots(self) -> int:
        if self.draining or self.state not in (WorkerStatus.READY, WorkerStatus.BUSY):
            return 0
        return max(0, self.slots - len(self.leases))

    @property
    def idle(self) -> bool:
        return not self.leases

    def to_dict(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "worker_id": self.worker_id, "hive_id": self.hive_id, "url": self.url, "model": self.model,
            "state": "draining" if self.draining and self.alive else self.state.value, "pid": self.pid, "queue_depth": self.queue_depth, "device": self.device,
            "slots": self.slots, "slots_busy": len(self.leases), "leases": sorted(self.leases),
            "embedding": self.embedding, **self.peer.to_dict(),
            "problem": incompatibility(f"Worker {self.worker_id}", self.peer, fix=f"rbee hive upgrade {self.hive_id}"),
            "seen_s_ago": round(now - self.last_seen, 2),
            "idle_s": round(now - self.last_used, 2) if self.idle else 0.0,
        }


class WorkerRegistry:
    def __init__(self, heartbeat_timeout_s: float) -> None:
        self._workers: dict[str, WorkerInfo] = {}
        self._timeout = heartbeat_timeout_s
        self._changed = asyncio.Event()
        self.gone_at: dict[str, float] = {}  # per hive, when a worker of it was last forgotten (time.monotonic())

    def heartbeat(self, beat: Heartbeat) -> WorkerInfo | None:
        """Register or refresh a worker; a worker going away (or its hive saying it went) is unschedulable
        from this moment, not after the heartbeat timeout. None: news of a worker the queen never knew."""
        reported = GOING.get(beat.state) or WorkerStatus(beat.state.value)
        peer = PeerVersion.of({"version": beat.version, "protocol": beat.protocol})
        if not peer.compatible and reported.alive:
            reported = WorkerStatus.INCOMPATIBLE
        worker = self._workers.get(beat.worker_id)
        if worker is None and reported in GOING.values():
            return None
        if worker is None:
            worker = self._workers[beat.worker_id] = WorkerInfo(
                beat.worker_id, beat.hive_id, beat.url, beat.model, reported, self._timeout)
        worker.url, worker.model, worker.hive_id = beat.url, beat.model, beat.hive_id
        # A worker the queen gave up on comes back only by saying it is ready again.
        if worker.reported not in (WorkerStatus.CRASHED, WorkerStatus.STOPPED) or reported is WorkerStatus.READY:
            worker.reported = reported
        worker.pid, worker.queue_depth, worker.device, worker.slots = beat.pid, beat.queue_depth, beat.device, beat.slots
        worker.embedding, worker.peer = beat.embedding, peer
        worker.last_seen = time.monotonic()
        self.notify()
        return worker

    def add(self, worker_id: str, hive_id: str, url: str, model: str, slots: int = 1, *,
            embedding: bool = False, device: str = "cpu") -> WorkerInfo:
        """Register a worker the queen just had spawned (its first heartbeat may not have arrived yet)."""
        existing = self._workers.get(worker_id)
        if existing is not None:
            return existing
        worker = self._workers[worker_id] = WorkerInfo(worker_id, hive_id, url, model, WorkerStatus.READY,
                                                       self._timeout, slots=slots, embedding=embedding, device=device)
        self.notify()
        return worker

    def get(self, worker_id: str) -> WorkerInfo | None:
        return self._workers.get(worker_id)

    def all(self) -> list[WorkerInfo]:
        return list(self._workers.values())

    def mark(self, worker_id: str, status: WorkerStatus) -> None:
        if (worker := self._workers.get(worker_id)) is not None:
            worker.reported = status  # its leases end as their jobs do (each releases its own)
            self.notify()

    def mark_hive(self, hive_id: str, status: WorkerStatus, *, only_alive: bool = False) -> None:
        """Every worker of a hive that stopped or went away (`only_alive`: not those already given up on)."""
        for worker in self._workers.values():
            if worker.hive_id == hive_id and (worker.alive or not only_alive):
                self.mark(worker.worker_id, status)

    def forget(self, worker_id: str) -> None:
        if (worker := self._workers.pop(worker_id, None)) is not None:
            self.gone_at[worker.hive_id] = time.monotonic()  # what it held may be on its hive's disk now
        self.notify()

    def with_free_slot(self, model: str, hive_id: str | None, *, embedding: bool = False,
                       device: str = "auto", prefix: Sequence[int] = (),
                       guard: RouteGuard | None = None,
                       on_disk: Callable[[str], int] = lambda _hive: 0) -> WorkerInfo | None:
        """A ready worker for the model with a slot free: the one expected to hold the longest part of the
        prompt (`prefix`, its chunk hashes: queen/prefix_index.py) unless `guard` finds it too much busier
        than the least loaded; else the least loaded, then the least recently used (keeps the others warm).
        `on_disk(hive_id)`: chunks of the prompt that hive keeps on disk, which any worker there reads back.
        `embedding` picks among embedding workers, else among generating ones; `device` other than auto:
        only a worker on the CPU (cpu) or on that GPU (cuda:N). No `guard`: load alone."""
        candidates = [w for w in self._workers.values()
                      if w.model == model and w.free_slots and (hive_id is None or w.hive_id == hive_id)
                      and w.embedding == embedding and on_device(w.device, device)]
        if not candidates:
            return None
        least = min(candidates, key=lambda w: (len(w.leases), w.last_used))
        if guard is None or not prefix or len(candidates) == 1:
            return least
        def held_by(w: WorkerInfo) -> int:
            return max(w.prefixes.held(prefix), on_disk(w.hive_id))

        cached = max(candidates, key=lambda w: (held_by(w), -len(w.leases), -w.last_used))
        held = held_by(cached)
        if held == 0 or cached.prefixes.tokens(held) < MIN_ROUTED_TOKENS \
                or guard.overloaded(len(cached.leases), len(least.leases)):
            return least
        return cached

    def count_alive(self, model: str, hive_id: str, *, embedding: bool = False) -> int:
        """Workers of the model on the hive, of one kind (generating, or embedding); a draining one no longer
        counts (another may take its place)."""
        return sum(1 for w in self._workers.values() if w.model == model and w.hive_id == hive_id and w.alive
                   and not w.draining and w.embedding == embedding)

    def lease(self, worker: WorkerInfo, job_id: str) -> None:
        worker.leases.add(job_id)

    def release(self, worker: WorkerInfo, job_id: str) -> None:
        if job_id in worker.leases:
            worker.leases.discard(job_id)
            worker.last_used = time.monotonic()
            self.notify()

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for_change(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)


def on_device(worker_device: str, wanted: str) -> bool:
    """Whether a worker on `worker_device` ("cpu", "cuda:1", "cuda:0,1" for a split) serves a request for
    `wanted` (auto, cpu or cuda:N)."""
    if wanted == "auto":
        return True
    if wanted == "cpu":
        return worker_device == "cpu"
    return worker_device.startswith("cuda:") and wanted[5:] in worker_device[5:].split(",")
